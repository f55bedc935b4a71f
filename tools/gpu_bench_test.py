"""tools/gpu_bench.py's plumbing on the CPU (its smoke plan): the training runs start with
its flags, their metrics files parse, and the table has a row of numbers per method, so
that a lent GPU's minutes are never spent finding a broken script."""
import os
import re
import subprocess
import sys

RUNFILES = os.environ.get("TEST_SRCDIR", "")
BIN = os.path.join(RUNFILES, "stability/cli/stability")
SCRIPT = os.path.join(RUNFILES, "stability/tools/gpu_bench.py")


def test_smoke_plan_prints_a_row_of_numbers_per_method(tmp_path):
    r = subprocess.run([sys.executable, SCRIPT, "--bin", BIN, "--work", str(tmp_path), "--device=cpu",
                        "--plan=smoke"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [l for l in r.stdout.splitlines() if l.startswith("| tiny |")]
    assert len(rows) == 2, r.stdout
    assert not any("failed" in l for l in rows), r.stdout
    for row, method in zip(rows, ["baseline", "qk_norm"]):
        cells = [c.strip() for c in row.strip("|").split("|")]
        preset, precision, kernel, name, shape, tps, mfu, rel, loss, wall = cells
        assert (preset, precision, kernel, name, shape) == ("tiny", "fp32", "gemm", method, "2 × 64")
        assert float(tps.replace(",", "")) > 0
        assert mfu == "?"  # no card, no peak: MFU is not made up
        assert 0 < float(loss) < 12  # ln(50257) ≈ 10.8 at init
        assert re.fullmatch(r"\d+ s", wall)
    assert rows[0].split("|")[8].strip() == "1.000"  # the baseline against itself


def test_a_batch_too_large_for_the_card_is_halved():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    import gpu_bench
    tried = []

    def run_one(batch):
        tried.append(batch)
        if batch > 4:
            return None, "training stopped: the run needs about 90.1 GiB on cuda:0 for batch 16 × 1024 tokens"
        return (1000.0, 1.0, 5.0, 2.0), None

    assert gpu_bench.run_fitting(run_one, 16) == ((1000.0, 1.0, 5.0, 2.0), None, 4)
    assert tried == [16, 8, 4]
    other = gpu_bench.run_fitting(lambda b: (None, "exit 1"), 16)  # any other failure: no retry
    assert other == (None, "exit 1", 16)


def test_mfu_counts_only_parameters_in_matrix_products():
    sys.path.insert(0, os.path.dirname(SCRIPT))
    import gpu_bench
    tied = {"position": "learned", "seq_len": 1024, "n_embd": 768, "tie_embeddings": True, "vocab_size": 50257}
    assert gpu_bench.matmul_parameters(124_439_808, tied) == 124_439_808 - 1024 * 768  # the head is wte
    untied = dict(tied, tie_embeddings=False, position="rope")
    assert gpu_bench.matmul_parameters(10**9, untied) == 10**9 - 50257 * 768  # the input lookup is not a product


def test_kernel_profiles_are_appended_cut_to_their_largest_rows(tmp_path):
    sys.path.insert(0, os.path.dirname(SCRIPT))
    import gpu_bench
    rows = "".join(f"| k{i} | 1 | {30 - i}.000 | 3.0% | 1.0 | |\n" for i in range(30))
    md = ("# Kernel profile of step 3\n\nDevice time: 435.000 ms in 30 launches.\n\n"
          "| part | calls | ms | share | TFLOP/s |\n|---|---:|---:|---:|---:|\n"
          "| other kernels | 30 | 435.000 | 100.0% | |\n\nA note on the parts.\n\n"
          "| kernel | calls | ms | share | µs a call | TFLOP/s |\n|---|---:|---:|---:|---:|---:|\n" + rows)
    path = tmp_path / "profiles.md"
    gpu_bench.append_profile(str(path), "gpt2_124m bf16 baseline", md)
    gpu_bench.append_profile(str(path), "gpt2_124m bf16 qk_norm", md)
    text = path.read_text()
    assert text.count("### gpt2_124m bf16 ") == 2 and text.count("in 30 launches") == 2
    assert "# Kernel profile" not in text
    assert text.count("| other kernels | 30 |") == 2 and text.count("A note on the parts.") == 2  # kept whole
    assert "| k19 |" in text and "| k20 |" not in text  # PROFILE_ROWS = 20, largest first as written
    assert text.count("(10 smaller rows left out)") == 2
