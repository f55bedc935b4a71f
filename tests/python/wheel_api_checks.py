"""The Python API, run by the venv's python with the installed wheel (see wheel_test.py).
Environment: REFERENCE_DIR (tests/reference, for the PyTorch model)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import stability as st

sys.path.insert(0, os.environ["REFERENCE_DIR"])
import gpt_reference  # noqa: E402

SMALL = dict(vocab_size=257, n_embd=32, n_head=4, seq_len=32)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("data")
    (tmp / "text").mkdir()
    (tmp / "text" / "a.txt").write_text("It was the best of times, it was the worst of times.\n" * 400)
    summary = st.prepare(str(tmp / "text"), str(tmp / "shards"), tokenizer="bytes", progress=False)
    assert summary["vocab_size"] == 257 and summary["train_tokens"] > 10000
    return str(tmp / "shards")


def test_the_wheel_is_what_we_built():
    assert st.__file__.startswith(sys.prefix), st.__file__  # imported from the venv
    assert os.access(st.cli_path(), os.X_OK)


def test_tiny_run_loss_falls(tmp_path, shards):
    cfg = st.Config(preset="tiny", variant="qk_norm", data=shards, out=str(tmp_path / "run"), steps=60, batch=4,
                    lr=1e-2, warmup=5, eval_interval=30, eval_batches=2, **SMALL)
    run = st.train(cfg, progress=False)
    assert run.summary["finished"] and not run.diverged
    assert run.summary["final_val_loss"] < run.summary["loss_at_init"] - 2.0
    assert run.metrics["loss"].shape == (60,)
    assert run.metrics["loss"][-5:].mean() < run.metrics["loss"][:5].mean() - 2.0


@pytest.mark.parametrize("variant,extra", [("qk_fc_norm", {"norm": "rmsnorm"}), ("sigma_reparam", {"position": "rope"})])
def test_model_gradients_match_the_pytorch_reference(variant, extra):
    cfg = st.Config(preset="tiny", variant=variant, init_std=0.2, **SMALL, **extra)
    model = st.Model(cfg, seed=3)
    rng = np.random.default_rng(0)
    ids, targets = rng.integers(0, 257, size=(2, 12)), rng.integers(0, 257, size=(2, 12))
    out = model.forward(ids, targets)
    grads = model.backward()
    ref = gpt_reference.GptReference(cfg.to_dict()["model"], model.parameters, model.buffers).run(ids, targets)
    assert out.loss == pytest.approx(ref["loss"], rel=1e-5)
    assert out.logits.shape == (2, 12, 257)
    with pytest.raises(ValueError, match="one Backward a Forward"):
        model.backward()
    assert set(grads) == set(ref["grads"])
    for name, g in grads.items():
        r = ref["grads"][name]
        assert np.all(np.abs(g - r) <= 1e-4 * np.abs(r) + 1e-5 * np.abs(r).max() + 1e-8), name


def test_parameters_round_trip_through_numpy():
    model = st.Model(st.Config(**SMALL), seed=1)
    params = model.parameters
    assert params["h.0.qkv.weight"].shape == (96, 32) and params["h.0.qkv.weight"].dtype == np.float32
    ids = np.zeros((1, 4), dtype=np.int32)
    before = model.forward(ids, ids).loss
    new = {k: v * 0.5 for k, v in params.items()}
    model.set_parameters(new)
    for k, v in model.parameters.items():
        np.testing.assert_array_equal(v, new[k])
    assert model.forward(ids, ids).loss != before
    with pytest.raises(ValueError, match="has shape"):
        model.set_parameters({"h.0.qkv.weight": np.zeros((3, 3))})
    with pytest.raises(KeyError):
        model.set_parameters({"nope": np.zeros(1)})


def test_model_runs_on_the_configured_device():
    ids = np.arange(8, dtype=np.int32).reshape(2, 4)
    cpu = st.Model(st.Config(device="cpu", **SMALL), seed=1)
    assert cpu.device == "cpu"
    auto = st.Model(st.Config(**SMALL), seed=1)  # device="auto": a GPU when one is visible
    if auto.device == "cpu":  # no GPU: the same model, the same bits
        assert auto.forward(ids, ids).loss == cpu.forward(ids, ids).loss
        with pytest.raises(RuntimeError, match="--device=cuda: .*use --device=cpu"):
            st.Model(st.Config(device="cuda", **SMALL))
    else:
        assert auto.device.startswith("cuda:")
    with pytest.raises(ValueError, match="--precision=bf16 needs a GPU"):
        st.Model(st.Config(device="cpu", precision="bf16", **SMALL))


def test_callback_stops_the_run_and_resume_finishes_it(tmp_path, shards):
    cfg = st.Config(data=shards, out=str(tmp_path / "run"), steps=20, batch=2, eval_batches=1, **SMALL)
    seen = []
    run = st.train(cfg, callback=lambda row: seen.append(row["step"]) or row["step"] < 5, progress=False)
    assert seen == [1, 2, 3, 4, 5]
    assert run.summary is None and len(run.rows) == 5
    run = st.train(cfg, resume=True, progress=False)
    assert run.summary["finished"] and len(run.rows) == 20


def test_bad_config_raises_value_error_naming_the_field():
    with pytest.raises(ValueError, match='unknown config field "qk_nrom"'):
        st.Config(qk_nrom=True)
    with pytest.raises(ValueError, match="--lr=-1 must be positive"):
        st.Config(lr=-1)
    with pytest.raises(ValueError, match='"n_layer" must be an integer'):
        st.Config(n_layer="two")
    with pytest.raises(ValueError, match='unknown variant "qknorm"'):
        st.Config(variant="qknorm")
    with pytest.raises(FileNotFoundError):
        st.load_run("/nonexistent/run")
    cfg = st.Config(variant="qkv_norm", norm="rmsnorm", lr=0.01)
    assert st.Config.from_json(cfg.to_json()) == cfg
    assert "qkv_norm" in repr(cfg) and cfg.n1 is False and cfg.lr == 0.01


def test_load_run_matches_the_cli_metrics(tmp_path, shards):
    out = tmp_path / "cli_run"
    r = subprocess.run(["stability", "train", f"--data={shards}", f"--out={out}", "--steps=8", "--batch=2",
                        "--eval_interval=4", "--eval_batches=1", "--vocab_size=257", "--n_embd=32", "--seq_len=32"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    run = st.load_run(str(out))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(run.rows) == len(rows) == 8
    for key in ["loss", "lr", "grad_norm", "h.0.fc2.out_norm"]:
        np.testing.assert_array_equal(run.metrics[key], np.array([row[key] for row in rows]))
    val = run.metrics["val_loss"]
    assert np.isnan(val[0]) and val[3] == rows[3]["val_loss"]
    assert run.config.steps == 8 and run.summary["steps"] == 8


def test_sweep_and_tokenizer(tmp_path, shards):
    spec = {"base": {"model": SMALL, "train": {"data": shards, "steps": 6, "batch": 2, "eval_batches": 1}},
            "methods": ["baseline", "soft_cap"], "lrs": [0.01], "seeds": [1]}
    sw = st.sweep(spec, str(tmp_path / "sweep"), jobs=2)
    assert len(sw.cells) == 2 and {r["method"] for r in sw.tables["divergence"]} == {"baseline", "soft_cap"}
    assert st.load_sweep(str(tmp_path / "sweep")).tables == sw.tables
    tok = st.load_tokenizer("bytes")
    ids = tok.encode("héllo")
    assert ids.dtype == np.int32 and tok.decode(ids) == "héllo" and tok.vocab_size == 257
