"""`orch submit` against the real one-node SLURM cluster of slurm/ (tiny CPU jobs on fake GPUs).

1. submit → runs → COMPLETED with metrics and a final checkpoint
2. `scontrol requeue JOB` mid-run → requeued, resumed, final weights bitwise equal to (1)
3. `scancel --signal=USR2 JOB` → checkpoint, requeue, no iteration repeated, equal to (1)
4. `scancel JOB` → `orch resume RUN` completes it
5. bad partition / newline in --name / unknown key → clear error, nothing submitted
"""
import json
import os
import subprocess

import pytest

from jobutil import (ROOT, TINY, assert_bitwise_equal, data_overrides, load_weights, read_status,
                     train_iterations, wait_for)
from orchestrator import cli
from slurmutil import job_state, wait_for_job

pytestmark = pytest.mark.cluster
CONFIG = os.path.join(ROOT, "configs", "demo.yml")
PLAN = ["schedule.max_iters=16", "schedule.checkpoint_every_iters=5", "schedule.eval_every_iters=100",
        "data.batch_per_gpu=2", "resources.signal_delay_s=30", "resources.time=00:20:00"]


def submit(work_dir, data_root, name, *extra, capsys=None):
    args = ["submit", CONFIG, "--executor", "slurm", "--partition", "dev", "--gpus", "2", "--name", name,
            "--cpus-per-gpu", "1", *TINY, *data_overrides(data_root), f"work_dir={work_dir}", *PLAN, *extra]
    code = cli.main(args)
    assert code == 0
    with open(os.path.join(work_dir, name, "submissions.json")) as f:
        return json.load(f)["attempts"][-1]["job_id"]


def status(run_dir):
    from orchestrator import submission
    return submission.run_status(run_dir)


def wait_iteration(run_dir, at_least, timeout=300):
    wait_for(lambda: read_status(run_dir).get("iteration", 0) >= at_least, timeout, f"iteration {at_least}")


def wait_completed(run_dir, timeout=600):
    return wait_for(lambda: status(run_dir)["state"] in ("COMPLETED", "FAILED", "CANCELLED") and status(run_dir),
                    timeout, "the run to end")


def log_text(run_dir):
    from orchestrator import submission
    return "".join(open(path).read() for _, path in submission.log_files(run_dir))


@pytest.fixture(scope="module")
def reference(slurm_cluster, work_dir, data_root):
    job_id = submit(work_dir, data_root, "reference")
    run_dir = os.path.join(work_dir, "reference")
    fields = wait_for_job(job_id, timeout_s=600)
    assert fields["JobState"] == "COMPLETED", log_text(run_dir)[-3000:]
    return run_dir


def test_submit_runs_to_completion_with_metrics_and_final_checkpoint(reference):
    s = status(reference)
    assert s["state"] == "COMPLETED" and s["iteration"] == 16 and s["max_iters"] == 16
    assert s["metrics"]["loss"] > 0 and "bbox_mAP" in s["eval"]
    assert s["latest_checkpoint"].endswith("iter_000000016.pth")
    assert os.path.exists(os.path.join(reference, "checkpoints", "final.pth.done"))
    text = log_text(reference)
    assert "CUDA is not usable here: running on CPU with gloo" in text   # fake GPUs → CPU fallback
    assert "run reference on 2 process(es)" in text


def test_scontrol_requeue_resumes_bitwise_equal(reference, work_dir, data_root):
    job_id = submit(work_dir, data_root, "requeued")
    run_dir = os.path.join(work_dir, "requeued")
    wait_iteration(run_dir, 7)   # past the checkpoint at 5
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    fields = wait_for_job(job_id, timeout_s=600)
    assert fields["JobState"] == "COMPLETED", log_text(run_dir)[-3000:]
    assert int(fields["Restarts"]) == 1
    assert "resumed from" in log_text(run_dir)
    assert_bitwise_equal(load_weights(os.path.join(reference, "checkpoints", "final.pth")),
                         load_weights(os.path.join(run_dir, "checkpoints", "final.pth")))


def test_usr2_warning_checkpoints_requeues_and_repeats_nothing(reference, work_dir, data_root):
    job_id = submit(work_dir, data_root, "warned")
    run_dir = os.path.join(work_dir, "warned")
    wait_iteration(run_dir, 3)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    fields = wait_for_job(job_id, timeout_s=600)
    text = log_text(run_dir)
    assert fields["JobState"] == "COMPLETED", text[-3000:]
    assert int(fields["Restarts"]) == 1
    assert "checkpointed at iteration" in text and "requeueing SLURM job" in text
    assert train_iterations(run_dir) == list(range(1, 17))   # each iteration exactly once
    assert_bitwise_equal(load_weights(os.path.join(reference, "checkpoints", "final.pth")),
                         load_weights(os.path.join(run_dir, "checkpoints", "final.pth")))
    assert status(run_dir)["attempt"] == 2


