"""The per-node launcher: one per node (a SLURM task, or the local executor's process).

It runs torchrun for this node's processes, passes preemption warnings on, and decides what
happens when torchrun ends (:func:`decide`, a pure function of the exit code and the signals):
done, failed (never requeued in a loop), or checkpointed after a warning → requeue (SLURM:
``scontrol requeue`` of this job; local: start torchrun again).
Torch-free: it only starts processes.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType

from jobs import entry, toolbox_job
from jobs.preemption import EXIT_REQUEUE
from orchestrator import procfs, runs, storage, toolbox
from orchestrator.errors import OrchError

RDZV_BASE_PORT = 29400
RDZV_PORTS = 1000          # rendezvous ports RDZV_BASE_PORT .. +999 on a job's first node
RDZV_PORTS_PER_JOB = 4     # consecutive requeues of one job use different ports (then wrap)
NODE_HEARTBEAT_S = 15.0    # how often each launcher rewrites <run_dir>/nodes/node-<rank>.json
REDELIVER_S = 5.0          # after a warning, how often it is sent again to workers that are still running
PEER_EXIT_GRACE_S = 30.0   # after another node's torchrun failed, how long this node's workers may take to stop
NODES_DIR = "nodes"
FORWARDED_SIGNALS = (signal.SIGUSR2, signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class LaunchError(RuntimeError):
    pass


class SignalRelay:
    """The launcher's own handlers: remember the signal and pass it to torchrun's process group.

    A worker that has not yet installed its handler (the first instant of its start) ignores the
    signal, so until torchrun exits the signal is sent again every REDELIVER_S to the workers
    alone (a handled signal only sets their flag again).
    """

    def __init__(self) -> None:
        self.received: list[str] = []
        self.child: subprocess.Popen | None = None
        self.forwarded: int | None = None

    def install(self) -> "SignalRelay":
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        self.received.append(name)
        print(f"[orch launch] got {name}: passing it to the workers", flush=True)
        if self.child is not None and self.child.poll() is None:
            forward = signal.SIGUSR2 if signum == signal.SIGUSR1 else signum
            if signum == signal.SIGINT:
                forward = signal.SIGTERM
            self.forwarded = forward
            # torchrun starts each worker in a session of its own: signal every descendant
            _kill_all([self.child.pid] + procfs.descendants(self.child.pid), forward)

    def redeliver(self) -> None:
        if self.forwarded is not None and self.child is not None and self.child.poll() is None:
            _kill_all(worker_pids(self.child.pid), self.forwarded)

    def reset(self) -> None:
        """A new torchrun: nothing received or forwarded yet."""
        self.received.clear()
        self.forwarded = None

    @property
    def warned(self) -> bool:
        """A preemption / time-limit warning (not a cancel)."""
        return any(name in ("SIGUSR2", "SIGUSR1") for name in self.received)


def node_info() -> dict:
    """This node's place in the allocation (SLURM, or the local executor / a plain shell)."""
    env = os.environ
    if "SLURM_JOB_ID" in env:
        job_id = env.get("SLURM_ARRAY_JOB_ID") and f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}" \
            or env["SLURM_JOB_ID"]
        nodes = int(env.get("SLURM_JOB_NUM_NODES", env.get("SLURM_NNODES", "1")))
        hostnames = subprocess.run(["scontrol", "show", "hostnames", env.get("SLURM_JOB_NODELIST", "")],
                                   capture_output=True, text=True).stdout.split() if nodes > 1 else []
        return {"scheduler": "slurm", "job_id": job_id, "slurm_job_id": env["SLURM_JOB_ID"], "nodes": nodes,
                "node_rank": int(env.get("SLURM_NODEID", "0")), "first_node": hostnames[0] if hostnames else None,
                "restarts": int(env.get("SLURM_RESTART_COUNT", "0")), "global_task": int(env.get("SLURM_PROCID", "0"))}
    return {"scheduler": "local", "job_id": env.get("SUBMITIT_LOCAL_JOB_ID", str(os.getpid())), "nodes": 1,
            "node_rank": 0, "first_node": None, "restarts": 0, "global_task": 0}


