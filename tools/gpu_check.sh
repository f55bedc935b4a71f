#!/usr/bin/env bash
# The GPU check (issues: CUDA backend, data parallelism), for a lent GPU machine. That
# machine has CUDA, cuBLAS, NCCL and Python but no Bazel, so the binaries come prebuilt in
# .gpu/bundle.tar.xz (tools/gpu_pack.sh, run here first). On the device tool:
#
#   run(carry=[".gpu"], command="bash tools/gpu_check.sh", timeout_s=540)
#
# It runs every CUDA test (op by op against the CPU, the whole model per preset and
# variant, 20 training steps, determinism, the NCCL communicator of size 1), the training
# benchmark (tools/gpu_bench.py: tokens/s and MFU for tiny, GPT-2 124M and the paper's 830M
# shape, baseline and methods), the op tests again under compute-sanitizer's memcheck,
# then Nsight Compute's source page of the attention kernels (their SASS, executions and stall
# samples per instruction: tools/ncu_source_summary.py) and its view of the largest kernels
# (where the image has ncu), the op
# benchmarks (//stability/ops/cuda:benchmarks) and, in the time left, compute-sanitizer's
# racecheck of the attention kernels, and writes one Markdown report to
# $OUT/gpu_check.md (device tool) or docs/gpu/gpu_check-<date>.md. It keeps to one deadline,
# GPU_CHECK_BUDGET_S (500 s), so the device call (timeout_s=540) returns a report.
# GPU_CHECK_QUICK=1 keeps to what a short call can hold (a rerun after a kernel change): the
# op and model tests, the targets' training rows (gpu_bench.py --plan quick), the attention's
# Nsight Compute profiles and benchmarks —
#   run(carry=[".gpu"], command="GPU_CHECK_QUICK=1 GPU_CHECK_BUDGET_S=245 bash tools/gpu_check.sh", timeout_s=270)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out_dir="${OUT:-docs/gpu}"
mkdir -p "$out_dir"
report="$out_dir/gpu_check.md"
[ -n "${OUT:-}" ] || report="$out_dir/gpu_check-$(date -u +%Y%m%d-%H%M%S).md"
work=/tmp/stability-gpu
rm -rf "$work" && mkdir -p "$work"
if [ ! -f .gpu/bundle.tar.xz ]; then
  echo "no .gpu/bundle.tar.xz: run tools/gpu_pack.sh where the tree builds, then carry .gpu" | tee "$report"
  exit 1
fi
# tar needs the xz program for .tar.xz; Python's tarfile (lzma is in its standard library)
# unpacks it where the image has no xz.
tar -xJf .gpu/bundle.tar.xz -C "$work" 2>/dev/null ||
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' .gpu/bundle.tar.xz "$work"
# CUDA's own libraries from the image: the toolkit's and those of the Python wheels.
cuda_dirs="/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib"
wheel_dirs="$(python3 -c 'import os, nvidia; print(":".join(os.path.join(p, d, "lib") for p in nvidia.__path__ for d in sorted(os.listdir(p))))' 2>/dev/null)"
export LD_LIBRARY_PATH="$work/lib:$cuda_dirs:$wheel_dirs:${LD_LIBRARY_PATH:-}"
export OMP_NUM_THREADS="$(nproc)"
# The binaries were built on Debian 12. If this image's C or C++ runtime is older than they
# need, every binary is wrapped to start with the bundled loader and runtime instead.
runtime="image"
if ! "$work/bin/device_query_test" --gtest_list_tests > "$work/probe.log" 2>&1 &&
    grep -qE "GLIBC|GLIBCXX|CXXABI|version .* not found" "$work/probe.log"; then
  runtime="bundled (the image's: $(head -1 "$work/probe.log"))"
  for b in "$work"/bin/*; do
    mv "$b" "$b.real"
    printf '#!/bin/sh\nexec "%s/lib/fallback/ld-linux-x86-64.so.2" --library-path "%s/lib/fallback:%s" "%s.real" "$@"\n' \
      "$work" "$work" "$LD_LIBRARY_PATH" "$b" > "$b"
    chmod +x "$b"
  done
fi

# One deadline for the whole check (the device tool allows 600 s a call): each stage gets
# at most its own limit and never more than what is left.
deadline=$((SECONDS + ${GPU_CHECK_BUDGET_S:-500}))
quick="${GPU_CHECK_QUICK:-0}"
left() {  # stage limit in seconds → what this stage may use
  local rest=$((deadline - SECONDS))
  [ "$rest" -lt 5 ] && rest=5
  echo $(($1 < rest ? $1 : rest))
}

run_test() {  # name, binary, timeout
  local log="$work/$1.log"
  timeout "$(left "$3")" "$work/bin/$2" > "$log" 2>&1
  local rc=$?
  echo "### $1: $([ $rc -eq 0 ] && echo PASSED || echo "FAILED (exit $rc)")"
  echo '```'
  grep -E "^\[  (PASSED|FAILED|SKIPPED) |^\[==========\]|Failure|Expected|Which is|error|worst at" "$log" | head -60
  echo '```'
  [ $rc -eq 0 ] || run_alone "$1" "$2"
}

# A kernel's illegal access leaves the CUDA context broken for every later test in the
# process, and a crash ends the run: each test that did not pass runs again in a process of
# its own, so the report tells the first bug from the failures it caused.
run_alone() {  # name, binary
  local tests passed stop=$((SECONDS + 90))
  tests="$("$work/bin/$2" --gtest_list_tests 2>/dev/null |
    awk '/^[^ ]/ { suite = $1 } /^  / { print suite $1 }')"
  passed="$(sed -n 's/^\[ *\(OK\|SKIPPED\) *\] \([^ ]*\) .*/\2/p' "$work/$1.log")"
  echo "Each test that did not pass, alone:"
  echo '```'
  for t in $tests; do
    grep -qxF "$t" <<< "$passed" && continue
    if [ $((deadline - SECONDS)) -lt 60 ] || [ "$SECONDS" -ge "$stop" ]; then
      echo "$t: not rerun (out of time)"; continue
    fi
    timeout 30 "$work/bin/$2" --gtest_filter="$t" > "$work/$1.alone.log" 2>&1
    local rc=$?
    echo "$t: $([ $rc -eq 0 ] && echo passed || echo "FAILED (exit $rc)")"
    [ $rc -eq 0 ] || grep -E "Failure|Expected|Which is|error|worst at" "$work/$1.alone.log" | head -8
    cat "$work/$1.alone.log" >> "$work/$1.alone-all.log"
  done
  echo '```'
}

