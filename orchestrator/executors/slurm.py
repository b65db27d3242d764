"""SLURM through submitit: one task per node, each running jobs.launch (torchrun for its GPUs)."""
from __future__ import annotations

import re
import subprocess
from typing import Any

from orchestrator.executors.base import Executor, JobRequest, SubmissionError, Submitted, time_to_minutes

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
        try:
            job = executor.submit(NodeEntry(req.run_dir))
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or exc.output or b"")
            detail = detail.decode(errors="replace") if isinstance(detail, bytes) else str(detail)
            raise SubmissionError(f"sbatch refused the job: {' '.join(detail.split()) or exc}") from None
        except Exception as exc:  # submitit wraps sbatch failures in its own errors
            text = " ".join(str(exc).split())
            raise SubmissionError(f"sbatch refused the job: {text}") from None
        return Submitted(job_id=str(job.job_id), executor=self.name, log_dir=req.log_dir)

    def status(self, job_id: str) -> dict[str, Any]:
        result = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True)
        if result.returncode != 0:
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
