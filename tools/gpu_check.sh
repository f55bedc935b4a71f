#!/usr/bin/env bash
# The GPU check, for a lent GPU machine (the device tool) or any machine with a GPU:
# builds, runs every CUDA test (they skip without a GPU) and `stability info`, and writes a
# Markdown report to $OUT/gpu_check.md (device tool) or docs/gpu/gpu_check-<date>.md.
# Finishes in a few minutes. Today the CUDA code is the device query and the NCCL
# communicator; the CUDA backend of the op interface (issue: CUDA backend) adds its tests
# and benchmarks here.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out_dir="${OUT:-docs/gpu}"
mkdir -p "$out_dir"
report="$out_dir/gpu_check-$(date -u +%Y%m%d-%H%M%S).md"
cuda_tests=(//stability/ops/cuda:device_query_test //stability/dist:nccl_communicator_test)
{
  echo "# GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
  echo
  echo '```'
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | head -5
  echo '```'
  echo
  echo "## stability info"
  echo '```'
  bazel run --ui_event_filters=-info,-stdout --noshow_progress //cli:stability -- info 2>&1 | tail -12
  echo '```'
  echo
  echo "## CUDA tests"
  echo '```'
  bazel test "${cuda_tests[@]}" --test_output=all --test_summary=short 2>&1 | grep -E "PASSED|FAILED|SKIPPED|\[  |OK \]|Skipped|no GPU" | tail -40
  echo '```'
} > "$report" 2>&1
echo "wrote $report"
cat "$report"
