"""State that tells the truth (issue 11, item 5): LOST, readers that never write, one owner of
submissions.json, SLURM's pending reasons from real scontrol text, sacct where scontrol forgot.

SLURM is faked at its edge: SlurmExecutor.submit/status/cancel, or the command runner of
orchestrator/executors/slurm_state.py fed with text captured on the local cluster (slurm_text/).
"""
import json
import os
import subprocess
import threading

import pytest

from orchestrator import cli, records, submission
from orchestrator.executors import slurm_state
from orchestrator.executors.base import Submitted
from orchestrator.executors.slurm import SlurmExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "slurm_text")


def slurm_text(name):
    with open(os.path.join(TEXT, name)) as f:
        return f.read()


class FakeSlurm:
    """sbatch hands out job ids 100, 101, ...; scontrol answers from ``self.states``."""

    def __init__(self, monkeypatch):
        self.states: dict[str, dict] = {}
        self.cancelled: list[str] = []
        self.submitted = 0
        monkeypatch.setattr(SlurmExecutor, "submit", lambda _, req: self._submit(req))
        monkeypatch.setattr(SlurmExecutor, "status",
                            lambda _, job_id: self.states.get(job_id, {"state": "UNKNOWN", "restarts": 0}))
        monkeypatch.setattr(SlurmExecutor, "cancel", lambda _, job_id: self.cancelled.append(job_id))

    def _submit(self, req):
        job_id = str(100 + self.submitted)
        self.submitted += 1
        self.states[job_id] = {"state": "PENDING", "restarts": 0, "nodes": []}
        return Submitted(job_id=job_id, executor="slurm", log_dir=req.log_dir)


@pytest.fixture
def tiny_data(tmp_path):
    from orchestrator.synth import make_synthetic_dataset
    make_synthetic_dataset(str(tmp_path / "data"), num_train=8, num_val=2, image_size=64, seed=0)
    return str(tmp_path / "data")


@pytest.fixture
def run_dir(tiny_data, tmp_path, monkeypatch):
    """A run submitted to the fake SLURM as job 100."""
    monkeypatch.setenv("ORCH_CACHE_DIR", str(tmp_path / "cache"))
    fake = FakeSlurm(monkeypatch)
    code = cli.main(["submit", os.path.join(ROOT, "configs", "demo.yml"), "--executor", "slurm", "--name", "r1",
                     "--gpus", "2", f"work_dir={tmp_path}/runs", f"data.train.ann_file={tiny_data}/train.json",
                     f"data.train.img_dir={tiny_data}/train", f"data.val.ann_file={tiny_data}/val.json",
                     f"data.val.img_dir={tiny_data}/val", "data.batch_per_gpu=2"])
    assert code == 0
    return str(tmp_path / "runs" / "r1"), fake


def write_job_status(run_dir, **fields):
    with open(os.path.join(run_dir, "status.json"), "w") as f:
        json.dump(fields, f)


# ---------------------------------------------------------------- combine_states, the whole table

