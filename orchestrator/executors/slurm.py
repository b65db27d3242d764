"""SLURM through submitit: one task per node, each running jobs.launch (torchrun for its GPUs)."""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
from typing import Any

from orchestrator.executors.base import (Executor, JobRequest, SubmissionError, Submitted, _no_control_chars,
                                         time_to_minutes)

SCONTROL_STATE_RE = re.compile(r"JobState=(\S+)")
RESTARTS_RE = re.compile(r"Restarts=(\d+)")
NODES_RE = re.compile(r"\bNodeList=(\S+)")


def submitit_parameters(req: JobRequest) -> dict[str, Any]:
    params: dict[str, Any] = {
        "job_name": req.run_name,
        "nodes": req.nodes,
        "ntasks_per_node": 1,               # one launcher per node; torchrun starts the GPU processes
        "gpus_per_node": req.gpus_per_node,
        "cpus_per_task": req.cpus_per_gpu * req.gpus_per_node,
        "time": time_to_minutes(req.time),
        "signal_delay_s": req.signal_delay_s,
        "additional_parameters": {"requeue": True},
        "stderr_to_stdout": True,
        "wckey": "orch",
    }
    for key in ("partition", "account", "qos", "constraint", "exclude"):
        if getattr(req, key):
            params[key] = getattr(req, key)
    if req.mem_per_gpu:
        params["mem_per_gpu"] = req.mem_per_gpu
    if req.array_size:
        params["array_parallelism"] = req.max_parallel or req.array_size
    return params


class SlurmExecutor(Executor):
    name = "slurm"

    def _executor(self, req: JobRequest):
        import submitit

        executor = submitit.SlurmExecutor(folder=req.log_dir, max_num_timeout=req.max_requeues)
        executor.update_parameters(**submitit_parameters(req))
        return executor

    def script(self, req: JobRequest) -> str:
        executor = self._executor(req)
        return executor._make_submission_file_text(executor._submitit_command_str, "<submission-uid>")

    def submit(self, req: JobRequest) -> Submitted:
        from jobs.launch import NodeEntry  # resolved on the cluster from the installed package

        executor = self._executor(req)
        with captured_stderr() as stderr:  # submitit lets sbatch's complaints through to the terminal
            try:
                job = executor.submit(NodeEntry(req.run_dir))
            except Exception as exc:  # submitit wraps sbatch failures in its own errors
                failure = exc
            else:
                failure = None
        if failure is not None:
            said = " ".join(stderr.text().split())
            text = said or " ".join(str(failure).split())
            raise SubmissionError(f"sbatch refused the job: {text}") from None
        return Submitted(job_id=str(job.job_id), executor=self.name, log_dir=req.log_dir)

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
    def array_script(self, req: JobRequest, task_ids: list[int], run_dir_format: str,
                     task_offset: int = 0) -> str:
        """One sbatch script for the whole array: task i runs jobs.launch on ``run_dir_format % (task_offset + i)``.

        Logs are submitit's array names (``%A_%a_<node>_log.out``), so `orch logs` finds a task's
        files by its job id ``<array>_<task>``.
        """
        from submitit.slurm.slurm import _make_sbatch_string

        params = submitit_parameters(req)
        params.pop("array_parallelism", None)
        extra = dict(params.pop("additional_parameters"))
        extra["array"] = format_array(task_ids, req.max_parallel)
        if req.extra.get("hold"):
            extra["hold"] = True
        _no_control_chars("run dir format", run_dir_format)
        point = f'$((SLURM_ARRAY_TASK_ID + {int(task_offset)}))' if task_offset else "$SLURM_ARRAY_TASK_ID"
        setup = [f'RUN_DIR="$(printf {shlex.quote(run_dir_format)} "{point}")"']
        command = f'{shlex.quote(sys.executable)} -u -m jobs.launch "$RUN_DIR"'
        return _make_sbatch_string(command=command, folder=req.log_dir, map_count=len(task_ids), setup=setup,
                                   additional_parameters=extra, **params)

    def submit_array(self, req: JobRequest, task_ids: list[int], run_dir_format: str,
                     task_offset: int = 0) -> Submitted:
        text = self.array_script(req, task_ids, run_dir_format, task_offset)
        os.makedirs(req.log_dir, exist_ok=True)
        path = os.path.join(req.log_dir, f"array_{os.getpid()}_submission.sh")
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        result = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True)
        if result.returncode != 0:
            raise SubmissionError(f"sbatch refused the job array: {' '.join(result.stderr.split())}")
        array_id = result.stdout.strip().split(";")[0]
        os.replace(path, os.path.join(req.log_dir, f"{array_id}_submission.sh"))
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


def format_array(task_ids: list[int], max_parallel: int | None = None) -> str:
    """sbatch's --array value: ranges joined by commas, then %K (``[0,1,2,5] , 2`` → ``0-2,5%2``)."""
    ids = sorted(set(task_ids))
    if not ids:
        raise SubmissionError("a job array needs at least one task")
    spans = [[ids[0], ids[0]]]
    for task in ids[1:]:
        if task == spans[-1][1] + 1:
            spans[-1][1] = task
        else:
            spans.append([task, task])
    text = ",".join(str(low) if low == high else f"{low}-{high}" for low, high in spans)
    return f"{text}%{min(max_parallel, len(ids))}" if max_parallel else text


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


class _Captured:
    def __init__(self) -> None:
        self.value = ""

    def text(self) -> str:
        return self.value


@contextlib.contextmanager
def captured_stderr():
    """Collect what child processes write to fd 2 (sbatch's own error lines) instead of showing it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        captured = _Captured()
        python_level = io.StringIO()  # submitit also copies the child's stderr to sys.stderr
        try:
            with contextlib.redirect_stderr(python_level):
                yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            captured.value = python_level.getvalue() or tmp.read().decode(errors="replace")


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
