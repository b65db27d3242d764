"""torchrun whose agent survives preemption warnings and passes "requeue me" on.

SLURM signals every process of a job step (SIGUSR2 warning, SIGTERM). torchrun's agent would die
from SIGUSR2 (default action) or tear the workers down on SIGTERM before they checkpoint. Here the
agent ignores both; the workers install their own handlers (jobs/preemption.py), save at the next
iteration boundary and exit with EXIT_REQUEUE.

torchrun reports any worker failure as exit code 1; a worker's EXIT_REQUEUE would be lost, and
with it the launcher's only reason to requeue that does not depend on reading status.json. A
worker exits EXIT_REQUEUE only after the checkpoint is complete on every rank (save, then a
barrier), so one such exit is enough: this agent then exits EXIT_REQUEUE too.
"""
import signal
import sys

from jobs.preemption import EXIT_REQUEUE

if __name__ == "__main__":
    for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main

    sys.argv[0] = "torchrun"
    try:
        sys.exit(main())
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        if EXIT_REQUEUE in codes:
            print(f"[orch torchrun] workers checkpointed and asked to be requeued (exit codes {codes})", flush=True)
            sys.exit(EXIT_REQUEUE)
        raise
