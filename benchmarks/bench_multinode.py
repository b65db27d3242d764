"""Step time of 2 nodes × 1 process against 1 node × 2 processes, same plan, on the local SLURM cluster.

    sudo bash slurm/cluster.sh start --nodes 2
    python benchmarks/bench_multinode.py [--iters 20] [--size 96] [--batch 2] [--model ssdlite320_mobilenet_v3_large]

Both layouts are submitted with `orch submit --gpus 2` (`--gpus-per-node 1`, then 2), one after
the other, CPU processes with gloo (the nodes' GPUs are fake). Same world size, same batches per
rank, one thread per process, so the difference is where the gradients travel: between network
namespaces over the veth/bridge pair (2 × 1) or over loopback inside one node (1 × 2). Prints the
median and mean step time (first 3 iterations not counted; per-step times are recovered from the
moving averages in metrics.jsonl), the job's wall time, and the time from job start to the first
iteration (imports + rendezvous).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
WARMUP = 3
WINDOW = 20   # jobs.runlog.Progress's moving-average window


def cluster_mode() -> int | None:
    result = subprocess.run(["bash", os.path.join(ROOT, "slurm", "cluster.sh"), "status"],
                            capture_output=True, text=True)
    for word in result.stdout.split("running: ")[1:]:
        return int(word.split()[0])
    return None


def step_times(metrics_file: str) -> list[float]:
    """Per-iteration seconds from the logged moving averages (``time`` over the last WINDOW steps)."""
    with open(metrics_file) as f:
        averages = {r["iteration"]: r["time"] for r in map(json.loads, f) if r["type"] == "train"}
    steps: dict[int, float] = {}
    for it in sorted(averages):
        n, n_before = min(it, WINDOW), min(it - 1, WINDOW)
        step = n * averages[it] - n_before * averages.get(it - 1, 0.0)
        steps[it] = step + (steps[it - WINDOW] if it > WINDOW else 0.0)
    return [steps[it] for it in sorted(steps)]


def job_fields(job_id: str) -> dict[str, str]:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(part.split("=", 1) for part in out.split() if "=" in part)


def run_layout(work_dir: str, data: str, gpus_per_node: int, args: argparse.Namespace) -> dict:
    from orchestrator import cli

    name = f"bench-{2 // gpus_per_node}x{gpus_per_node}"
    overrides = [f"model.name={args.model}", f"model.min_size={args.size}", f"model.max_size={args.size}",
                 f"data.train.ann_file={data}/train.json", f"data.train.img_dir={data}/train",
                 "data.val.ann_file=null", f"data.batch_per_gpu={args.batch}", "data.num_workers=1",
                 f"schedule.max_iters={args.iters + WARMUP}", "schedule.log_every_iters=1",
                 "schedule.eval_every_iters=100000", "schedule.checkpoint_every_iters=100000",
                 "schedule.warmup_iters=2", "optimizer.base_lr=0.001", f"work_dir={work_dir}"]
    code = cli.main(["submit", os.path.join(ROOT, "configs", "demo.yml"), "--executor", "slurm",
                     "--partition", "dev", "--gpus", "2", "--gpus-per-node", str(gpus_per_node),
                     "--cpus-per-gpu", "1", "--name", name, *overrides])
    if code != 0:
        raise SystemExit(f"orch submit failed for {name}")
    run_dir = os.path.join(work_dir, name)
    with open(os.path.join(run_dir, "submissions.json")) as f:
        job_id = json.load(f)["attempts"][-1]["job_id"]
    while (fields := job_fields(job_id)).get("JobState") in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
        time.sleep(2)
    if not fields:
        raise SystemExit(f"{name}: SLURM forgot job {job_id} (was the cluster restarted or switched to one node?)")
    if fields.get("JobState") != "COMPLETED":
        raise SystemExit(f"{name}: job {job_id} ended {fields.get('JobState')}; see {run_dir}/logs")
    steps = step_times(os.path.join(run_dir, "metrics.jsonl"))[WARMUP:]
    start, end = (dt.datetime.fromisoformat(fields[k]) for k in ("StartTime", "EndTime"))
    first_iteration = _first_iteration_time(run_dir, start)
    return {"layout": f"{2 // gpus_per_node} node(s) x {gpus_per_node} process(es)", "nodes": fields["NodeList"],
            "median_s": statistics.median(steps), "mean_s": statistics.fmean(steps), "steps": len(steps),
            "wall_s": (end - start).total_seconds(), "to_first_iter_s": first_iteration}


def _first_iteration_time(run_dir: str, start: dt.datetime) -> float | None:
    """Seconds from job start to the first logged iteration (the log line's HH:MM:SS, same day)."""
    logs = os.path.join(run_dir, "logs")
    for name in sorted(os.listdir(logs)):
        if not name.endswith("_0_log.out"):
            continue
        for line in open(os.path.join(logs, name)):
            if "Epoch [1][1/" in line:
                clock = dt.datetime.strptime(line.split()[0], "%H:%M:%S").time()
                return (dt.datetime.combine(start.date(), clock) - start).total_seconds()
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=20, help="timed iterations (after 3 warm-up ones)")
    parser.add_argument("--size", type=int, default=96, help="image size (min_size = max_size)")
    parser.add_argument("--batch", type=int, default=2, help="images per process")
    parser.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    args = parser.parse_args()
    if cluster_mode() != 2:
        raise SystemExit("needs the two-node cluster: sudo bash slurm/cluster.sh start --nodes 2")
    from orchestrator.synth import make_synthetic_dataset

    tmp = tempfile.mkdtemp(prefix="orch-bench-multinode-")
    data = os.path.join(tmp, "data")
    make_synthetic_dataset(data, num_train=64, num_val=4, image_size=args.size, seed=0)
    rows = [run_layout(os.path.join(tmp, "runs"), data, gpus_per_node, args) for gpus_per_node in (1, 2)]
    import torch

    params = sum(p.numel() for p in _model(args).parameters())
    print(f"\n{args.model} at {args.size}px, batch {args.batch} per process, gloo on CPU, "
          f"{params / 1e6:.1f} M parameters ({params * 4 / 2**20:.1f} MiB of gradients per step), torch {torch.__version__}")
    print(f"{'layout':<26} {'nodes':<8} {'step median':>12} {'step mean':>10} {'steps':>6} "
          f"{'to 1st iter':>12} {'job wall':>9}")
    for r in rows:
        first = f"{r['to_first_iter_s']:.0f} s" if r["to_first_iter_s"] is not None else "-"
        print(f"{r['layout']:<26} {r['nodes']:<8} {r['median_s']:>10.3f} s {r['mean_s']:>8.3f} s {r['steps']:>6} "
              f"{first:>12} {r['wall_s']:>7.0f} s")
    print(f"2 x 1 / 1 x 2 median step time: {rows[0]['median_s'] / rows[1]['median_s']:.2f}")


def _model(args: argparse.Namespace):
    from jobs import models

    return models.build_model({"name": args.model, "init_checkpoint": None, "min_size": args.size,
                               "max_size": args.size}, num_classes=4)


if __name__ == "__main__":
    main()
