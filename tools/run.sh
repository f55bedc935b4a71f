#!/usr/bin/env bash
# The main job, from nothing: installs what is missing, then runs the `stability` CLI.
#   bash tools/run.sh              # the default job
#   bash tools/run.sh info         # any subcommand and its flags
# Today the default job is `info`; it becomes a CPU training run on the bundled corpus
# once `stability train` exists (issue: training end to end).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STABILITY_SETUP_QUIET=1 bash tools/setup.sh
[ $# -gt 0 ] || set -- info
exec bazel run --ui_event_filters=-info,-stdout --noshow_progress //cli:stability -- "$@"
