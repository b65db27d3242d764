"""orch's mmengine hook with a real mmengine Runner (toy model and data, CPU): a SIGUSR2 sent to the
process mid-run makes it save at the next iteration through mmengine's own checkpoint API, point
last_checkpoint at it and exit EXIT_REQUEUE; a second start with --resume continues from that
iteration. The hook goes in exactly as the mmdet kind's command line puts it (--cfg-options), and
the config's own custom_hooks keep running."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from jobs.preemption import EXIT_REQUEUE
from orchestrator import procfs
from orchestrator.kinds import mmdet

pytest.importorskip("mmengine")
pytestmark = pytest.mark.e2e

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mmengine_toy_train.py")
MAX_ITERS = 60
STARTED: list = []
CONFIG = {
    "model": {"type": "ToyModel"},
    "train_dataloader": {"dataset": {"type": "ToyDataset"}, "sampler": {"type": "DefaultSampler", "shuffle": False},
                         "batch_size": 2, "num_workers": 0, "collate_fn": {"type": "default_collate"}},
    "train_cfg": {"by_epoch": False, "max_iters": MAX_ITERS},
    "optim_wrapper": {"optimizer": {"type": "SGD", "lr": 0.01}},
    # a checkpoint every 1000 iterations: none would exist when the warning comes, but for orch's hook
    "default_hooks": {"checkpoint": {"type": "CheckpointHook", "interval": 1000, "by_epoch": False}},
    "custom_hooks": [{"type": "RecordIterHook"}],
    "env_cfg": {"dist_cfg": {"backend": "gloo"}},
    "log_level": "WARNING",
}


def start(tmp_path, work_dir, resume=False, toy_config=CONFIG, ranks=1):
    config = tmp_path / "toy.json"
    config.write_text(json.dumps(toy_config))
    argv = [sys.executable, SCRIPT, str(config), "--work-dir", str(work_dir)] + (["--resume"] if resume else [])
    if ranks > 1:   # torchrun's agent as orch runs it for its own trainer: it ignores the warning
        argv = [sys.executable, "-m", "jobs.torchrun_wrapper", "--standalone", "--nnodes=1", f"--nproc-per-node={ranks}",
                "--max-restarts=0", *argv[1:], "--launcher", "pytorch"]
    argv += ["--cfg-options", f"{mmdet.HOOK_KEY}={mmdet.HOOK_TYPE}"]
    env = {**os.environ, "PYTHONPATH": mmdet.ORCH_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    STARTED.append(proc)
    return proc


@pytest.fixture(autouse=True)
def kill_leftovers():
    """A failed test must not leave its training behind (it ignores SIGTERM: the hook's flag)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            for pid in [proc.pid] + procfs.descendants(proc.pid):   # torchrun's workers: sessions of their own
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait()


def trained_iters(work_dir):
    path = work_dir / "iters.txt"
    return [int(line) for line in path.read_text().split()] if path.exists() else []


def test_sigusr2_saves_at_the_next_iteration_and_resume_continues_there(tmp_path):
    work_dir = tmp_path / "work"
    proc = start(tmp_path, work_dir)
    deadline = time.monotonic() + 60
    while len(trained_iters(work_dir)) < 5:   # mid-run: a few iterations done, most still to go
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == EXIT_REQUEUE, out[-3000:]
    done = trained_iters(work_dir)
    saved_at = done[-1]
    assert 5 <= saved_at < MAX_ITERS
    pointer = (work_dir / "last_checkpoint").read_text()
    assert pointer == str(work_dir / f"preempted_iter_{saved_at}.pth")

    import torch
    meta = torch.load(pointer, map_location="cpu", weights_only=False)["meta"]
    assert meta["iter"] == saved_at

    proc = start(tmp_path, work_dir, resume=True)
    out = proc.communicate(timeout=90)[0]
    assert proc.returncode == 0, out[-3000:]
    # the resumed run trains iteration saved_at + 1 first and goes on to the end: nothing repeated, nothing skipped
    assert trained_iters(work_dir) == list(range(1, MAX_ITERS + 1))


def test_an_epoch_based_loop_trains_the_interrupted_epoch_again_from_the_saved_weights(tmp_path):
    # mmengine's EpochBasedTrainLoop restarts an epoch at its first batch: the checkpoint records the epoch's start
    epoch_config = dict(CONFIG, train_cfg={"by_epoch": True, "max_epochs": 2},
                        default_hooks={"checkpoint": {"type": "CheckpointHook", "interval": 1000}})
    iters_per_epoch = 32   # 64 samples, batch 2
    work_dir = tmp_path / "work"
    proc = start(tmp_path, work_dir, toy_config=epoch_config)
    deadline = time.monotonic() + 60
    while len(trained_iters(work_dir)) < iters_per_epoch + 3:   # a few iterations into the second epoch
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR2)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == EXIT_REQUEUE, out[-3000:]
    stopped_at = trained_iters(work_dir)[-1]
    assert iters_per_epoch < stopped_at < 2 * iters_per_epoch
    pointer = (work_dir / "last_checkpoint").read_text()
    assert pointer == str(work_dir / f"preempted_iter_{iters_per_epoch}.pth")
    proc = start(tmp_path, work_dir, resume=True, toy_config=epoch_config)
    out = proc.communicate(timeout=90)[0]
    assert proc.returncode == 0, out[-3000:]
    # the second epoch again from its first batch, iteration numbers in step with the schedule
    assert trained_iters(work_dir) == list(range(1, stopped_at + 1)) + list(range(iters_per_epoch + 1,
                                                                                2 * iters_per_epoch + 1))


def test_two_ranks_save_and_stop_at_the_same_iteration_when_one_got_the_warning(tmp_path):
    work_dir = tmp_path / "work"
    proc = start(tmp_path, work_dir, ranks=2)
    deadline = time.monotonic() + 90
    while len(trained_iters(work_dir)) < 5:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    os.kill(int((work_dir / "pid-rank1").read_text()), signal.SIGUSR2)   # rank 1 alone: the ranks must agree
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == EXIT_REQUEUE, out[-3000:]
    rank0 = trained_iters(work_dir)
    rank1 = [int(line) for line in (work_dir / "iters-rank1.txt").read_text().split()]
    assert rank0 == rank1 and 5 <= rank0[-1] < MAX_ITERS
    assert (work_dir / "last_checkpoint").read_text() == str(work_dir / f"preempted_iter_{rank0[-1]}.pth")
