"""torchrun whose agent survives preemption warnings.

SLURM signals every process of a job step (SIGUSR2 warning, SIGTERM). torchrun's agent would die
from SIGUSR2 (default action) or tear the workers down on SIGTERM before they checkpoint. Here the
agent ignores both; the workers install their own handlers (jobs/preemption.py), save at the next
iteration boundary and exit, and the agent then ends normally.
"""
import signal
import sys

if __name__ == "__main__":
    for sig in (signal.SIGUSR2, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
    from torch.distributed.run import main

    sys.argv[0] = "torchrun"
    sys.exit(main())
