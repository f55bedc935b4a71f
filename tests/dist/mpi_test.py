"""Data parallelism over MPI, with real `mpirun -np 2` on this machine:
2 ranks x batch B train like 1 rank x batch 2B; a 2-rank run resumes exactly; a 2-rank
sweep runs every cell once; a rank that dies ends the whole job with an error (no hang);
resuming with another number of ranks is refused with a clear message.

Tolerance of the 2-rank vs 1-rank comparison: |a - b| <= 1e-5 * |b| per step over 20
steps. The two sum the same gradients in a different order (a per-rank GEMM plus an
all-reduce, against one GEMM over 2B rows), so fp32 rounding differs at ~1e-7 relative
per step and compounds slowly through AdamW."""
import json
import os
import signal
import subprocess
import time

import pytest

import e2e

BIN = e2e.BIN
COMM_TEST = os.path.join(os.environ.get("TEST_SRCDIR", ""), "stability/stability/dist/communicator_test")
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-np", "2",
          "--mca", "btl_vader_single_copy_mechanism", "none"]
MODEL = ["--vocab_size=257", "--n_embd=32", "--seq_len=32", "--eval_batches=1", "--threads=1"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return e2e.byte_shards(tmp_path_factory.mktemp("data"), "It is a truth universally acknowledged, that a single man in possession.\n", 400)


def losses(run):
    return [json.loads(l)["loss"] for l in (run / "metrics.jsonl").read_text().splitlines()]


def mpi(args, timeout=300):
    return subprocess.run(MPIRUN + [BIN] + args, capture_output=True, text=True, timeout=timeout)


def test_two_ranks_train_like_one_rank_with_twice_the_batch(tmp_path, shards):
    r = mpi(["train", f"--data={shards}", f"--out={tmp_path}/two", "--batch=2", "--steps=20", "--eval_interval=10", *MODEL])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 ranks (mpi)" in r.stderr
    r = subprocess.run([BIN, "train", f"--data={shards}", f"--out={tmp_path}/one", "--batch=4", "--steps=20",
                        "--eval_interval=10", *MODEL], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    two, one = losses(tmp_path / "two"), losses(tmp_path / "one")
    assert len(two) == len(one) == 20
    for a, b in zip(two, one):
        assert abs(a - b) <= 1e-5 * abs(b), (a, b)
    assert one[-1] < one[0] - 0.2  # it trained
    # Telemetry is of the whole global batch: rank means averaged, maxima by max.
    rows_two = [json.loads(l) for l in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    rows_one = [json.loads(l) for l in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    for name in ("h.0.fc2.out_norm", "h.1.qkv.in_norm", "h.0.attn.entropy", "h.1.attn.max_logit", "logits.max",
                 "logits.mean_log_z", "h.0.proj.weight_norm"):
        for a, b in zip(rows_two, rows_one):
            assert abs(a[name] - b[name]) <= 1e-5 * abs(b[name]) + 1e-7, (name, a["step"], a[name], b[name])
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["tokens_per_step"] == 4 * 32


def test_two_rank_resume_is_exact_and_needs_two_ranks(tmp_path, shards):
    args = ["train", f"--data={shards}", "--batch=2", "--steps=16", "--eval_interval=8", "--checkpoint_interval=0", *MODEL]
    assert mpi(args + [f"--out={tmp_path}/straight"]).returncode == 0
    r = mpi(args + [f"--out={tmp_path}/split", "--stop_after=7"])
    assert r.returncode == 0, r.stderr
    r = subprocess.run([BIN] + args + [f"--out={tmp_path}/split", "--resume"], capture_output=True, text=True)
    assert r.returncode == 2 and "written by a run of 2 rank(s); resume it with the same number (mpirun -np 2)" in r.stderr
    r = mpi(args + [f"--out={tmp_path}/split", "--resume"])
    assert r.returncode == 0, r.stderr
    assert losses(tmp_path / "straight") == losses(tmp_path / "split")  # bitwise


def test_two_rank_sweep_runs_each_cell_once(tmp_path, shards):
    r = mpi(["sweep", f"--out={tmp_path}/sweep", "--methods=baseline,qk_norm,soft_cap", "--lrs=0.01,0.1", "--seeds=1",
             f"--data={shards}", "--steps=4", "--batch=2", "--jobs=1", *MODEL])
    assert r.returncode == 0, r.stdout + r.stderr
    logs = sorted((tmp_path / "sweep" / "logs").iterdir())
    assert len(logs) == 6
    for log in logs:
        assert log.read_text().count("training tiny") == 1, log
    assert (tmp_path / "sweep" / "results.md").exists()
    assert r.stdout.count("## Divergence") == 1  # tables printed once, by rank 0


def test_a_dead_rank_ends_the_job_with_an_error(tmp_path, shards):
    p = subprocess.Popen(MPIRUN + [BIN, "train", f"--data={shards}", f"--out={tmp_path}/dies", "--batch=2",
                                   "--steps=100000", "--eval_interval=0", *MODEL],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (tmp_path / "dies" / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    ranks = subprocess.run(["pgrep", "-f", f"out={tmp_path}/dies"], capture_output=True, text=True).stdout.split()
    ranks = [int(x) for x in ranks if int(x) != p.pid]
    assert len(ranks) >= 2, ranks
    os.kill(max(ranks), signal.SIGKILL)  # one rank dies
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("the job hung after a rank died")
    assert p.returncode != 0


def test_zero1_trains_bitwise_like_unsharded_and_resumes_exactly(tmp_path, shards):
    """ZeRO-1 only changes where the AdamW moments live: losses, weights and the moments
    written to checkpoints (gathered to full tensors) are bitwise those of the plain run,
    each rank keeps half the optimizer state, and a ZeRO-1 run resumes exactly (its
    checkpoints have the unsharded format)."""
    args = ["train", f"--data={shards}", "--batch=2", "--steps=12", "--eval_interval=6", "--checkpoint_interval=6",
            *MODEL]
    r = mpi(args + [f"--out={tmp_path}/plain"])
    assert r.returncode == 0, r.stderr
    r = mpi(args + [f"--out={tmp_path}/zero", "--zero=1"])
    assert r.returncode == 0, r.stderr
    assert "ZeRO-1" in r.stderr
    assert losses(tmp_path / "zero") == losses(tmp_path / "plain")

    def final(run):
        return json.loads((run / "checkpoints" / "step_00000012" / "state.json").read_text())["model_checksum_fnv1a64"]

    assert final(tmp_path / "zero") == final(tmp_path / "plain")  # weights and Adam moments, bitwise
    plain = json.loads((tmp_path / "plain" / "summary.json").read_text())
    zero = json.loads((tmp_path / "zero" / "summary.json").read_text())
    assert zero["zero"] == 1 and plain["zero"] == 0
    full = plain["optimizer_state_bytes_per_rank"]
    assert full == 2 * 4 * plain["parameters"]
    assert zero["optimizer_state_bytes_per_rank"] <= full // 2 + 8

    r = mpi(args + [f"--out={tmp_path}/split", "--zero=1", "--stop_after=7"])
    assert r.returncode == 0, r.stderr
    r = mpi(args + [f"--out={tmp_path}/split", "--resume"])
    assert r.returncode == 0, r.stderr
    assert losses(tmp_path / "split") == losses(tmp_path / "plain")  # bitwise


def test_collectives_under_mpirun():
    """The communicator unit test again, as 2 MPI ranks: chunked all-reduce and all-gather
    over 12 MB, and the chunked gather ZeRO-1 uses, with a chunk smaller than a piece."""
    r = subprocess.run(MPIRUN + [COMM_TEST], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("[  PASSED  ] 3 tests") == 2  # both ranks


def test_zero_stage_is_checked(tmp_path, shards):
    r = subprocess.run([BIN, "train", f"--data={shards}", f"--out={tmp_path}/x", "--zero=2", *MODEL],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--zero=2 must be 0 (off) or 1" in r.stderr
