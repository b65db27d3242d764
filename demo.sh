#!/usr/bin/env bash
# The demo: install orch, generate a synthetic COCO dataset of shapes, train ssdlite320 from scratch
# on this machine (local executor, CPU), and print the final bbox mAP.   Usage: bash demo.sh
set -euo pipefail
cd "$(dirname "$0")"
python3 -c "import orchestrator, torch, torchvision, submitit, pycocotools" 2>/dev/null \
  || python3 -m pip install -q torch==2.14.1 torchvision==0.29.1 -e .
[ -f data/demo/train.json ] || orch data synth data/demo --train 400 --val 100 --size 320 --seed 0
orch submit configs/demo.yml --executor local --follow "$@"
