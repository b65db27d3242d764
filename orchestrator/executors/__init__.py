"""Executors behind one interface; :func:`get_executor` is the only place that picks one."""
from __future__ import annotations

from orchestrator.errors import OrchError
from orchestrator.executors.base import Executor, JobRequest, SubmissionError, Submitted

EXECUTORS = ("slurm", "local")


def get_executor(name: str) -> Executor:
    if name == "slurm":
        from orchestrator.executors.slurm import SlurmExecutor
        return SlurmExecutor()
    if name == "local":
        from orchestrator.executors.local import LocalExecutor
        return LocalExecutor()
    raise OrchError(f"unknown executor {name!r}; valid executors are: {', '.join(EXECUTORS)}")


__all__ = ["Executor", "JobRequest", "SubmissionError", "Submitted", "get_executor", "EXECUTORS"]
