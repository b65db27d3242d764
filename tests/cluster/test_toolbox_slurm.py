"""A real ultralytics YOLO through `orch submit --executor slurm` on the one-node cluster of slurm/: SLURM's
preemption warning (`scancel --signal=USR2`) mid-run → the launcher requeues the job (`scontrol requeue`) →
the requeued job resumes from ultralytics' last.pt → COMPLETED, with epochs and mAP in `orch status`."""
import importlib.util
import json
import os
import shutil
import subprocess

import pytest

from jobs.toolbox_job import loadable
from jobutil import data_overrides, wait_for
from orchestrator import cli, submission
from slurmutil import wait_for_job

if importlib.util.find_spec("ultralytics") is None:   # never imported here: it patches PIL.Image.open process-wide
    pytest.skip("ultralytics is not installed", allow_module_level=True)
pytestmark = pytest.mark.cluster

CONFIG = """\
name: yolo
trainer: {kind: ultralytics, model: yolov8n.yaml, args: {imgsz: 64, plots: false}}
data: {batch_per_gpu: 8, num_workers: 0}
schedule: {epochs: 4, warmup_iters: 2, checkpoint_every_epochs: 1, milestones: null}
resources: {gpus: 1, use_cpu: true, cpus_per_gpu: 1, signal_delay_s: 30, time: "00:20:00"}
"""


def test_yolo_on_slurm_usr2_requeues_and_resumes_from_last_pt(slurm_cluster, work_dir, data_root, tmp_path,
                                                              monkeypatch):
    if shutil.which("yolo") is None:
        pytest.skip("the ultralytics `yolo` command is not on PATH")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-settings"))   # sbatch passes the environment on
    config = tmp_path / "yolo.yml"
    config.write_text(CONFIG)
    assert cli.main(["submit", str(config), "--executor", "slurm", "--partition", "dev", "--name", "yolo",
                     f"work_dir={work_dir}", *data_overrides(data_root)]) == 0
    run_dir = os.path.join(work_dir, "yolo")
    job_id = submission.run_status(run_dir)["job_id"]
    last_pt = os.path.join(run_dir, "ultralytics", "train", "weights", "last.pt")
    results = os.path.join(run_dir, "ultralytics", "train", "results.csv")
    wait_for(lambda: os.path.exists(results) and len(open(results).read().splitlines()) >= 2
             and os.path.exists(last_pt) and loadable(last_pt), 300, "ultralytics' first epoch and its last.pt")
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    fields = wait_for_job(job_id, timeout_s=600)
    log = "".join(open(path).read() for _, path in submission.log_files(run_dir))
    assert fields["JobState"] == "COMPLETED", log[-3000:]
    assert int(fields.get("Restarts", "0")) == 1                      # requeued once by the launcher
    assert "requeueing SLURM job" in log and "resume=True" in log and f"model={last_pt}" in log
    assert "[orch] preemption warning: saved" in log    # orch's callback saved last.pt at the warning
    status = submission.run_status(run_dir)
    assert status["state"] == "COMPLETED"
    assert (status["epoch"], status["max_epochs"]) == (4, 4) and "bbox_mAP" in status["eval"]
    epochs = [int(float(line.split(",")[0])) for line in open(results).read().splitlines()[1:]]
    assert sorted(set(epochs)) == [1, 2, 3, 4] and epochs.count(1) == 1   # resumed, not started again


def test_yolo_sweep_points_train_and_sweep_status_ranks_them_by_map(slurm_cluster, work_dir, data_root, tmp_path,
                                                                    monkeypatch, capsys):
    if shutil.which("yolo") is None:
        pytest.skip("the ultralytics `yolo` command is not on PATH")
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo-settings"))
    monkeypatch.setenv("ORCH_CACHE_DIR", str(tmp_path / "cache"))
    config = tmp_path / "yolo.yml"
    config.write_text(CONFIG.replace("epochs: 4", "epochs: 2"))
    assert cli.main(["sweep", str(config), "-p", "optimizer.base_lr=0.01,0.02", "--name", "ysweep", "--executor",
                     "slurm", "--partition", "dev", f"work_dir={work_dir}", *data_overrides(data_root)]) == 0
    sweep_dir = os.path.join(work_dir, "ysweep")
    for point in ("p000", "p001"):   # each point's run dir got its own YOLO view at submit
        assert os.path.exists(os.path.join(sweep_dir, point, "ultralytics", "data", "data.yaml"))
    array_id = json.load(open(os.path.join(sweep_dir, "sweep.json")))["array_job_ids"][0]
    for task in (0, 1):
        fields = wait_for_job(f"{array_id}_{task}", timeout_s=600)
        assert fields["JobState"] == "COMPLETED", fields
    capsys.readouterr()
    assert cli.main(["sweep", "status", sweep_dir, "--json"]) == 0
    points = json.loads(capsys.readouterr().out)["points"]
    assert [p["state"] for p in points] == ["COMPLETED", "COMPLETED"]
    assert all(p["best_bbox_mAP"] is not None and p["iteration"] == p["max_iters"] > 0 for p in points)
    maps = [p["best_bbox_mAP"] for p in points]
    assert maps == sorted(maps, reverse=True)                        # best mAP first, like orch's own points
