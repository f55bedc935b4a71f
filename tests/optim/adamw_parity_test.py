"""AdamW, gradient clipping and the LR schedules against PyTorch, on the same gradients.

Our fp32 AdamW (driven by adamw_driver) and torch.optim.AdamW (float64, with
torch.nn.utils.clip_grad_norm_ and a LambdaLR implementing the schedule formula of
stability/optim/schedule.h) run 30 steps from the same parameters on the same random
gradients. Tolerance: |ours − torch| ≤ 1e-5·|torch| + 1e-6 on parameters after every
step's update has been applied 30 times (fp32 rounding of updates of size lr ≈ 1e-2).
"""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "reference"))
import safetensors_io  # noqa: E402

DRIVER = os.path.join(os.environ.get("TEST_SRCDIR", ""), "stability/tests/optim/adamw_driver")


def write_safetensors(path, tensors, metadata):
    import json
    import struct
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": {np.float32: "F32", np.float64: "F64"}[arr.dtype.type], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    header["__metadata__"] = {k: str(v) for k, v in metadata.items()}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def schedule(step, lr, min_lr, warmup, total, decay):
    if step < warmup:
        return lr * (step + 1) / warmup
    p = min(max((step - warmup) / max(1, total - 1 - warmup), 0.0), 1.0)
    if decay == "cosine":
        return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * p))
    if decay == "linear":
        return lr + (min_lr - lr) * p
    return lr


@pytest.mark.parametrize("decay,clip,wd", [("cosine", 1.0, 0.1), ("linear", 0.0, 0.0), ("constant", 0.05, 0.3)])
def test_adamw_matches_torch(tmp_path, decay, clip, wd):
    rng = np.random.default_rng(0)
    steps, meta = 30, dict(lr=1e-2, min_lr=1e-3, warmup=5, steps=30, decay=decay, beta1=0.9, beta2=0.95, eps=1e-8,
                           weight_decay=wd, clip=clip, decay_params="w")
    shapes = {"w": (7, 5), "b": (5,)}
    tensors = {f"p.{n}": rng.normal(size=s).astype(np.float32) for n, s in shapes.items()}
    for s in range(steps):
        for n, shp in shapes.items():
            tensors[f"g.{s}.{n}"] = (rng.normal(size=shp) * (3.0 if s % 7 == 0 else 0.3)).astype(np.float32)
    write_safetensors(tmp_path / "in.safetensors", tensors, meta)
    r = subprocess.run([DRIVER, str(tmp_path / "in.safetensors"), str(tmp_path / "out.safetensors")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ours, _ = safetensors_io.load(tmp_path / "out.safetensors")

    params = {n: torch.tensor(tensors[f"p.{n}"], dtype=torch.float64, requires_grad=True) for n in shapes}
    opt = torch.optim.AdamW([{"params": [params["w"]], "weight_decay": wd}, {"params": [params["b"]], "weight_decay": 0.0}],
                            lr=meta["lr"], betas=(0.9, 0.95), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: schedule(s, meta["lr"], meta["min_lr"], meta["warmup"], steps, decay) / meta["lr"])
    for s in range(steps):
        assert ours["lr"][s] == pytest.approx(sched.get_last_lr()[0], rel=1e-12)
        for n in shapes:
            params[n].grad = torch.tensor(tensors[f"g.{s}.{n}"], dtype=torch.float64)
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), clip if clip > 0 else float("inf"))
        assert ours["grad_norm"][s] == pytest.approx(norm.item(), rel=1e-6)
        opt.step()
        sched.step()
    for n in shapes:
        ref = params[n].detach().numpy()
        assert np.all(np.abs(ours[f"p.{n}"] - ref) <= 1e-5 * np.abs(ref) + 1e-6), n
    # The update moved the parameters (the test is not vacuous).
    assert np.abs(ours["p.w"] - tensors["p.w"]).max() > 0.05
