"""End-to-end checks of the `stability` binary: exit codes and what it prints."""
import json
import os
import subprocess

import pytest

BIN = os.path.join(os.environ.get("TEST_SRCDIR", ""), "stability/cli/stability")


def run(*args, env=None):
    return subprocess.run([BIN, *args], capture_output=True, text=True, env=env, timeout=60)


def test_info_reports_version_backends_and_data(tmp_path):
    env = dict(os.environ, STABILITY_DATA_DIR=str(tmp_path))
    r = run("info", env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("stability 0.")
    assert "cpu:   always available" in r.stdout
    assert "GEMM: oneDNN" in r.stdout
    assert "cuda:" in r.stdout
    # An empty data dir: every bundled file is reported missing, with the fix.
    assert r.stdout.count("MISSING (run: bash tools/setup.sh)") == 3
    assert str(tmp_path) in r.stdout


def test_unknown_subcommand_is_named_and_fails():
    r = run("trian")
    assert r.returncode == 2
    assert "unknown subcommand 'trian'" in r.stderr
    assert "info" in r.stderr


def test_no_subcommand_prints_usage():
    r = run()
    assert r.returncode == 2
    assert "usage: stability <subcommand>" in r.stderr


def test_info_rejects_arguments():
    r = run("info", "--bogus")
    assert r.returncode == 2
    assert "unexpected argument '--bogus'" in r.stderr


def prepare_bytes(tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    (text / "a.txt").write_text("The quick brown fox jumps over the lazy dog.\r\n" * 200)
    r = run("prepare", f"--input={text}", f"--out={tmp_path}/shards", "--tokenizer=bytes")
    assert r.returncode == 0, r.stderr
    assert "train tokens" in r.stdout and "vocabulary 257" in r.stdout
    return tmp_path / "shards"


SMALL = ['--vocab_size=257', "--n_embd=32", "--seq_len=32", "--batch=2", "--eval_batches=1"]


def test_train_runs_and_never_overwrites_a_run(tmp_path):
    shards = prepare_bytes(tmp_path)
    args = ["train", *SMALL, f"--data={shards}", f"--out={tmp_path}/run", "--steps=4", "--variant=qk_norm",
            "--norm=rmsnorm", "--position=rope"]
    r = run(*args)
    assert r.returncode == 0, r.stderr
    assert "loss:" in r.stdout and f"run: {tmp_path}/run" in r.stdout
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["norm"] == "rmsnorm" and config["model"]["qk_norm"] is True
    assert config["model"]["position"] == "rope" and config["train"]["steps"] == 4
    r = run(*args)
    assert r.returncode == 2 and "holds a finished run" in r.stderr
    # The saved config reproduces the run's settings.
    r = run("train", f"--config={tmp_path}/run/config.json", f"--out={tmp_path}/run2", "--steps=2")
    assert r.returncode == 0, r.stderr
    config2 = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert config2["model"] == config["model"]


def test_train_bad_inputs_exit_non_zero_with_clear_errors(tmp_path):
    shards = prepare_bytes(tmp_path)
    cases = [
        (["--preset=huge"], 'unknown size preset "huge"'),
        (["--lr=-1"], "--lr=-1 must be positive"),
        (["--lrr=1"], "unknown flag --lrr"),
        (["--variant=qknorm"], 'unknown variant "qknorm"'),
        (["--n_head=3"], "must be divisible by n_head = 3"),
        (["--schedule=exp"], 'unknown schedule "exp"'),
        (["--qk_norm=maybe"], '"qk_norm" must be true or false'),
        (["--profile_step=-1"], "--profile_step=-1 must be >= 0"),
    ]
    for extra, message in cases:
        r = run("train", *SMALL, f"--data={shards}", f"--out={tmp_path}/bad", *extra)
        assert r.returncode == 2, extra
        assert message in r.stderr, (extra, r.stderr)
    bad = tmp_path / "badshards"
    bad.mkdir()
    (bad / "train_000000.bin").write_bytes(b"\x00" * 2048)
    (bad / "val_000000.bin").write_bytes(b"\x00" * 2048)
    r = run("train", *SMALL, f"--data={bad}", f"--out={tmp_path}/bad2")
    assert r.returncode == 2 and "wrong magic" in r.stderr
    r = run("prepare", f"--input={tmp_path}/text", f"--out={tmp_path}/p", "--tokenizer=gpt2:/nonexistent")
    assert r.returncode == 2 and "cannot open GPT-2 encoder.json at /nonexistent/encoder.json" in r.stderr
    r = run("train", *SMALL, f"--data={shards}", f"--out={tmp_path}/nothing", "--resume")
    assert r.returncode == 2 and "holds no run" in r.stderr
    r = run("train", *SMALL, f"--data={shards}", f"--out={tmp_path}/gpu", "--device=cuda:x")
    assert r.returncode == 2 and "--device=cuda:x must be auto, cpu, cuda or cuda:N" in r.stderr
    r = run("train", *SMALL, f"--data={shards}", f"--out={tmp_path}/bf", "--device=cpu", "--precision=bf16")
    assert r.returncode == 2 and "--precision=bf16 needs a GPU (--device=cuda)" in r.stderr
    assert not (tmp_path / "bf").exists()
    r = run("train", *SMALL, f"--data={shards}", f"--out={tmp_path}/bf", "--precision=fp16")
    assert r.returncode == 2 and "--precision=fp16 must be fp32 or bf16" in r.stderr
    r = run("train", *SMALL, f"--data={shards}", f"--out={tmp_path}/fa", "--device=cpu", "--attention=fused")
    assert r.returncode == 2 and "--attention=fused needs a GPU (--device=cuda)" in r.stderr
    assert not (tmp_path / "fa").exists()
    r = run("train", *SMALL, f"--data={shards}", f"--out={tmp_path}/fa", "--attention=flash")
    assert r.returncode == 2 and "--attention=flash must be auto, gemm or fused" in r.stderr


def test_a_kernel_profile_on_the_cpu_breaks_the_step_down_by_op(tmp_path):
    shards = prepare_bytes(tmp_path)
    r = run("train", *SMALL, f"--data={shards}", f"--out={tmp_path}/p", "--steps=3", "--device=cpu",
            "--profile_step=2")
    assert r.returncode == 0, r.stderr
    assert f"kernel profile of step 2: {tmp_path}/p/kernel_profile.md" in r.stderr
    md = (tmp_path / "p" / "kernel_profile.md").read_text()
    assert md.startswith("# Kernel profile of step 2")
    for part in ["| matrix products |", "| attention |", "| cross-entropy |", "| outside the ops |"]:
        assert part in md, part
    for op in ["| LinearForward |", "| LinearBackward |", "| AdamW |", "| sgemm "]:
        assert op in md, op
    products = next(l for l in md.splitlines() if l.startswith("| matrix products |"))
    assert float(products.split("|")[5]) > 0  # their TFLOP/s
    assert json.loads((tmp_path / "p" / "config.json").read_text())["train"]["profile_step"] == 2


def test_a_missing_gpu_is_an_error_before_anything_is_written(tmp_path):
    shards = prepare_bytes(tmp_path)
    r = run("train", *SMALL, f"--data={shards}", f"--out={tmp_path}/gpu", "--device=cuda:0", "--steps=2")
    if r.returncode == 0:
        pytest.skip("this machine has a GPU")
    assert r.returncode == 2 and "--device=cuda:0:" in r.stderr and "--device=cpu" in r.stderr, r.stderr
    assert not (tmp_path / "gpu").exists()
    r = run("train", *SMALL, f"--data={shards}", f"--out={tmp_path}/auto", "--device=auto", "--steps=2")
    assert r.returncode == 0, r.stderr  # auto falls back to the CPU
    assert json.loads((tmp_path / "auto" / "summary.json").read_text())["device"] == "cpu"


def test_train_help_lists_every_switch():
    r = run("train", "--help")
    assert r.returncode == 0
    for flag in ["--preset", "--variant", "--qk_norm", "--attn_soft_cap", "--z_loss", "--lr", "--schedule",
                 "--resume", "--config", "--device", "--threads", "--eval_interval"]:
        assert flag in r.stdout, flag
