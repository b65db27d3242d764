#!/usr/bin/env bash
# The test command: installs what the tests need (if missing), then runs the whole suite.
# Usage: bash tests/run.sh [pytest args]      (as root for the SLURM cluster tests)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && [ -x slurm/install.sh ] && ! command -v slurmctld >/dev/null 2>&1; then
  bash slurm/install.sh
fi
python3 -c "import orchestrator, torch, torchvision, submitit, s3fs, onnxruntime" 2>/dev/null \
  || python3 -m pip install -q torch==2.14.1 torchvision==0.29.1 -e ".[test]"
exec python3 -m pytest -q -p no:cacheprovider --durations=15 "$@" tests
