"""Small helpers for tests against the real SLURM cluster of slurm/cluster.sh.

Job states come from ``scontrol show job -o`` (the cluster has no slurmdbd, so ``sacct`` has
nothing to read); finished jobs stay visible for an hour (MinJobAge=3600).
"""
from __future__ import annotations

import re
import subprocess
import textwrap
import time
from pathlib import Path

# States after which a job will not run again by itself (REQUEUED/PENDING may still run).
TERMINAL_STATES = frozenset({
    "BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
    "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT",
})

# `scontrol show job -o` prints `Key=Value` pairs separated by spaces; keys may hold `:` or `/`
# (AllocNode:Sid, Socks/Node). A value containing " Key=" would be split, which job names and
# paths used by tests never do.
_FIELD_SPLIT = re.compile(r" (?=[A-Za-z][A-Za-z0-9_:/]*=)")


def parse_scontrol_record(line: str) -> dict[str, str]:
    """One line of `scontrol show <entity> -o` as a dict of its fields."""
    fields = {}
    for part in _FIELD_SPLIT.split(line.strip()):
        key, _, value = part.partition("=")
        fields[key] = value
    return fields


def show_job(job_id: str | int) -> dict[str, str]:
    """The job's fields from `scontrol show job -o JOBID` (raises if SLURM does not know it)."""
    result = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)],
                            capture_output=True, text=True, timeout=30)
    if result.returncode != 0 or "JobId=" not in result.stdout:
        raise RuntimeError(f"scontrol show job {job_id} failed: {result.stderr.strip()}")
    # A job array prints one line per task; the first is the one asked for by a plain id.
    return parse_scontrol_record(result.stdout.splitlines()[0])


def job_state(job_id: str | int) -> str:
    """`JobState` without the `by <uid>` suffix some versions append (e.g. CANCELLED)."""
    return show_job(job_id)["JobState"].split()[0]


def wait_for_job(job_id: str | int, timeout_s: float = 120, poll_s: float = 0.5,
                 states: frozenset[str] | set[str] = TERMINAL_STATES) -> dict[str, str]:
    """Poll `scontrol show job -o` until the job's state is in `states` (terminal by default).

    Returns the job's fields at that moment. Raises TimeoutError with the last fields seen.
    """
    deadline = time.monotonic() + timeout_s
    fields: dict[str, str] = {}
    while True:
        fields = show_job(job_id)
        if fields["JobState"].split()[0] in states:
            return fields
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"job {job_id} not in {sorted(states)} after {timeout_s} s: "
                f"JobState={fields.get('JobState')} Reason={fields.get('Reason')} "
                f"Restarts={fields.get('Restarts')}")
        time.sleep(poll_s)


def wait_for_text(path: str | Path, text: str, timeout_s: float = 60,
                  poll_s: float = 0.2) -> str:
    """Wait until the file contains `text` (e.g. a job's "ready" line); returns the content."""
    path = Path(path)
    deadline = time.monotonic() + timeout_s
    while True:
        content = path.read_text() if path.exists() else ""
        if text in content:
            return content
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has no {text!r} after {timeout_s} s; content:\n{content}")
        time.sleep(poll_s)


def sbatch(script: str | Path, *options: str, cwd: str | Path | None = None) -> str:
    """Submit with `sbatch --parsable OPTIONS SCRIPT`; returns the job id (raises on failure)."""
    result = subprocess.run(["sbatch", "--parsable", *options, str(script)],
                            capture_output=True, text=True, cwd=cwd, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"sbatch {' '.join(options)} {script} failed: {result.stderr.strip()}")
    return result.stdout.strip().split(";")[0]   # "JOBID[;CLUSTER]"


def write_script(path: str | Path, body: str) -> Path:
    """Write an executable bash batch script: `#!/bin/bash` + the dedented body."""
    path = Path(path)
    path.write_text("#!/bin/bash\n" + textwrap.dedent(body).lstrip("\n"))
    path.chmod(0o755)
    return path
