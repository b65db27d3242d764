"""A tiny RT-DETRv2 with an EMA of its weights and the published augmentation (zoom-out, IoU-crop,
multi-scale batches, stop epoch) in orch's loop: a 2-process gloo run interrupted
mid-epoch and resumed ends bitwise equal to the uninterrupted run (weights and EMA), the loss falls
and eval runs."""
import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from jobutil import (ROOT, assert_bitwise_equal, env, make_dataset, make_run, read_status, torchrun,
                     train_iterations, wait_for)

pytestmark = pytest.mark.e2e
pytest.importorskip("transformers")


def detr_extra(name="rtdetr_v2_r18vd"):
    from orchestrator.detr_table import tiny_overrides

    kwargs = yaml.safe_dump(tiny_overrides(name), default_flow_style=True).strip()
    return [f"model.name={name}", "model.min_size=128", "model.max_size=128", f"model.kwargs={kwargs}",
            "model.ema={decay: 0.99, warmup_iters: 5}", "optimizer.name=adamw", "optimizer.base_lr=0.0002",
            "optimizer.lr_scaling=none", "optimizer.weight_decay=0.0001", "optimizer.norm_weight_decay=0",
            "optimizer.clip_grad_norm=0.1", "optimizer.param_groups=[{pattern: backbone, lr_mult: 0.1}]",
            "schedule.warmup_iters=2", "schedule.lr_policy=constant", "schedule.max_iters=12",
            "schedule.checkpoint_every_iters=4", "schedule.eval_every_iters=6", "data.batch_per_gpu=2",
            # the published recipe's augmentation, resumed exactly too: off from epoch 2 (iteration 8)
            "data.augment.zoom_out={p: 0.5, max_scale: 2}", "data.augment.iou_crop={p: 0.8}",
            "data.augment.photometric={brightness: 0.125, contrast: 0.5}",
            "data.augment.multiscale=[96, 128, 160]", "data.augment.stop_epoch=2"]
    # 16 images / (2 x 2) = 4 iterations per epoch


def checkpoint(run_dir):
    import torch

    return torch.load(os.path.join(run_dir, "checkpoints", "final.pth"), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data")), num_train=16, num_val=4, size=128)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    run_dir = make_run(str(tmp_path_factory.mktemp("ref")), "ref", data_root, extra=detr_extra())
    result = torchrun(run_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_tiny_rt_detr_trains_its_loss_falls_and_eval_gives_12_numbers(reference):
    status = read_status(reference)
    assert status["state"] == "COMPLETED" and status["iteration"] == 12
    assert len(status["eval"]) == 12
    losses = [r["loss"] for r in map(json.loads, open(os.path.join(reference, "metrics.jsonl")))
              if r["type"] == "train"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert checkpoint(reference)["ema"]["updates"] == 12


def preempt_resume_and_compare(reference: str, run_dir: str) -> None:
    """USR2 to the launcher at iteration >= 2: it checkpoints, restarts, resumes; every iteration runs once and
    the final weights and EMA equal the uninterrupted reference's bit for bit."""
    launcher = subprocess.Popen([sys.executable, "-m", "jobs.launch", run_dir], cwd=ROOT, env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: read_status(run_dir).get("iteration", 0) >= 2, 300, "iteration 2")
    launcher.send_signal(signal.SIGUSR2)
    out, _ = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, out[-4000:]
    assert "checkpointed at iteration" in out and "resumed from" in out, out[-4000:]
    stopped_at = int(out.split("checkpointed at iteration ")[1].split(";")[0])
    assert 2 <= stopped_at < 12
    assert train_iterations(run_dir) == list(range(1, 13))
    ref, new = checkpoint(reference), checkpoint(run_dir)
    assert_bitwise_equal(ref["model"], new["model"])
    assert_bitwise_equal(ref["ema"]["module"], new["ema"]["module"])
    assert ref["ema"]["updates"] == new["ema"]["updates"] == 12


def test_preempted_and_resumed_is_bitwise_identical_ema_included(reference, data_root, tmp_path):
    run_dir = make_run(str(tmp_path), "preempted", data_root, extra=detr_extra())
    preempt_resume_and_compare(reference, run_dir)
    ref_eval = [r for r in map(json.loads, open(os.path.join(reference, "metrics.jsonl"))) if r["type"] == "eval"]
    new_eval = [r for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl"))) if r["type"] == "eval"]
    assert ref_eval == new_eval and len(ref_eval) == 2


def test_tiny_dfine_trains_from_scratch_with_orch_submit_local(data_root, tmp_path, capsys):
    from jobutil import TINY, data_overrides
    from orchestrator import cli, submission
    from orchestrator.detr_table import tiny_overrides

    work_dir = str(tmp_path / "runs")
    kwargs = yaml.safe_dump(tiny_overrides("dfine_s"), default_flow_style=True).strip()
    overrides = [*TINY, *data_overrides(data_root), f"work_dir={work_dir}", "model.name=dfine_s",
                 "model.min_size=128", "model.max_size=128", f"model.kwargs={kwargs}",
                 "model.ema={decay: 0.99, warmup_iters: 5}", "optimizer.name=adamw", "optimizer.base_lr=0.0002",
                 "optimizer.lr_scaling=none", "optimizer.clip_grad_norm=0.1", "schedule.lr_policy=constant",
                 "schedule.max_iters=12", "schedule.eval_every_iters=12", "data.batch_per_gpu=2"]
    assert cli.main(["submit", os.path.join(ROOT, "configs", "demo.yml"), "--executor", "local", "--gpus", "2",
                     "--name", "dfine", *overrides]) == 0
    assert "submitted run dfine as local job" in capsys.readouterr().out
    run_dir = os.path.join(work_dir, "dfine")
    wait_for(lambda: submission.run_status(run_dir)["state"] in ("COMPLETED", "FAILED"), 600, "the run to end")
    status = read_status(run_dir)
    assert status["state"] == "COMPLETED" and status["iteration"] == 12, status
    assert len(status["eval"]) == 12
    losses = [r["loss"] for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl"))) if r["type"] == "train"]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_tiny_dfine_preempted_and_resumed_is_bitwise_identical_ema_included(data_root, tmp_path):
    """The same exact resume for D-FINE (its FDR/GO-LSD losses and distillation included)."""
    ref_dir = make_run(str(tmp_path / "ref"), "ref", data_root, extra=detr_extra("dfine_n"))
    result = torchrun(ref_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert read_status(ref_dir)["state"] == "COMPLETED"
    run_dir = make_run(str(tmp_path / "new"), "preempted", data_root, extra=detr_extra("dfine_n"))
    preempt_resume_and_compare(ref_dir, run_dir)
