"""Submit, resume, cancel and inspect runs: the flows behind `orch submit/status/logs/cancel/resume`.

submit: config → plan → checks (inputs, executor: partition limits) → run dir → executor.submit → submissions.json.
Everything that can be wrong is checked before anything is submitted or written.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

from orchestrator import input_checks, planner, records, runs, storage
from orchestrator.errors import OrchError
from orchestrator.executors import Executor, JobRequest, get_executor
from orchestrator.executors.base import ACTIVE_STATES

NODE_RECORD_RE = re.compile(r"^node-(\d+)\.json$")
NODE_STALE_S = 60   # a running node whose launcher has not written for this long has stopped answering

# CLI flag → resources key
RESOURCE_FLAGS = ("gpus", "gpus_per_node", "nodes", "partition", "time", "account", "qos", "constraint",
                  "exclude", "cpus_per_gpu", "mem_per_gpu", "executor")


def log_dir_for(run_dir: str, run_name: str) -> str:
    """Scheduler logs need a directory every node can write: the run dir when it is a file system."""
    if storage.is_local(run_dir):
        return storage.join(storage.local_path(run_dir), "logs")
    root = os.environ.get("ORCH_LOG_ROOT") or os.path.join(os.path.expanduser("~"), ".cache", "orch", "logs")
    return os.path.join(root, run_name)


def job_request(doc: dict[str, Any], log_dir: str, **extra: Any) -> JobRequest:
    plan, res = doc["plan"], doc["config"]["resources"]
    return JobRequest(
        run_name=doc["run_name"], run_dir=doc["run_dir"], log_dir=log_dir,
        nodes=plan["nodes"], gpus_per_node=plan["gpus_per_node"], time=res["time"],
        partition=res.get("partition"), account=res.get("account"), qos=res.get("qos"),
        constraint=res.get("constraint"), exclude=res.get("exclude"), cpus_per_gpu=res["cpus_per_gpu"],
        mem_per_gpu=res.get("mem_per_gpu"), signal_delay_s=res["signal_delay_s"],
        max_requeues=res["max_requeues"], **extra)


@dataclass
class Prepared:
    doc: dict[str, Any]
    plan: planner.Plan
    request: JobRequest
    executor: Executor


def prepare(config: dict[str, Any], run_name: str, executor_name: str | None = None) -> Prepared:
    """Plan and check everything without writing anything: the one path of submit and --dry-run,
    so a dry-run refuses exactly what a submit refuses."""
    if not config["data"]["train"]["ann_file"]:
        raise OrchError("data.train.ann_file is not set: point it at a COCO json")
    plan = runs.build_plan(config)
    run_dir = storage.join(config["work_dir"], runs.check_run_name(run_name))
    doc = runs.plan_document(run_name, run_dir, plan, config)
    request = job_request(doc, log_dir_for(run_dir, run_name))  # validates every sbatch-bound value
    input_checks.check_inputs(config)
    executor = get_executor(executor_name or config["resources"]["executor"])
    executor.check(request)   # the local node limit; SLURM: the request against the partition (slurm_limits)
    return Prepared(doc, plan, request, executor)


def submit(config: dict[str, Any], run_name: str, executor_name: str) -> dict[str, Any]:
    prepared = prepare(config, run_name, executor_name)
    doc = runs.create_run_dir(config["work_dir"], run_name, prepared.plan, config)
    try:
        with storage.secrets_in_env(storage.active()):  # the options this CLI used: config + user's
            submitted = prepared.executor.submit(prepared.request)
    except Exception:
        storage.remove(doc["run_dir"], recursive=True)  # we just made it: leave nothing behind
        raise
    records.start(doc["run_dir"], run_name, submitted.job_id, executor_name, submitted.log_dir, "submit")
    return {"run_name": run_name, "run_dir": doc["run_dir"], "job_id": submitted.job_id,
            "executor": executor_name, "log_dir": submitted.log_dir, "plan": prepared.plan}


# ---------------------------------------------------------------- finding runs

def find_run(ref: str, work_dir: str | None = None) -> str:
    """A run dir from a path/URL or a run name under work_dir (default: ./runs)."""
    if storage.exists(storage.join(ref, runs.PLAN_FILE)):
        return ref
    base = work_dir or os.environ.get("ORCH_WORK_DIR") or storage.absolute("runs")
    candidate = storage.join(base, ref)
    if storage.exists(storage.join(candidate, runs.PLAN_FILE)):
        return candidate
    raise OrchError(f"no run {ref!r}: not a run dir, and not found under {base} "
                    "(pass the run dir, or --work-dir where it lives)")


def list_runs(work_dir: str) -> list[dict[str, Any]]:
    rows = []
    for name in storage.listdir(work_dir):
        run_dir = storage.join(work_dir, name)
        if storage.exists(storage.join(run_dir, runs.PLAN_FILE)):
            rows.append(run_status(run_dir))
    return rows


# ---------------------------------------------------------------- status

def run_status(run_dir: str, scheduler: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's state and progress; ``scheduler`` (the executor's status of its last job) saves
    asking the executor again when the caller already has it (a sweep asks once for all points).
    Reads only: nothing in the run dir is written."""
    doc = runs.read_plan(run_dir)
    attempts = records.read(run_dir)["attempts"]
    job = read_job_status(run_dir)
    last = attempts[-1] if attempts else None
    if scheduler is None:
        scheduler = {"state": "UNKNOWN", "restarts": 0}
        if last:
            scheduler = get_executor(last["executor"]).status(last["job_id"])
    state = combine_states(scheduler["state"], job_word(job, last), bool(last and last.get("cancelled_at")))
    waiting = state in ACTIVE_STATES and state != "RUNNING"
    nodes_seen = node_status(run_dir, last["job_id"] if last else None)
    return {
        "run_name": doc["run_name"], "run_dir": run_dir, "state": state,
        "job_id": last["job_id"] if last else None, "executor": last["executor"] if last else None,
        "attempt": len(attempts) + int(scheduler.get("restarts") or 0),
        # a toolbox job's status.json (written by its launcher) counts in the toolbox's whole epochs
        "iteration": int(job.get("iteration") or 0), "max_iters": job.get("max_iters") or doc["plan"]["max_iters"],
        "epoch": job.get("epoch"), "max_epochs": job.get("max_epochs"), "kind": job.get("kind"),
        "eta_s": job.get("eta_s") if state == "RUNNING" else None,
        "latest_checkpoint": runs.latest_checkpoint(run_dir) or job.get("latest_checkpoint"),
        "metrics": job.get("metrics") or {}, "note": job.get("note"),
        "eval": job.get("eval") or {}, "best_bbox_mAP": job.get("best_bbox_mAP"),
        # hosts of the current job: the scheduler's allocation, else those its launchers reported
        "nodes": list(scheduler.get("nodes") or []) or [n["hostname"] for n in nodes_seen if n.get("hostname")],
        "error": job.get("error"), "updated_at": job.get("updated_at"),
        "log_dir": last["log_dir"] if last else None,
        "node_status": nodes_seen,
        "pending_reason": scheduler.get("reason") if waiting else None,
        "pending_explanation": scheduler.get("explanation") if waiting else None,
        "scheduler_detail": scheduler.get("detail"),
    }