def rendezvous(info: dict) -> tuple[str, int]:
    """This attempt's rendezvous id and port on the first node.

    Both come from the job id *and* SLURM's restart count: a requeued attempt must never meet the
    store (or the port) of the attempt before it. torchrun's c10d store is multi-tenant, and an
    agent that cannot bind the port quietly joins whatever store already listens there; with the
    same rendezvous id it would find that run's closed rendezvous and time out (submitit#1613).
    """
    job = str(info["job_id"])
    numeric_id = sum(int(part) for part in job.split("_"))   # "<array>_<task>" → array + task
    restarts = int(info["restarts"])
    port = RDZV_BASE_PORT + (numeric_id * RDZV_PORTS_PER_JOB + restarts % RDZV_PORTS_PER_JOB) % RDZV_PORTS
    return f"orch-{job}-{restarts}", port


def torchrun_command(run_dir: str, nproc: int, info: dict) -> list[str]:
    cmd = [sys.executable, "-m", "jobs.torchrun_wrapper", f"--nproc-per-node={nproc}", "--max-restarts=0",
           # the agent leaves SIGTERM to the workers, which checkpoint and exit (jobs/torchrun_wrapper.py)
           "--signals-to-handle=SIGINT,SIGHUP,SIGQUIT"]
    if info["nodes"] > 1:
        rdzv_id, port = rendezvous(info)
        # node 0 hosts the store, the others only connect: a port that is taken on the first node
        # fails the rendezvous at once instead of joining a stranger's store
        is_host = int(info["node_rank"] == 0)
        cmd += [f"--nnodes={info['nodes']}", "--rdzv-backend=c10d",
                f"--rdzv-endpoint={info['first_node']}:{port}", f"--rdzv-id={rdzv_id}",
                f"--rdzv-conf=join_timeout=300,is_host={is_host}"]
    else:
        cmd += ["--standalone", "--nnodes=1"]
    return cmd + ["-m", "jobs.train", run_dir]


