"""Wall time of the torch-free commands (`orch --help`, `orch plan`, `orch config show`).

    python benchmarks/bench_cli.py [--repeat 5]

Target: well under 0.5 s each on a 2-core machine (`import torch` alone takes > 2 s).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def timed(cmd: list[str], repeat: int) -> tuple[float, float]:
    walls = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls), max(walls)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--images", type=int, default=20000, help="images in the synthetic annotation file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ann = os.path.join(tmp, "train.json")
        with open(ann, "w") as f:
            json.dump({"images": [{"id": i, "width": 640, "height": 480} for i in range(args.images)],
                       "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 50, 50]}
                                       for i in range(args.images)],
                       "categories": [{"id": 1, "name": "a"}]}, f)
        env_cache = os.path.join(tmp, "cache")
        os.environ["ORCH_CACHE_DIR"] = env_cache
        orch = [sys.executable, "-m", "orchestrator.cli"]
        cfg = "configs/fasterrcnn_r50_fpn_1x.yml"
        cases = [
            ("orch --help", orch + ["--help"]),
            ("orch config show", orch + ["config", "show", cfg]),
            ("orch plan (--train-images)", orch + ["plan", cfg, "--gpus", "16", "--train-images", "117266"]),
            (f"orch plan ({args.images} images, cached count)",
             orch + ["plan", cfg, "--gpus", "16", f"data.train.ann_file={ann}"]),
        ]
        subprocess.run(cases[-1][1], check=True, capture_output=True, cwd=ROOT)  # fill the count cache
        print(f"{'command':<42} {'median s':>9} {'max s':>7}")
        for label, cmd in cases:
            median, worst = timed(cmd, args.repeat)
            print(f"{label:<42} {median:>9.3f} {worst:>7.3f}")


if __name__ == "__main__":
    main()
