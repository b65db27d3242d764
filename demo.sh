#!/usr/bin/env bash
# The demo: install orch, generate a synthetic COCO dataset of shapes, train ssdlite320 from scratch
# on this machine (local executor, CPU), and print the final bbox mAP.   Usage: bash demo.sh
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
PINS="torch==2.14.1 torchvision==0.29.1"
# What pip installed (the orch command, the pinned versions), looked up from / : importing
# orchestrator here would succeed from the source tree even when orch is not installed.
# shellcheck disable=SC2086
if ! (cd / && python3 "$ROOT/tools/installed.py" $PINS); then
  echo "demo.sh: installing orch (pip install $PINS -e .)" >&2
  python3 -m pip install -q $PINS -e .
  command -v orch >/dev/null || { echo "demo.sh: orch is installed but the orch command is not on PATH; add" \
    "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))') to PATH" >&2; exit 1; }
fi
[ -f data/demo/train.json ] || orch data synth data/demo --train 400 --val 100 --size 320 --seed 0
orch submit configs/demo.yml --executor local --follow "$@"
