#!/usr/bin/env bash
# run_fuzz_test.sh FUZZER CORPUS_DIR SECONDS
# Under --config=fuzz (libFuzzer + ASan + UBSan): fuzzes for SECONDS from a writable copy of
# the committed seed corpus; any crash, leak or sanitizer report fails the test and leaves
# the reproducer in the test's outputs. In the ordinary build the fuzzer binary only
# replays the corpus (tools/fuzz_replay_main.cc) and ignores the libFuzzer options.
set -euo pipefail
fuzzer="$1"; corpus="$2"; seconds="$3"
work="${TEST_TMPDIR:-$(mktemp -d)}/corpus"
mkdir -p "$work"
cp -r "$corpus"/. "$work"/
artifacts="${TEST_UNDECLARED_OUTPUTS_DIR:-$work}/"
exec "$fuzzer" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
  -artifact_prefix="$artifacts" -print_final_stats=1 "$work" "$corpus"
