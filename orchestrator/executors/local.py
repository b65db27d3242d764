"""This machine, no SLURM: submitit's local executor runs the same launcher as a SLURM node would.

The job outlives `orch submit` (submitit's controller process is left running); its id is the
controller's pid, and `status` asks the operating system whether it is still alive.
"""
from __future__ import annotations

import os
import signal
from typing import Any

from orchestrator import procfs
from orchestrator.executors.base import Executor, JobRequest, SubmissionError, Submitted, time_to_minutes


def _has_nvidia_gpu() -> bool:
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


class LocalExecutor(Executor):
    name = "local"

    def _executor(self, req: JobRequest):
        import submitit

        executor = submitit.LocalExecutor(folder=req.log_dir)
        # On a CPU-only machine the job runs gloo CPU processes: no CUDA_VISIBLE_DEVICES to fake.
        executor.update_parameters(timeout_min=time_to_minutes(req.time), tasks_per_node=1,
                                   gpus_per_node=req.gpus_per_node if _has_nvidia_gpu() else 0,
                                   signal_delay_s=req.signal_delay_s, stderr_to_stdout=True)
        return executor

    def script(self, req: JobRequest) -> str:
        return (f"# local executor: no sbatch script; runs on this machine\n"
                f"python -m jobs.launch {req.run_dir}   # torchrun --nproc-per-node={req.gpus_per_node}\n")

    def submit(self, req: JobRequest) -> Submitted:
        if req.nodes != 1:
            raise SubmissionError(f"the local executor runs one node; this plan needs {req.nodes} nodes "
                                  "(use --executor slurm, or fewer --gpus)")
        from jobs.launch import NodeEntry

        job = self._executor(req).submit(NodeEntry(req.run_dir))
        return Submitted(job_id=str(job.job_id), executor=self.name, log_dir=req.log_dir)

    def status(self, job_id: str) -> dict[str, Any]:
        st = procfs.stat(int(job_id))
        if st is None or st.state == "Z":  # gone, or exited and not yet reaped
            return {"state": "ENDED", "restarts": 0}
        return {"state": "RUNNING", "restarts": 0}

    def cancel(self, job_id: str) -> None:
        try:
            os.kill(int(job_id), signal.SIGTERM)  # submitit's controller passes it to the launcher
        except ProcessLookupError:
            pass