def test_cancel_then_resume_completes(reference, work_dir, data_root, capsys):
    job_id = submit(work_dir, data_root, "cancelled")
    run_dir = os.path.join(work_dir, "cancelled")
    wait_iteration(run_dir, 6)
    assert cli.main(["cancel", run_dir]) == 0
    wait_for_job(job_id, timeout_s=120)
    assert job_state(job_id) == "CANCELLED"
    assert wait_for(lambda: status(run_dir)["state"] == "CANCELLED", 60, "CANCELLED")
    assert cli.main(["resume", run_dir]) == 0
    out = capsys.readouterr().out
    assert "resumed run cancelled (CANCELLED)" in out
    new_job = json.load(open(os.path.join(run_dir, "submissions.json")))["attempts"][-1]["job_id"]
    assert new_job != job_id
    # a second resume while the first is queued or running is refused
    assert cli.main(["resume", run_dir]) == 2
    assert "resumes by itself" in capsys.readouterr().err
    fields = wait_for_job(new_job, timeout_s=600)
    assert fields["JobState"] == "COMPLETED"
    s = status(run_dir)
    assert s["state"] == "COMPLETED" and s["iteration"] == 16 and s["attempt"] == 2
    assert "resumed from" in log_text(run_dir)
    assert_bitwise_equal(load_weights(os.path.join(reference, "checkpoints", "final.pth")),
                         load_weights(os.path.join(run_dir, "checkpoints", "final.pth")))


def _job_count():
    return len(subprocess.run(["squeue", "-h", "-t", "all"], capture_output=True, text=True).stdout.splitlines())


@pytest.mark.parametrize("extra,fragment", [
    (["--partition", "nosuchpartition"], "invalid partition"),
    (["--name", "bad\n#SBATCH --uid=0"], "is not valid"),
    (["optimizer.base_lrr=0.1"], "did you mean 'optimizer.base_lr'"),
])
def test_bad_input_is_a_clear_error_and_nothing_is_submitted(slurm_cluster, work_dir, data_root, capsys,
                                                              extra, fragment):
    before = _job_count()
    name = "badrun"
    args = ["submit", CONFIG, "--executor", "slurm", "--gpus", "2", "--name", name, *TINY,
            *data_overrides(data_root), f"work_dir={work_dir}", *PLAN, *extra]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err
    assert err.count("\n") <= 2   # one paragraph
    assert _job_count() == before
    assert not os.path.exists(os.path.join(work_dir, name))


@pytest.mark.parametrize("odd", ["it's a \"run\";%j %% $HOME #1", "it's a \"run\";%j %% $HOME \\x #1"],
                         ids=["percent", "percent-and-backslash"])
def test_a_run_dir_with_shell_and_slurm_characters_runs_and_shows_its_log(slurm_cluster, tmp_path_factory,
                                                                          data_root, odd):
    """The script from orchestrator/executors/sbatch.py, submitted for real: sbatch reads the quoted
    #SBATCH values back byte for byte, SLURM expands only its own pattern in the batch log (the
    first version let it expand the run dir's %j: JobLaunchFailure), bash hands the quoted run dir
    to the launcher and writes each node's log."""
    work_dir = os.path.join(str(tmp_path_factory.mktemp("odd")), odd)
    args = ["submit", CONFIG, "--executor", "slurm", "--partition", "dev", "--gpus", "2", "--name", "odd",
            "--cpus-per-gpu", "1", *TINY, *data_overrides(data_root), "work_dir=" + json.dumps(work_dir), *PLAN,
            "schedule.max_iters=2"]
    assert cli.main(args) == 0
    run_dir = os.path.join(work_dir, "odd")
    job_id = json.load(open(os.path.join(run_dir, "submissions.json")))["attempts"][-1]["job_id"]
    fields = wait_for_job(job_id, timeout_s=600)
    assert fields["JobState"] == "COMPLETED", log_text(run_dir)[-3000:]
    assert status(run_dir)["state"] == "COMPLETED"
    assert sorted(os.listdir(os.path.join(run_dir, "logs"))) == [f"{job_id}_0_log.out", f"{job_id}_submission.sh"]
    assert "run odd on 2 process(es)" in log_text(run_dir)