def node_status(run_dir: str, job_id: str | None, now: dt.datetime | None = None) -> list[dict[str, Any]]:
    """What each node's launcher last wrote (``nodes/node-<rank>.json``) for this job, node order.

    ``seen_s`` is the record's age; a node still RUNNING whose record is older than NODE_STALE_S
    gets ``stale: True`` (its launcher, and so most likely the node, is gone).
    """
    if job_id is None:
        return []
    now = now or dt.datetime.now(dt.timezone.utc)
    nodes_dir = storage.join(run_dir, "nodes")
    out = []
    for name in storage.listdir(nodes_dir):
        if not NODE_RECORD_RE.match(name):
            continue
        try:
            record = runs.read_json(storage.join(nodes_dir, name), default=None)
        except ValueError:
            continue   # a courtesy file caught mid-write on a store without atomic writes: skip it
        if not isinstance(record, dict) or str(record.get("job_id")) != str(job_id):
            continue   # a previous job's record (resume): not this attempt's node
        try:
            seen_s = max(0, round((now - dt.datetime.fromisoformat(record["updated_at"])).total_seconds()))
        except (KeyError, TypeError, ValueError):
            seen_s = None
        record["seen_s"] = seen_s
        record["stale"] = record.get("state") == "RUNNING" and seen_s is not None and seen_s > NODE_STALE_S
        out.append(record)
    return sorted(out, key=lambda r: int(r.get("node_rank") or 0))


