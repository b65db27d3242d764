"""The official RT-DETR code (a user's checkout, run as a program) through `orch submit --executor local`:
one CPU process on 64 px images; killed (`orch cancel`) and `orch resume`d from its last.pth, then killed
again and resumed from the previous checkpoint when last.pth is torn; it completes, and `orch status` shows
its epochs and mAP. The checkout: $ORCH_RTDETR_ROOT, else ../shared/thirdparty/rtdetrv2_pytorch."""
import json
import os
import glob

import pytest

from orchestrator.toolbox import checkpoint_loads as loadable
from jobutil import ROOT, data_overrides, make_dataset, wait_for
from orchestrator import cli, submission

pytest.importorskip("faster_coco_eval")   # the RT-DETR code's own requirements
pytest.importorskip("scipy")
pytestmark = pytest.mark.e2e
RTDETR_ROOT = os.environ.get("ORCH_RTDETR_ROOT") or os.path.join(os.path.dirname(ROOT), "shared", "thirdparty",
                                                                    "rtdetrv2_pytorch")

# the user's own config on top of the official one: no pretrained backbone, 64 px, few queries
RTDETR_CONFIG = """\
__include__: ['{root}/configs/rtdetrv2/rtdetrv2_r18vd_120e_coco.yml']
PResNet: {{pretrained: False}}
eval_spatial_size: [64, 64]
use_amp: False
RTDETRTransformerv2: {{num_queries: 30}}
RTDETRPostProcessor: {{num_top_queries: 30}}
train_dataloader:
  dataset:
    transforms:
      ops:
        - {{type: Resize, size: [64, 64]}}
        - {{type: ConvertPILImage, dtype: 'float32', scale: True}}
        - {{type: ConvertBoxes, fmt: 'cxcywh', normalize: True}}
      policy: {{name: stop_epoch, epoch: 100, ops: []}}
  collate_fn: {{scales: ~}}
val_dataloader:
  dataset:
    transforms:
      ops:
        - {{type: Resize, size: [64, 64]}}
        - {{type: ConvertPILImage, dtype: 'float32', scale: True}}
"""
ORCH_CONFIG = """\
name: rt
trainer: {{kind: rtdetr, root: {root}, config: {config}, num_classes: 4}}
data: {{batch_per_gpu: 4, num_workers: 0}}
schedule: {{epochs: 3, warmup_iters: 2, checkpoint_every_epochs: 1, milestones: null}}
resources: {{gpus: 1, use_cpu: true, executor: local}}
"""


def epochs_logged(out_dir: str) -> list[int]:
    path = os.path.join(out_dir, "log.txt")
    if not os.path.exists(path):
        return []
    return [json.loads(line)["epoch"] for line in open(path).read().split("\n")[:-1] if line.strip()]


def launch_lines(run_dir: str) -> list[str]:
    lines = []
    for path in sorted(glob.glob(os.path.join(run_dir, "logs", "*.out")), key=os.path.getmtime):
        lines += [line for line in open(path) if line.startswith("[orch launch] node 0")]
    return lines


def test_rtdetr_killed_resumes_from_last_pth_then_from_the_previous_checkpoint(tmp_path, capsys):
    if not os.path.exists(os.path.join(RTDETR_ROOT, "tools", "train.py")):
        pytest.skip(f"no RT-DETR checkout at {RTDETR_ROOT} (set ORCH_RTDETR_ROOT)")
    data_root = make_dataset(str(tmp_path / "data"), num_train=16, num_val=4, size=64)
    user_config = tmp_path / "tiny_rtdetr.yml"
    user_config.write_text(RTDETR_CONFIG.format(root=RTDETR_ROOT))
    config = tmp_path / "rt.yml"
    config.write_text(ORCH_CONFIG.format(root=RTDETR_ROOT, config=user_config))
    work_dir = str(tmp_path / "runs")
    run_dir, out_dir = os.path.join(work_dir, "rt"), os.path.join(work_dir, "rt", "rtdetr")

    def kill_after_epoch(epoch: int) -> None:
        checkpoint = os.path.join(out_dir, f"checkpoint{epoch:04d}.pth")
        wait_for(lambda: epoch in epochs_logged(out_dir) and loadable(checkpoint), 240, f"epoch {epoch}")
        assert cli.main(["cancel", "rt", "--work-dir", work_dir]) == 0
        wait_for(lambda: submission.run_status(run_dir)["state"] == "CANCELLED", 60, "CANCELLED")

    assert cli.main(["submit", str(config), "--name", "rt", f"work_dir={work_dir}", *data_overrides(data_root)]) == 0
    kill_after_epoch(0)
    capsys.readouterr()
    assert cli.main(["resume", "rt", "--work-dir", work_dir]) == 0
    assert f"from {out_dir}/last.pth" in capsys.readouterr().out
    wait_for(lambda: len(launch_lines(run_dir)) == 2, 30, "the second start")
    assert f"-r {out_dir}/last.pth" in launch_lines(run_dir)[1]

    kill_after_epoch(1)
    with open(os.path.join(out_dir, "last.pth"), "r+b") as f:   # a kill during its in-place torch.save
        f.truncate(os.path.getsize(os.path.join(out_dir, "last.pth")) // 2)
    capsys.readouterr()
    assert cli.main(["resume", "rt", "--work-dir", work_dir]) == 0
    assert f"from {out_dir}/checkpoint0001.pth" in capsys.readouterr().out   # what it will resume from
    wait_for(lambda: submission.run_status(run_dir)["state"] not in ("RUNNING", "PENDING"), 240, "the run to end")
    third = launch_lines(run_dir)[2]
    assert f"-r {out_dir}/checkpoint0001.pth" in third and "last.pth" not in third

    capsys.readouterr()
    assert cli.main(["status", "rt", "--work-dir", work_dir, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "COMPLETED", open(glob.glob(os.path.join(run_dir, "logs", "*.out"))[-1]).read()[-3000:]
    assert (status["epoch"], status["max_epochs"], status["kind"], status["attempt"]) == (3, 3, "rtdetr", 3)
    assert 0.0 <= status["eval"]["bbox_mAP"] <= 1.0 and status["best_bbox_mAP"] is not None
    assert epochs_logged(out_dir) == [0, 1, 2]    # each epoch once: every resume continued where it stopped
