"""``yolo`` with orch's preemption callback (trainer kind ``ultralytics``): ``python -m jobs.ultralytics_train
detect train key=value …`` is ultralytics' own ``yolo detect train key=value …`` plus one callback.

Run in the toolbox's own environment (a process of its own; the ``orchestrator`` package never
imports ultralytics). SIGUSR2 (SLURM's warning, passed on by :mod:`jobs.launch`) only sets a flag
(:mod:`jobs.preemption`); after the next training batch the callback saves ``weights/last.pt``
through the trainer's own ``save_model()`` and exits with EXIT_REQUEUE, which the launcher requeues.
ultralytics resumes whole epochs only (``start_epoch = ckpt["epoch"] + 1``): the checkpoint records
the epoch before the interrupted one, so the resumed run trains that epoch again, from weights that
kept the batches trained before the warning. A warning in the first epoch (no epoch to resume
after) stops without saving. Under DDP (``device=0,1,…``) ultralytics starts its workers from a
script of its own, without this callback: there the work since the last ``last.pt`` is lost.
"""
from __future__ import annotations

import sys

from jobs import preemption

EXIT_NOTHING_SAVED = 1   # a failure to the launcher's decide(), which still requeues a warned toolbox


def save_at_warning(trainer) -> None:
    """``on_train_batch_end``: on the warning, save ``last.pt`` the way ultralytics does and stop."""
    if not preemption.install().requested:
        return
    preemption.ignore_from_now_on()   # the launcher sends the warning again until this process is gone
    if trainer.epoch == 0:
        print("[orch] preemption warning in the first epoch: nothing to resume after, stopping", flush=True)
        sys.exit(EXIT_NOTHING_SAVED)
    epoch, save_period, fitness = trainer.epoch, trainer.save_period, trainer.fitness
    # the epoch before this one, so that ultralytics' resume trains this one again; no epochN.pt / best.pt copy
    trainer.epoch, trainer.save_period, trainer.fitness = epoch - 1, -1, float("nan")
    try:
        trainer.save_model()
    finally:
        trainer.epoch, trainer.save_period, trainer.fitness = epoch, save_period, fitness
    print(f"[orch] preemption warning: saved {trainer.last} in epoch {epoch + 1} (trained again on resume); "
          f"stopping for a requeue", flush=True)
    sys.exit(preemption.EXIT_REQUEUE)


def main(argv: list[str]) -> None:
    preemption.install()   # before ultralytics' imports (seconds): a warning meanwhile must not kill the process
    from ultralytics.cfg import entrypoint
    from ultralytics.utils.callbacks import base as callbacks

    callbacks.default_callbacks["on_train_batch_end"].append(save_at_warning)   # every trainer copies these
    sys.argv = ["yolo", *argv]
    entrypoint()


if __name__ == "__main__":
    main(sys.argv[1:])