def read_job_status(run_dir: str) -> dict[str, Any]:
    """status.json, what the job's rank 0 last said ({} before it started); damaged: an OrchError."""
    url = storage.join(run_dir, runs.STATUS_FILE)
    try:
        job = runs.read_json(url, default={})
    except ValueError as exc:
        raise OrchError(f"{url} is damaged: not valid JSON ({exc}). The training job rewrites it as it runs; "
                        "delete it to see the scheduler's view of the run") from None
    if job is not None and not isinstance(job, dict):
        raise OrchError(f"{url} is damaged: expected a JSON object, found {type(job).__name__}. The training job "
                        "rewrites it as it runs; delete it to see the scheduler's view of the run")
    return job or {}


def job_word(job: dict[str, Any], last: dict[str, Any] | None) -> str | None:
    """status.json's state if the current attempt's job wrote it; None if an earlier attempt's job did.

    A COMPLETED run is never resumed, so its COMPLETED always stands. Files written before jobs
    named themselves (no ``job_id``) are taken at their word.
    """
    word = job.get("state")
    written_by = job.get("job_id")
    if word != "COMPLETED" and last and written_by and str(written_by) != str(last["job_id"]):
        return None
    return word


def combine_states(scheduler_state: str, job_state: str | None, cancelled: bool) -> str:
    """One SLURM-vocabulary state from what the scheduler and the job itself (status.json) report.

    ``scheduler_state``: a SLURM state, ``ENDED`` (local: the process is gone), ``UNKNOWN`` (the
    scheduler, and its accounting where there is one, does not know the job) or ``UNREACHABLE``
    (it did not answer). ``job_state``: None (nothing written yet), RUNNING, PREEMPTED, COMPLETED
    or FAILED. ``cancelled``: `orch cancel` stopped the current attempt. Read top to bottom:
    """
    if scheduler_state in ACTIVE_STATES:
        # after `orch cancel` the job checkpoints on its way out while SLURM still says RUNNING
        winding_down = cancelled and job_state == "PREEMPTED" and scheduler_state in ("RUNNING", "COMPLETING")
        return "CANCELLED" if winding_down else scheduler_state
    if job_state == "COMPLETED":
        return "COMPLETED"      # the job's own last word, whatever became of its allocation
    if scheduler_state == "UNREACHABLE":
        return "UNKNOWN"        # cannot tell: it may be queued or running
    if cancelled:
        return "CANCELLED"
    if scheduler_state in ("COMPLETED", "ENDED"):
        # the allocation ended: the job's word decides; without one it stopped unexplained (killed, or
        # it never got as far as writing): a failure, which the logs explain
        return job_state if job_state in ("FAILED", "PREEMPTED") else "FAILED"
    if scheduler_state == "UNKNOWN":
        # forgotten by the scheduler: a final word stands; none, or a RUNNING that never ended, is LOST
        return job_state if job_state in ("FAILED", "PREEMPTED") else "LOST"
    return scheduler_state      # FAILED, CANCELLED, TIMEOUT, PREEMPTED, NODE_FAIL, OUT_OF_MEMORY, ...


# ---------------------------------------------------------------- cancel and resume

def cancel(run_dir: str) -> dict[str, Any]:
    status = run_status(run_dir)
    if status["state"] == "UNKNOWN":
        raise OrchError(unreachable_message(status, "cancel it"))
    if status["state"] == "LOST":
        raise OrchError(f"run {status['run_name']} is LOST: the scheduler no longer knows job {status['job_id']} and "
                        "the job left no final word, so there is nothing to cancel; `orch resume "
                        f"{status['run_name']}` starts it again from its latest checkpoint")
    if status["state"] not in ACTIVE_STATES:
        raise OrchError(f"run {status['run_name']} is {status['state']}, not queued or running: nothing to cancel")
    get_executor(status["executor"]).cancel(status["job_id"])
    records.mark_cancelled(run_dir)
    return status


