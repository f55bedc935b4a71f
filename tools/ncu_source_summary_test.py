"""tools/ncu_source_summary.py on a table laid out as ncu's source page CSV: a name line before
the header, numbers with thousands separators, predicated instructions, stall_* columns."""
import os
import subprocess
import sys

SCRIPT = os.path.join(os.environ.get("TEST_SRCDIR", ""), "stability/tools/ncu_source_summary.py")

PAGE = '''"void ForwardKernel<64>(Heads16, long, long)"
"Address","Source","Instructions Executed","Warp Stall Sampling (All Samples)","stall_barrier","stall_math"
"7f00","HMMA.16816.F32.BF16 R4, R8, R12, R4","1,000","300","0","250"
"7f10","@P0 MUFU.EX2 R20, R21","500","600","0","100"
"7f20","BAR.SYNC.DEFER_BLOCKING 0x0","100","100","90","0"
"7f30","FFMA R1, R2, R3, R4","2,400","0","0","0"
'''


def run(tmp_path, text, *args):
    path = tmp_path / "page.csv"
    path.write_text(text)
    return subprocess.run([sys.executable, SCRIPT, str(path), *args], capture_output=True, text=True)


def test_opcodes_weighted_by_executions_and_samples(tmp_path):
    r = run(tmp_path, PAGE)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "4 SASS instructions; 4,000 executed (warp level); 1,000 stall samples"
    assert lines[1] == "executed by opcode: FFMA 60.0%, HMMA 25.0%, MUFU 12.5%, BAR 2.5%"
    assert lines[2] == "stall samples by opcode: MUFU 60.0%, HMMA 30.0%, BAR 10.0%, FFMA 0.0%"
    # Most samples first, with their two leading reasons; an instruction never sampled is left out.
    assert "7f10  60.0%" in lines[4] and "@P0 MUFU.EX2" in lines[4] and "[math 100]" in lines[4]
    assert "7f00" in lines[5] and "[math 250]" in lines[5]
    assert "7f20" in lines[6] and "[barrier 90]" in lines[6]
    assert len(lines) == 7


def test_top_limits_the_instruction_rows(tmp_path):
    r = run(tmp_path, PAGE, "--top", "1")
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 5


def test_a_file_that_is_not_the_source_page_is_named_and_refused(tmp_path):
    r = run(tmp_path, '"ID","Kernel Name","Metric Name"\n"0","k","Duration"\n')
    assert r.returncode == 1
    assert "not ncu's source page" in r.stderr and "page.csv" in r.stderr
