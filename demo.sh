#!/usr/bin/env bash
# The demo: install orch, generate a synthetic COCO dataset, train ssdlite320 on this machine
# with the local executor, and print the final bbox mAP.   Usage: bash demo.sh
set -euo pipefail
cd "$(dirname "$0")"
python3 -c "import orchestrator, torch, torchvision, submitit" 2>/dev/null \
  || python3 -m pip install -q torch==2.14.1 torchvision==0.29.1 -e .
if ! python3 -c "import jobs.engine" 2>/dev/null; then
  echo "orch demo: training is not yet available (the training job has not landed)"; exit 0
fi
orch data synth data/demo --train 400 --val 100 --size 320 --seed 0
orch submit configs/demo.yml --executor local --name demo --follow
