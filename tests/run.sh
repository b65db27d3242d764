#!/usr/bin/env bash
# The test command: installs what the tests need (if missing), then runs the whole suite.
# Usage: bash tests/run.sh [pytest args]      (as root for the SLURM cluster tests)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && [ -x slurm/install.sh ] && ! command -v slurmctld >/dev/null 2>&1; then
  bash slurm/install.sh
fi
ROOT=$(pwd)
PINS="torch==2.14.1 torchvision==0.29.1"
# What pip installed (the orch command, pinned versions, the test extra), looked up from / :
# importing orchestrator here would succeed from the source tree even when orch is not installed.
# shellcheck disable=SC2086
if ! (cd / && python3 "$ROOT/tools/installed.py" --extra test,toolbox-test $PINS); then
  echo "tests/run.sh: installing (pip install $PINS -e .[test,toolbox-test])" >&2
  python3 -m pip install -q $PINS -e ".[test,toolbox-test]"
fi
exec python3 -m pytest -q -p no:cacheprovider --durations=15 "$@" tests
