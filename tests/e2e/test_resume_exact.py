"""The bar: a 2-process gloo run interrupted mid-epoch and resumed ends bitwise equal to the same
run uninterrupted, with identical eval metrics and no iteration repeated or lost."""
import json
import os
import signal
import subprocess
import sys

import pytest

from jobutil import (ROOT, assert_bitwise_equal, env, load_weights, make_dataset, make_run, read_status,
                     torchrun, train_iterations, wait_for)

pytestmark = pytest.mark.e2e
EXTRA = ["schedule.max_iters=14", "schedule.checkpoint_every_iters=4", "schedule.eval_every_iters=7",
         "data.batch_per_gpu=2"]   # 32 images / (2 x 2) = 8 iterations per epoch


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data")), num_train=32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    run_dir = make_run(str(tmp_path_factory.mktemp("ref")), "ref", data_root, extra=EXTRA)
    result = torchrun(run_dir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return run_dir


def test_uninterrupted_run_completes_with_metrics(reference):
    status = read_status(reference)
    assert status["state"] == "COMPLETED" and status["iteration"] == 14
    assert train_iterations(reference) == list(range(1, 15))
    assert os.path.exists(os.path.join(reference, "checkpoints", "final.pth.done"))
    assert 0.0 <= status["eval"]["bbox_mAP"] <= 1.0
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(os.path.join(reference, "tb")))


def test_preempted_mid_epoch_and_resumed_is_bitwise_identical(reference, data_root, tmp_path):
    run_dir = make_run(str(tmp_path), "preempted", data_root, extra=EXTRA)
    # the local launcher: on SIGUSR2 the workers checkpoint at the next step and torchrun starts again
    launcher = subprocess.Popen([sys.executable, "-m", "jobs.launch", run_dir], cwd=ROOT, env=env(),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(lambda: read_status(run_dir).get("iteration", 0) >= 3, 300, "iteration 3")
    launcher.send_signal(signal.SIGUSR2)
    out, _ = launcher.communicate(timeout=600)
    assert launcher.returncode == 0, out[-4000:]
    assert "checkpointed at iteration" in out and "resumed from" in out, out[-4000:]
    stopped_at = int(out.split("checkpointed at iteration ")[1].split(";")[0])
    assert 3 <= stopped_at < 14 and stopped_at % 8 != 0 or stopped_at == 8

    # nothing repeated, nothing lost: each iteration logged exactly once
    assert train_iterations(run_dir) == list(range(1, 15))
    assert_bitwise_equal(load_weights(os.path.join(reference, "checkpoints", "final.pth")),
                         load_weights(os.path.join(run_dir, "checkpoints", "final.pth")))
    ref_eval = [r for r in map(json.loads, open(os.path.join(reference, "metrics.jsonl"))) if r["type"] == "eval"]
    new_eval = [r for r in map(json.loads, open(os.path.join(run_dir, "metrics.jsonl"))) if r["type"] == "eval"]
    assert ref_eval == new_eval and len(ref_eval) == 2


def test_resume_refuses_a_different_plan(reference, data_root, tmp_path):
    import shutil

    run_dir = make_run(str(tmp_path), "other", data_root, extra=EXTRA + ["optimizer.base_lr=0.02"])
    shutil.copytree(os.path.join(reference, "checkpoints"), os.path.join(run_dir, "checkpoints"))
    result = torchrun(run_dir, nproc=2)
    assert result.returncode != 0
    assert "written with another plan" in result.stdout + result.stderr
    assert read_status(run_dir)["state"] == "FAILED"


def test_non_finite_loss_stops_with_the_loss_dict_after_checkpointing(data_root, tmp_path):
    run_dir = make_run(str(tmp_path), "diverges", data_root, gpus=1,
                       extra=["schedule.max_iters=30", "schedule.warmup_iters=0", "optimizer.base_lr=1e12",
                              "data.batch_per_gpu=2", "schedule.checkpoint_every_iters=1000"])
    result = torchrun(run_dir, nproc=1)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert "non-finite loss at iteration" in out and "classification" in out and "bbox_regression" in out
    status = read_status(run_dir)
    assert status["state"] == "FAILED" and "non-finite loss" in status["error"]
    stopped = int(status["error"].split("checkpointed at iteration ")[1].split(".")[0])
    assert os.path.exists(os.path.join(run_dir, "checkpoints", f"iter_{stopped:09d}.pth.done"))


def test_starting_with_another_process_count_is_a_clear_error(data_root, tmp_path):
    run_dir = make_run(str(tmp_path), "wrongsize", data_root, extra=EXTRA)   # planned for 2
    result = torchrun(run_dir, nproc=1)
    assert result.returncode != 0
    assert "planned for 2 processes (GPUs) but was started with 1" in result.stdout + result.stderr
    assert read_status(run_dir)["state"] == "FAILED"
