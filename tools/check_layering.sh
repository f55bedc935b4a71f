#!/usr/bin/env bash
# Proves the layering is enforced: every probe in stability/base/layering_probe (a lower
# layer depending on a higher one) must fail analysis with "is not visible".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
probes=$(sed -n 's/^ *name = "\(.*\)",/\1/p' stability/base/layering_probe/BUILD)
[ -n "$probes" ] || { echo "check_layering: no probes found"; exit 1; }
failed=0
for p in $probes; do
  out=$(bazel build --nobuild "//stability/base/layering_probe:$p" 2>&1)
  if echo "$out" | grep -q "is not visible from target '//stability/base/layering_probe:$p'"; then
    echo "check_layering: refused as it should be: //stability/base/layering_probe:$p"
  else
    echo "check_layering: NOT refused: //stability/base/layering_probe:$p"; echo "$out" | tail -5
    failed=1
  fi
done
exit $failed
