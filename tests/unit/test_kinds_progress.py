"""Trainer kinds read the toolboxes' own outputs back: progress, mAP, ETA, and the checkpoint to resume from.

The output files are in tests/golden/kinds/outputs (see its README: which were written by the real
toolbox, which by hand in the toolbox's format).
"""
from __future__ import annotations

import os
import shutil
import sys
import uuid

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kinds_util import TRAINERS, plan_doc_for  # noqa: E402

from orchestrator import kinds, storage  # noqa: E402
from orchestrator.errors import OrchError  # noqa: E402

OUTPUTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden", "kinds", "outputs")


def run_with_outputs(tmp_path, kind: str, **plan_args):
    """A run dir holding the recorded outputs of ``kind`` where the kind expects them, and its plan.json dict."""
    doc = plan_doc_for(TRAINERS[kind], **plan_args)
    run_dir = str(tmp_path / "run")
    doc["run_dir"] = run_dir
    shutil.copytree(os.path.join(OUTPUTS, kind), kinds.get(kind).output_dir(run_dir))
    return run_dir, doc


def touch(path: str, content: bytes = b"checkpoint") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(content)
    return path


def test_ultralytics_progress_from_its_results_csv(tmp_path):
    run_dir, doc = run_with_outputs(tmp_path, "ultralytics", gpus=1, train_images=64)  # 16 iterations an epoch
    doc["config"]["schedule"]["epochs"] = 10
    doc["plan"].update(max_iters=160, epochs=10)
    p = kinds.get("ultralytics").progress(run_dir, doc)
    assert (p.epoch, p.max_epochs, p.iteration, p.max_iters) == (3, 10, 48, 160)
    assert p.metrics["train/box_loss"] == 1.17635 and p.metrics["lr/pg0"] == 0.0034 and p.metrics["bbox_mAP_50"] == 0.0
    assert p.status_fields()["eval"] == {"bbox_mAP": 0.0, "bbox_mAP_50": 0.0}
    assert p.bbox_mAP == 0.0 and p.best_bbox_mAP == 0.0  # the real 3-epoch run found nothing yet
    assert p.eta_s == pytest.approx(1.24917 / 3 * 7)
    assert p.latest_checkpoint is None
    last = touch(os.path.join(run_dir, "ultralytics", "train", "weights", "last.pt"))
    assert kinds.get("ultralytics").progress(run_dir, doc).latest_checkpoint == last


def test_ultralytics_eta_uses_the_rate_since_the_last_resume(tmp_path):
    # written by a real run that was resumed from epoch1.pt: its "time" column restarts at the resume
    doc = plan_doc_for(TRAINERS["ultralytics"], gpus=1, train_images=64)
    doc["plan"].update(max_iters=16 * 5, epochs=5)
    run_dir = str(tmp_path / "run")
    os.makedirs(kinds.get("ultralytics").output_dir(run_dir))
    shutil.copy(os.path.join(OUTPUTS, "ultralytics_resumed_results.csv"),
                os.path.join(kinds.get("ultralytics").output_dir(run_dir), "results.csv"))
    p = kinds.get("ultralytics").progress(run_dir, doc)
    assert (p.epoch, p.max_epochs) == (3, 5)
    assert p.eta_s == pytest.approx(0.617635 / 1 * 2)  # one epoch in 0.62 s since the resume, two to go


def test_rtdetr_progress_skips_the_torn_last_line_of_log_txt(tmp_path):
    run_dir, doc = run_with_outputs(tmp_path, "rtdetr", gpus=1)
    p = kinds.get("rtdetr").progress(run_dir, doc)
    assert (p.epoch, p.max_epochs) == (3, 12)  # epochs 0, 1, 2 logged; the 4th line is torn
    assert p.iteration == 3 * doc["plan"]["iters_per_epoch"]
    assert p.bbox_mAP == 0.0655 and p.best_bbox_mAP == 0.0871
    assert p.metrics["bbox_mAP_50"] == pytest.approx(0.0655 * 1.9, abs=1e-6) and p.metrics["train_loss"] == 24.0
    assert "n_parameters" not in p.metrics


