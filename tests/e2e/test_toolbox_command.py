"""The `command` trainer kind: a user's own torchrun script (tests/command_train.py) run by `orch submit
--executor local` with 2 gloo processes, orch's numbers in its arguments and the plan in $ORCH_PLAN; a
preemption warning (SIGUSR2) mid-run restarts it with its resume arguments from its last.pt, and it completes."""
import json
import os
import signal

import pytest

from jobutil import ROOT, data_overrides, make_dataset, read_status, wait_for
from orchestrator import cli, submission

pytestmark = pytest.mark.e2e
SCRIPT = os.path.join(ROOT, "tests", "command_train.py")
CONFIG = """\
name: cmd
trainer:
  kind: command
  argv: [{script}, --lr, '{{lr}}', --iters, '{{max_iters}}', --out, '{{output_dir}}', --every, '5']
  resume_args: [--resume, '{{checkpoint}}']
data: {{batch_per_gpu: 2, num_workers: 0}}
schedule: {{max_iters: 30, warmup_iters: 2, milestones: null}}
resources: {{gpus: 2, use_cpu: true, executor: local}}
"""


def metrics(run_dir: str) -> list[dict]:
    path = os.path.join(run_dir, "output", "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [json.loads(line) for line in open(path).read().split("\n")[:-1] if line.strip()]


def test_command_kind_trains_with_two_gloo_processes_and_resumes_after_a_warning(tmp_path, capsys):
    pytest.importorskip("torch")
    data_root = make_dataset(str(tmp_path / "data"), num_train=16, num_val=4, size=64)
    config = tmp_path / "cmd.yml"
    config.write_text(CONFIG.format(script=SCRIPT))
    work_dir = str(tmp_path / "runs")
    assert cli.main(["submit", str(config), "--name", "c", f"work_dir={work_dir}", *data_overrides(data_root)]) == 0
    run_dir = os.path.join(work_dir, "c")
    launcher_pid = int(submission.run_status(run_dir)["job_id"])
    checkpoint = os.path.join(run_dir, "output", "last.pt")
    wait_for(lambda: os.path.exists(checkpoint) and len(metrics(run_dir)) >= 7, 120, "a checkpoint and 7 iterations")
    os.kill(launcher_pid, signal.SIGUSR2)
    wait_for(lambda: submission.run_status(run_dir)["state"] not in ("RUNNING", "PENDING"), 180, "the run to end")

    status = submission.run_status(run_dir)
    log = open(submission.log_files(run_dir)[0][1]).read()
    assert status["state"] == "COMPLETED", log[-3000:]
    assert "torch.distributed.run --nproc-per-node=2" in log and f"--resume {checkpoint}" in log
    iterations = [m["iteration"] for m in metrics(run_dir)]
    first_run_end = next(i for i in range(1, len(iterations)) if iterations[i] <= iterations[i - 1])
    restart_from = iterations[first_run_end] - 1          # the checkpoint's iteration
    assert restart_from % 5 == 0 and 5 <= restart_from <= iterations[first_run_end - 1]
    assert iterations[first_run_end:] == list(range(restart_from + 1, 31))   # continued from last.pt to the end
    assert (status["iteration"], status["max_iters"]) == (30, 30)
    assert status["latest_checkpoint"] == checkpoint and status["best_bbox_mAP"] is not None
    assert read_status(run_dir)["resumed_from"] == checkpoint
    assert "preempted after" in status["note"]
