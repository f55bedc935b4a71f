"""Crash safety: SIGKILL a training process at random moments (at least 20 times), resume
each time, and check the final weights and the whole loss curve equal an uninterrupted
run's, bitwise. Also: full disk, read-only and occupied output folders fail before training."""
import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

import e2e

BIN = e2e.BIN
MODEL = ["--vocab_size=257", "--n_embd=32", "--seq_len=32", "--batch=2", "--eval_batches=1"]
STEPS = 600
ARGS = MODEL + [f"--steps={STEPS}", "--eval_interval=50", "--checkpoint_interval=5", "--keep_checkpoints=2"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return e2e.byte_shards(tmp_path_factory.mktemp("data"), "Call me Ishmael. Some years ago, never mind how long precisely.\n", 400)


def final_state(run):
    state = json.loads((run / "checkpoints" / f"step_{STEPS:08d}" / "state.json").read_text())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return state["model_checksum_fnv1a64"], [json.loads(l)["loss"] for l in lines]


def test_sigkill_at_random_moments_loses_nothing(tmp_path, shards):
    ref = tmp_path / "reference"
    r = subprocess.run([BIN, "train", f"--data={shards}", f"--out={ref}", *ARGS], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ref_sum, ref_losses = final_state(ref)
    assert len(ref_losses) == STEPS

    def check(run):
        got_sum, got_losses = final_state(run)
        assert got_sum == ref_sum  # weights, buffers and Adam state, bitwise
        assert got_losses == ref_losses  # every step's loss, bitwise, no torn or repeated lines
        assert not list((run / "checkpoints").glob("*.tmp"))  # no half-written checkpoint left behind

    victim = tmp_path / "victim"
    rng = random.Random(20261128)
    kills = completed = 0
    while kills < 20:
        resume = ["--resume"] if (victim / "config.json").exists() else []
        p = subprocess.Popen([BIN, "train", f"--data={shards}", f"--out={victim}", *ARGS, *resume],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.02, 0.3))
        p.send_signal(signal.SIGKILL)  # a no-op when it has already finished
        _, err = p.communicate()
        if p.returncode == -signal.SIGKILL:
            kills += 1
            continue
        # It finished before the kill (a fast machine): it must equal the reference too;
        # then the killing starts again from scratch.
        assert p.returncode == 0, err
        check(victim)
        shutil.rmtree(victim)
        completed += 1
        assert completed <= 5, "runs keep finishing before the kill; make the run longer"
    started = (victim / "config.json").exists()
    r = subprocess.run([BIN, "train", f"--data={shards}", f"--out={victim}", *ARGS] + (["--resume"] if started else []),
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stderr or not started
    check(victim)


def test_occupied_read_only_and_full_output_folders_fail_before_training(tmp_path, shards):
    done = tmp_path / "done"
    assert subprocess.run([BIN, "train", f"--data={shards}", f"--out={done}", *MODEL, "--steps=2"],
                          capture_output=True).returncode == 0
    before = (done / "metrics.jsonl").read_bytes()
    r = subprocess.run([BIN, "train", f"--data={shards}", f"--out={done}", *ARGS], capture_output=True, text=True)
    assert r.returncode == 2 and "holds a finished run; choose another --out" in r.stderr
    assert (done / "metrics.jsonl").read_bytes() == before  # nothing overwritten

    r = subprocess.run([BIN, "train", f"--data={shards}", "--out=/proc/stability-run", *ARGS], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "cannot create the run folder /proc/stability-run" in r.stderr

    small = tmp_path / "small_disk"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)]).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here to simulate a full disk")
    try:
        r = subprocess.run([BIN, "train", f"--data={shards}", f"--out={small}/run", *ARGS], capture_output=True,
                           text=True)
        assert r.returncode == 2 and "not enough disk space" in r.stderr, r.stderr
        assert not (small / "run" / "metrics.jsonl").exists()  # refused before any training work
        ro = tmp_path / "read_only"
        ro.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
        try:
            r = subprocess.run([BIN, "train", f"--data={shards}", f"--out={ro}/run", *ARGS], capture_output=True,
                               text=True)
            assert r.returncode == 2 and "cannot create the run folder" in r.stderr, r.stderr
        finally:
            subprocess.run(["umount", str(ro)])
    finally:
        subprocess.run(["umount", str(small)])
