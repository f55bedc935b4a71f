#!/usr/bin/env bash
# The main job, from nothing: installs what is missing, then runs the `stability` CLI.
#   bash tools/run.sh              # the main job: `stability train` (tiny preset, bundled corpus)
#   bash tools/run.sh info         # any subcommand and its flags
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STABILITY_SETUP_QUIET=1 bash tools/setup.sh
[ $# -gt 0 ] || set -- train
exec bazel run --ui_event_filters=-info,-stdout --noshow_progress //cli:stability -- "$@"