def test_rtdetr_progress_from_a_log_txt_the_official_code_wrote(tmp_path):
    doc = plan_doc_for(TRAINERS["rtdetr"], gpus=1, train_images=4)
    doc["plan"].update(max_iters=doc["plan"]["iters_per_epoch"] * 3)
    run_dir = str(tmp_path / "run")
    os.makedirs(kinds.get("rtdetr").output_dir(run_dir))
    shutil.copy(os.path.join(OUTPUTS, "rtdetr_real_log.txt"), os.path.join(kinds.get("rtdetr").output_dir(run_dir), "log.txt"))
    p = kinds.get("rtdetr").progress(run_dir, doc)
    assert (p.epoch, p.max_epochs, p.bbox_mAP, p.best_bbox_mAP) == (3, 3, 0.0, 0.0)  # 3 epochs on 4 images: nothing found
    assert p.metrics["train_lr"] == 0.0025 and "train_loss_vfl_dn_0" in p.metrics and "bbox_mAP_l" in p.metrics


def test_mmdet_progress_spans_the_timestamp_folder_of_every_start(tmp_path):
    run_dir, doc = run_with_outputs(tmp_path, "mmdet", gpus=1, train_images=16)  # 4 iterations an epoch
    doc["plan"].update(max_iters=20, epochs=5)
    p = kinds.get("mmdet").progress(run_dir, doc)
    assert (p.epoch, p.max_epochs, p.iteration, p.max_iters) == (3, 5, 12, 20)
    assert p.bbox_mAP == 0.236 and p.best_bbox_mAP == 0.236 and p.metrics["bbox_mAP_50"] == 0.472
    assert p.eta_s == pytest.approx(0.0009008169174194336 * 8)
    assert p.latest_checkpoint is None  # last_checkpoint names epoch_3.pth, which is not there
    ckpt = touch(os.path.join(run_dir, "mmdet", "epoch_3.pth"))
    assert kinds.get("mmdet").progress(run_dir, doc).latest_checkpoint == ckpt  # found under this run dir


def test_detectron2_progress_from_metrics_json_in_percent(tmp_path):
    run_dir, doc = run_with_outputs(tmp_path, "detectron2", gpus=1)
    p = kinds.get("detectron2").progress(run_dir, doc)
    assert (p.iteration, p.max_iters) == (126, doc["plan"]["max_iters"])
    assert p.bbox_mAP == pytest.approx(0.1025) and p.best_bbox_mAP == pytest.approx(0.125)
    assert p.metrics["bbox_mAP_50"] == pytest.approx(0.22) and p.metrics["total_loss"] == 20.9
    assert p.eta_s == 2030.0


def test_command_progress_from_its_metrics_lines(tmp_path):
    doc = plan_doc_for(TRAINERS["command"], gpus=1)
    doc["run_dir"] = run_dir = str(tmp_path / "run")
    touch(os.path.join(run_dir, "output", "metrics.jsonl"),
          b'{"iteration": 50, "loss": 1.5}\n{"iteration": 100, "bbox_mAP": 0.31, "eta_s": 12.5}\n'
          b'{"iteration": 150, "loss": 0.9}\n{"iteration": 2')
    p = kinds.get("command").progress(run_dir, doc)
    assert (p.iteration, p.bbox_mAP, p.best_bbox_mAP, p.eta_s) == (150, 0.31, 0.31, 12.5)
    assert p.metrics["loss"] == 0.9 and p.latest_checkpoint is None


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_a_run_that_has_not_written_anything_yet_shows_no_progress(tmp_path, kind):
    doc = plan_doc_for(TRAINERS[kind], gpus=1)
    p = kinds.get(kind).progress(str(tmp_path / "empty"), doc)
    assert p.kind == kind and p.bbox_mAP is None and p.latest_checkpoint is None and not p.iteration