JOB_STATES = (None, "RUNNING", "PREEMPTED", "COMPLETED", "FAILED")
TABLE = [
    # scheduler     cancelled  job: None        RUNNING      PREEMPTED    COMPLETED    FAILED
    ("PENDING", False, ("PENDING", "PENDING", "PENDING", "PENDING", "PENDING")),
    ("PENDING", True, ("PENDING", "PENDING", "PENDING", "PENDING", "PENDING")),
    ("RUNNING", False, ("RUNNING", "RUNNING", "RUNNING", "RUNNING", "RUNNING")),
    ("RUNNING", True, ("RUNNING", "RUNNING", "CANCELLED", "RUNNING", "RUNNING")),   # checkpointing on its way out
    ("REQUEUED", False, ("REQUEUED", "REQUEUED", "REQUEUED", "REQUEUED", "REQUEUED")),
    ("COMPLETED", False, ("FAILED", "FAILED", "PREEMPTED", "COMPLETED", "FAILED")),  # ended: the job's word decides
    ("COMPLETED", True, ("CANCELLED", "CANCELLED", "CANCELLED", "COMPLETED", "CANCELLED")),
    ("ENDED", False, ("FAILED", "FAILED", "PREEMPTED", "COMPLETED", "FAILED")),      # local: the process is gone
    ("ENDED", True, ("CANCELLED", "CANCELLED", "CANCELLED", "COMPLETED", "CANCELLED")),
    ("FAILED", False, ("FAILED", "FAILED", "FAILED", "COMPLETED", "FAILED")),
    ("FAILED", True, ("CANCELLED", "CANCELLED", "CANCELLED", "COMPLETED", "CANCELLED")),
    ("CANCELLED", False, ("CANCELLED", "CANCELLED", "CANCELLED", "COMPLETED", "CANCELLED")),
    ("TIMEOUT", False, ("TIMEOUT", "TIMEOUT", "TIMEOUT", "COMPLETED", "TIMEOUT")),
    ("PREEMPTED", False, ("PREEMPTED", "PREEMPTED", "PREEMPTED", "COMPLETED", "PREEMPTED")),
    ("NODE_FAIL", False, ("NODE_FAIL", "NODE_FAIL", "NODE_FAIL", "COMPLETED", "NODE_FAIL")),
    ("OUT_OF_MEMORY", False, ("OUT_OF_MEMORY", "OUT_OF_MEMORY", "OUT_OF_MEMORY", "COMPLETED", "OUT_OF_MEMORY")),
    # forgotten by the scheduler: a final word stands, none (or a RUNNING that never ended) is LOST
    ("UNKNOWN", False, ("LOST", "LOST", "PREEMPTED", "COMPLETED", "FAILED")),
    ("UNKNOWN", True, ("CANCELLED", "CANCELLED", "CANCELLED", "COMPLETED", "CANCELLED")),
    # the scheduler did not answer: only the job's COMPLETED is certain
    ("UNREACHABLE", False, ("UNKNOWN", "UNKNOWN", "UNKNOWN", "COMPLETED", "UNKNOWN")),
    ("UNREACHABLE", True, ("UNKNOWN", "UNKNOWN", "UNKNOWN", "COMPLETED", "UNKNOWN")),
]
ROWS = [(scheduler, job, cancelled, expected)
        for scheduler, cancelled, row in TABLE for job, expected in zip(JOB_STATES, row)]


@pytest.mark.parametrize("scheduler,job,cancelled,expected", ROWS)
def test_combine_states_table(scheduler, job, cancelled, expected):
    assert submission.combine_states(scheduler, job, cancelled) == expected


def test_every_combined_state_is_in_the_vocabulary():
    from orchestrator.executors.base import STATES, TERMINAL_STATES
    assert "LOST" in STATES
    assert {expected for *_, expected in ROWS} <= set(STATES) | set(TERMINAL_STATES)


# ---------------------------------------------------------------- LOST: shown, resumable, not cancellable

def test_a_job_the_scheduler_forgot_without_a_record_is_lost_and_resumable(run_dir, capsys):
    path, fake = run_dir
    del fake.states["100"]                     # scontrol/sacct no longer know job 100; no status.json
    capsys.readouterr()
    assert cli.main(["status", path]) == 0
    out = capsys.readouterr().out
    assert "LOST" in out and "PENDING" not in out

    assert cli.main(["cancel", path]) == 2     # nothing to cancel, and it says what to do instead
    err = capsys.readouterr().err
    assert "LOST" in err and "orch resume" in err and "Traceback" not in err
    assert fake.cancelled == []

    assert cli.main(["resume", path]) == 0
    assert "resumed run r1 (LOST)" in capsys.readouterr().out
    assert [a["job_id"] for a in records.read(path)["attempts"]] == ["100", "101"]
    assert submission.run_status(path)["state"] == "PENDING"


def test_a_running_record_the_scheduler_forgot_is_lost(run_dir):
    path, fake = run_dir
    write_job_status(path, state="RUNNING", iteration=5)
    fake.states["100"] = {"state": "UNKNOWN", "restarts": 0}
    assert submission.run_status(path)["state"] == "LOST"


def test_an_unanswering_scheduler_is_unknown_and_neither_resumed_nor_cancelled(run_dir, capsys):
    path, fake = run_dir
    fake.states["100"] = {"state": "UNREACHABLE", "restarts": 0, "detail": "Unable to contact slurm controller"}
    assert submission.run_status(path)["state"] == "UNKNOWN"
    for command in ("resume", "cancel"):
        capsys.readouterr()
        assert cli.main([command, path]) == 2
        err = capsys.readouterr().err
        assert "did not answer" in err and "Unable to contact slurm controller" in err
    assert len(records.read(path)["attempts"]) == 1 and fake.cancelled == []


# ---------------------------------------------------------------- readers never write; writers never lose

