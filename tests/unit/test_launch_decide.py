"""The launcher's decision when torchrun ends (jobs/launch.py decide): a table, and the proof that a
preempted run is requeued from its exit code even when status.json cannot be read."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from jobs import launch
from jobs.launch import DONE, FAIL, REQUEUE, RESTART, Ended, decide
from jobs.preemption import EXIT_REQUEUE

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PEER = "node 1 (n2) ended (torchrun exit code 1) and this node's workers had not stopped 30 s later"


@pytest.mark.parametrize("code,signals,restarts,scheduler,peer,error,kind,says", [
    # trained to the end: done, whatever arrived meanwhile
    (0, (), 0, "slurm", None, None, DONE, ""),
    (0, ("SIGUSR2",), 0, "slurm", None, None, DONE, ""),
    (0, ("SIGTERM",), 0, "local", None, None, DONE, ""),
    # checkpointed after a preemption / time-limit warning: requeue (SLURM) or start again (local)
    (EXIT_REQUEUE, ("SIGUSR2",), 0, "slurm", None, None, REQUEUE, ""),
    (EXIT_REQUEUE, ("SIGUSR1",), 2, "slurm", None, None, REQUEUE, ""),
    (EXIT_REQUEUE, ("SIGUSR2", "SIGTERM"), 0, "slurm", None, None, REQUEUE, ""),   # SLURM's warning, then its kill
    (EXIT_REQUEUE, ("SIGUSR2",), 0, "local", None, None, RESTART, ""),
    # ... but never in a loop
    (EXIT_REQUEUE, ("SIGUSR2",), 3, "slurm", None, None, FAIL, "preempted 4 times (resources.max_requeues=3)"),
    (EXIT_REQUEUE, ("SIGUSR2",), 3, "local", None, None, FAIL, "not requeued again"),
    # checkpointed because it was cancelled (scancel / orch cancel / Ctrl-C): stop, resumable
    (EXIT_REQUEUE, ("SIGTERM",), 0, "slurm", None, None, FAIL, "stopped by SIGTERM after checkpointing"),
    (EXIT_REQUEUE, (), 0, "slurm", None, None, FAIL, "stopped by a signal after checkpointing"),
    # a warning, then the workers died anyway: no requeue
    (1, ("SIGUSR2",), 0, "slurm", None, None, FAIL, "stopped by SIGUSR2 (torchrun exit code 1)"),
    (-9, ("SIGTERM",), 0, "local", None, "ignored", FAIL, "stopped by SIGTERM (torchrun exit code -9)"),
    # another node failed and this node's workers were stopped
    (-9, (), 0, "slurm", PEER, None, FAIL, PEER),
    # training failed: the job's own words when it left them, else the exit code
    (1, (), 0, "slurm", None, "non-finite loss at iteration 5", FAIL, "training failed: non-finite loss at iteration 5"),
    (1, (), 0, "slurm", None, None, FAIL, "training failed: torchrun exited with code 1"),
])
def test_decide(code, signals, restarts, scheduler, peer, error, kind, says):
    action = decide(Ended(exit_code=code, signals=signals, restarts=restarts, max_requeues=3, scheduler=scheduler,
                          peer_failure=peer, job_error=error), "r1")
    assert action.kind == kind
    assert says in action.message
    if kind == FAIL and not says.startswith("training failed"):
        assert "`orch resume r1`" in action.message


@pytest.mark.parametrize("code,signals,restarts,scheduler,kind,says", [
    # a toolbox does not checkpoint on a warning: whatever ends it after one, it resumes from its last checkpoint
    (-12, ("SIGUSR2",), 0, "slurm", REQUEUE, ""),          # killed by the forwarded SIGUSR2
    (1, ("SIGUSR2",), 0, "local", RESTART, ""),            # its own exit code
    (EXIT_REQUEUE, ("SIGUSR1",), 0, "slurm", REQUEUE, ""),   # a hook that checkpointed and asked for a requeue
    (-12, ("SIGUSR2",), 3, "slurm", FAIL, "preempted 4 times"),
    (0, ("SIGUSR2",), 0, "slurm", DONE, ""),               # finished before the kill
    # a cancel, or a failure without a warning: stop, as for orch's own trainer
    (-15, ("SIGTERM",), 0, "local", FAIL, "stopped by SIGTERM"),
    (2, (), 0, "slurm", FAIL, "torchrun exited with code 2"),
])
def test_decide_toolbox(code, signals, restarts, scheduler, kind, says):
    action = decide(Ended(exit_code=code, signals=signals, restarts=restarts, max_requeues=3, scheduler=scheduler,
                          toolbox=True), "r1")
    assert action.kind == kind
    assert says in action.message


def test_decide_reads_no_file():
    """Everything decide() needs is in Ended: the status.json text is at most words in a message."""
    with_error = Ended(EXIT_REQUEUE, ("SIGUSR2",), 0, 3, "slurm", job_error="could not write status.json")
    assert decide(with_error, "r").kind == REQUEUE == decide(Ended(EXIT_REQUEUE, ("SIGUSR2",), 0, 3, "slurm"), "r").kind


# ---------------------------------------------------------------- run_node with an unreadable status.json

FAKE_TORCHRUN = textwrap.dedent("""
    # first start: warn the launcher (as SLURM would), "checkpoint" and ask to be requeued;
    # second start: train to the end. Never touches status.json.
    import os, signal, sys, time
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    starts = sys.argv[1]
    n = len(open(starts).read()) if os.path.exists(starts) else 0
    open(starts, "a").write("x")
    if n == 0:
        os.kill(os.getppid(), signal.SIGUSR2)
        time.sleep(0.5)
        sys.exit(75)
    sys.exit(0)
""")


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in launch.FORWARDED_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_a_warned_run_restarts_although_its_status_json_cannot_be_read(tmp_path, monkeypatch, restore_signals):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "plan.json").write_text(json.dumps({
        "run_name": "r1", "run_dir": str(run_dir), "plan": {"gpus_per_node": 1},
        "config": {"resources": {"max_requeues": 3}, "storage_options": None}}))
    (run_dir / "status.json").mkdir()          # unreadable, as during an object-store outage
    starts = tmp_path / "starts"
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(launch, "torchrun_command",
                        lambda run_dir, nproc, info: [sys.executable, "-c", FAKE_TORCHRUN, str(starts)])
    assert launch.run_node(str(run_dir)) == "COMPLETED"
    assert starts.read_text() == "xx"           # checkpointed once, started again, finished
    node = json.loads((run_dir / "nodes" / "node-0.json").read_text())
    assert node["exit_code"] == 0 and node["restart"] == 1


# ---------------------------------------------------------------- the exit code survives torchrun

WORKER = textwrap.dedent("""
    import os, sys, time
    time.sleep(0.3 * int(os.environ["LOCAL_RANK"]))   # rank 0 ends first: the agent then stops rank 1
    sys.exit(int(sys.argv[1]))
""")


@pytest.mark.parametrize("worker_code,torchrun_code", [(EXIT_REQUEUE, EXIT_REQUEUE), (0, 0), (3, 1)])
def test_torchrun_wrapper_passes_the_requeue_exit_code_on(tmp_path, worker_code, torchrun_code):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "jobs.torchrun_wrapper", "--nproc-per-node=2", "--max-restarts=0",
                             "--standalone", "--nnodes=1", str(script), str(worker_code)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == torchrun_code, result.stderr[-2000:]
