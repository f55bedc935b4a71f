#!/usr/bin/env bash
# The whole test suite, from nothing: installs what is missing (tools/setup.sh), runs
# `bazel test //...`, then the fuzz targets for real (clang + libFuzzer + ASan/UBSan,
# --config=fuzz, 10 s each), proves the layering (tools/check_layering.sh), and ends with
# the line `N passed, N failed` counted over test targets (+1 for the layering check).
# Exit status is non-zero on any failure. Extra arguments go to `bazel test`.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

STABILITY_SETUP_QUIET="${STABILITY_SETUP_QUIET:-0}" bash tools/setup.sh || {
  echo "0 passed, 1 failed"; exit 1; }

log=$(mktemp /tmp/stability-test.XXXXXX.log)
bazel test //... --keep_going --test_summary=short "$@" 2>&1 | tee "$log"
bazel_rc=${PIPESTATUS[0]}
fuzz_log=$(mktemp /tmp/stability-fuzz.XXXXXX.log)
bazel test --config=fuzz --test_tag_filters=fuzz //... --keep_going --test_summary=short 2>&1 | tee "$fuzz_log"
fuzz_rc=${PIPESTATUS[0]}
# The fuzz run's results are counted as "<target> (fuzz)" alongside the replay run's.
sed -E 's|^(//[^ ]+)|\1(fuzz)|' "$fuzz_log" | grep -E '^//' >> "$log"

# One summary line per test target: "//pkg:name   (cached) PASSED in 0.3s".
passed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(PASSED|FLAKY)' "$log")
failed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|INCOMPLETE|FAILED TO BUILD)' "$log")
# 0: all passed; 3: some tests failed (counted above). Anything else (a build error
# outside test targets, no tests found, a crash) is one more failure.
for rc in "$bazel_rc" "$fuzz_rc"; do
  if [ "$rc" != 0 ] && [ "$rc" != 3 ]; then
    echo "test.sh: bazel test exited with status $rc"
    failed=$((failed + 1))
  fi
done

if bash tools/check_layering.sh; then passed=$((passed + 1)); else failed=$((failed + 1)); fi

rm -f "$log" "$fuzz_log"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