def unreachable_message(status: dict[str, Any], what: str) -> str:
    return (f"cannot tell whether job {status['job_id']} of run {status['run_name']} is still queued or running: the "
            f"scheduler did not answer ({status.get('scheduler_detail') or 'no reply'}); try again once it answers "
            f"(`scontrol ping`), then {what}")


@contextlib.contextmanager
def run_lock(run_dir: str) -> Iterator[None]:
    """One resume at a time per run, across processes on this machine (the login node)."""
    lock_root = os.environ.get("ORCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "orch")
    os.makedirs(os.path.join(lock_root, "locks"), exist_ok=True)
    path = os.path.join(lock_root, "locks", hashlib.sha256(run_dir.encode()).hexdigest()[:24] + ".lock")
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OrchError(f"another `orch resume` of {run_dir} is in progress") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def job_storage_options(doc: dict[str, Any], run_dir: str) -> storage.StorageOptions:
    """What a resubmitted job is handed: the run's saved options (its ``***`` secrets dropped) under
    the ones this process uses (the user's $ORCH_STORAGE_OPTIONS)."""
    saved = storage.StorageOptions.parse(doc["config"].get("storage_options"),
                                         source=f"storage_options in {storage.join(run_dir, runs.PLAN_FILE)}")
    return saved.merged(storage.active())


def resume(run_dir: str, executor_name: str | None = None) -> dict[str, Any]:
    with run_lock(run_dir):
        status = run_status(run_dir)
        if status["state"] in ACTIVE_STATES:
            raise OrchError(f"run {status['run_name']} is {status['state']} (job {status['job_id']}); "
                            "it resumes by itself — `orch cancel` it first to resubmit")
        if status["state"] == "COMPLETED":
            raise OrchError(f"run {status['run_name']} is already COMPLETED")
        if status["state"] == "UNKNOWN":
            raise OrchError(unreachable_message(status, "resume it"))
        doc = runs.read_plan(run_dir)
        name = executor_name or status["executor"] or doc["config"]["resources"]["executor"]
        executor, request = get_executor(name), job_request(doc, log_dir_for(run_dir, doc["run_name"]))
        executor.check(request)
        with storage.secrets_in_env(job_storage_options(doc, run_dir)):
            submitted = executor.submit(request)
        records.append_attempt(run_dir, doc["run_name"], submitted.job_id, name, submitted.log_dir, "resume")
        from orchestrator import toolbox   # a toolbox resumes from its newest checkpoint that loads

        from_checkpoint = toolbox.resume_from(run_dir, doc) if toolbox.is_toolbox(doc["config"]) \
            else status["latest_checkpoint"]
        return {"run_name": doc["run_name"], "job_id": submitted.job_id, "executor": name,
                "from_checkpoint": from_checkpoint, "previous_state": status["state"]}


# ---------------------------------------------------------------- logs

def log_files(run_dir: str) -> list[tuple[str, str]]:
    """(label, path) of every node's log of the current attempt, node order."""
    last = records.last_attempt(run_dir)
    if last is None:
        return []
    log_dir, job_id = last["log_dir"], last["job_id"]
    if not os.path.isdir(log_dir):
        return []
    files = [f for f in os.listdir(log_dir) if f.startswith(f"{job_id}_") and f.endswith(".out")]
    # one task per node: the task number in the log name is the node rank; the launchers' records name the host
    hosts = {str(r.get("node_rank")): r.get("hostname") for r in node_status(run_dir, job_id)}
    out = []
    for name in sorted(files, key=lambda f: _task_number(f[len(job_id) + 1:].split("_")[0])):
        task = name[len(job_id) + 1:].split("_")[0]
        label = f"node {task} {hosts[task]}" if hosts.get(task) else f"node {task}"
        out.append((label, os.path.join(log_dir, name)))
    return out


def _task_number(text: str) -> int:
    return int(text) if text.isdigit() else -1
