"""The training job's entry point, started by torchrun:

    torchrun --nproc-per-node N -m jobs.train RUN_DIR_OR_PLAN_JSON [--no-resume]

Read the plan → set up the process group → build → resume_or_load → train → close.
"""
from __future__ import annotations

import argparse
import logging
import multiprocessing
import signal
import sys

from jobs import entry, preemption
from jobs.runlog import record_failure, setup_console_logging
from orchestrator import runs, storage
from orchestrator.errors import OrchError

log = logging.getLogger("orch.job")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run dir (any fsspec URL) or its plan.json")
    parser.add_argument("--no-resume", action="store_true",
                        help="refuse to resume: fail if the run already has a checkpoint")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    preemption.install()  # first, before torch loads: a warning during the imports must not be lost
    from jobs import distributed  # imports torch

    args = parse_args(argv)
    doc = entry.open_run(args.run)  # the storage options handed over first: plan.json may be on a bucket
    config = doc["config"]
    info = distributed.init_distributed(force_cpu=config["resources"].get("use_cpu", False))
    setup_console_logging(info.rank)
    from jobs.engine import Trainer  # torch-heavy imports after logging is set up

    trainer = None
    try:
        if info.world_size != doc["plan"]["gpus"]:
            raise OrchError(f"this run was planned for {doc['plan']['gpus']} processes (GPUs) but was started with "
                            f"{info.world_size}; start it with --nproc-per-node x --nnodes = {doc['plan']['gpus']}, "
                            "or plan a new run for this size (`orch submit --gpus N`)")
        trainer = Trainer(doc, info, resume=not args.no_resume)
        if args.no_resume and trainer.checkpoints is not None and trainer.checkpoints.latest():
            raise OrchError(f"run {doc['run_dir']} already has checkpoints and --no-resume was given")
        log.info("run %s on %d process(es), device %s, backend %s", doc["run_name"], info.world_size,
                 info.device, info.backend or "none")
        trainer.resume_or_load()
        state = trainer.train()
        log.info("run %s: %s at iteration %d", doc["run_name"], state, trainer.iteration)
        # the launcher requeues on this exit code alone: status.json may be unwritable (object-store outage)
        return preemption.EXIT_REQUEUE if state == "PREEMPTED" else 0
    except OrchError as exc:
        log.error("%s", exc)
        _mark_failed(trainer, doc, info, str(exc))
        return 1
    except Exception as exc:
        log.exception("training failed on rank %d", info.rank)
        _mark_failed(trainer, doc, info, f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        preemption.ignore_from_now_on()   # the loop is over: nothing acts on a warning any more
        if trainer is not None:
            trainer.close()
        _stop_loader_workers()
        distributed.cleanup()


def _stop_loader_workers() -> None:
    """Data-loader workers ignore SLURM's SIGTERM (jobs/data.py), so multiprocessing's exit-time
    terminate() would not end them and the interpreter would wait for them forever: kill them."""
    # torch's SIGCHLD handler would raise "worker killed" in the middle of this loop
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(timeout=5)


def _mark_failed(trainer, doc: dict, info, message: str) -> None:
    """Tell `orch status` why the run stopped (rank 0 only; best effort)."""
    if trainer is not None:
        if trainer.runlog.enabled:
            trainer.runlog.status(state="FAILED", error=message)
            trainer.runlog.flush()
        return
    if info.is_main:
        record_failure(doc["run_dir"], doc["plan"]["max_iters"], message)


if __name__ == "__main__":
    sys.exit(main())
