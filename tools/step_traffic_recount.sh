#!/usr/bin/env bash
# Counts a preset's projected bf16 training step again after a kernel changed (README, "Traffic
# and a projected step"): every method's step emulated with its traffic counted, in N
# processes at once, into docs/gpu/step_traffic/, then the report from all of them.
#
#   bash tools/step_traffic_recount.sh                     # GPT-2 124M, every method, 2 processes
#   bash tools/step_traffic_recount.sh --size=paper_830m --methods=baseline --jobs=1
#
# ~9 min of CPU a method at 124M (two cores: ~45 min for all ten); the 830M baseline ~45 min and
# ~12 GB of RAM — run nothing beside it. The counted steps this replaces are moved to a folder
# under $TMPDIR (printed), not deleted. The binary is copied before counting starts, so
# building meanwhile does not disturb it. Flags: --size, --methods (comma-separated or all),
# --jobs, --batch (16), --seq (1024), --cache_dir (docs/gpu/step_traffic), --out
# (docs/gpu/step_traffic-<size>.md).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
size=gpt2_124m methods=all jobs=2 batch=16 seq=1024 cache=docs/gpu/step_traffic out=""
for arg in "$@"; do
  case "$arg" in
    --size=*) size="${arg#*=}" ;;
    --methods=*) methods="${arg#*=}" ;;
    --jobs=*) jobs="${arg#*=}" ;;
    --batch=*) batch="${arg#*=}" ;;
    --seq=*) seq="${arg#*=}" ;;
    --cache_dir=*) cache="${arg#*=}" ;;
    --out=*) out="${arg#*=}" ;;
    *) echo "step_traffic_recount: unknown argument $arg (see the header of $0)" >&2; exit 2 ;;
  esac
done
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || { echo "step_traffic_recount: --jobs wants a positive integer, got $jobs" >&2; exit 2; }
out="${out:-docs/gpu/step_traffic-$size.md}"
STABILITY_SETUP_QUIET=1 bash tools/setup.sh >/dev/null
if ! bazel build //tests/cuda:step_traffic >/dev/null 2>&1; then
  bazel build //tests/cuda:step_traffic  # again, to show why
  exit 1
fi
work="$(mktemp -d "${TMPDIR:-/tmp}/step_traffic_recount.XXXXXX")"
cp bazel-bin/tests/cuda/step_traffic "$work/step_traffic"
mkdir -p "$cache" "$work/replaced"
# The counted steps of these methods at this shape: stale once a kernel changed.
stale=()
if [ "$methods" = all ]; then
  stale=("$cache/$size-"*"-batch$batch-seq$seq-"*.tsv)
else
  IFS=, read -ra names <<< "$methods"
  for m in "${names[@]}"; do stale+=("$cache/$size-$m-batch$batch-seq$seq-"*.tsv); done
fi
for f in "${stale[@]}"; do
  if [ -e "$f" ]; then mv "$f" "$work/replaced/"; fi
done
echo "step_traffic_recount: counting $size ($methods) in $jobs process(es); replaced steps in $work/replaced"
common=(--size="$size" --methods="$methods" --batch="$batch" --seq="$seq" --extrapolate_layers=true
        --cache_dir="$cache")
pids=()
for ((k = 0; k < jobs; ++k)); do
  "$work/step_traffic" "${common[@]}" --shard="$k/$jobs" --out="$work/shard$k.md" > "$work/shard$k.log" 2>&1 &
  pids+=($!)
done
failed=0
for k in "${!pids[@]}"; do
  if ! wait "${pids[$k]}"; then
    echo "step_traffic_recount: process $k failed:" >&2
    tail -5 "$work/shard$k.log" >&2
    failed=1
  fi
done
[ "$failed" -eq 0 ] || exit 1
"$work/step_traffic" "${common[@]}" --out="$out"
echo "step_traffic_recount: wrote $out"
