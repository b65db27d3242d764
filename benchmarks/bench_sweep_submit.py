"""How long submitting a 1,000-point sweep takes (target: under 3 s).

    python benchmarks/bench_sweep_submit.py [--points 1000] [--repeat 3] [--cluster-repeat 1] [--no-cluster]

What is measured, per repeat, in a fresh work dir on local disk:

* ``orch sweep`` end to end (a new Python process: imports, config, 1,000 random points each
  validated and planned on its own, the cheap dataset check, sweep.json, 1,000 run dirs with
  config.yml + plan.json + submissions.json, one syncfs for them all, ONE sbatch of the job array,
  submitted held first so the job ids are known while the run dirs are written).
  With a running local SLURM cluster (slurm/cluster.sh) the array is really submitted, held
  (``--hold``), checked with scontrol and cancelled; without one this part is skipped. SLURM
  counts every task toward MaxJobCount (10,000 here) and keeps a cancelled array's records for
  MinJobAge (1 h), so this runs once by default (--cluster-repeat) and only with room to spare.
* the same in-process, by phase (plan the points and check the inputs / sweep.json / the array script,
  rendered but not given to sbatch / every point's run dir and submissions.json).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# batch 2+: ssdlite320's BatchNorm cannot train on one image per GPU (the planner refuses it)
PARAMS = ["-p", "optimizer.base_lr=loguniform(1e-4,1e-2)", "-p", "data.batch_per_gpu=randint(2,4)",
          "-p", "optimizer.weight_decay=choice(0.0001,0.00004)"]


def cluster_room() -> int | None:
    """Job records SLURM can still take (MaxJobCount minus what it holds); None without a cluster."""
    try:
        if subprocess.run(["scontrol", "ping"], capture_output=True, timeout=10).returncode != 0:
            return None
        config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=10).stdout
        held = subprocess.run(["squeue", "-h", "-r", "-t", "all"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    limit = int(config.split("MaxJobCount", 1)[1].split("=", 1)[1].split()[0]) if "MaxJobCount" in config else 10000
    return limit - len(held.splitlines())


def sweep_args(data: str, work_dir: str, name: str, points: int) -> list[str]:
    return ["sweep", os.path.join(ROOT, "configs", "demo.yml"), *PARAMS, "--random", str(points), "--seed", "1",
            "--max-parallel", "4", "--name", name, "--executor", "slurm", "--partition", "dev", "--gpus", "1",
            "--cpus-per-gpu", "1", f"data.train.ann_file={data}/train.json", f"data.train.img_dir={data}/train",
            f"data.val.ann_file={data}/val.json", f"data.val.img_dir={data}/val", f"work_dir={work_dir}",
            "schedule.max_iters=100"]


def cli_end_to_end(data: str, work_dir: str, name: str, points: int) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *sweep_args(data, work_dir, name, points),
                             "--hold"], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"orch sweep failed:\n{result.stderr}")
    array_id = result.stdout.split("job array ", 1)[1].split()[0]
    return wall, array_id


def check_and_cancel(array_id: str, points: int) -> str:
    out = subprocess.run(["scontrol", "show", "job", "-o", array_id], capture_output=True, text=True).stdout
    throttle = out.split("ArrayTaskId=", 1)[1].split()[0] if "ArrayTaskId=" in out else "?"
    reason = out.split("Reason=", 1)[1].split()[0] if "Reason=" in out else "?"
    subprocess.run(["scancel", array_id], check=True)
    return f"array {array_id}: ArrayTaskId={throttle} Reason={reason} (cancelled)"


def in_process(data: str, work_dir: str, name: str, points: int) -> dict[str, float]:
    from orchestrator import config as config_mod
    from orchestrator import runs, sweep
    from orchestrator.executors import Submitted
    from orchestrator.executors.slurm import SlurmExecutor

    args = sweep_args(data, work_dir, name, points)
    overrides = [a for a in args if "=" in a and not a.startswith(("optimizer.base_lr=", "data.batch_per_gpu=",
                                                                      "optimizer.weight_decay="))]
    overrides += ["resources.executor=slurm", "resources.partition=dev", "resources.gpus=1",
                  "resources.cpus_per_gpu=1"]
    phases: dict[str, float] = {}
    start = time.perf_counter()
    config = config_mod.load_config(os.path.join(ROOT, "configs", "demo.yml"), overrides).data
    specs = [sweep.parse_param(p) for p in PARAMS[1::2]]
    prepared = sweep.prepare_sweep(config, specs, name, random_count=points, seed=1, max_parallel=4, hold=True)
    phases["plan points + input checks"] = time.perf_counter() - start

    original = SlurmExecutor.submit_array
    marks = {}

    def timed_submit(self, req, task_ids, fmt, task_offset=0):
        marks["sbatch"] = time.perf_counter()
        self.array_script(req, task_ids, fmt, task_offset)   # render everything, stop short of sbatch
        marks["submitted"] = time.perf_counter()
        return Submitted(job_id="999999", executor="slurm", log_dir=req.log_dir)

    SlurmExecutor.submit_array = timed_submit
    try:
        start = time.perf_counter()
        result = sweep.submit_sweep(prepared)   # held (--hold): nothing to release
        end = time.perf_counter()
    finally:
        SlurmExecutor.submit_array = original
    phases["sweep.json"] = marks["sbatch"] - start
    phases["render the array script"] = marks["submitted"] - marks["sbatch"]
    phases["run dirs + submissions.json"] = end - marks["submitted"]
    phases["total"] = phases["plan points + input checks"] + (end - start)
    assert len(os.listdir(result["sweep_dir"])) >= points
    assert runs.read_plan(os.path.join(result["sweep_dir"], sweep.point_format(points) % (points - 1)))["sweep"]
    return phases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cluster-repeat", type=int, default=1, help="real submissions (each holds 1,000 "
                        "job records for an hour)")
    parser.add_argument("--no-cluster", action="store_true", help="never call sbatch, even if a cluster runs")
    args = parser.parse_args()
    from orchestrator.synth import make_synthetic_dataset

    room = None if args.no_cluster else cluster_room()
    use_cluster = room is not None and room > args.points * args.cluster_repeat + 1000
    where = ("local SLURM cluster (held array, then cancelled)" if use_cluster else
             "no sbatch: no cluster" if room is None else f"no sbatch: SLURM has room for only {room} more jobs")
    print(f"{args.points}-point sweep, {os.cpu_count()} CPUs, {where}")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        data = os.path.join(tmp, "data")
        make_synthetic_dataset(data, num_train=16, num_val=4, image_size=64, seed=0)
        if use_cluster:
            walls = []
            for i in range(args.cluster_repeat):
                wall, array_id = cli_end_to_end(data, os.path.join(tmp, f"cli{i}"), f"bench{i}", args.points)
                walls.append(wall)
                note = check_and_cancel(array_id, args.points)
                print(f"  orch sweep (end to end, new process) run {i + 1}: {wall:.2f} s   {note}")
                shutil.rmtree(os.path.join(tmp, f"cli{i}"))
            print(f"orch sweep end to end: median {statistics.median(walls):.2f} s, max {max(walls):.2f} s")
        results = []
        for i in range(args.repeat):
            results.append(in_process(data, os.path.join(tmp, f"api{i}"), f"api{i}", args.points))
            shutil.rmtree(os.path.join(tmp, f"api{i}"))
        print("in-process phases (median of runs):")
        for phase in results[0]:
            print(f"  {phase:<32} {statistics.median(r[phase] for r in results):6.2f} s")


if __name__ == "__main__":
    main()
