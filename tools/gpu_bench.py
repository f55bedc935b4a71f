"""Training throughput on a GPU: `stability train --device=cuda` for GPT-2-style presets and
stability methods on synthetic tokens, printed as a Markdown table (tokens/s, MFU, each
method against the baseline). Called by tools/gpu_check.sh on a lent GPU machine.

MFU = tokens/s x (6N + 6·L·C·T) / the card's dense peak for the run's arithmetic: fp32 on
the CUDA cores for --precision=fp32, bf16 on the tensor cores for --precision=bf16 (the
issue's target metric). N counts the parameters that take part in matrix products: all of
them less the learned position table and, when the embeddings are not tied, the input
embedding (a lookup, no FLOPs: 262 M of the 830M shape's parameters, which would otherwise
inflate its MFU by a third). Peaks by card name, from NVIDIA's data sheets (dense, boost
clock)."""
import argparse
import array
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

PEAKS_TFLOPS = {  # name fragment: (fp32, bf16 dense)
    "H200": (66.9, 989.4),
    "H100 80GB HBM3": (66.9, 989.4),
    "H100 PCIe": (51.2, 756.0),
    "H100": (66.9, 989.4),
    "A100": (19.5, 312.0),
}
METHODS = ["baseline", "qk_norm", "qkv_norm", "qk_fc_norm", "soft_cap", "qk_norm_cap", "soft_temp", "soft_clip",
           "sigma_reparam", "layer_scale"]
# preset, precision, attention kernel (auto: fused in bf16, gemm in fp32), methods, batch, seq, steps.
# What the targets need first (bf16 MFU and each method against the baseline at 124M
# and 830M), then the comparisons; a run past the check's deadline is cut, the rows printed stay.
# Batches of 16 × 1024 tokens: the step's fixed costs (AdamW reads and writes 28 bytes a
# parameter, 23 GB at 830M: ~5 ms on an H200) stay near 5% of it. A batch the trainer refuses
# as too large for the card (its memory estimate) is halved, for that preset's every method.
PLAN = [
    ("gpt2_124m", "bf16", "auto", METHODS, 16, 1024, 12),
    ("paper_830m", "bf16", "auto", METHODS, 16, 1024, 6),
    ("tiny", "fp32", "auto", METHODS, 64, 64, 30),  # the preset's seq_len is 64
    ("gpt2_124m", "bf16", "gemm", ["baseline"], 16, 1024, 12),
    ("gpt2_124m", "fp32", "auto", ["baseline"], 16, 1024, 12),
    ("paper_830m", "fp32", "auto", ["baseline"], 8, 1024, 6),
]
# A few seconds on the CPU: the script's plumbing (flags, metrics files, the table), which
# tools/gpu_bench_test.py checks in CI so that a lent GPU's minutes are not spent on it.
SMOKE_PLAN = [("tiny", "fp32", "auto", ["baseline", "qk_norm"], 2, 64, 4)]
# For a device call with little time left (gpu_check.sh GPU_CHECK_QUICK=1): every method at
# 124M, the 830M shape's baseline (its ten runs took ~100 s of the first quick check's 248).
QUICK_PLAN = [PLAN[0], PLAN[1][:3] + (["baseline"],) + PLAN[1][4:]]
# Runs whose third step is broken down by kernel (--profile_step): the baseline and the two
# methods most likely over 5% (two more norms a layer; σ-reparam's power iteration), in bf16.
PROFILED = {"baseline", "qk_norm", "sigma_reparam"}
PROFILE_ROWS = 20


def gpu_name():
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    except FileNotFoundError:
        return "no nvidia-smi"
    return r.stdout.strip().splitlines()[0] if r.returncode == 0 and r.stdout.strip() else "unknown GPU"


def write_shards(folder, vocab, tokens):
    os.makedirs(folder, exist_ok=True)
    rng = random.Random(0)
    for split in ("train", "val"):
        header = array.array("i", [20240520, 2, tokens] + [0] * 253)  # llm.c v2: uint32 tokens
        toks = array.array("I", (rng.randrange(vocab) for _ in range(tokens)))
        with open(os.path.join(folder, f"{split}_000000.bin"), "wb") as f:
            f.write(header.tobytes())
            f.write(toks.tobytes())


def matmul_parameters(total, model):
    """The parameters in matrix products (see the module's docstring)."""
    n = total
    if model["position"] == "learned":
        n -= model["seq_len"] * model["n_embd"]
    if not model["tie_embeddings"]:
        n -= model["vocab_size"] * model["n_embd"]
    return n


