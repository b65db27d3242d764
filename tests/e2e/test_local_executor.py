"""`orch submit --executor local`: fire-and-forget on this machine, status, logs, cancel and resume."""
import json
import os

import pytest

from jobutil import ROOT, TINY, data_overrides, make_dataset, read_status, train_iterations, wait_for
from orchestrator import cli, runs, submission

pytestmark = pytest.mark.e2e
CONFIG = os.path.join(ROOT, "configs", "demo.yml")
PLAN = ["schedule.max_iters=40", "schedule.checkpoint_every_iters=4", "schedule.eval_every_iters=100",
        "data.batch_per_gpu=2"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data")), num_train=16)


def test_local_submit_status_logs_cancel_resume(data_root, tmp_path, capsys):
    work_dir = str(tmp_path / "runs")
    args = ["submit", CONFIG, "--executor", "local", "--gpus", "2", "--name", "loc", *TINY,
            *data_overrides(data_root), f"work_dir={work_dir}", *PLAN]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "submitted run loc as local job" in out            # returns at once: fire-and-forget
    run_dir = os.path.join(work_dir, "loc")
    assert submission.run_status(run_dir)["state"] in ("RUNNING", "PENDING")

    wait_for(lambda: read_status(run_dir).get("iteration", 0) >= 6, 300, "iteration 6")
    assert cli.main(["cancel", "loc", "--work-dir", work_dir]) == 0
    wait_for(lambda: submission.run_status(run_dir)["state"] == "CANCELLED", 120, "CANCELLED")
    stopped = read_status(run_dir)
    assert stopped["state"] == "PREEMPTED" and 6 <= stopped["iteration"] < 40   # it checkpointed on the way out
    assert runs.latest_checkpoint(run_dir).endswith(f"iter_{stopped['iteration']:09d}.pth")

    assert cli.main(["resume", "loc", "--work-dir", work_dir]) == 0
    assert "resumed run loc (CANCELLED)" in capsys.readouterr().out
    wait_for(lambda: submission.run_status(run_dir)["state"] == "COMPLETED", 600, "COMPLETED")

    assert cli.main(["status", "loc", "--work-dir", work_dir, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    for key in ("state", "job_id", "attempt", "iteration", "max_iters", "latest_checkpoint", "metrics"):
        assert key in status
    assert status["state"] == "COMPLETED" and status["iteration"] == 40 and status["attempt"] == 2
    assert status["latest_checkpoint"].endswith("iter_000000040.pth")
    assert read_status(run_dir)["job_id"] == status["job_id"]   # status.json names the job that wrote it
    assert train_iterations(run_dir) == list(range(1, 41))    # nothing repeated across the cancel

    assert cli.main(["logs", "loc", "--work-dir", work_dir]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert cli.main(["runs", "--work-dir", work_dir]) == 0
    assert "loc" in capsys.readouterr().out


def test_resume_refuses_a_completed_or_running_run(data_root, tmp_path, capsys):
    work_dir = str(tmp_path / "runs")
    args = ["submit", CONFIG, "--executor", "local", "--gpus", "1", "--name", "busy", *TINY,
            *data_overrides(data_root), f"work_dir={work_dir}", "schedule.max_iters=3", "data.batch_per_gpu=2"]
    assert cli.main(args) == 0
    run_dir = os.path.join(work_dir, "busy")
    assert cli.main(["resume", run_dir]) == 2
    assert "resumes by itself" in capsys.readouterr().err
    wait_for(lambda: submission.run_status(run_dir)["state"] == "COMPLETED", 300, "COMPLETED")
    assert cli.main(["resume", run_dir]) == 2
    assert "already COMPLETED" in capsys.readouterr().err
