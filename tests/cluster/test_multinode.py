"""Multi-node `orch submit` on the real two-node cluster of slurm/ (n1, n2; tiny CPU jobs, 1 process per node).

`--gpus 2 --gpus-per-node 1` → 2 nodes, one SLURM task (jobs.launch) each, torchrun's c10d rendezvous
on n1. Every run is compared with the same plan trained as 1 node × 2 processes (local torchrun,
same world size, same data per rank):

1. 2 nodes × 1 process completes, bitwise equal to 1 node × 2 processes; status and logs show both nodes
2. `scancel --signal=USR2` reaches both nodes → one checkpoint, one requeue, a fresh rendezvous
   (its id and port carry SLURM_RESTART_COUNT), no iteration repeated, bitwise equal
3. n2's torchrun and worker are killed mid-run → the job ends (FAILED, not hung: n1's launcher kills
   its workers if they have not stopped 30 s after n2's torchrun failed); `orch resume` continues
   from the last checkpoint, losing only the iterations since, bitwise equal
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from jobutil import (ROOT, TINY, assert_bitwise_equal, data_overrides, env, load_weights, make_run,
                     read_status, train_iterations, wait_for)
from orchestrator import cli, submission
from slurmutil import wait_for_job

pytestmark = pytest.mark.cluster
CONFIG = os.path.join(ROOT, "configs", "demo.yml")
MAX_ITERS = 12
PLAN = [f"schedule.max_iters={MAX_ITERS}", "schedule.checkpoint_every_iters=4", "schedule.eval_every_iters=100",
        "data.batch_per_gpu=2", "resources.signal_delay_s=30", "resources.time=00:20:00"]
JOB_TIMEOUT_S = 420


def test_requeued_attempt_gets_its_own_rendezvous_id_and_port():
    from jobs.launch import RDZV_BASE_PORT, rendezvous, torchrun_command

    seen = {rendezvous({"job_id": job, "restarts": restarts}) for job in ("41", "42", "7_3") for restarts in range(4)}
    assert len({rdzv_id for rdzv_id, _ in seen}) == 12 and len({port for _, port in seen}) == 12
    assert all(RDZV_BASE_PORT <= port < RDZV_BASE_PORT + 1000 for _, port in seen)
    info = {"job_id": "42", "restarts": 1, "nodes": 2, "node_rank": 1, "first_node": "n1"}
    cmd = " ".join(torchrun_command("/runs/r", 1, info))
    assert f"--rdzv-endpoint=n1:{rendezvous(info)[1]} --rdzv-id=orch-42-1 " in cmd and "is_host=0" in cmd


def test_workers_share_the_node_cpus_whatever_the_layout(monkeypatch):
    from jobs.launch import worker_env

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "2")
    assert worker_env(2)["OMP_NUM_THREADS"] == "1"   # 1 node × 2 processes, cpus_per_gpu 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert worker_env(1)["OMP_NUM_THREADS"] == "1"   # 2 nodes × 1 process: the same, not all cores
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert worker_env(1)["OMP_NUM_THREADS"] == "3"   # the user's value wins


def test_node_status_flags_a_node_that_stopped_writing(tmp_path):
    import datetime as dt

    from orchestrator.cli_runs import format_node

    now = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
    (tmp_path / "nodes").mkdir()
    for rank, host, age_s, job in ((0, "n1", 5, "9"), (1, "n2", 300, "9"), (2, "n3", 1, "8")):
        (tmp_path / "nodes" / f"node-{rank}.json").write_text(json.dumps(
            {"node_rank": rank, "hostname": host, "job_id": job, "state": "RUNNING", "workers": 1,
             "updated_at": (now - dt.timedelta(seconds=age_s)).isoformat()}))
    nodes = submission.node_status(str(tmp_path), "9", now=now)
    assert [(n["hostname"], n["seen_s"], n["stale"]) for n in nodes] == [("n1", 5, False), ("n2", 300, True)]
    assert "no heartbeat" in format_node(nodes[1]) and "1 worker(s)  seen 5 s ago" in format_node(nodes[0])


def test_peer_watch_stops_this_node_only_for_a_failed_peer_of_the_same_attempt(tmp_path, monkeypatch):
    from jobs import launch

    monkeypatch.setattr(launch, "PEER_EXIT_GRACE_S", 0.0)
    info = {"job_id": "9", "restarts": 1, "nodes": 2, "node_rank": 0}
    peer = launch.NodeRecord(str(tmp_path), {**info, "node_rank": 1})
    watch = launch.PeerWatch(launch.NodeRecord(str(tmp_path), info))
    torchrun = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        peer.update(state="EXITED", exit_code=-9, restart=0)   # the previous attempt's record: not a reason
        watch.check(torchrun)
        peer.update(state="EXITED", exit_code=0, restart=1)    # ended normally: not a reason
        watch.check(torchrun)
        assert torchrun.poll() is None and watch.reason is None
        peer.update(state="EXITED", exit_code=-9, restart=1)
        watch.check(torchrun)
        assert torchrun.wait(timeout=10) == -signal.SIGKILL
        assert "node 1 (" in watch.reason and "exit code -9" in watch.reason
    finally:
        torchrun.kill()


def submit(work_dir, data_root, name, gpus_per_node=1):
    args = ["submit", CONFIG, "--executor", "slurm", "--partition", "dev", "--gpus", "2",
            "--gpus-per-node", str(gpus_per_node), "--name", name, "--cpus-per-gpu", "1", *TINY,
            *data_overrides(data_root), f"work_dir={work_dir}", *PLAN]
    assert cli.main(args) == 0
    return last_job(os.path.join(work_dir, name))


def last_job(run_dir):
    with open(os.path.join(run_dir, "submissions.json")) as f:
        return json.load(f)["attempts"][-1]["job_id"]


def logs(run_dir):
    """{label: text} of every node's log of the run's current job."""
    return {label: open(path).read() for label, path in submission.log_files(run_dir)}


def final_weights(run_dir):
    return load_weights(os.path.join(run_dir, "checkpoints", "final.pth"))


def wait_iteration(run_dir, at_least, timeout=300):
    wait_for(lambda: read_status(run_dir).get("iteration", 0) >= at_least, timeout, f"iteration {at_least}")


@pytest.fixture(scope="module")
def one_node_reference(slurm_cluster_2nodes, work_dir, data_root):
    """The same plan as 1 node × 2 processes: plain local torchrun, started in the background."""
    run_dir = make_run(work_dir, "one-node", data_root, gpus=2, extra=PLAN)
    log = open(os.path.join(work_dir, "one-node.log"), "w")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc-per-node=2", "-m", "jobs.train", run_dir],
                            cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT)
    yield proc, run_dir
    if proc.poll() is None:
        proc.kill()


@pytest.fixture(scope="module")
def reference(one_node_reference, work_dir):
    proc, run_dir = one_node_reference
    assert proc.wait(timeout=JOB_TIMEOUT_S) == 0, open(os.path.join(work_dir, "one-node.log")).read()[-3000:]
    return final_weights(run_dir)


def test_two_nodes_one_process_each_equal_one_node_two_processes(one_node_reference, reference, work_dir,
                                                                  data_root, capsys):
    run_dir = os.path.join(work_dir, "two-nodes")
    job_id = submit(work_dir, data_root, "two-nodes")
    fields = wait_for_job(job_id, timeout_s=JOB_TIMEOUT_S)
    texts = logs(run_dir)
    assert fields["JobState"] == "COMPLETED", texts
    assert fields["NumNodes"] == "2" and fields["NodeList"] == "n[1-2]"
    # one launcher per node, each running torchrun for one process, meeting at n1
    assert sorted(texts) == ["node 0 n1", "node 1 n2"]
    for text in texts.values():
        command = re.search(r"\[orch launch\] node \d/2 \((n\d)\) job (\S+) restart 0: (.*)", text)
        assert command and command.group(2) == job_id, text
        assert "--nproc-per-node=1 " in command.group(3) and "--nnodes=2 " in command.group(3)
        assert "--rdzv-endpoint=n1:" in command.group(3) and f"--rdzv-id=orch-{job_id}-0 " in command.group(3)
        assert "torchrun exited with 0; run state COMPLETED" in text
    assert "run two-nodes on 2 process(es)" in texts["node 0 n1"]
    assert_bitwise_equal(reference, final_weights(run_dir))

    # orch status: both nodes by hostname; orch logs: both logs, labelled
    status = submission.run_status(run_dir)
    assert status["state"] == "COMPLETED" and status["iteration"] == MAX_ITERS
    assert [(n["node_rank"], n["hostname"], n["exit_code"]) for n in status["node_status"]] == \
        [(0, "n1", 0), (1, "n2", 0)]
    capsys.readouterr()
    assert cli.main(["status", run_dir]) == 0
    out = capsys.readouterr().out
    assert "nodes      n1, n2" in out and re.search(r"node 0 +n1 +EXITED", out) and re.search(r"node 1 +n2 +EXITED", out)
    assert cli.main(["logs", run_dir]) == 0
    out = capsys.readouterr().out
    assert "[node 0 n1] [orch launch] node 0/2 (n1)" in out and "[node 1 n2] [orch launch] node 1/2 (n2)" in out


def test_usr2_reaches_both_nodes_requeues_once_and_resumes_exactly(reference, work_dir, data_root):
    run_dir = os.path.join(work_dir, "warned")
    job_id = submit(work_dir, data_root, "warned")
    wait_iteration(run_dir, 2)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    fields = wait_for_job(job_id, timeout_s=JOB_TIMEOUT_S)
    texts = logs(run_dir)
    everything = "".join(texts.values())
    assert fields["JobState"] == "COMPLETED", texts
    assert int(fields["Restarts"]) == 1
    for text in texts.values():
        assert "got SIGUSR2: passing it to the workers" in text   # the warning reached both nodes
        assert "run state PREEMPTED" in text                      # ...and both stopped at the agreed step
    stopped_at = re.findall(r"checkpointed at iteration (\d+)", everything)
    assert len(stopped_at) == 1 and 2 <= int(stopped_at[0]) < MAX_ITERS
    assert everything.count("requeueing SLURM job") == 1 and "requeueing SLURM job" in texts["node 0 n1"]
    # the second attempt met at a rendezvous of its own (restart count in id and port)
    ports = {}
    for restart in (0, 1):
        found = re.findall(rf"--rdzv-endpoint=n1:(\d+) --rdzv-id=orch-{job_id}-{restart} ", everything)
        assert len(found) == 2, everything   # both nodes
        ports[restart] = set(found)
    assert ports[0] != ports[1]
    assert f"resumed from {run_dir}/checkpoints/iter_{int(stopped_at[0]):09d}.pth" in everything
    assert train_iterations(run_dir) == list(range(1, MAX_ITERS + 1))   # each iteration once
    assert_bitwise_equal(reference, final_weights(run_dir))


def job_processes(job_id, node):
    """{pid: argv} of the job's torchrun and training processes on ``node`` (from /proc/<pid>/environ)."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if environ.get(b"SLURM_JOB_ID") == job_id.encode() and environ.get(b"SLURMD_NODENAME") == node.encode() \
                and any(module in argv for module in ("jobs.torchrun_wrapper", "jobs.train")):
            found[int(entry)] = argv
    return found


