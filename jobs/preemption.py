"""Preemption warnings: signal handlers only set a flag; the loop acts on it at an iteration boundary.

Saving inside a handler can hang or corrupt a checkpoint (a known Lightning bug), so nothing
else happens here. SLURM's early warning (``--signal=USR2@N``) and SIGTERM both count.
"""
from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGUSR1)

# Exit code of a worker that checkpointed because it was asked to stop: "requeue me".
EXIT_REQUEUE = 75  # EX_TEMPFAIL


class PreemptionFlag:
    def __init__(self) -> None:
        self.signal_name: str | None = None

    def install(self) -> "PreemptionFlag":
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


_FLAG: PreemptionFlag | None = None


def ignore_from_now_on() -> None:
    """Once the loop is over, a late warning must not kill the exiting worker.

    The launcher re-sends a warning every few seconds until torchrun ends, and Python's shutdown
    puts its handlers back to the default action (terminate) while keeping SIG_IGN: a worker that
    had checkpointed (exit code EXIT_REQUEUE) or finished would die by the signal instead, and the
    launcher would see a failure where there was a requeue.
    """
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def install() -> PreemptionFlag:
    """The process's one flag, with its handlers installed on the first call.

    `jobs.train` calls this before it imports torch (seconds): under torchrun the workers start
    with these signals ignored (inherited from the agent, jobs/torchrun_wrapper.py), so a warning
    that came during the imports would otherwise be lost. Later calls return the same flag: a
    second handler would forget a signal the first one recorded.
    """
    global _FLAG
    if _FLAG is None:
        _FLAG = PreemptionFlag().install()
    return _FLAG
