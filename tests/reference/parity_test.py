"""Reference parity: the C++ model (via `stability dump`) against the float64 PyTorch
reference (gpt_reference.py), for every variant preset and each orthogonal switch.

Tolerances (fp32 model against a float64 reference):
  loss:                 |a − r| ≤ 1e-5·|r|
  gradients and logits: |a − r| ≤ 1e-4·|r| + 1e-5·max|r| + 1e-8 per element. The floor:
                        elements near zero carry fp32 cancellation error relative to the
                        tensor's scale, not their own; and some gradients are zero by
                        symmetry (k_norm.bias: softmax ignores a shift shared by all keys),
                        where fp32 leaves ~1e-9 of rounding, hence the absolute 1e-8
  telemetry:            |a − r| ≤ 1e-4·|r| + 1e-6
"""
import json
import os
import subprocess

import numpy as np
import pytest

import gpt_reference
import safetensors_io

BIN = os.path.join(os.environ.get("TEST_SRCDIR", ""), "stability/cli/stability")

# Small enough to run every case in seconds; init_std 0.2 makes logits, norms and the
# softmax options bend visibly (at 0.02 attention is nearly uniform).
BASE = {"vocab_size": 96, "n_layer": 2, "n_embd": 32, "n_head": 4, "seq_len": 16, "init_std": 0.2}

VARIANTS = ["baseline", "qk_norm", "qkv_norm", "qk_fc_norm", "soft_cap", "qk_norm_cap", "soft_temp",
            "soft_clip", "sigma_reparam", "layer_scale"]

SWITCHES = {
    "rmsnorm": ("qk_fc_norm", {"norm": "rmsnorm"}),
    "per_head_qk_norm": ("qk_norm", {"per_head_norm": True}),
    "per_head_qkv_norm_rms": ("qkv_norm", {"per_head_norm": True, "norm": "rmsnorm"}),
    "rope": ("baseline", {"position": "rope"}),
    "rope_qk_norm": ("qk_norm", {"position": "rope"}),
    "untied": ("baseline", {"tie_embeddings": False}),
    "no_bias": ("qk_norm", {"bias": False}),
    "relu": ("baseline", {"activation": "relu"}),
    "z_loss": ("baseline", {"z_loss": 1e-2}),
    "logit_soft_cap": ("baseline", {"logit_soft_cap": 2.0}),
    "z_loss_and_logit_cap": ("baseline", {"z_loss": 1e-4, "logit_soft_cap": 30.0}),
    "small_attn_soft_cap": ("baseline", {"attn_soft_cap": 0.5}),
    "clip_and_temperature": ("soft_clip", {"attn_temperature": 0.7}),
    "no_input_norms": ("qk_fc_norm", {"n1": False, "n2": False}),
    "layer_scale_init_1": ("layer_scale", {"layer_scale_init": 1.0}),
    "sigma_reparam_rope_untied": ("sigma_reparam", {"position": "rope", "tie_embeddings": False}),
    "default_init": ("baseline", {"init_std": 0.02}),
}

CASES = [(v, v, {}) for v in VARIANTS] + [(name, v, o) for name, (v, o) in SWITCHES.items()]


def dump(tmp_path, variant, overrides, name="dump", seed=3):
    out = tmp_path / f"{name}.safetensors"
    r = subprocess.run(
        [BIN, "dump", "--preset=tiny", f"--variant={variant}",
         "--config_override=" + json.dumps({**BASE, **overrides}), f"--seed={seed}", "--batch=2", "--seq=12",
         f"--out={out}"],
        capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def close(a, r, rel, floor):
    a, r = np.asarray(a, np.float64), np.asarray(r, np.float64)
    return np.abs(a - r) <= rel * np.abs(r) + floor


@pytest.mark.parametrize("name,variant,overrides", CASES, ids=[c[0] for c in CASES])
def test_matches_pytorch_reference(tmp_path, name, variant, overrides):
    tensors, meta = safetensors_io.load(dump(tmp_path, variant, overrides))
    config = json.loads(meta["config"])
    assert config["variant"] == variant
    param_names = [k[len("grad."):] for k in tensors if k.startswith("grad.")]
    params = {k: tensors[k] for k in param_names}
    buffers = {k: v for k, v in tensors.items() if ".sigma_u" in k or ".sigma_v" in k}
    ref = gpt_reference.GptReference(config, params, buffers).run(tensors["input_ids"], tensors["targets"])

    assert abs(float(tensors["loss"]) - ref["loss"]) <= 1e-5 * abs(ref["loss"]), (float(tensors["loss"]), ref["loss"])
    logits_r = ref["logits"]
    ok = close(tensors["logits"], logits_r, 1e-4, 1e-5 * np.abs(logits_r).max() + 1e-8)
    assert ok.all(), f"logits: {np.count_nonzero(~ok)} elements differ"

    assert set(ref["grads"]) == set(param_names)
    for pname in param_names:
        g_ref = ref["grads"][pname]
        assert g_ref is not None, f"{pname} does not take part in the reference model"
        g = tensors["grad." + pname]
        assert g.shape == g_ref.shape, pname
        floor = 1e-5 * np.abs(g_ref).max() + 1e-8
        ok = close(g, g_ref, 1e-4, floor)
        if not ok.all():
            i = np.unravel_index(np.argmax(np.abs(g - g_ref) - 1e-4 * np.abs(g_ref)), g.shape)
            pytest.fail(f"grad {pname}: {np.count_nonzero(~ok)}/{g.size} differ; worst at {i}: "
                        f"{g[i]} vs {g_ref[i]}")

    for tname, value in ref["telemetry"].items():
        mine = float(tensors["telemetry." + tname])
        assert close(mine, value, 1e-4, 1e-6), f"telemetry {tname}: {mine} vs {value}"


def test_variant_changes_the_model(tmp_path):
    # A switch that silently did nothing would pass parity against itself: check the
    # losses of all variants differ from the baseline (same seed, same tokens).
    losses = {}
    for v in VARIANTS:
        tensors, _ = safetensors_io.load(dump(tmp_path, v, {}, name=v))
        losses[v] = float(tensors["loss"])
    for v in VARIANTS[1:]:
        assert losses[v] != losses["baseline"], v


def test_dump_is_bitwise_deterministic(tmp_path):
    a = dump(tmp_path, "qk_norm_cap", {"position": "rope"}, name="a")
    b = dump(tmp_path, "qk_norm_cap", {"position": "rope"}, name="b")
    assert a.read_bytes() == b.read_bytes()
    c = dump(tmp_path, "qk_norm_cap", {"position": "rope"}, name="c", seed=4)
    assert a.read_bytes() != c.read_bytes()


def test_dump_refuses_to_overwrite_and_names_bad_fields(tmp_path):
    out = dump(tmp_path, "baseline", {})
    r = subprocess.run([BIN, "dump", f"--out={out}"], capture_output=True, text=True)
    assert r.returncode == 2 and "already exists" in r.stderr
    r = subprocess.run([BIN, "dump", f"--out={tmp_path}/x.safetensors", '--config_override={"n_embd": 30}'],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "n_embd = 30 must be divisible by n_head = 4" in r.stderr
    r = subprocess.run([BIN, "dump", f"--out={tmp_path}/x.safetensors", '--config_override={"qk_nrom": true}'],
                       capture_output=True, text=True)
    assert r.returncode == 2 and 'unknown model config field "qk_nrom"' in r.stderr
    r = subprocess.run([BIN, "dump", f"--out={tmp_path}/x.safetensors", "--variant=qknorm"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and 'unknown variant "qknorm"' in r.stderr
    assert not (tmp_path / "x.safetensors").exists()
