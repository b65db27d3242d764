"""SLURM: one task per node, each running ``python -u -m jobs.launch RUN_DIR`` (torchrun for its GPUs).

The script is rendered by :mod:`orchestrator.executors.sbatch` (the text `--dry-run` prints),
written into the log dir and handed to ``sbatch --parsable``; status, cancel and arrays use
scontrol/scancel. No submitit: nothing here needs more than the SLURM commands.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from typing import Any

from orchestrator.executors import sbatch, slurm_state
from orchestrator.executors.base import Executor, JobRequest, SubmissionError, Submitted
from orchestrator.executors.sbatch import format_array  # noqa: F401  (sweep.py imports it from here)
from orchestrator.executors.slurm_state import parse_array_records, parse_array_task_ids  # noqa: F401 (their home)


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
        return slurm_state.job_status(job_id)   # scontrol, then sacct once scontrol has forgotten it

    def cancel(self, job_id: str) -> None:
        result = subprocess.run(["scancel", job_id], capture_output=True, text=True)
        if result.returncode != 0:
            raise SubmissionError(f"scancel {job_id} failed: {result.stderr.strip()}")

    # ---------------------------------------------------------------- job arrays (sweeps)
    def array_script(self, req: JobRequest, task_ids: list[int], run_dir_format: str,
                     task_offset: int = 0) -> str:
        """One sbatch script for the whole array: task i runs jobs.launch on ``run_dir_format % (task_offset + i)``."""
        return sbatch.render_array(req, task_ids, run_dir_format, task_offset=task_offset)

    def submit_array(self, req: JobRequest, task_ids: list[int], run_dir_format: str,
                     task_offset: int = 0) -> Submitted:
        array_id = _sbatch(self.array_script(req, task_ids, run_dir_format, task_offset), req.log_dir, "job array")
        return Submitted(job_id=array_id, executor=self.name, log_dir=req.log_dir)

    def release(self, job_id: str) -> None:
        result = subprocess.run(["scontrol", "release", job_id], capture_output=True, text=True)
        if result.returncode != 0:
            raise SubmissionError(f"scontrol release {job_id} failed: {result.stderr.strip()}")

    def array_status(self, array_job_id: str) -> dict[int, dict[str, Any]] | None:
        return slurm_state.array_status(array_job_id)


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