def run(binary, work, data, device, preset, precision, attention, method, batch, seq, steps, profile=False):
    """One training run → ((tokens/s, flops a token, last loss, wall s), None) or (None, why). It
    writes no checkpoint (--keep_checkpoints=0: an 830M run's is ~10 GB, seconds of writing, and
    the first GPU check ran out of disk after three of them); its folder is removed when read."""
    out = os.path.join(work, f"{preset}-{precision}-{attention}-{method}-{batch}")
    try:
        return run_in(out, binary, data, device, preset, precision, attention, method, batch, seq, steps, profile, work)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def run_in(out, binary, data, device, preset, precision, attention, method, batch, seq, steps, profile, work):
    args = [binary, "train", f"--device={device}", f"--precision={precision}", f"--attention={attention}",
            f"--preset={preset}", f"--variant={method}", f"--data={data}",
            f"--out={out}", f"--steps={steps}", f"--batch={batch}", f"--seq={seq}", "--eval_interval=0",
            "--eval_batches=1", f"--telemetry_interval={steps + 10}", "--keep_checkpoints=0", "--warmup=2",
            "--lr=3e-4", f"--profile_step={3 if profile else 0}"]
    t0 = time.time()
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired:
        return None, "no result in 240 s"
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit {r.returncode}"
    rows = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    summary = json.load(open(os.path.join(out, "summary.json")))
    config = json.load(open(os.path.join(out, "config.json")))["model"]
    if not rows:
        return None, "no steps recorded"
    timed = rows[2:] or rows  # the first two steps warm up (a run that stopped early: all it has)
    tps = statistics.median(r["tokens_per_s"] for r in timed)
    flops = 6 * matmul_parameters(summary["parameters"], config) + 6 * config["n_layer"] * config["n_embd"] * seq
    profile_md = os.path.join(out, "kernel_profile.md")
    if profile and os.path.exists(profile_md):
        append_profile(os.path.join(work, "kernel_profiles.md"), f"{preset} {precision} {method}, batch {batch} × {seq}",
                       open(profile_md).read())
    return (tps, flops, rows[-1]["loss"], time.time() - t0), None


def append_profile(path, title, md):
    """A profiled run's report (the trainer's kernel_profile.md: its notes, the parts table and
    the kernels table, cut to its PROFILE_ROWS largest rows), appended to `path` as each run
    ends: a check cut short by its deadline keeps them."""
    lines = md.splitlines()[1:]  # without the trainer's title
    last_table = max(i for i, l in enumerate(lines) if l.startswith("|") and not lines[i - 1].startswith("|"))
    kernel_rows = [l for l in lines[last_table:] if l.startswith("|")]
    kept = lines[:last_table] + kernel_rows[: 2 + PROFILE_ROWS]
    text = f"\n### {title}\n" + "\n".join(kept) + "\n"
    if len(kernel_rows) > 2 + PROFILE_ROWS:
        text += f"\n({len(kernel_rows) - 2 - PROFILE_ROWS} smaller rows left out)\n"
    with open(path, "a") as f:
        f.write(text)


def run_fitting(run_one, batch):
    """run_one(batch) → (result, error), halving the batch while the trainer refuses it as too
    large for the card's memory. → (result, error, the batch that ran)."""
    while True:
        res, err = run_one(batch)
        if res is not None or batch == 1 or "needs about" not in (err or ""):
            return res, err, batch
        batch //= 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--device", default="cuda", help="cpu: the smoke plan's plumbing check")
    ap.add_argument("--plan", choices=["full", "quick", "smoke"], default="full")
    a = ap.parse_args()
    name = gpu_name()
    fp32, bf16 = next((v for k, v in PEAKS_TFLOPS.items() if k in name), (0.0, 0.0))
    data = os.path.join(a.work, "data")
    write_shards(data, 50257, 4 * 1024 * 64 + 1)
    print(f"{name}: peaks used for MFU {fp32} TFLOP/s fp32, {bf16} TFLOP/s bf16 dense; synthetic tokens. "
          "MFU is against the peak of the mode's own arithmetic (fp32: CUDA cores; bf16: tensor cores), with "
          "6N + 6·L·C·T FLOPs a token, N the parameters in matrix products (no position table, no untied "
          "input embedding).\n")
    print("| preset | precision | attention | method | batch × seq | tokens/s | MFU | vs baseline | last loss | wall |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|")
    sys.stdout.flush()
    for preset, precision, attention, methods, batch, seq, steps in {"full": PLAN, "quick": QUICK_PLAN, "smoke": SMOKE_PLAN}[a.plan]:
        base = None
        peak = fp32 if precision == "fp32" else bf16
        kernel = attention if attention != "auto" else ("fused" if precision == "bf16" else "gemm")
        for method in methods:
            profile = precision == "bf16" and method in PROFILED
            res, err, batch = run_fitting(
                lambda b: run(a.bin, a.work, data, a.device, preset, precision, attention, method, b, seq, steps,
                              profile), batch)
            if err:
                print(f"| {preset} | {precision} | {kernel} | {method} | {batch} × {seq} | failed: {err} | | | | |")
                continue
            tps, flops, loss, wall = res
            base = tps if method == "baseline" else base
            rel = f"{tps / base:.3f}" if base else ""
            mfu = f"{tps * flops / (peak * 1e12):.1%}" if peak else "?"
            print(f"| {preset} | {precision} | {kernel} | {method} | {batch} × {seq} | {tps:,.0f} | {mfu} | {rel} | "
                  f"{loss:.3f} | {wall:.0f} s |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