def test_progress_reads_through_the_storage_seam():
    doc = plan_doc_for(TRAINERS["rtdetr"], gpus=1)
    run_dir = f"memory://kinds-{uuid.uuid4().hex}/run"
    with open(os.path.join(OUTPUTS, "rtdetr", "log.txt"), "rb") as f:
        storage.write_bytes(storage.join(run_dir, "rtdetr", "log.txt"), f.read())
    storage.write_bytes(storage.join(run_dir, "rtdetr", "checkpoint0001.pth"), b"x")
    p = kinds.get("rtdetr").progress(run_dir, doc)
    assert (p.epoch, p.bbox_mAP, p.latest_checkpoint) == (3, 0.0655, storage.join(run_dir, "rtdetr", "checkpoint0001.pth"))


# --- resume: the toolbox's own newest checkpoint that loads ----------------------------------------------

def loads_unless(torn: set[str]):
    return lambda url: os.path.basename(url) not in torn


@pytest.mark.parametrize("kind,files,torn,expected", [
    ("rtdetr", ["last.pth", "checkpoint0000.pth", "checkpoint0001.pth", "checkpoint0011.pth", "best.pth"],
     set(), "last.pth"),
    ("rtdetr", ["last.pth", "checkpoint0000.pth", "checkpoint0001.pth", "checkpoint0011.pth", "best.pth"],
     {"last.pth"}, "checkpoint0011.pth"),
    ("rtdetr", ["last.pth", "checkpoint0000.pth", "checkpoint0001.pth", "checkpoint0011.pth"],
     {"last.pth", "checkpoint0011.pth"}, "checkpoint0001.pth"),
    ("rtdetr", ["last.pth"], {"last.pth"}, None),
    ("ultralytics", ["weights/last.pt", "weights/epoch0.pt", "weights/epoch1.pt", "weights/best.pt"],
     {"last.pt"}, "weights/epoch1.pt"),
    ("mmdet", ["epoch_1.pth", "epoch_2.pth", "epoch_3.pth"], {"epoch_3.pth"}, "epoch_2.pth"),
    ("mmdet", ["epoch_1.pth", "epoch_2.pth", "epoch_3.pth"], set(), "epoch_3.pth"),
    ("detectron2", ["model_0000062.pth", "model_0000125.pth", "model_final.pth"], set(), "model_0000125.pth"),
    ("detectron2", ["model_0000062.pth", "model_0000125.pth"], {"model_0000125.pth"}, "model_0000062.pth"),
])
def test_resume_checkpoint_falls_back_past_torn_files(tmp_path, kind, files, torn, expected):
    run_dir, doc = (run_with_outputs(tmp_path, kind, gpus=1) if kind in ("mmdet", "detectron2")
                    else (str(tmp_path / "run"), plan_doc_for(TRAINERS[kind], gpus=1)))
    out = kinds.get(kind).output_dir(run_dir)
    for name in files:
        touch(os.path.join(out, name))
    found = kinds.get(kind).resume_checkpoint(run_dir, doc, loadable=loads_unless(torn))
    assert found == (os.path.join(out, expected) if expected else None)


def test_without_a_loader_an_empty_file_does_not_count(tmp_path):
    out = kinds.get("rtdetr").output_dir(str(tmp_path))
    touch(os.path.join(out, "last.pth"), b"")
    touch(os.path.join(out, "checkpoint0004.pth"))
    assert kinds.get("rtdetr").resume_checkpoint(str(tmp_path)) == os.path.join(out, "checkpoint0004.pth")


