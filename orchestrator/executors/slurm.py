"""SLURM: one task per node, each running ``python -u -m jobs.launch RUN_DIR`` (torchrun for its GPUs).

The script is rendered by :mod:`orchestrator.executors.sbatch` (the text `--dry-run` prints),
written into the log dir and handed to ``sbatch --parsable``; status, cancel and arrays use
scontrol/scancel. No submitit: nothing here needs more than the SLURM commands.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Any

from orchestrator.executors import sbatch
from orchestrator.executors.base import Executor, JobRequest, SubmissionError, Submitted
from orchestrator.executors.sbatch import format_array  # noqa: F401  (sweep.py imports it from here)

SCONTROL_STATE_RE = re.compile(r"JobState=(\S+)")
RESTARTS_RE = re.compile(r"Restarts=(\d+)")
NODES_RE = re.compile(r"\bNodeList=(\S+)")


class SlurmExecutor(Executor):
    name = "slurm"

    def check(self, req: JobRequest) -> None:
        """What sbatch would accept but the partition can never run (sinfo limits), when that check is installed."""
        try:
            from orchestrator import slurm_limits
        except ImportError:
            return
        slurm_limits.check_request(req)

    def script(self, req: JobRequest) -> str:
        return sbatch.render_job(req)

    def submit(self, req: JobRequest) -> Submitted:
        job_id = _sbatch(self.script(req), req.log_dir, "job")
        return Submitted(job_id=job_id, executor=self.name, log_dir=req.log_dir)

    def status(self, job_id: str) -> dict[str, Any]:
        result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
        if result.returncode != 0:
            if "_" in job_id and self.array_status(job_id.split("_")[0]) is not None:
                # SLURM drops a job-array task cancelled before it started, but still knows the array
                return {"state": "CANCELLED", "restarts": 0, "detail": "cancelled before it started"}
            return {"state": "UNKNOWN", "restarts": 0, "detail": result.stderr.strip()}
        states = SCONTROL_STATE_RE.findall(result.stdout)
        if not states:
            return {"state": "UNKNOWN", "restarts": 0}
        restarts = RESTARTS_RE.search(result.stdout)
        nodes = NODES_RE.search(result.stdout)
        state = _summarise_array(states)
        return {"state": state, "restarts": int(restarts.group(1)) if restarts else 0,
                "nodes": nodes.group(1) if nodes and nodes.group(1) != "(null)" else None}

    def cancel(self, job_id: str) -> None:
        result = subprocess.run(["scancel", job_id], capture_output=True, text=True)
        if result.returncode != 0:
            raise SubmissionError(f"scancel {job_id} failed: {result.stderr.strip()}")

    # ---------------------------------------------------------------- job arrays (sweeps)
    def array_script(self, req: JobRequest, task_ids: list[int], run_dir_format: str) -> str:
        """One sbatch script for the whole array: task i runs jobs.launch on ``run_dir_format % i``."""
        return sbatch.render_array(req, task_ids, run_dir_format)

    def submit_array(self, req: JobRequest, task_ids: list[int], run_dir_format: str) -> Submitted:
        array_id = _sbatch(self.array_script(req, task_ids, run_dir_format), req.log_dir, "job array")
        return Submitted(job_id=array_id, executor=self.name, log_dir=req.log_dir)

    def release(self, job_id: str) -> None:
        result = subprocess.run(["scontrol", "release", job_id], capture_output=True, text=True)
        if result.returncode != 0:
            raise SubmissionError(f"scontrol release {job_id} failed: {result.stderr.strip()}")

    def array_status(self, array_job_id: str) -> dict[int, dict[str, Any]] | None:
        result = subprocess.run(["scontrol", "show", "job", "-o", array_job_id], capture_output=True, text=True)
        if result.returncode != 0 or "JobId=" not in result.stdout:
            return None
        return parse_array_records(result.stdout)


ARRAY_TASK_RE = re.compile(r"\bArrayTaskId=(\S+)")


def parse_array_task_ids(text: str) -> list[int]:
    """``2-5%2`` / ``1,3,7-8`` / ``[1,3]`` (scontrol, squeue) → the task ids."""
    ids: list[int] = []
    for part in text.strip("[]").split("%")[0].split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            ids.extend(range(int(low), int(high) + 1))
        elif part:
            ids.append(int(part))
    return ids


def parse_array_records(output: str) -> dict[int, dict[str, Any]]:
    """`scontrol show job -o ARRAY` (one line per task; pending tasks share one line) → {task: status}."""
    tasks: dict[int, dict[str, Any]] = {}
    for line in output.splitlines():
        task_field, state = ARRAY_TASK_RE.search(line), SCONTROL_STATE_RE.search(line)
        if not task_field or not state:
            continue
        restarts, nodes = RESTARTS_RE.search(line), NODES_RE.search(line)
        record = {"state": state.group(1), "restarts": int(restarts.group(1)) if restarts else 0,
                  "nodes": nodes.group(1) if nodes and nodes.group(1) not in ("(null)", "") else None}
        for task in parse_array_task_ids(task_field.group(1)):
            tasks[task] = dict(record)
    return tasks


def _sbatch(text: str, log_dir: str, what: str) -> str:
    """Write the script into the log dir (the job runs there), submit it, keep it as ``<job id>_submission.sh``."""
    os.makedirs(log_dir, exist_ok=True)
    fd, path = tempfile.mkstemp(prefix="submitting_", suffix=".sh", dir=log_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    try:
        result = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True)
    except FileNotFoundError:
        os.remove(path)
        raise SubmissionError("sbatch is not on PATH: submit from a SLURM login node, or use --executor local "
                              "(--dry-run shows the script on any machine)") from None
    if result.returncode != 0:
        os.remove(path)
        raise SubmissionError(f"sbatch refused the {what}: {' '.join(result.stderr.split())}")
    job_id = result.stdout.strip().split(";")[0]   # "<id>[;<cluster>]"
    os.replace(path, os.path.join(log_dir, f"{job_id}_submission.sh"))
    return job_id


def _summarise_array(states: list[str]) -> str:
    """One state for a job (or a whole array): active beats failed beats completed."""
    for group in (("RUNNING",), ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING"), ("COMPLETING",)):
        for state in states:
            if state in group:
                return "RUNNING" if state == "COMPLETING" else state
    for state in states:
        if state != "COMPLETED":
            return state
    return "COMPLETED"
