"""This machine, no SLURM: the same launcher a SLURM node runs, as a detached process of its own.

``python -u -m jobs.launch RUN_DIR`` runs in a session of its own (it outlives `orch submit` and a
Ctrl-C in its terminal); its process id is the job id, and its output goes to
``<log_dir>/<pid>_0_log.out``, the name `orch logs` looks for. `status` asks the operating system
whether the process is still alive; `cancel` sends it SIGTERM, which the launcher passes to its
workers (they checkpoint and stop). There is no scheduler here to enforce ``resources.time``.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from typing import Any

from orchestrator import procfs
from orchestrator.executors.base import Executor, JobRequest, SubmissionError, Submitted


def launch_command(req: JobRequest, python: str = sys.executable) -> str:
    """The shell command the local executor runs (``sh -c``); ``$$`` is the launcher's pid after ``exec``."""
    log = f'{shlex.quote(req.log_dir)}/"$$"_0_log.out'
    return f"exec {shlex.quote(python)} -u -m jobs.launch {shlex.quote(req.run_dir)} >>{log} 2>&1 </dev/null"


class LocalExecutor(Executor):
    name = "local"
    python = sys.executable   # the interpreter that runs the launcher (tests pin it)

    def check(self, req: JobRequest) -> None:
        if req.nodes != 1:
            raise SubmissionError(f"the local executor runs one node; this plan needs {req.nodes} nodes "
                                  "(use --executor slurm, or fewer --gpus)")

    def script(self, req: JobRequest) -> str:
        return (f"# local executor: no sbatch; `sh -c` runs this on this machine, detached, in the directory "
                f"`orch submit` runs in;\n# the job id is the launcher's process id ($$), torchrun starts "
                f"{req.gpus_per_node} process(es)\n{launch_command(req, self.python)}\n")

    def submit(self, req: JobRequest) -> Submitted:
        os.makedirs(req.log_dir, exist_ok=True)
        # started from a shell that exits at once: the launcher is nobody's child here (no zombie in a
        # long-lived caller) and keeps running after `orch submit` ends
        detach = f"/bin/sh -c {shlex.quote(launch_command(req, self.python))} </dev/null >/dev/null 2>&1 &\necho $!"
        result = subprocess.run(["/bin/sh", "-c", detach], capture_output=True, text=True, start_new_session=True)
        pid = result.stdout.strip()
        if result.returncode != 0 or not pid.isdigit():
            raise SubmissionError(f"could not start the local job: {' '.join(result.stderr.split()) or 'no pid'}")
        return Submitted(job_id=pid, executor=self.name, log_dir=req.log_dir)

    def status(self, job_id: str) -> dict[str, Any]:
        st = procfs.stat(int(job_id))
        if st is None or st.state == "Z":  # gone, or exited and not yet reaped
            return {"state": "ENDED", "restarts": 0}
        return {"state": "RUNNING", "restarts": 0}

    def cancel(self, job_id: str) -> None:
        try:
            os.kill(int(job_id), signal.SIGTERM)  # the launcher passes it to its workers
        except ProcessLookupError:
            pass