def test_a_torn_last_pth_written_by_torch_falls_back_with_a_torch_loader(tmp_path):
    torch = pytest.importorskip("torch")

    def loadable(url: str) -> bool:
        try:
            torch.load(url, map_location="cpu", weights_only=True)
            return True
        except Exception:
            return False

    out = kinds.get("rtdetr").output_dir(str(tmp_path))
    os.makedirs(out)
    state = {"model": {"w": torch.zeros(1000)}, "last_epoch": 4}
    torch.save(state, os.path.join(out, "checkpoint0004.pth"))
    torch.save(state, os.path.join(out, "last.pth"))
    with open(os.path.join(out, "last.pth"), "r+b") as f:  # a kill in the middle of the in-place write
        f.truncate(os.path.getsize(f.name) // 2)
    assert kinds.get("rtdetr").resume_checkpoint(str(tmp_path), loadable=loadable) == os.path.join(out, "checkpoint0004.pth")


def test_command_resumes_from_its_checkpoint_template(tmp_path):
    doc = plan_doc_for(dict(TRAINERS["command"], checkpoint="{run_dir}/ckpt/latest-{seed}.pt"), gpus=1)
    doc["run_dir"] = run_dir = str(tmp_path)
    assert kinds.get("command").resume_checkpoint(run_dir, doc) is None
    ckpt = touch(os.path.join(run_dir, "ckpt", "latest-0.pt"))
    assert kinds.get("command").resume_checkpoint(run_dir, doc) == ckpt
    assert kinds.get("command").resume_checkpoint(run_dir, doc, loadable=lambda url: False) is None


# --- the command kind's placeholders ---------------------------------------------------------------------

@pytest.mark.parametrize("argv,resume_args,needle", [
    (["train.py", "--iters", "{max_iter}"], [], r"unknown placeholder \{max_iter\}; did you mean \{max_iters\}\?"),
    (["train.py", "--from", "{checkpoint}"], [], r"\{checkpoint\}, which exists only in trainer.resume_args"),
    (["train.py", "--lr", "{lr"], [], r"trainer.argv\[2\] = '\{lr' is not a valid template"),
    (["train.py"], ["--resume", "{ckpt}"], r"trainer.resume_args\[1\] .* did you mean \{checkpoint\}\?"),
])
def test_command_placeholders_are_checked_before_queueing(argv, resume_args, needle):
    doc = plan_doc_for(dict(TRAINERS["command"], argv=argv, resume_args=resume_args), gpus=2)
    with pytest.raises(OrchError, match=needle):
        kinds.get("command").check(doc["config"], doc["plan"])


def test_command_placeholders_take_format_specs_and_literal_braces():
    trainer = dict(TRAINERS["command"], argv=["t.py", "--lr={lr:.3e}", "{{literal}}", "--n={gpus}x{batch_per_gpu}"],
                   launcher="self", cwd="{run_dir}/work")
    doc = plan_doc_for(trainer, gpus=2)
    kinds.get("command").check(doc["config"], doc["plan"])
    cmd = kinds.get("command").node_command(doc, {"node_rank": 0, "nodes": 1, "first_node": "h", "port": 1})
    assert cmd.argv == ["t.py", "--lr=1.000e-02", "{literal}", "--n=2x4"]
    assert (cmd.launcher, cmd.cwd, cmd.env["ORCH_PLAN"]) == ("self", "/runs/demo/work", "/runs/demo/plan.json")


def test_command_under_torchrun_refuses_a_python_in_front_of_the_script():
    doc = plan_doc_for(dict(TRAINERS["command"], argv=["/venv/bin/python3", "train.py"]), gpus=2)
    with pytest.raises(OrchError, match=r"torchrun runs the script under python itself; drop it"):
        kinds.get("command").check(doc["config"], doc["plan"])


def test_progress_fills_the_status_fields_orch_status_shows(tmp_path):
    run_dir, doc = run_with_outputs(tmp_path, "detectron2", gpus=1)
    fields = kinds.get("detectron2").progress(run_dir, doc).status_fields()
    assert fields["iteration"] == 126 and fields["eta_s"] == 2030.0 and fields["best_bbox_mAP"] == pytest.approx(0.125)
    assert fields["eval"]["bbox_mAP"] == pytest.approx(0.1025) and fields["eval"]["bbox_mAP_50"] == pytest.approx(0.22)
    assert "bbox_mAP" not in fields["metrics"] and fields["metrics"]["total_loss"] == 20.9


def test_command_single_launcher_refuses_more_than_one_gpu():
    doc = plan_doc_for(dict(TRAINERS["command"], launcher="single"), gpus=2)
    with pytest.raises(OrchError, match="launcher: self"):
        kinds.get("command").check(doc["config"], doc["plan"])
