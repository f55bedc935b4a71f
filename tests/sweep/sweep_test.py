"""End to end: a tiny sweep (2 methods x 3 LRs x 2 seeds, one LR absurd), stopped in the
middle and restarted; its tables recomputed here from the cells' own summary.json files;
and its HTML report opened in headless Chromium with every chart drawn and no errors."""
import csv
import json
import math
import os
import signal
import subprocess
import time

import pytest

import e2e

SRC = os.environ.get("TEST_SRCDIR", "")
BIN = e2e.BIN
UPLOT = os.path.join(SRC, "bundled_data/uplot")
T95 = {1: 12.706, 2: 4.303, 3: 3.182}


def env_with_data(tmp_path):
    # The CLI finds uPlot under $STABILITY_DATA_DIR/npm/node_modules (tools/setup.sh's layout).
    root = tmp_path / "data_root"
    (root / "npm" / "node_modules").mkdir(parents=True)
    os.symlink(os.path.realpath(UPLOT), root / "npm" / "node_modules" / "uplot")
    return dict(os.environ, STABILITY_DATA_DIR=str(root))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return e2e.byte_shards(tmp_path_factory.mktemp("data"),
                           "Alice was beginning to get very tired of sitting by her sister.\n", 300)


def sweep_args(shards, out):
    return [BIN, "sweep", f"--out={out}", "--methods=baseline,qk_norm", "--lrs=0.01,0.1,50", "--seeds=1,2",
            f"--data={shards}", "--vocab_size=257", "--n_embd=32", "--seq_len=32", "--steps=40", "--batch=4",
            "--eval_interval=20", "--eval_batches=2", "--warmup=2", "--clip=0", "--divergence_patience=3",
            "--jobs=1", "--checkpoint_interval=10"]


def finished(out):
    return sorted(p.name for p in (out / "cells").iterdir() if (p / "summary.json").exists()) if (out / "cells").exists() else []


def test_sweep_stop_restart_tables_and_report(tmp_path, shards):
    out = tmp_path / "sweep"
    # Start, and stop it (SIGINT) once a few cells are done.
    p = subprocess.Popen(sweep_args(shards, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(finished(out)) < 4 and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    done_before = finished(out)
    assert p.returncode == 130, err
    assert 4 <= len(done_before) < 12, done_before
    assert "stability sweep --out=" in err
    mtimes = {c: (out / "cells" / c / "summary.json").stat().st_mtime_ns for c in done_before}

    # Restart: finished cells are kept as they are, the rest run.
    r = subprocess.run(sweep_args(shards, out), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert len(finished(out)) == 12
    for c, m in mtimes.items():
        assert (out / "cells" / c / "summary.json").stat().st_mtime_ns == m, c
    assert "## Divergence" in r.stdout

    # Recompute the tables from the cells' own summaries.
    summaries = {}
    for cell in (out / "cells").iterdir():
        s = json.loads((cell / "summary.json").read_text())
        cfg = json.loads((cell / "config.json").read_text())
        summaries[(cfg["model"]["variant"], cfg["train"]["lr"], cfg["train"]["seed"])] = s
    with open(out / "tables" / "divergence.csv") as f:
        div = {row["method"]: row for row in csv.DictReader(f)}
    for m in ["baseline", "qk_norm"]:
        assert div[m]["converged up to"] == "0.1"
        assert div[m]["first diverged"] == "50"
        steps = sorted(summaries[(m, 50, s)]["diverged_step"] for s in (1, 2))
        assert all(summaries[(m, 50, s)]["diverged"] for s in (1, 2))
        assert div[m]["lr 50"] == "0/2 converged (diverged at step %s)" % ", ".join(
            str(summaries[(m, 50, s)]["diverged_step"]) for s in (1, 2))
        assert all(st < 40 for st in steps)
    with open(out / "tables" / "loss.csv") as f:
        for row in csv.DictReader(f):
            lr = float(row["lr"])
            vals = [summaries[(row["method"], lr, s)]["final_val_loss"] for s in (1, 2)
                    if not summaries[(row["method"], lr, s)]["diverged"]]
            if not vals:
                assert row["final val loss"] == ""
                continue
            mean = sum(vals) / len(vals)
            sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
            assert float(row["final val loss"]) == pytest.approx(mean, abs=1e-4)
            assert float(row["± 95%"]) == pytest.approx(T95[len(vals) - 1] * sd / math.sqrt(len(vals)), abs=1e-4)
    with open(out / "tables" / "sensitivity.csv") as f:
        for row in csv.DictReader(f):
            per_lr = []
            for lr in (0.01, 0.1, 50):
                v = []
                for s in (1, 2):
                    x = summaries[(row["method"], lr, s)]
                    v.append(x["loss_at_init"] if x["diverged"] else min(x["final_val_loss"], x["loss_at_init"]))
                per_lr.append(sum(v) / len(v))
            assert float(row["LR sensitivity"]) == pytest.approx(sum(per_lr) / 3 - min(per_lr), abs=1e-4)
    with open(out / "tables" / "throughput.csv") as f:
        rows = {row["method"]: row for row in csv.DictReader(f)}
    assert rows["baseline"]["relative to baseline"] == "1.000"
    assert (out / "results.md").exists()

    # The report, in a real browser.
    env = env_with_data(tmp_path)
    r = subprocess.run([BIN, "report", str(out)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    dom = render(out / "report.html", tmp_path)
    assert 'data-errors="[]"' in dom
    assert 'data-charts-total="5"' in dom and 'data-charts-drawn="5"' in dom, dom[:500]
    for chart in ["c_loss", "c_val", "c_norm", "c_logit", "c_lr"]:
        assert f'id="{chart}" data-drawn="yes"' in dom, chart
    assert "<script src" not in (out / "report.html").read_text()  # self-contained


def render(html, tmp_path):
    r = subprocess.run(["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--no-first-run", f"--user-data-dir={tmp_path}/chrome", "--virtual-time-budget=5000",
                        "--dump-dom", f"file://{html}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def test_single_run_report_and_hostile_names(tmp_path, shards):
    run = tmp_path / "run <script>alert(1)</script>"
    r = subprocess.run([BIN, "train", f"--data={shards}", f"--out={run}", "--vocab_size=257", "--n_embd=32",
                        "--seq_len=32", "--steps=6", "--batch=2", "--eval_batches=1", "--eval_interval=3"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = env_with_data(tmp_path)
    r = subprocess.run([BIN, "report", str(run)], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    html = (run / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html  # names are escaped
    dom = render(run / "report.html", tmp_path)
    assert 'data-errors="[]"' in dom and 'data-charts-drawn="4"' in dom, dom[:400]


def test_sweep_errors(tmp_path, shards):
    r = subprocess.run([BIN, "sweep", "--methods=baseline,qknorm", f"--out={tmp_path}/s"], capture_output=True, text=True)
    assert r.returncode == 2 and 'unknown variant "qknorm"' in r.stderr
    r = subprocess.run([BIN, "sweep", f"--out={tmp_path}/none"], capture_output=True, text=True)
    assert r.returncode == 2 and "holds no sweep" in r.stderr
    r = subprocess.run([BIN, "report", f"{tmp_path}/none"], capture_output=True, text=True,
                       env=env_with_data(tmp_path))
    assert r.returncode == 2 and "neither a run folder" in r.stderr
