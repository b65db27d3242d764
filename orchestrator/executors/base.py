"""The one executor interface: submit / status / cancel. SLURM and local fill it in."""
from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from typing import Any

from orchestrator.errors import OrchError

# SLURM's state names; local runs report the same vocabulary.
# LOST: the scheduler no longer knows the job and the job left no final word (resumable);
# UNKNOWN: the scheduler did not answer, so nothing can be said (neither resumed nor cancelled).
STATES = ("PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "REQUEUED",
          "LOST", "UNKNOWN")
ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                 "REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT")
TERMINAL_STATES = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY",
                   "BOOT_FAIL", "DEADLINE")

JOB_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SLURM_WORD_RE = re.compile(r"^[A-Za-z0-9._:+@%-]+$")
SLURM_LIST_RE = re.compile(r"^[A-Za-z0-9._:+@%,\[\]-]+$")
CONSTRAINT_RE = re.compile(r"^[A-Za-z0-9._:+@%,\[\]&|*()-]+$")
TIME_RE = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}$|^\d+$")
MEM_RE = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


class SubmissionError(OrchError):
    """A job that could not be submitted; SLURM's own words are kept verbatim."""


@dataclass(frozen=True)
class JobRequest:
    """What to run and with which resources; every field is validated before it reaches a script."""
    run_name: str
    run_dir: str
    log_dir: str               # local (shared) directory for the scheduler's logs and pickles
    nodes: int
    gpus_per_node: int
    time: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    exclude: str | None = None
    cpus_per_gpu: int = 4
    mem_per_gpu: str | None = None
    signal_delay_s: int = 120
    max_requeues: int = 3
    array_size: int | None = None      # sweeps: one job array of this many tasks
    max_parallel: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        validate_request(self)


def _no_control_chars(label: str, value: str) -> None:
    bad = [c for c in value if ord(c) < 0x20 or ord(c) == 0x7F]
    if bad:
        raise SubmissionError(f"{label} {value!r} contains a control character ({bad[0]!r}); a newline would "
                              "end the #SBATCH line and inject the rest into the job script. Remove it.")


def validate_request(req: JobRequest) -> None:
    checks = [
        ("--name", req.run_name, JOB_NAME_RE, "letters, digits, '.', '_' and '-', starting with a letter or digit"),
        ("--partition", req.partition, SLURM_LIST_RE, "a partition name (or a comma-separated list)"),
        ("--account", req.account, SLURM_WORD_RE, "an account name"),
        ("--qos", req.qos, SLURM_WORD_RE, "a QOS name"),
        ("--constraint", req.constraint, CONSTRAINT_RE, "a SLURM constraint expression"),
        ("--exclude", req.exclude, SLURM_LIST_RE, "a node list such as node[01-04],node9"),
        ("--time", req.time, TIME_RE, "D-HH:MM:SS, HH:MM:SS, MM:SS or minutes"),
        ("--mem-per-gpu", req.mem_per_gpu, MEM_RE, "a size such as 32G or 64000M"),
    ]
    for label, value, pattern, expected in checks:
        if value is None:
            continue
        _no_control_chars(label, str(value))
        if not pattern.match(str(value)):
            raise SubmissionError(f"{label} {value!r} is not valid: expected {expected}")
    if req.time is not None:
        _check_time_fields(str(req.time))
    for label, value in (("run dir", req.run_dir), ("log dir", req.log_dir)):
        _no_control_chars(label, value)
    for label, value in (("nodes", req.nodes), ("GPUs per node", req.gpus_per_node),
                         ("--cpus-per-gpu", req.cpus_per_gpu)):
        if not isinstance(value, int) or value < 1:
            raise SubmissionError(f"{label} must be a whole number >= 1, got {value!r}")


def _check_time_fields(text: str) -> None:
    """Minutes and seconds below 60 (and hours below 24 after a day count): SLURM would not read 1:99:00 as meant."""
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:
        names, limits = ("hours", "minutes", "seconds"), (24, 60, 60)
    else:
        names, limits = {1: (("minutes",), (None,)), 2: (("minutes", "seconds"), (None, 60)),
                         3: (("hours", "minutes", "seconds"), (None, 60, 60))}[len(parts)]
    for name, value, limit in zip(names, parts, limits):
        if limit is not None and value >= limit:
            raise SubmissionError(f"--time {text!r} has {value} {name}; {name} go up to {limit - 1} there "
                                  "(D-HH:MM:SS, HH:MM:SS, MM:SS or minutes, e.g. 2:39:00 or 159 for 159 minutes)")


def time_to_minutes(text: str) -> int:
    """SLURM time formats to minutes: MM, MM:SS, HH:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS."""
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text)
        parts = [int(p) for p in text.split(":")]
        hours, minutes, seconds = (parts + [0, 0, 0])[:3]
    else:
        parts = [int(p) for p in text.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, minutes, seconds = 0, parts[0], parts[1]
        else:
            hours, minutes, seconds = parts
    return max(1, days * 1440 + hours * 60 + minutes + (1 if seconds else 0))


@dataclass
class Submitted:
    job_id: str
    executor: str
    log_dir: str


class Executor(abc.ABC):
    name: str

    @abc.abstractmethod
    def submit(self, req: JobRequest) -> Submitted:
        """Start the job (fire-and-forget) and return its id."""

    @abc.abstractmethod
    def status(self, job_id: str) -> dict[str, Any]:
        """{"state": SLURM state name, "restarts": int, "nodes": [hostnames]} and, while it waits,
        "reason"/"explanation"; state UNKNOWN when the scheduler does not know the job, UNREACHABLE
        (with "detail") when it did not answer."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> None:
        """Stop the job; the job checkpoints on the way out where it can."""

    def check(self, req: JobRequest) -> None:
        """Refuse (SubmissionError) a request this executor can never run; called by submit and --dry-run
        alike, before anything is written, so a dry-run refuses exactly what a submit refuses."""

    def script(self, req: JobRequest) -> str:
        """What would be submitted (for --dry-run)."""
        return ""

    # Job arrays (sweeps): task i runs the launcher on the run dir ``run_dir_format % (task_offset + i)``
    # (task ids stay below SLURM's MaxArraySize; a sweep bigger than that is several arrays with offsets).
    def submit_array(self, req: JobRequest, task_ids: list[int], run_dir_format: str,
                     task_offset: int = 0) -> Submitted:
        """Submit one job array over ``task_ids``; Submitted.job_id is the array's id."""
        raise SubmissionError(f"the {self.name} executor cannot run job arrays (sweeps); use --executor slurm")

    def array_script(self, req: JobRequest, task_ids: list[int], run_dir_format: str,
                     task_offset: int = 0) -> str:
        raise SubmissionError(f"the {self.name} executor cannot run job arrays (sweeps); use --executor slurm")

    def release(self, job_id: str) -> None:
        """Let a job submitted held (``JobRequest.extra["hold"]``) start."""
        raise SubmissionError(f"the {self.name} executor cannot hold and release jobs")

    def array_status(self, array_job_id: str) -> dict[int, dict[str, Any]] | None:
        """{task id: status()-like dict} for every task the scheduler knows; None if it forgot the array."""
        raise SubmissionError(f"the {self.name} executor cannot run job arrays (sweeps)")
