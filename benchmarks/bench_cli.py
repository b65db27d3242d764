"""Wall time of the torch-free commands (`orch --help`, `orch plan`, `orch config show`,
`orch submit --dry-run`), next to a bare `python -c pass` for scale.

    python benchmarks/bench_cli.py [--repeat 5]

Target: under 0.3 s each on the 2-core machine (`import torch` alone takes > 2 s). The dry-run
reads a small synthetic dataset (its JSON check scales with the annotation file) and skips the
partition query (`ORCH_SKIP_SLURM_CHECK=1`, one `scontrol` call where SLURM exists).
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
        sys.path.insert(0, ROOT)
        from orchestrator.synth import make_synthetic_dataset

        small = os.path.join(tmp, "small")
        make_synthetic_dataset(small, num_train=16, num_val=4, image_size=64, seed=0)
        os.environ["ORCH_SKIP_SLURM_CHECK"] = "1"
        # as in a user's shell: Python caches compiled modules (__pycache__); a shell that sets
        # PYTHONDONTWRITEBYTECODE recompiles all of orchestrator/ on every command (~0.1 s here)
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        dry_run = orch + ["submit", "configs/demo.yml", "--executor", "slurm", "--gpus", "16", "--gpus-per-node", "8",
                          "--dry-run", f"work_dir={tmp}/runs", f"data.train.ann_file={small}/train.json",
                          f"data.train.img_dir={small}/train", f"data.val.ann_file={small}/val.json",
                          f"data.val.img_dir={small}/val"]
        cfg = "configs/fasterrcnn_r50_fpn_1x.yml"
        cases = [
            ("python -c pass (interpreter start)", [sys.executable, "-c", "pass"]),
            ("orch --help", orch + ["--help"]),
            ("orch config show", orch + ["config", "show", cfg]),
            ("orch plan (--train-images)", orch + ["plan", cfg, "--gpus", "16", "--train-images", "117266"]),
            (f"orch plan ({args.images} images, cached count)",
             orch + ["plan", cfg, "--gpus", "16", f"data.train.ann_file={ann}"]),
            ("orch submit --dry-run (slurm, 2 nodes)", dry_run),
        ]
        subprocess.run(cases[-2][1], check=True, capture_output=True, cwd=ROOT)  # fill the count cache
        print(f"{'command':<42} {'median s':>9} {'max s':>7}")
        for label, cmd in cases:
            median, worst = timed(cmd, args.repeat)
            print(f"{label:<42} {median:>9.3f} {worst:>7.3f}")


if __name__ == "__main__":
    main()
