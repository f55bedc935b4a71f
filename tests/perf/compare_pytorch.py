"""Training throughput, ours against PyTorch, side by side in one run.

    bazel run //tests/perf:compare_pytorch -- --configs=tiny,mid,mid_v4k --steps=8 --rounds=2

For each config and method: the same model config, batch, sequence length and initial
weights (PyTorch loads our `stability dump`), trained for --steps AdamW steps by
`stability train` and by PyTorch (Debian's torch, eager, float32, the same thread count),
alternating --rounds times. Tokens/s is the median over the timed steps (the first step of
each run is a warm-up and not counted). MFU = tokens/s × (6N + 6·L·C·T) / the measured
FMA peak (//stability/ops/cpu:peak_probe). Prints a Markdown table (and --out writes it).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
RUNFILES = os.environ.get("RUNFILES_DIR") or os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(RUNFILES, "stability", "tests", "reference"))
import gpt_reference  # noqa: E402
import safetensors_io  # noqa: E402

BIN = os.path.join(RUNFILES, "stability", "cli", "stability")
PEAK = os.path.join(RUNFILES, "stability", "stability", "ops", "cpu", "peak_probe")

CONFIGS = {  # name: (preset, overrides, batch, seq)
    "tiny": ("tiny", {}, 8, 64),
    "mid": ("mid", {}, 2, 512),
    "mid_v4k": ("mid", {"vocab_size": 4096}, 2, 512),
}
METHODS = ["baseline", "qk_norm", "qkv_norm", "qk_fc_norm", "soft_cap", "qk_norm_cap", "soft_temp", "soft_clip",
           "sigma_reparam", "layer_scale"]


def write_shards(folder, vocab, tokens):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        toks = rng.integers(0, vocab, size=tokens)
        header = np.zeros(256, dtype=np.int32)
        header[:3] = [20240520, 1 if vocab <= 65536 else 2, tokens]
        with open(os.path.join(folder, f"{split}_000000.bin"), "wb") as f:
            f.write(header.tobytes())
            f.write(toks.astype(np.uint16 if vocab <= 65536 else np.uint32).tobytes())


def ours(tmp, preset, overrides, method, batch, seq, steps, threads, data, lr):
    out = tempfile.mkdtemp(dir=tmp)
    args = [BIN, "train", f"--preset={preset}", f"--variant={method}", f"--data={data}", f"--out={out}/run",
            f"--steps={steps + 1}", f"--batch={batch}", f"--seq={seq}", "--eval_interval=0", "--eval_batches=1",
            f"--telemetry_interval={steps + 10}", "--checkpoint_interval=0", f"--threads={threads}", f"--lr={lr}",
            "--warmup=1"]
    args += [f"--{k}={v}" for k, v in overrides.items()]
    r = subprocess.run(args, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    rows = [json.loads(l) for l in open(f"{out}/run/metrics.jsonl")]
    n_params = json.load(open(f"{out}/run/summary.json"))["parameters"]
    config = json.load(open(f"{out}/run/config.json"))["model"]
    return statistics.median(r["tokens_per_s"] for r in rows[1:]), n_params, config


def torch_run(tmp, preset, overrides, method, batch, seq, steps, threads, lr):
    dump = os.path.join(tempfile.mkdtemp(dir=tmp), "d.safetensors")
    r = subprocess.run([BIN, "dump", f"--preset={preset}", f"--variant={method}",
                        "--config_override=" + json.dumps(overrides), f"--batch={batch}", f"--seq={seq}", f"--out={dump}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(r.stderr)
    tensors, meta = safetensors_io.load(dump)
    config = json.loads(meta["config"])
    params = {k[5:]: tensors[k[5:]] for k in tensors if k.startswith("grad.")}
    buffers = {k: v for k, v in tensors.items() if ".sigma_" in k}
    torch.set_num_threads(threads)
    model = gpt_reference.GptReference(config, params, buffers, dtype=torch.float32, telemetry=False)
    decay = [p for n, p in model.p.items() if n.endswith(".weight") and n.split(".")[-2] in ("qkv", "proj", "fc1", "fc2", "lm_head")]
    other = [p for n, p in model.p.items() if all(p is not d for d in decay)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95), eps=1e-8)
    rng = np.random.default_rng(0)
    times = []
    for step in range(steps + 1):
        ids = torch.tensor(rng.integers(0, config["vocab_size"], size=(batch, seq)))
        targets = torch.tensor(rng.integers(0, config["vocab_size"], size=(batch, seq)))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = model.forward(ids, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(model.p.values()), 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return batch * seq / statistics.median(times[1:]), sum(v.size for v in params.values()), config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="tiny,mid,mid_v4k")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default="")
    ap.add_argument("--ours_only", action="store_true",
                    help="skip PyTorch (for method costs: the last column needs only our runs)")
    a = ap.parse_args()
    peak = json.loads(subprocess.run([PEAK], capture_output=True, text=True, check=True,
                                     env=dict(os.environ, OMP_NUM_THREADS=str(a.threads))).stdout)
    lines = [f"Measured fp32 FMA peak: {peak['fma_flops'] / 1e9:.1f} GFLOP/s on {a.threads} threads; "
             f"memory {peak['memory_bytes_per_s'] / 1e9:.1f} GB/s. torch {torch.__version__}.", "",
             "| config | method | ours tokens/s | PyTorch tokens/s | ours / PyTorch | ours MFU | PyTorch MFU | ours vs baseline |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    print("\n".join(lines), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in a.configs.split(","):
            preset, overrides, batch, seq = CONFIGS[name]
            vocab = overrides.get("vocab_size", 50257)
            data = os.path.join(tmp, f"data_{name}")
            write_shards(data, vocab, batch * seq * (a.steps + 4) * 2 + 1)
            base_ours = None
            for method in a.methods.split(","):
                o, t = [], []
                for _ in range(a.rounds):  # alternate: ours, PyTorch, ours, PyTorch
                    tps, n_params, config = ours(tmp, preset, overrides, method, batch, seq, a.steps, a.threads, data,
                                                 1e-3)
                    o.append(tps)
                    if not a.ours_only:
                        t.append(torch_run(tmp, preset, overrides, method, batch, seq, a.steps, a.threads, 1e-3)[0])
                ot, tt = statistics.median(o), statistics.median(t) if t else float("nan")
                flops = 6 * n_params + 6 * config["n_layer"] * config["n_embd"] * seq
                base_ours = ot if method == "baseline" else base_ours
                rel = f"{ot / base_ours:.3f}" if base_ours else ""
                line = (f"| {name} | {method} | {ot:.0f} | {tt:.0f} | {ot / tt:.2f} | {ot * flops / peak['fma_flops']:.1%} | "
                        f"{tt * flops / peak['fma_flops']:.1%} | {rel} |")
                lines.append(line)
                print(line, flush=True)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
