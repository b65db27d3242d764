"""submissions.json, a run's attempts: the one module that writes it.

Writers (`orch submit`, `resume`, `cancel`, `sweep`, `sweep resume`) call :func:`start`,
:func:`append_attempt` or :func:`mark_cancelled`; each is one read-modify-write under a per-run
lock on this machine (the login node), so two writers never lose each other's update. Readers
(`orch status`, `runs`, `logs`, `sweep status`) call :func:`read` and never write: the state a
reader shows is computed, not stored.

A record is ``{"run_name", "run_dir", "attempts": [{"attempt", "job_id", "executor", "log_dir",
"kind", "submitted_at"[, "cancelled_at"]}, ...]}``, oldest attempt first.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from typing import Any, Iterator

from orchestrator import runs, storage
from orchestrator.errors import OrchError

ATTEMPT_KEYS = ("job_id", "executor", "log_dir")


def url_of(run_dir: str) -> str:
    return storage.join(run_dir, runs.SUBMISSIONS_FILE)


def read(run_dir: str) -> dict[str, Any]:
    """The run's record ({"attempts": []} before the first submission); a damaged file is an OrchError."""
    url = url_of(run_dir)
    try:
        text = storage.read_text(url)
    except FileNotFoundError:
        return {"attempts": []}
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise damaged(url, f"not valid JSON ({exc})") from None
    problem = _shape_problem(record)
    if problem:
        raise damaged(url, problem)
    return record


def damaged(url: str, problem: str) -> OrchError:
    return OrchError(f"{url} is damaged: {problem}. It lists the run's SLURM/local job ids and only orch writes it; "
                     f"restore it from a copy, or move it aside and `orch resume` the run (it continues from its "
                     f"latest checkpoint; cancel any job of it that may still run first)")


def _shape_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return f"expected a JSON object, found {type(record).__name__}"
    attempts = record.get("attempts")
    if not isinstance(attempts, list):
        return "its key 'attempts' is missing or not a list"
    for i, attempt in enumerate(attempts):
        if not isinstance(attempt, dict):
            return f"attempts[{i}] is not an object"
        missing = [key for key in ATTEMPT_KEYS if not isinstance(attempt.get(key), str)]
        if missing:
            return f"attempts[{i}] has no (text) {', '.join(missing)}"
    return None


def last_attempt(run_dir: str) -> dict[str, Any] | None:
    attempts = read(run_dir)["attempts"]
    return attempts[-1] if attempts else None


def new_attempt(number: int, job_id: str, executor: str, log_dir: str, kind: str) -> dict[str, Any]:
    return {"attempt": number, "job_id": str(job_id), "executor": executor, "log_dir": log_dir, "kind": kind,
            "submitted_at": runs.now_iso()}


def start(run_dir: str, run_name: str, job_id: str, executor: str, log_dir: str, kind: str) -> dict[str, Any]:
    """The first attempt of a run dir made a moment ago by the caller: nothing to read, nothing to lock."""
    record = {"run_name": run_name, "run_dir": run_dir,
              "attempts": [new_attempt(1, job_id, executor, log_dir, kind)]}
    runs.write_json(url_of(run_dir), record)
    return record


def append_attempt(run_dir: str, run_name: str, job_id: str, executor: str, log_dir: str,
                   kind: str) -> dict[str, Any]:
    """Add one attempt (a resume): read, append, write, under the run's lock."""
    with locked(run_dir):
        record = read(run_dir)
        record.setdefault("run_name", run_name)
        record.setdefault("run_dir", run_dir)
        record["attempts"].append(new_attempt(len(record["attempts"]) + 1, job_id, executor, log_dir, kind))
        runs.write_json(url_of(run_dir), record)
    return record


def mark_cancelled(run_dir: str) -> dict[str, Any]:
    """Note that the current attempt was cancelled by `orch cancel` (the state then says CANCELLED)."""
    with locked(run_dir):
        record = read(run_dir)
        if not record["attempts"]:
            raise OrchError(f"{url_of(run_dir)} lists no attempt: the run was never submitted, nothing to cancel")
        record["attempts"][-1]["cancelled_at"] = runs.now_iso()
        runs.write_json(url_of(run_dir), record)
    return record


@contextlib.contextmanager
def locked(run_dir: str) -> Iterator[None]:
    """Writers of one run's record take turns (processes on this machine; object stores have no locks)."""
    lock_root = os.environ.get("ORCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "orch")
    os.makedirs(os.path.join(lock_root, "locks"), exist_ok=True)
    name = hashlib.sha256(run_dir.encode()).hexdigest()[:24] + ".records.lock"
    with open(os.path.join(lock_root, "locks", name), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
