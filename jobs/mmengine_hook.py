"""An mmengine hook that saves a checkpoint at the preemption warning (trainer kind ``mmdet``).

The ``mmdet`` kind adds ``--cfg-options default_hooks.orch_preemption.type=jobs.mmengine_hook.PreemptionCheckpointHook``
(mmengine resolves a dotted ``type`` by importing it; ``PYTHONPATH`` names orch's checkout), so the
user's config and ``custom_hooks`` stay as they are. Only a toolbox job imports this module: it
imports mmengine and torch.

SIGUSR2 (SLURM's warning, passed on by :mod:`jobs.launch`) only sets a flag
(:mod:`jobs.preemption`). After the next training iteration every rank agrees on the flag, rank 0
saves through mmengine's own ``runner.save_checkpoint`` into the work_dir and then points
``last_checkpoint`` at it (so ``--resume`` picks it), and the process exits with
:data:`jobs.preemption.EXIT_REQUEUE`, which the launcher requeues.

An ``IterBasedTrainLoop`` resumes exactly at the saved iteration (mmengine skips the batches it
trained). An ``EpochBasedTrainLoop`` always restarts an interrupted epoch at its first batch: the
checkpoint keeps the weights and records the iteration of the epoch's start, so the resumed run
repeats that epoch's batches (on weights that saw some of them) with its schedule in step.
"""
from __future__ import annotations

import os

from mmengine.dist import all_reduce, barrier, get_comm_device, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.runner.loops import IterBasedTrainLoop

from jobs import preemption

FILENAME = "preempted_iter_{}.pth"


def write_pointer(work_dir: str, checkpoint_path: str) -> None:
    """``last_checkpoint`` names the new file only once it is complete (write, then rename)."""
    pointer = os.path.join(work_dir, "last_checkpoint")
    with open(pointer + ".tmp", "w") as f:
        f.write(checkpoint_path)
    os.replace(pointer + ".tmp", pointer)


class PreemptionCheckpointHook(Hook):
    """Save and stop at the first iteration boundary after a preemption warning."""

    priority = "LOWEST"   # after CheckpointHook and the loggers of the same iteration

    def __init__(self) -> None:
        self.flag = preemption.install()

    def _warned_everywhere(self) -> bool:
        """True on every rank once any rank got the warning (ranks must save and stop at the same iteration)."""
        if get_world_size() == 1:
            return self.flag.requested
        import torch

        warned = torch.tensor([1 if self.flag.requested else 0], device=get_comm_device())
        all_reduce(warned, op="sum")
        return bool(warned.item())

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if not self._warned_everywhere():
            return
        if isinstance(runner.train_loop, IterBasedTrainLoop):
            epoch, iteration = runner.epoch, runner.iter + 1
        else:   # the epoch restarts at its first batch on resume: record where it started
            epoch, iteration = runner.epoch, runner.iter + 1 - (batch_idx + 1)
        filename = FILENAME.format(iteration)
        runner.logger.warning(f"preemption warning: saving {filename} and stopping for a requeue")
        runner.save_checkpoint(runner.work_dir, filename, meta={"epoch": epoch, "iter": iteration})
        if is_main_process():
            write_pointer(runner.work_dir, os.path.join(runner.work_dir, filename))
        barrier()
        preemption.ignore_from_now_on()   # the launcher sends the warning again until this process is gone
        raise SystemExit(preemption.EXIT_REQUEUE)