def worker_env(nproc: int) -> dict[str, str]:
    """The workers' environment: the node's CPUs shared out evenly between its processes.

    torchrun sets OMP_NUM_THREADS=1 only when it starts more than one process per node, so 2 nodes
    × 1 process would compute with more threads than 1 node × 2 processes: other float rounding
    (CPU kernels split their sums by thread), other results, and an oversubscribed node. A value
    set by the user wins.
    """
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in env:
        cpus = int(env.get("SLURM_CPUS_PER_TASK") or 0) or len(os.sched_getaffinity(0))
        env["OMP_NUM_THREADS"] = str(max(1, cpus // max(1, nproc)))
    return env


class NodeRecord:
    """``<run_dir>/nodes/node-<rank>.json``: where this node's launcher runs and whether its workers live.

    Rewritten every NODE_HEARTBEAT_S while torchrun runs and once when it exits, so `orch status`
    can show every node of a multi-node job and point at one that stopped answering (a dead node
    leaves a record whose ``updated_at`` no longer moves). Never fails the job: progress files are
    a courtesy.
    """

    def __init__(self, run_dir: str, info: dict) -> None:
        self.run_dir, self.nodes = run_dir, info["nodes"]
        self.url = self.url_of(info["node_rank"])
        self.fields = {"node_rank": info["node_rank"], "hostname": socket.gethostname(),
                       "job_id": str(info["job_id"]), "restart": info["restarts"], "state": "STARTING",
                       "workers": 0, "exit_code": None, "started_at": runs.now_iso()}

    def update(self, **fields) -> None:
        self.fields.update(fields, updated_at=runs.now_iso())
        try:
            runs.write_json(self.url, self.fields)
        except (storage.StorageError, OSError) as exc:
            print(f"[orch launch] could not write {self.url} (training goes on): {exc}", flush=True)

    def url_of(self, node_rank: int) -> str:
        return storage.join(self.run_dir, NODES_DIR, f"node-{node_rank}.json")

    def heartbeat(self, torchrun: subprocess.Popen) -> None:
        self.update(state="RUNNING", workers=len(worker_pids(torchrun.pid)))

    def failed_peers(self) -> list[dict]:
        """Other nodes of this very attempt (job id and restart) whose torchrun has ended abnormally."""
        failed = []
        for rank in range(self.nodes):
            if rank == self.fields["node_rank"]:
                continue
            try:
                peer = runs.read_json(self.url_of(rank), default=None)
            except (storage.StorageError, OSError, ValueError):
                continue
            if isinstance(peer, dict) and peer.get("job_id") == self.fields["job_id"] \
                    and peer.get("restart") == self.fields["restart"] and peer.get("state") == "EXITED" \
                    and peer.get("exit_code") not in (0, None):
                failed.append(peer)
        return failed


class PeerWatch:
    """Ends this node's workers once another node's torchrun has failed and they have not stopped by themselves.

    torchrun's agent watches only its own workers: when another node dies, a worker here whose
    collective failed (or hangs) keeps its agent, and the job, waiting. Usually the collective fails
    within seconds (the peer's sockets are reset) and the worker exits; if it is still there
    PEER_EXIT_GRACE_S later (stuck in a collective or in its exit), its process tree is killed.
    """

    def __init__(self, record: NodeRecord) -> None:
        self.record = record
        self.failed_since: float | None = None
        self.reason: str | None = None

    def check(self, torchrun: subprocess.Popen) -> None:
        if self.record.nodes < 2 or self.reason:
            return
        failed = self.record.failed_peers()
        if not failed:
            return
        self.failed_since = self.failed_since or time.monotonic()
        if time.monotonic() - self.failed_since < PEER_EXIT_GRACE_S:
            return
        peer = failed[0]
        self.reason = (f"node {peer.get('node_rank')} ({peer.get('hostname')}) ended (torchrun exit code "
                       f"{peer.get('exit_code')}) and this node's workers had not stopped {PEER_EXIT_GRACE_S:.0f} s later")
        print(f"[orch launch] {self.reason}: killing them", flush=True)
        _kill_all([torchrun.pid] + procfs.descendants(torchrun.pid), signal.SIGKILL)


def _kill_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def worker_pids(torchrun_pid: int) -> list[int]:
    """Live training processes (``jobs.train``) started by this node's torchrun (not their data loaders)."""
    found = []
    for pid, st in procfs.processes().items():
        if st.ppid != torchrun_pid or st.state == "Z":
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"jobs.train" in argv:
            found.append(pid)
    return found


def read_job_state(run_dir: str) -> dict:
    """status.json for messages only ({} when unreadable): no decision depends on it."""
    try:
        state = runs.read_json(storage.join(run_dir, runs.STATUS_FILE), default={})
    except (storage.StorageError, OSError, ValueError) as exc:
        print(f"[orch launch] could not read the run's status.json ({exc}); deciding from the exit code", flush=True)
        return {}
    return state if isinstance(state, dict) else {}


# ---------------------------------------------------------------- what to do when torchrun has ended

DONE, REQUEUE, RESTART, FAIL = "done", "requeue", "restart", "fail"


@dataclass(frozen=True)
class Ended:
    """What the launcher knows when this node's torchrun has ended: all that :func:`decide` reads."""
    exit_code: int                 # torchrun's: 0 trained to the end, EXIT_REQUEUE checkpointed when asked to stop
    signals: tuple[str, ...]       # signals this launcher received meanwhile (SIGUSR2, SIGTERM, ...)
    restarts: int                  # requeues (SLURM) or restarts (local) of this job so far
    max_requeues: int
    scheduler: str                 # "slurm" or "local"
    peer_failure: str | None = None   # another node failed and this node's workers were stopped (PeerWatch)
    job_error: str | None = None      # status.json's error, when it could be read: words for the message only
    toolbox: bool = False             # a toolbox trains (trainer.kind): requeued on a warning whatever its exit code


@dataclass(frozen=True)
class Action:
    kind: str                      # DONE, REQUEUE (SLURM), RESTART (torchrun again, here) or FAIL
    message: str = ""


def decide(ended: Ended, run_name: str) -> Action:
    """The launcher's one decision, from exit code and signals alone (never from a file that may be unwritable)."""
    resume = f"`orch resume {run_name}` continues from the last checkpoint"
    warned = any(name in ("SIGUSR2", "SIGUSR1") for name in ended.signals)   # a preemption / time-limit warning
    signals = ", ".join(ended.signals) or "a signal"
    if ended.exit_code == 0:
        return Action(DONE)
    # a toolbox ends a warning its own way (killed by it, or its own exit code): it resumes from its last checkpoint
    if warned and (ended.exit_code == EXIT_REQUEUE or ended.toolbox):
        if ended.restarts >= ended.max_requeues:
            return Action(FAIL, f"preempted {ended.restarts + 1} times (resources.max_requeues={ended.max_requeues}); "
                                f"not requeued again: {resume}")
        return Action(REQUEUE if ended.scheduler == "slurm" else RESTART)
    if ended.exit_code == EXIT_REQUEUE:
        return Action(FAIL, f"stopped by {signals} after checkpointing; {resume}")
    if ended.signals:
        return Action(FAIL, f"stopped by {signals} (torchrun exit code {ended.exit_code}); {resume}")
    if ended.peer_failure:
        return Action(FAIL, f"{ended.peer_failure}; {resume}")
    return Action(FAIL, f"training failed: {ended.job_error or f'torchrun exited with code {ended.exit_code}'}")


def run_node(run_dir: str) -> str:
    """Run this node's share of the job to its end; returns the final state or raises."""
    doc = entry.open_run(run_dir)  # the storage options handed over first: plan.json may be on a bucket
    plan, resources = doc["plan"], doc["config"]["resources"]
    relay = SignalRelay().install()
    info = node_info()
    record = NodeRecord(run_dir, info)
    watch = PeerWatch(record)
    local_attempts = 0
    kind_job = toolbox_job.ToolboxJob(doc, run_dir, info) if toolbox.is_toolbox(doc["config"]) else None
    while True:
        added_env, cwd = {}, None
        if kind_job is not None:
            rdzv_id, port = rendezvous(info)
            cmd, added_env, cwd = kind_job.command(f"{rdzv_id}-{local_attempts}", port)
        else:
            cmd = torchrun_command(run_dir, plan["gpus_per_node"], info)
        print(f"[orch launch] node {info['node_rank']}/{info['nodes']} ({socket.gethostname()}) job {info['job_id']} "
              f"restart {info['restarts'] + local_attempts}: {' '.join(cmd)}", flush=True)
        # ORCH_JOB_ID: status.json names the job that wrote it, so `orch status` tells this job's word from an earlier one's
        relay.child = subprocess.Popen(cmd, cwd=cwd, env={**worker_env(plan["gpus_per_node"]), **added_env,
                                                          "ORCH_JOB_ID": str(info["job_id"])})
        record.update(state="RUNNING", restart=info["restarts"] + local_attempts, exit_code=None)
        if kind_job is not None:
            kind_job.write_status("RUNNING")
        next_heartbeat = time.monotonic() + NODE_HEARTBEAT_S

        def tick() -> None:
            nonlocal next_heartbeat
            relay.redeliver()
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + NODE_HEARTBEAT_S
                record.heartbeat(relay.child)
                watch.check(relay.child)
                if kind_job is not None:
                    kind_job.write_status("RUNNING")

        code = _wait(relay.child, REDELIVER_S, tick)
        job = read_job_state(run_dir)
        record.update(state="EXITED", workers=0, exit_code=code, run_state=job.get("state"))
        print(f"[orch launch] {'the toolbox' if kind_job else 'torchrun'} exited with {code}; run state {job.get('state')}",
              flush=True)
        action = decide(Ended(exit_code=code, signals=tuple(relay.received), restarts=info["restarts"] + local_attempts,
                              max_requeues=resources["max_requeues"], scheduler=info["scheduler"],
                              peer_failure=watch.reason, job_error=job.get("error"), toolbox=kind_job is not None),
                        doc["run_name"])
        if kind_job is not None:
            kind_job.write_status({DONE: "COMPLETED", FAIL: "FAILED"}.get(action.kind, "PREEMPTED"),
                                  error=action.message or None,
                                  note=kind_job.lost_work_note(saved=code == EXIT_REQUEUE)
                                  if action.kind in (REQUEUE, RESTART) else None)
        if action.kind == DONE:
            return "COMPLETED"
        if action.kind == REQUEUE:
            if info["global_task"] == 0:
                # "<array>_<task>" in a job array: the task's plain id may be the array's own
                # id (the last task to start keeps it), and requeueing that requeues every task
                _requeue_slurm(info["job_id"])
            return "REQUEUED"
        if action.kind == RESTART:
            local_attempts += 1
            relay.reset()
            continue
        raise LaunchError(action.message)


def _wait(child: subprocess.Popen, every_s: float, tick) -> int:
    """torchrun's exit code; ``tick()`` runs every ``every_s`` meanwhile."""
    while True:
        try:
            return child.wait(timeout=every_s)
        except subprocess.TimeoutExpired:
            tick()
        except InterruptedError:  # a signal arrived: keep waiting for the workers to checkpoint
            continue


def _requeue_slurm(job_id: str) -> None:
    print(f"[orch launch] requeueing SLURM job {job_id}", flush=True)
    result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    if result.returncode != 0:
        raise LaunchError(f"scontrol requeue {job_id} failed: {result.stderr.strip()}")
    time.sleep(600)  # SLURM kills this allocation and starts it again


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m jobs.launch RUN_DIR", file=sys.stderr)
        return 2
    try:
        print(json.dumps({"state": run_node(argv[0])}))
        return 0
    except (LaunchError, OrchError) as exc:  # OrchError: e.g. the run dir's store cannot be reached
        print(f"[orch launch] {exc}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
