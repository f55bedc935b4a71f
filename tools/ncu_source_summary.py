"""Where a kernel's warps stall, instruction by instruction: a summary of Nsight Compute's
source page (`ncu --section SourceCounters --section WarpStateStats --page source --csv
--print-source sass`), which gpu_check.sh takes of the attention kernels. This machine has no
SASS disassembler (no cuobjdump or nvdisasm in the Debian packages), so the GPU's profiler is
where the compiled loop is seen: the opcode mix weighted by how often each instruction ran,
the stall samples by opcode, and the instructions with the most samples, each with its
stall reasons where ncu gives them (stall_* columns).

    python3 tools/ncu_source_summary.py ncu-source.csv [--top 25]
"""
import argparse
import collections
import csv
import sys

ADDRESS, SOURCE = "Address", "Source"
EXECUTED = "Instructions Executed"
SAMPLES = "Warp Stall Sampling (All Samples)"


def number(cell):
    try:
        return float((cell or "").replace(",", ""))
    except ValueError:
        return 0.0


def parse(lines):
    """The rows of the SASS table as dicts: ncu prints a line or two (the kernel's name) before
    the header, whose columns include Address and Source."""
    rows = list(csv.reader(lines))
    for i, row in enumerate(rows):
        if ADDRESS in row and SOURCE in row:
            header = row
            return header, [dict(zip(header, r)) for r in rows[i + 1:] if len(r) == len(header)]
    raise ValueError(f"no table with '{ADDRESS}' and '{SOURCE}' columns: not ncu's source page")


def opcode(sass):
    tokens = sass.split()
    if tokens and tokens[0].startswith("@"):  # a predicate
        tokens = tokens[1:]
    return tokens[0].split(".")[0] if tokens else "?"


def summarize(header, rows, top):
    out = []
    executed = collections.Counter()
    stalled = collections.Counter()
    for r in rows:
        op = opcode(r[SOURCE])
        executed[op] += number(r.get(EXECUTED))
        stalled[op] += number(r.get(SAMPLES))
    total_exec, total_samples = sum(executed.values()), sum(stalled.values())
    out.append(f"{len(rows)} SASS instructions; {total_exec:,.0f} executed (warp level); {total_samples:,.0f} stall samples")
    if total_exec:
        out.append("executed by opcode: " + ", ".join(f"{op} {100 * n / total_exec:.1f}%"
                                                     for op, n in executed.most_common(16)))
    if total_samples:
        out.append("stall samples by opcode: " + ", ".join(f"{op} {100 * n / total_samples:.1f}%"
                                                          for op, n in stalled.most_common(12)))
        reasons = [c for c in header if c.startswith("stall_")]
        out.append(f"the {top} instructions with the most samples (% of all; executed; reasons):")
        for r in sorted(rows, key=lambda r: -number(r.get(SAMPLES)))[:top]:
            n = number(r.get(SAMPLES))
            if n == 0:
                break
            why = sorted(((number(r.get(c)), c[len("stall_"):]) for c in reasons), reverse=True)[:3]
            why_text = ", ".join(f"{name} {v:.0f}" for v, name in why if v > 0)
            out.append(f"  {r[ADDRESS]:>8} {100 * n / total_samples:5.1f}% {number(r.get(EXECUTED)):>12,.0f}  "
                       f"{r[SOURCE].strip()}" + (f"  [{why_text}]" if why_text else ""))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    try:
        with open(a.csv, newline="") as f:
            header, rows = parse(f)
    except (OSError, ValueError) as e:
        print(f"ncu_source_summary: {a.csv}: {e}", file=sys.stderr)
        return 1
    print("\n".join(summarize(header, rows, a.top)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
