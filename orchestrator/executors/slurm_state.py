"""What SLURM says about a job, and why a pending job waits.

``scontrol show job`` answers from the controller's memory: live and exact (state, restarts,
nodes, the pending reason), but it forgets a finished job MinJobAge seconds later (300 by
default). ``sacct`` asks the accounting database, which remembers finished jobs for months, and
answers "Slurm accounting storage is disabled" on clusters without one (the test cluster of
slurm/). So a job is looked up with scontrol first and with sacct once scontrol has forgotten it;
with neither knowing it, its state is UNKNOWN (orch then calls the run LOST), and with neither
answering it is UNREACHABLE. Every function takes the command runner as an argument, so the
parsing is tested on real SLURM text without a cluster.
"""
from __future__ import annotations

import re
import subprocess
from typing import Any, Callable

Runner = Callable[[list[str]], subprocess.CompletedProcess]
COMMAND_TIMEOUT_S = 60
SACCT_FIELDS = ("JobID", "State", "Reason", "NodeList")
FORGOTTEN = "Invalid job id specified"                      # scontrol: the controller does not know the job
FORGOTTEN_TASK_RE = re.compile(r"Job \d+_\d+ not found")     # ...an array task (cancelled before it started)


def _forgotten(stderr: str) -> bool:
    return FORGOTTEN in stderr or FORGOTTEN_TASK_RE.search(stderr) is not None
NO_ACCOUNTING = "accounting storage is disabled"            # sacct on a cluster without slurmdbd
NO_NODES = ("", "(null)", "None assigned")
NO_REASON = ("", "None", "(null)")
_FIELD_SPLIT = re.compile(r" (?=[A-Za-z][A-Za-z0-9_:/]*=)")

# SLURM's pending reasons (squeue(1), JOB REASON CODES) in a line a user can act on.
REASON_EXPLANATIONS = {
    "Priority": "other jobs come first; it starts when its priority reaches the top",
    "Resources": "waiting for free nodes/GPUs",
    "Dependency": "waiting for the job it depends on to finish",
    "DependencyNeverSatisfied": "the job it depends on did not end as required: it will never start; cancel it",
    "BeginTime": "not before its begin time (a requeued job waits a moment before it starts again)",
    "JobHeldUser": "held by its user: `scontrol release JOBID` lets it start",
    "JobHeldAdmin": "held by an administrator: ask them to release it",
    "JobArrayTaskLimit": "the sweep's --max-parallel tasks already run; the next starts when one ends",
    "QOSMaxGRESPerUser": "you already use as many GPUs as your QOS allows at once; it starts when your jobs free some",
    "QOSMaxJobsPerUserLimit": "you already run as many jobs as your QOS allows; it starts when one of them ends",
    "QOSMaxNodePerUserLimit": "you already use as many nodes as your QOS allows; it starts when your jobs free some",
    "QOSMaxCpuPerUserLimit": "you already use as many CPUs as your QOS allows; it starts when your jobs free some",
    "QOSMaxSubmitJobPerUserLimit": "you have as many jobs queued as your QOS allows",
    "QOSGrpGRES": "the GPUs of your QOS (all its users together) are in use; it starts when some are freed",
    "QOSGrpCpuLimit": "the CPUs of your QOS (all its users together) are in use",
    "QOSGrpNodeLimit": "the nodes of your QOS (all its users together) are in use",
    "QOSMaxWallDurationPerJobLimit": "--time exceeds your QOS's maximum: it will never start; resubmit with less --time",
    "AssocGrpGRES": "your account's GPU quota (all its users together) is in use; it starts when some are freed",
    "AssocGrpCpuLimit": "your account's CPU quota (all its users together) is in use",
    "AssocGrpNodeLimit": "your account's node quota (all its users together) is in use",
    "AssocMaxJobsLimit": "your account already runs as many jobs as it may",
    "AssocGrpGRESMinutes": "your account has used up its GPU-minutes: ask its coordinator",
    "AssocMaxWallDurationPerJobLimit": "--time exceeds your account's maximum: it will never start; resubmit with "
                                       "less --time",
    "ReqNodeNotAvail": "a node it needs is down, drained or reserved; see `sinfo -R`, or use --exclude",
    "NodeDown": "a node it needs is down",
    "PartitionConfig": "the partition can never run this request (more GPUs or CPUs per node, or more nodes, "
                       "than it has): cancel it and resubmit a request that fits",
    "PartitionTimeLimit": "--time exceeds the partition's MaxTime: it will never start; cancel it and resubmit "
                          "with less --time or another --partition",
    "PartitionNodeLimit": "more nodes than the partition allows (MaxNodes/MinNodes): it will never start; cancel "
                          "it and resubmit with another --gpus or --partition",
    "PartitionDown": "the partition is down: it starts when an administrator brings it up",
    "PartitionInactive": "the partition is inactive: it starts when an administrator activates it",
    "BadConstraints": "no node has the requested --constraint: it will never start; cancel it and fix --constraint",
    "Reservation": "waiting for its advanced reservation to start",
    "Licenses": "waiting for a license it requested",
    "InvalidAccount": "its --account is not valid: it will never start; cancel it and fix --account",
    "InvalidQOS": "its --qos is not valid: it will never start; cancel it and fix --qos",
    "launch_failed_requeued_held": "it failed to launch and was requeued held: see the job's log, then "
                                   "`scontrol release JOBID`",
}