def test_status_runs_and_logs_never_write_submissions_json(run_dir, capsys):
    path, fake = run_dir
    url = os.path.join(path, "submissions.json")
    before = os.stat(url)
    for state in ("PENDING", "RUNNING", "FAILED"):
        fake.states["100"] = {"state": state, "restarts": 0}
        submission.run_status(path)
        assert cli.main(["runs", "--work-dir", os.path.dirname(path)]) == 0
        assert cli.main(["status", path, "--json"]) == 0
        cli.main(["logs", path])
    after = os.stat(url)
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)


def test_status_in_a_loop_does_not_lose_a_concurrent_resume(run_dir):
    path, fake = run_dir
    url = os.path.join(path, "submissions.json")
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def look():
        try:
            while not stop.is_set():
                seen.append(submission.run_status(path)["attempt"])
        except BaseException as exc:   # a torn read would land here
            errors.append(exc)

    lookers = [threading.Thread(target=look) for _ in range(3)]
    for thread in lookers:
        thread.start()
    try:
        for _ in range(15):
            fake.states[records.last_attempt(path)["job_id"]]["state"] = "FAILED"   # resumable
            submission.resume(path)
    finally:
        stop.set()
        for thread in lookers:
            thread.join()
    assert not errors
    attempts = records.read(path)["attempts"]
    assert [a["attempt"] for a in attempts] == list(range(1, 17))
    assert [a["job_id"] for a in attempts] == [str(100 + i) for i in range(16)]
    assert len(seen) > 15 and os.path.exists(url)


def test_writers_go_through_records(run_dir):
    path, _ = run_dir
    records.append_attempt(path, "r1", "7", "slurm", "/logs", "resume")
    records.mark_cancelled(path)
    attempts = records.read(path)["attempts"]
    assert [a["kind"] for a in attempts] == ["submit", "resume"]
    assert "cancelled_at" in attempts[-1] and "cancelled_at" not in attempts[0]


# ---------------------------------------------------------------- damaged run files: one paragraph

@pytest.mark.parametrize("name,text", [
    ("plan.json", '{"version": 1, "run_name": "r1", "pla'),     # truncated
    ("plan.json", "[]"),
    ("plan.json", '{"run_name": "r1"}'),
    ("submissions.json", '{"run_name": "r1", "attempts": [{"job_id": "1'),
    ("submissions.json", '{"attempts": "none"}'),
    ("submissions.json", '{"attempts": [{"job_id": 100}]}'),
    ("status.json", '{"state": "RUNN'),
])
@pytest.mark.parametrize("command", ["status", "resume", "runs", "cancel"])
def test_a_damaged_run_file_is_a_clean_error_naming_it(run_dir, capsys, name, text, command):
    path, _ = run_dir
    with open(os.path.join(path, name), "w") as f:
        f.write(text)
    capsys.readouterr()
    argv = ["runs", "--work-dir", os.path.dirname(path)] if command == "runs" else [command, path]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert os.path.join(path, name) in err and "damaged" in err
    assert "Traceback" not in err and "internal error" not in err


# ---------------------------------------------------------------- SLURM's words: real scontrol text

def runner(answers):
    """A fake command runner: ``answers`` maps the program (scontrol/sacct) to (returncode, stdout, stderr)."""
    calls = []

    def run(cmd):
        calls.append(cmd)
        code, out, err = answers[cmd[0]] if not callable(answers[cmd[0]]) else answers[cmd[0]](cmd)
        return subprocess.CompletedProcess(cmd, code, out, err)

    run.calls = calls
    return run


@pytest.mark.parametrize("name,state,reason,explained", [
    ("scontrol_pending_resources.txt", "PENDING", "Resources", "waiting for free nodes/GPUs"),
    ("scontrol_pending_priority.txt", "PENDING", "Priority", "other jobs come first"),
    ("scontrol_pending_held.txt", "PENDING", "JobHeldUser", "scontrol release"),
    ("scontrol_pending_dependency.txt", "PENDING", "Dependency", "depends on"),
    ("scontrol_pending_partition_time_limit.txt", "PENDING", "PartitionTimeLimit", "MaxTime"),
    ("scontrol_running.txt", "RUNNING", None, None),
])
def test_scontrol_text_gives_state_and_pending_reason(name, state, reason, explained):
    status = slurm_state.job_status("5", runner({"scontrol": (0, slurm_text(name), "")}))
    assert status["state"] == state and status.get("reason") == reason
    if explained:
        assert explained in status["explanation"]
    if state == "RUNNING":
        assert status["nodes"] == ["localhost"]
    else:
        assert status["nodes"] == []