def test_node_death_ends_the_job_and_resume_loses_only_work_since_checkpoint(reference, work_dir, data_root):
    run_dir = os.path.join(work_dir, "node-dies")
    job_id = submit(work_dir, data_root, "node-dies")
    wait_iteration(run_dir, 6)   # past the checkpoint at 4
    victims = job_processes(job_id, "n2")
    modules = {next(arg for arg in argv if arg.startswith("jobs.")) for argv in victims.values()}
    assert modules == {"jobs.torchrun_wrapper", "jobs.train"}, victims   # (+ the worker's data-loader process)
    killed_at = time.monotonic()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    fields = wait_for_job(job_id, timeout_s=150)   # ends: the survivor's collective fails, nothing hangs
    assert fields["JobState"] == "FAILED", fields
    ended_after_s = time.monotonic() - killed_at
    survivor = logs(run_dir)["node 0 n1"]
    assert re.search(r"Connection (reset|closed) by peer|node 1 \(n2\) ended \(torchrun exit code -9\)", survivor)
    status = submission.run_status(run_dir)
    assert status["state"] == "FAILED"
    assert [(n["hostname"], n["state"]) for n in status["node_status"]] == [("n1", "EXITED"), ("n2", "EXITED")]
    assert status["node_status"][1]["exit_code"] == -signal.SIGKILL
    checkpoint = int(re.search(r"iter_(\d{9})\.pth$", status["latest_checkpoint"]).group(1))
    died_at = max(train_iterations(run_dir))
    assert 4 <= checkpoint <= died_at < MAX_ITERS

    assert cli.main(["resume", run_dir]) == 0
    new_job = last_job(run_dir)
    assert new_job != job_id
    fields = wait_for_job(new_job, timeout_s=JOB_TIMEOUT_S)
    assert fields["JobState"] == "COMPLETED", logs(run_dir)
    assert f"resumed from {run_dir}/checkpoints/iter_{checkpoint:09d}.pth" in logs(run_dir)["node 0 n1"]
    # the first job logged 1..died_at; the resumed one starts right after the checkpoint
    assert train_iterations(run_dir) == list(range(1, died_at + 1)) + list(range(checkpoint + 1, MAX_ITERS + 1))
    assert_bitwise_equal(reference, final_weights(run_dir))
    print(f"job ended {ended_after_s:.0f} s after n2's processes were killed")