def run_command(cmd: list[str]) -> subprocess.CompletedProcess:
    """Run a SLURM client; a missing binary or a hung controller is an answer, not an exception."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except FileNotFoundError:
        return subprocess.CompletedProcess(cmd, 127, "", f"{cmd[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(cmd, 124, "", f"{' '.join(cmd)}: no answer in {COMMAND_TIMEOUT_S} s")


# ---------------------------------------------------------------- one job

def job_status(job_id: str, run: Runner = run_command) -> dict[str, Any]:
    """The executor's status() of one job or array task (``<array>_<task>``)."""
    shown = run(["scontrol", "show", "job", "-o", job_id])
    if shown.returncode == 0 and "JobId=" in shown.stdout:
        return combined([scontrol_record(fields) for fields in parse_scontrol(shown.stdout)])
    forgotten = _forgotten(shown.stderr + shown.stdout)   # 22.05 prints 'Job A_T not found' on stdout
    if forgotten and "_" in job_id:
        array = run(["scontrol", "show", "job", "-o", job_id.split("_")[0]])
        if array.returncode == 0 and "JobId=" in array.stdout:
            # SLURM drops a job-array task cancelled before it started, but still knows the array
            return {"state": "CANCELLED", "restarts": 0, "nodes": [], "detail": "cancelled before it started"}
    accounted = sacct_records(job_id, run)
    if isinstance(accounted, list):
        if accounted:
            return combined(accounted)
        return {"state": "UNKNOWN", "restarts": 0, "nodes": [], "detail": f"neither scontrol nor sacct knows job {job_id}"}
    if forgotten and accounted is None:
        return {"state": "UNKNOWN", "restarts": 0, "nodes": [], "detail": f"scontrol no longer knows job {job_id} "
                                                                          "(and there is no accounting to ask)"}
    said = " ".join((shown.stderr or shown.stdout).split()) or f"scontrol exited with {shown.returncode}"
    if isinstance(accounted, str):
        said += f"; sacct: {accounted}"
    return {"state": "UNREACHABLE", "restarts": 0, "nodes": [], "detail": said}


def array_status(array_id: str, run: Runner = run_command) -> dict[int, dict[str, Any]] | None:
    """{task: status} of every task the scheduler (or its accounting) knows; None when neither knows the array."""
    shown = run(["scontrol", "show", "job", "-o", array_id])
    if shown.returncode == 0 and "JobId=" in shown.stdout:
        return parse_array_records(shown.stdout)
    accounted = sacct_records(array_id, run)
    if isinstance(accounted, list):
        tasks: dict[int, dict[str, Any]] = {}
        for record in accounted:
            task_text = record["job_id"].partition("_")[2]
            for task in (parse_array_task_ids(task_text) if task_text else []):
                tasks[task] = status_fields(record)
        return tasks or None
    if _forgotten(shown.stderr + shown.stdout) and accounted is None:
        return None
    said = " ".join((shown.stderr or shown.stdout).split()) or f"scontrol exited with {shown.returncode}"
    from orchestrator.errors import OrchError
    raise OrchError(f"SLURM did not answer `scontrol show job {array_id}`: {said}. Check that the controller is up "
                    "(`scontrol ping`) and try again")