def test_pending_reason_reaches_orch_status(run_dir, capsys, monkeypatch):
    path, _ = run_dir
    answer = runner({"scontrol": (0, slurm_text("scontrol_pending_resources.txt"), "")})
    monkeypatch.setattr(SlurmExecutor, "status", lambda _, job_id: slurm_state.job_status(job_id, answer))
    capsys.readouterr()
    assert cli.main(["status", path]) == 0
    assert "PENDING (Resources: waiting for free nodes/GPUs)" in capsys.readouterr().out
    assert cli.main(["status", path, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["pending_reason"] == "Resources"
    assert status["pending_explanation"] == "waiting for free nodes/GPUs"
    assert status["nodes"] == [] and status["state"] == "PENDING"


def test_an_unknown_reason_is_shown_verbatim(run_dir, capsys, monkeypatch):
    path, _ = run_dir
    text = slurm_text("scontrol_pending_resources.txt").replace("Reason=Resources", "Reason=SomeNewReason")
    answer = runner({"scontrol": (0, text, "")})
    monkeypatch.setattr(SlurmExecutor, "status", lambda _, job_id: slurm_state.job_status(job_id, answer))
    capsys.readouterr()
    assert cli.main(["status", path]) == 0
    assert "PENDING (SomeNewReason)" in capsys.readouterr().out


def test_nodes_is_a_host_list_beside_node_status(run_dir, capsys, monkeypatch):
    path, fake = run_dir
    fake.states["100"] = {"state": "RUNNING", "restarts": 0, "nodes": slurm_state.expand_hostlist("n[1-2]")}
    assert submission.run_status(path)["nodes"] == ["n1", "n2"]
    # a local job (no allocation from a scheduler): the hosts its launchers reported
    fake.states["100"] = {"state": "RUNNING", "restarts": 0}
    os.makedirs(os.path.join(path, "nodes"))
    for rank, host in enumerate(("a", "b")):
        with open(os.path.join(path, "nodes", f"node-{rank}.json"), "w") as f:
            json.dump({"node_rank": rank, "hostname": host, "job_id": "100", "state": "RUNNING",
                       "updated_at": "2026-12-01T00:00:00+00:00"}, f)
    capsys.readouterr()
    assert cli.main(["status", path, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["nodes"] == ["a", "b"] and len(status["node_status"]) == 2


@pytest.mark.parametrize("text,hosts", [
    ("localhost", ["localhost"]), ("", []), ("(null)", []), ("None assigned", []),
    ("n[1-3]", ["n1", "n2", "n3"]), ("gpu[08-10],cpu1", ["gpu08", "gpu09", "gpu10", "cpu1"]),
    ("r[1-2]-n[1,3]", ["r1-n1", "r1-n3", "r2-n1", "r2-n3"]),
])
def test_expand_hostlist(text, hosts):
    assert slurm_state.expand_hostlist(text) == hosts


def test_array_records_from_real_text_keep_the_held_reason():
    tasks = slurm_state.parse_array_records(slurm_text("scontrol_array_held.txt"))
    assert sorted(tasks) == [0, 1, 2, 3]
    assert tasks[2]["state"] == "PENDING" and tasks[2]["reason"] == "JobHeldUser"


# ---------------------------------------------------------------- sacct where scontrol forgot

FORGOT = (1, "", slurm_text("scontrol_unknown_job_stderr.txt"))


def test_forgotten_job_without_accounting_is_unknown():
    """The local cluster: scontrol forgot the job and sacct says accounting is disabled."""
    run = runner({"scontrol": FORGOT, "sacct": (1, slurm_text("sacct_no_accounting_stderr.txt"), "")})
    status = slurm_state.job_status("100", run)
    assert status["state"] == "UNKNOWN"
    assert [c[0] for c in run.calls] == ["scontrol", "sacct"]


@pytest.mark.parametrize("sacct_out,state,restarts", [
    ("100|COMPLETED|None|n1\n", "COMPLETED", 0),
    ("100|CANCELLED by 0|None|n[1-2]\n", "CANCELLED", 0),
    ("100|REQUEUED|None|n1\n100|REQUEUED|None|n2\n100|TIMEOUT|None|n1\n", "TIMEOUT", 2),   # -D: one line per start
    ("100|PENDING|Priority|None assigned\n", "PENDING", 0),
    ("", "UNKNOWN", 0),                                                                   # accounting never heard of it
])
def test_sacct_answers_for_a_job_scontrol_forgot(sacct_out, state, restarts):
    run = runner({"scontrol": FORGOT, "sacct": (0, sacct_out, "")})
    status = slurm_state.job_status("100", run)
    assert status["state"] == state and status["restarts"] == restarts
    sacct = next(c for c in run.calls if c[0] == "sacct")
    assert sacct[:3] == ["sacct", "-j", "100"] and "-X" in sacct and "-P" in sacct
    if state == "CANCELLED":
        assert status["nodes"] == ["n1", "n2"]


def test_scontrol_first_sacct_never_asked_for_a_job_it_knows():
    run = runner({"scontrol": (0, slurm_text("scontrol_running.txt"), ""), "sacct": (0, "", "")})
    assert slurm_state.job_status("4", run)["state"] == "RUNNING"
    assert [c[0] for c in run.calls] == ["scontrol"]


def test_an_unreachable_controller_is_not_called_forgotten():
    run = runner({"scontrol": (1, "", slurm_text("scontrol_no_config_stderr.txt")),
                  "sacct": (1, slurm_text("sacct_no_accounting_stderr.txt"), "")})
    status = slurm_state.job_status("100", run)
    assert status["state"] == "UNREACHABLE" and "configuration file" in status["detail"]


def test_missing_slurm_binaries_are_unreachable_not_a_traceback(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert slurm_state.job_status("100")["state"] == "UNREACHABLE"


def test_array_forgotten_by_scontrol_comes_from_sacct():
    out = "7_0|COMPLETED|None|n1\n7_1|REQUEUED|None|n1\n7_1|RUNNING|None|n2\n7_[2-3]|PENDING|JobHeldUser|None assigned\n"
    tasks = slurm_state.array_status("7", runner({"scontrol": FORGOT, "sacct": (0, out, "")}))
    assert tasks[0]["state"] == "COMPLETED"
    assert tasks[1] == {"state": "RUNNING", "restarts": 1, "nodes": ["n2"]}
    assert tasks[3]["state"] == "PENDING" and tasks[3]["reason"] == "JobHeldUser"
    no_accounting = runner({"scontrol": FORGOT, "sacct": (1, slurm_text("sacct_no_accounting_stderr.txt"), "")})
    assert slurm_state.array_status("7", no_accounting) is None


def test_an_unreachable_controller_is_a_clean_error_for_a_sweep():
    from orchestrator.errors import OrchError
    run = runner({"scontrol": (1, "", slurm_text("scontrol_no_config_stderr.txt")),
                  "sacct": (1, slurm_text("sacct_no_accounting_stderr.txt"), "")})
    with pytest.raises(OrchError, match="SLURM did not answer .*scontrol ping"):
        slurm_state.array_status("7", run)


def test_a_cancelled_job_shows_no_pending_reason(run_dir, monkeypatch):
    """SLURM keeps the last Reason (JobHeldUser) on a job cancelled while it waited: not a reason to show."""
    path, _ = run_dir
    answer = runner({"scontrol": (0, slurm_text("scontrol_cancelled_while_held.txt"), "")})
    monkeypatch.setattr(SlurmExecutor, "status", lambda _, job_id: slurm_state.job_status(job_id, answer))
    status = submission.run_status(path)
    assert status["state"] == "CANCELLED" and status["pending_reason"] is None


@pytest.mark.parametrize("written_by,word,expected", [
    ("100", "FAILED", "FAILED"),       # the lost job's own word stands
    ("99", "FAILED", "LOST"),          # an earlier attempt's word: this job said nothing
    ("99", "RUNNING", "LOST"),
    ("99", "PREEMPTED", "LOST"),
    ("99", "COMPLETED", "COMPLETED"),  # a completed run is never resumed: always true
    (None, "FAILED", "FAILED"),        # written before jobs named themselves
])
def test_only_the_current_jobs_word_counts(run_dir, written_by, word, expected):
    path, fake = run_dir
    fake.states["100"] = {"state": "UNKNOWN", "restarts": 0}
    write_job_status(path, state=word, iteration=3, job_id=written_by)
    assert submission.run_status(path)["state"] == expected


def test_an_array_task_cancelled_while_pending_is_cancelled_not_unknown():
    """SLURM 22.05 prints `Job 4_2 not found` on stdout (not "Invalid job id" on stderr) for such a task while it
    knows the array (captured from the local cluster)."""
    def scontrol(cmd):
        if cmd[-1] == "4_2":
            return 1, slurm_text("scontrol_array_task_cancelled_pending_stdout.txt"), ""   # on stdout, exit 1
        return 0, slurm_text("scontrol_array_held.txt"), ""

    status = slurm_state.job_status("4_2", runner({"scontrol": scontrol, "sacct": (1, "", "no accounting")}))
    assert status["state"] == "CANCELLED" and status["detail"] == "cancelled before it started"