{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ), commit $(cat "$work/commit")"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1 | head -5
  echo '```'
  echo
  echo "C/C++ runtime: $runtime"
  echo
  echo "## stability info"
  echo '```'
  "$work/bin/stability" info 2>&1 | tail -12
  echo '```'
  echo
  echo "## CUDA tests"
  run_test device_query device_query_test 60
  run_test warp_mma warp_mma_test 30  # the PTX layouts the tensor-core attention is built on
  run_test cuda_backend cuda_backend_test 120
  run_test model_cuda model_cuda_test 240
  [ "$quick" = 1 ] || run_test nccl_communicator nccl_communicator_test 60
  echo
  echo "## Training throughput"
  echo
  timeout "$(left 240)" python3 tools/gpu_bench.py --bin "$work/bin/stability" --work "$work/bench" \
    --plan "$([ "$quick" = 1 ] && echo quick || echo full)" 2>&1
  echo
  echo "## Kernel profiles (one step of each profiled bench run: --profile_step)"
  cat "$work/bench/kernel_profiles.md" 2>/dev/null || echo "(none: no profiled run finished)"
  echo
  # None of the kernels had run before the first check: memcheck finds out-of-bounds and
  # misaligned accesses that a passing comparison can hide.
  echo "## compute-sanitizer memcheck of the op tests"
  sanitizer="$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)"
  echo '```'
  if [ "$quick" = 1 ]; then
    echo "(skipped: quick check)"
  else
    timeout "$(left 120)" "$sanitizer" --tool memcheck --leak-check no --error-exitcode 9 \
      "$work/bin/cuda_backend_test" --gtest_filter='-*Bf16*' > "$work/memcheck.log" 2>&1
    echo "exit $? (0: clean, 9: errors found, 124: out of time)"
    grep -E "ERROR SUMMARY|Invalid|out of bounds|Address|at 0x|by thread|\[  (PASSED|FAILED) " "$work/memcheck.log" | head -30
  fi
  echo '```'
  echo
  # Why the largest kernels take the time they do (the first check could only say how long
  # they took): Nsight Compute, where the image has it, on one launch of each — compute and
  # memory throughput against the card's peaks, the pipes, occupancy, stalls, and its rules'
  # advice. The summary lines here; each kernel's whole report comes back as ncu-*.log.
  ncu="$(command -v ncu || echo /usr/local/cuda/bin/ncu)"
  # The attention kernels' compiled loops, seen where they run (no SASS disassembler here):
  # ncu's source page — each SASS instruction, how often it ran and its stall samples —
  # summed up by tools/ncu_source_summary.py; the whole pages come back in the logs.
  echo "## Where the attention kernels stall (ncu source page: SASS and stall samples)"
  echo '```'
  if [ ! -x "$ncu" ]; then
    echo "(skipped: no ncu in this image)"
  else
    for spec in "BM_Attention/shape:0/backward:0/cap:0/fused:1/bf16:1/;ForwardKernel" \
        "BM_Attention/shape:0/backward:1/cap:0/fused:1/bf16:1/;BackwardKeyKernel" \
        "BM_Attention/shape:0/backward:1/cap:0/fused:1/bf16:1/;BackwardQueryKernel"; do
      IFS=';' read -r filter kernel <<< "$spec"
      if [ $((deadline - SECONDS)) -lt 60 ]; then echo "$kernel: not profiled (out of time)"; continue; fi
      timeout "$(left 60)" "$ncu" --section SourceCounters --section WarpStateStats --kernel-name "regex:$kernel" \
        --launch-count 1 --page source --csv --print-source sass \
        "$work/bin/benchmarks" --benchmark_filter="$filter" --benchmark_min_time=0.01 \
        > "$work/ncu-source-$kernel.csv" 2> "$work/ncu-source-$kernel.log"
      echo "== $kernel ($filter): exit $? (the page: ncu-source-$kernel.csv)"
      python3 tools/ncu_source_summary.py "$work/ncu-source-$kernel.csv" --top 25 2>&1 | head -40
    done
  fi
  echo '```'
  echo
  echo "## Nsight Compute: the largest kernels, one launch each"
  echo '```'
  if [ ! -x "$ncu" ]; then
    echo "(skipped: no ncu in this image)"
  else
    n=0
    # benchmark filter ; kernel-name regex ; launches
    for spec in "BM_Attention/shape:0/backward:0/cap:0/fused:1/bf16:1/;(RowsToBf16|Forward)Kernel;2" \
        "BM_Attention/shape:0/backward:1/cap:0/fused:1/bf16:1/;Backward(Query|Key)Kernel;2" \
        "BM_LossHead/shape:0/fused:1/;CrossEntropyFusedKernel;1" \
        "BM_LayerNorm/shape:0/per_head:0/;Norm(Forward|Backward)Kernel;2" \
        "BM_Attention/shape:0/backward:0/cap:1/fused:1/bf16:1/;ForwardKernel;1" \
        "BM_AdamW/params:124000000/each:1/;AdamWEachKernel;1"; do
      IFS=';' read -r filter kernels count <<< "$spec"
      n=$((n + 1))
      [ "$quick" = 1 ] && [ "$n" -gt 2 ] && continue
      if [ $((deadline - SECONDS)) -lt 75 ]; then echo "$filter: not profiled (out of time)"; continue; fi
      timeout "$(left 60)" "$ncu" --set full --kernel-name "regex:$kernels" --launch-count "$count" \
        "$work/bin/benchmarks" --benchmark_filter="$filter" --benchmark_min_time=0.01 > "$work/ncu-$n.log" 2>&1
      echo "== $filter ($kernels): exit $? (full report: ncu-$n.log)"
      grep -E "^  [A-Za-z_].*\(|==PROF==|==ERROR==|ERR_NVGPUCTRPERM|Duration|Compute \(SM\) Throughput|Memory Throughput|DRAM Throughput|Registers Per Thread|Achieved Occupancy|Theoretical Occupancy|Executed Ipc Active|Issue Slots Busy|Warp Cycles Per Issued|Shared Memory Configuration Size|Est\. (Local )?Speedup|^ *(OPT|WRN) " "$work/ncu-$n.log" | head -60
    done
  fi
  echo '```'
  echo
  echo "## Op benchmarks (//stability/ops/cuda:benchmarks)"
  echo '```'
  timeout "$(left 120)" "$work/bin/benchmarks" --benchmark_min_time=0.05 \
    --benchmark_filter="$([ "$quick" = 1 ] && echo 'BM_Attention/.*bf16:1' || echo .)" 2>&1 | grep -E "^BM_|ERROR" | head -140
  echo '```'
  echo
  # The GPU's own word on what the emulator's race checker found clean (shared-memory
  # hazards of the attention kernels), in whatever time is left.
  echo "## compute-sanitizer racecheck of the attention kernels"
  echo '```'
  if [ "$quick" = 1 ]; then
    echo "(skipped: quick check)"
  elif [ $((deadline - SECONDS)) -ge 45 ]; then
    timeout "$(left 90)" "$sanitizer" --tool racecheck --racecheck-report hazard --error-exitcode 9 \
      "$work/bin/cuda_backend_test" --gtest_filter='*TensorCoreAttention*:*FusedAttention*' > "$work/racecheck.log" 2>&1
    echo "exit $? (0: clean, 9: hazards found, 124: out of time)"
    grep -E "RACECHECK SUMMARY|ERROR SUMMARY|[Hh]azard|\[  (PASSED|FAILED) " "$work/racecheck.log" | head -20
  else
    echo "(skipped: under 45 s left)"
  fi
  echo '```'
  echo
  echo "(check took ${SECONDS} s)"
} > "$report" 2>&1
# The device tool brings back only a few files: the logs travel as one archive there.
if [ -n "${OUT:-}" ]; then
  (cd "$work" && tar -czf "$out_dir/logs.tar.gz" ./*.log ./*.csv 2>/dev/null)
else
  cp "$work"/*.log "$work"/*.csv "$out_dir/" 2>/dev/null
fi
echo "wrote $report"
cat "$report"