def combined(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One status from one or more records (a requeued job in sacct, an array's lines in scontrol)."""
    state = summarise([r["state"] for r in records])
    chosen = next(r for r in records if r["state"] == state)
    return {**status_fields(chosen), "restarts": max(r.get("restarts") or 0 for r in records)}


def status_fields(record: dict[str, Any]) -> dict[str, Any]:
    out = {"state": record["state"], "restarts": record.get("restarts") or 0, "nodes": record["nodes"]}
    if record.get("reason"):
        out["reason"] = record["reason"]
        out["explanation"] = explain(record["reason"])
    return out


def summarise(states: list[str]) -> str:
    """One state for a job (or a whole array): active beats failed beats completed."""
    for group in (("RUNNING",), ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING"), ("COMPLETING",)):
        for state in states:
            if state in group:
                return "RUNNING" if state == "COMPLETING" else state   # its processes are still ending
    for state in states:
        if state != "COMPLETED":
            return state
    return "COMPLETED"


# ---------------------------------------------------------------- scontrol

def parse_scontrol(text: str) -> list[dict[str, str]]:
    """`scontrol show job -o` → one {field: value} per line (the first occurrence of a field wins)."""
    out = []
    for line in text.splitlines():
        if "JobId=" not in line:
            continue
        fields: dict[str, str] = {}
        for part in _FIELD_SPLIT.split(line.strip()):
            key, _, value = part.partition("=")
            fields.setdefault(key, value)
        out.append(fields)
    return out


def scontrol_record(fields: dict[str, str]) -> dict[str, Any]:
    restarts = fields.get("Restarts", "0")
    return {"job_id": fields.get("JobId", ""), "state": clean_state(fields.get("JobState", "UNKNOWN")),
            "restarts": int(restarts) if restarts.isdigit() else 0, "nodes": expand_hostlist(fields.get("NodeList", "")),
            "reason": reason_code(fields.get("Reason", ""))}


def parse_array_records(output: str) -> dict[int, dict[str, Any]]:
    """`scontrol show job -o ARRAY` (one line per task; pending tasks share one line) → {task: status}."""
    tasks: dict[int, dict[str, Any]] = {}
    for fields in parse_scontrol(output):
        if "ArrayTaskId" not in fields or "JobState" not in fields:
            continue
        record = status_fields(scontrol_record(fields))
        for task in parse_array_task_ids(fields["ArrayTaskId"]):
            tasks[task] = dict(record)
    return tasks


def parse_array_task_ids(text: str) -> list[int]:
    """``2-5%2`` / ``1,3,7-8`` / ``[1,3]`` (scontrol, squeue, sacct) → the task ids."""
    ids: list[int] = []
    for part in text.strip("[]").split("%")[0].split(","):
        if "-" in part:
            low, high = part.split("-", 1)
            ids.extend(range(int(low), int(high) + 1))
        elif part:
            ids.append(int(part))
    return ids


# ---------------------------------------------------------------- sacct

def sacct_records(job_id: str, run: Runner = run_command) -> list[dict[str, Any]] | str | None:
    """The job's accounting records, oldest first; None where there is no accounting, else SLURM's error text."""
    result = run(["sacct", "-j", job_id, "-X", "-D", "-n", "-P", "-o", ",".join(SACCT_FIELDS)])
    said = " ".join((result.stderr + " " + result.stdout).split())
    if result.returncode != 0:
        return None if NO_ACCOUNTING in said or result.returncode == 127 else said
    return parse_sacct(result.stdout)


def parse_sacct(text: str) -> list[dict[str, Any]]:
    """`sacct -X -D -n -P -o JobID,State,Reason,NodeList` lines → one record per job id, its latest start.

    With -D a requeued job has one line per start, oldest first (the earlier ones REQUEUED): the
    last is the current one and the others count as restarts. ``CANCELLED by 0`` → CANCELLED.
    """
    latest: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < len(SACCT_FIELDS) or not parts[0]:
            continue
        job_id, state, reason, nodes = parts[:4]
        restarts = latest[job_id]["restarts"] + 1 if job_id in latest else 0
        latest.pop(job_id, None)   # re-inserted last: the order of the latest starts
        latest[job_id] = {"job_id": job_id, "state": clean_state(state), "restarts": restarts,
                          "nodes": expand_hostlist(nodes), "reason": reason_code(reason)}
    return list(latest.values())


# ---------------------------------------------------------------- small vocabularies

def clean_state(text: str) -> str:
    return (text.split() or ["UNKNOWN"])[0].rstrip("+")


def reason_code(text: str) -> str | None:
    """``ReqNodeNotAvail,_UnavailableNodes:n1`` → ``ReqNodeNotAvail``; ``None`` → None."""
    code = text.split(",")[0].strip()
    return None if code in NO_REASON else code


def explain(reason: str | None) -> str | None:
    """One line for a known pending reason; None for an unknown one (shown verbatim)."""
    return REASON_EXPLANATIONS.get(reason or "")


def expand_hostlist(text: str) -> list[str]:
    """SLURM's compressed host list → host names: ``n[01-03,7],gpu1`` → n01 n02 n03 n7 gpu1."""
    text = text.strip()
    if text in NO_NODES:
        return []
    hosts: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(text + ","):
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            hosts.extend(_expand_one(text[start:i]))
            start = i + 1
    return [h for h in hosts if h]


def _expand_one(name: str) -> list[str]:
    if "[" not in name or "]" not in name:
        return [name]
    prefix, rest = name.split("[", 1)
    ranges, suffix = rest.split("]", 1)
    out = []
    for part in ranges.split(","):
        low, _, high = part.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            return [name]      # not a range we understand: keep SLURM's text
        for number in range(int(low), int(high or low) + 1):
            out.extend(prefix + str(number).zfill(len(low)) + tail for tail in _expand_one(suffix))
    return out
