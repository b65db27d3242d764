"""What `orch status` says about jobs on the real one-node SLURM cluster of slurm/ (issue 11, item 5/6):

1. a job behind a busy node: `PENDING (Resources: waiting for free nodes/GPUs)`; held by its user
   (`scontrol uhold`): JobHeldUser in --json's pending_reason/pending_explanation
2. a job id SLURM never knew (a lost record): scontrol forgets, sacct has no accounting here, so
   the run is LOST, `orch cancel` says there is nothing to cancel and `orch resume` resubmits it
"""
import json
import os
import subprocess

import pytest

from jobutil import ROOT, TINY, data_overrides, wait_for
from orchestrator import cli, records, submission
from slurmutil import job_state, show_job, wait_for_job

pytestmark = pytest.mark.cluster
CONFIG = os.path.join(ROOT, "configs", "demo.yml")
PLAN = ["schedule.max_iters=4", "data.batch_per_gpu=2", "resources.time=00:10:00"]


def submit(work_dir, data_root, name):
    args = ["submit", CONFIG, "--executor", "slurm", "--partition", "dev", "--gpus", "1", "--name", name,
            "--cpus-per-gpu", "1", *TINY, *data_overrides(data_root), f"work_dir={work_dir}", *PLAN]
    assert cli.main(args) == 0
    return records.last_attempt(os.path.join(work_dir, name))["job_id"]


@pytest.fixture
def busy_node(slurm_cluster):
    """The node taken by an exclusive job, so that the next one waits."""
    blocker = subprocess.run(["sbatch", "--parsable", "-p", "dev", "--exclusive", "-t", "5", "-o", "/dev/null",
                              "--wrap", "sleep 300"], capture_output=True, text=True, check=True).stdout.strip()
    try:
        wait_for_job(blocker, timeout_s=60, states={"RUNNING"})
        yield blocker
    finally:
        subprocess.run(["scancel", blocker], capture_output=True)


def test_a_waiting_job_shows_why(busy_node, work_dir, data_root, capsys):
    job_id = submit(work_dir, data_root, "waits")
    run_dir = os.path.join(work_dir, "waits")
    try:
        wait_for(lambda: show_job(job_id).get("Reason") in ("Resources", "Priority"), 30, "a pending reason")
        capsys.readouterr()
        assert cli.main(["status", run_dir]) == 0
        out = capsys.readouterr().out
        assert "PENDING (Resources: waiting for free nodes/GPUs)" in out or "PENDING (Priority: " in out, out
        subprocess.run(["scontrol", "uhold", job_id], check=True, capture_output=True, text=True)
        assert cli.main(["status", run_dir, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status["state"] == "PENDING" and status["pending_reason"] == "JobHeldUser"
        assert "scontrol release" in status["pending_explanation"] and status["nodes"] == []
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    wait_for_job(job_id, timeout_s=60)
    assert job_state(job_id) == "CANCELLED"


def test_a_job_slurm_does_not_know_is_lost_then_resumed(slurm_cluster, work_dir, data_root, capsys):
    job_id = submit(work_dir, data_root, "lost")
    subprocess.run(["scancel", job_id], capture_output=True)
    run_dir = os.path.join(work_dir, "lost")
    url = os.path.join(run_dir, "submissions.json")
    record = json.load(open(url))
    record["attempts"][-1]["job_id"] = "987654"          # an id the controller never gave out
    with open(url, "w") as f:
        json.dump(record, f)
    assert submission.run_status(run_dir)["state"] == "LOST"
    capsys.readouterr()
    assert cli.main(["cancel", run_dir]) == 2
    assert "nothing to cancel" in capsys.readouterr().err
    assert cli.main(["resume", run_dir]) == 0
    assert "resumed run lost (LOST)" in capsys.readouterr().out
    new_job = records.last_attempt(run_dir)["job_id"]
    try:
        assert new_job not in (job_id, "987654")
        assert submission.run_status(run_dir)["state"] in ("PENDING", "RUNNING", "COMPLETED")
    finally:
        subprocess.run(["scancel", new_job], capture_output=True)
