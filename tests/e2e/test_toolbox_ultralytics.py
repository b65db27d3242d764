"""A real ultralytics YOLO (from its yaml, no weights) through `orch submit --executor local`: it trains to
the end, a preemption warning (SIGUSR2) mid-run restarts it from its last.pt, and `orch status` shows its
epochs and mAP. Nothing mocked: the `yolo` command of the installed ultralytics runs."""
import csv
import importlib.util
import glob
import json
import os
import shutil
import signal

import pytest

from jobs.toolbox_job import loadable
from jobutil import data_overrides, make_dataset, read_status, wait_for
from orchestrator import cli, submission

if importlib.util.find_spec("ultralytics") is None:   # never imported here: it patches PIL.Image.open process-wide
    pytest.skip("ultralytics is not installed", allow_module_level=True)
pytestmark = pytest.mark.e2e

CONFIG = """\
name: yolo
trainer: {kind: ultralytics, model: yolov8n.yaml, args: {imgsz: 64, plots: false}}
data: {batch_per_gpu: 8, num_workers: 0}
schedule: {epochs: EPOCHS, warmup_iters: 2, checkpoint_every_epochs: 1, milestones: null}
resources: {gpus: 1, use_cpu: true, executor: local}
"""


@pytest.fixture
def yolo_setup(tmp_path, monkeypatch):
    if shutil.which("yolo") is None:
        pytest.skip("the ultralytics `yolo` command is not on PATH")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-settings"))  # not the user's ~/.config
    data_root = make_dataset(str(tmp_path / "data"), num_train=16, num_val=8, size=64)

    def config(epochs: int) -> str:
        path = tmp_path / f"yolo{epochs}.yml"
        path.write_text(CONFIG.replace("EPOCHS", str(epochs)))
        return str(path)

    return data_root, str(tmp_path / "runs"), config


def results_epochs(run_dir: str) -> list[int]:
    path = os.path.join(run_dir, "ultralytics", "train", "results.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [int(float(row["epoch"])) for row in csv.DictReader(f)]


def log_text(run_dir: str) -> str:
    return "".join(open(p).read() for p in glob.glob(os.path.join(run_dir, "logs", "*.out")))


def test_yolo_trains_to_the_end_and_status_shows_epochs_and_map(yolo_setup, capsys):
    data_root, work_dir, config = yolo_setup
    assert cli.main(["submit", config(2), "--name", "y", f"work_dir={work_dir}", *data_overrides(data_root)]) == 0
    run_dir = os.path.join(work_dir, "y")
    assert os.path.exists(os.path.join(run_dir, "ultralytics", "data", "data.yaml"))   # the YOLO view, at submit
    wait_for(lambda: submission.run_status(run_dir)["state"] not in ("RUNNING", "PENDING"), 240, "the run to end")
    capsys.readouterr()
    assert cli.main(["status", "y", "--work-dir", work_dir, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "COMPLETED", log_text(run_dir)[-3000:]
    assert (status["epoch"], status["max_epochs"], status["kind"]) == (2, 2, "ultralytics")
    assert status["iteration"] == status["max_iters"] > 0
    assert "bbox_mAP" in status["eval"] and 0.0 <= status["eval"]["bbox_mAP"] <= 1.0
    assert status["latest_checkpoint"].endswith("weights/last.pt")
    assert results_epochs(run_dir) == [1, 2]
    assert cli.main(["status", "y", "--work-dir", work_dir]) == 0
    text = capsys.readouterr().out
    assert "epoch      2/2  (ultralytics)" in text and "bbox_mAP" in text


def test_yolo_preempted_mid_run_resumes_from_last_pt(yolo_setup, capsys):
    data_root, work_dir, config = yolo_setup
    epochs = 5
    assert cli.main(["submit", config(epochs), "--name", "p", f"work_dir={work_dir}", *data_overrides(data_root)]) == 0
    run_dir = os.path.join(work_dir, "p")
    launcher_pid = int(submission.run_status(run_dir)["job_id"])
    last_pt = os.path.join(run_dir, "ultralytics", "train", "weights", "last.pt")
    wait_for(lambda: len(results_epochs(run_dir)) >= 1 and os.path.exists(last_pt) and loadable(last_pt), 180,
             "ultralytics' first epoch and its last.pt")
    os.kill(launcher_pid, signal.SIGUSR2)   # SLURM's preemption warning; the local launcher starts it again
    wait_for(lambda: submission.run_status(run_dir)["state"] not in ("RUNNING", "PENDING"), 240, "the run to end")
    status = submission.run_status(run_dir)
    log = log_text(run_dir)
    assert status["state"] == "COMPLETED", log[-3000:]
    assert "got SIGUSR2" in log
    assert "resume=True" in log and "model=" + os.path.join(run_dir, "ultralytics/train/weights/") in log
    epochs_logged = results_epochs(run_dir)
    assert epochs_logged[-1] == epochs and sorted(set(epochs_logged)) == list(range(1, epochs + 1))
    assert epochs_logged.count(1) == 1      # resumed after epoch 1, not started again from scratch
    assert status["epoch"] == epochs and status["max_epochs"] == epochs
    # orch's callback (jobs/ultralytics_train.py) saved last.pt at the warning and exited for the restart
    assert "[orch] preemption warning: saved" in log and "the toolbox exited with 75" in log
    assert "saved a checkpoint at the warning" in (status["note"] or "")     # what the preemption cost
    assert read_status(run_dir)["resumed_from"].endswith(".pt")
