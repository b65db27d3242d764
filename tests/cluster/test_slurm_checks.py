"""Checks against what the real one-node SLURM cluster allows (slurm/cluster.sh).

1. the partitions, nodes, MaxArraySize and MaxJobCount orch reads are the cluster's own, and
   sbatch really refuses an array task id at MaxArraySize
2. a request no partition can ever run (more CPUs per node than the node has, over debug's MaxTime,
   a partition that does not exist) is refused before sbatch, by submit and by --dry-run alike:
   SLURM would have queued it and left it PENDING forever
3. a sweep bigger than MaxArraySize runs as several job arrays: the cluster keeps SLURM's default
   1001 (benchmarks/bench_sweep_submit.py puts 1,000 tasks in one array), so the test makes orch
   read 5 and sweeps 6 points; SLURM really runs the two arrays (the second with a task offset),
   both submitted held and released together, each point in its own dir, and `orch sweep status`
   shows all six
"""
import json
import os
import subprocess

import pytest

from jobutil import ROOT, TINY, data_overrides, make_dataset
from orchestrator import cli, slurm_limits
from slurmutil import wait_for_job

pytestmark = pytest.mark.cluster
CONFIG = os.path.join(ROOT, "configs", "demo.yml")
SMALL_MAX_ARRAY_SIZE = 5
PLAN = ["schedule.max_iters=2", "schedule.checkpoint_every_iters=2", "schedule.eval_every_iters=100",
        "resources.time=00:20:00"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data")), num_train=8, num_val=2)


def queued_jobs(name):
    out = subprocess.run(["squeue", "-h", "-n", name, "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return out.split()


def scontrol_config(key):
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    (line,) = [line for line in out.splitlines() if line.split("=")[0].strip() == key]
    return int(line.split("=", 1)[1])


def test_orch_reads_the_clusters_limits(slurm_cluster, tmp_path):
    partitions = {p.name: p for p in slurm_limits.query_partitions()}
    assert set(partitions) == {"dev", "debug"} and partitions["dev"].default
    assert partitions["debug"].max_time_min == 30 and partitions["dev"].max_time_min is None
    (node,) = partitions["dev"].nodes
    assert node.gpus == slurm_cluster.gpus_per_node and node.cpus >= 8
    limits = slurm_limits.array_limits()
    assert limits.max_array_size == scontrol_config("MaxArraySize") > 1
    assert limits.max_job_count == scontrol_config("MaxJobCount")
    # why sweeps split: sbatch refuses a task id at MaxArraySize (held, so nothing would run anyway)
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\ntrue\n")
    top = limits.max_array_size
    result = subprocess.run(["sbatch", "--hold", f"--array={top - 1}-{top}", "-o", "/dev/null", str(script)],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "Invalid job array specification" in result.stderr


@pytest.mark.parametrize("flags,fragment", [
    (["--gpus", "1", "--cpus-per-gpu", "64"], "--cpus-per-gpu 64 needs 64 CPUs per node (1 GPUs × 64), partition "
                                              "dev's nodes with 1+ GPUs have "),
    (["--gpus", "2", "--gpus-per-node", "2", "--nodes", "1", "--cpus-per-gpu", "1", "--partition", "debug",
      "--time", "01:00:00"], "--time 01:00:00 is over partition debug's MaxTime 00:30:00: use --time 00:30:00"),
    (["--gpus", "8", "--gpus-per-node", "8", "--cpus-per-gpu", "1"],
     "8 GPUs per node is more than partition dev's nodes have (4, gres gpu): use --gpus-per-node 4 or fewer"),
    (["--gpus", "1", "--cpus-per-gpu", "1", "--partition", "devv"],
     "partition 'devv' does not exist (did you mean dev?"),
])
@pytest.mark.parametrize("dry_run", [True, False])
def test_a_request_no_partition_can_run_is_refused_before_sbatch(slurm_cluster, data_root, tmp_path, capsys,
                                                                 flags, fragment, dry_run):
    name = f"never-{os.getpid()}"
    args = ["submit", CONFIG, "--executor", "slurm", "--name", name, *flags, *TINY, *data_overrides(data_root),
            f"work_dir={tmp_path}/runs", *PLAN] + (["--dry-run"] if dry_run else [])
    capsys.readouterr()
    code = cli.main(args)
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert fragment in err and ("SLURM would queue this job and never start it: " in err
                                or err.startswith("orch: error: invalid partition: "))
    assert "Traceback" not in err and "sbatch" not in err
    assert not os.path.exists(tmp_path / "runs") and queued_jobs(name) == []


def test_a_sweep_bigger_than_max_array_size_runs_as_two_arrays(slurm_cluster, data_root, tmp_path, monkeypatch,
                                                               capsys):
    real = slurm_limits.array_limits()
    monkeypatch.setattr(slurm_limits, "array_limits", lambda: slurm_limits.ArrayLimits(SMALL_MAX_ARRAY_SIZE,
                                                                                       real.max_job_count))
    max_array_size = SMALL_MAX_ARRAY_SIZE
    work_dir = str(tmp_path / "runs")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("ORCH_CACHE_DIR", os.path.join(work_dir, ".cache"))
    lrs = ",".join(str(0.01 * (k + 1)) for k in range(max_array_size + 1))
    tiny = [o for o in TINY if not o.startswith("optimizer.base_lr=")]
    args = ["sweep", CONFIG, "-p", f"optimizer.base_lr={lrs}", "--max-parallel", "4", "--name", "big",
            "--executor", "slurm", "--gpus", "1", "--cpus-per-gpu", "1", *tiny, *data_overrides(data_root),
            f"work_dir={work_dir}", "data.batch_per_gpu=2", *PLAN]
    capsys.readouterr()
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    sweep_dir = os.path.join(work_dir, "big")
    doc = json.load(open(os.path.join(sweep_dir, "sweep.json")))
    try:
        first, second = doc["array_job_ids"]
        assert f"6 points as 2 SLURM job arrays {first} (--array=0-4%3, points from 0), " \
               f"{second} (--array=0%1, points from 5)" in out
        assert [(s["task_offset"], s["task_ids"]) for s in doc["submissions"]] == [(0, [0, 1, 2, 3, 4]), (5, [0])]
        jobs = [f"{first}_{i}" for i in range(5)] + [f"{second}_0"]
        for job in jobs:
            fields = wait_for_job(job, timeout_s=600)
            assert fields["JobState"] == "COMPLETED", job
        capsys.readouterr()
        assert cli.main(["sweep", "status", sweep_dir, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        rows = sorted(status["points"], key=lambda r: r["index"])
        assert [(r["point"], r["state"], r["job_id"], r["iteration"]) for r in rows] == [
            (f"p00{i}", "COMPLETED", job, 2) for i, job in enumerate(jobs)]
        assert status["array_job_ids"] == [first, second]
        # the second array's task 0 ran point 5 in its own dir, with point 5's learning rate
        plan = json.load(open(os.path.join(sweep_dir, "p005", "plan.json")))
        assert plan["config"]["optimizer"]["base_lr"] == pytest.approx(0.06)
        assert os.path.exists(os.path.join(sweep_dir, "p005", "checkpoints", "final.pth"))
    finally:
        for array_id in doc["array_job_ids"]:
            subprocess.run(["scancel", array_id], capture_output=True)
