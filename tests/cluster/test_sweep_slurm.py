"""`orch sweep` against the real one-node SLURM cluster of slurm/ (tiny CPU runs on fake GPUs).

One 4-point grid (2 lrs × 2 batches), submitted as ONE job array with at most 2 tasks running:

1. the array holds every point (one sbatch, --array=0-3%2, task i runs p00i)
2. `scontrol requeue <array>_1` mid-run: task 1 restarts, resumes from its own checkpoint and
   completes; `scancel --signal=USR2 <array>_2` (the last task to start, whose plain job id is the
   array's own id): the launcher checkpoints and requeues `<array>_2` alone; task 0 keeps Restarts=0
3. `scancel <array>_3` (pending) and `scancel <array>_0` (running): `orch sweep status --json`
   shows every point, best bbox mAP first, the two cancelled ones last
4. `orch sweep resume` submits one new array over just 0 and 3 (--array=0,3%2); they complete,
   p000 from its checkpoint; p001/p002 are not touched; every point logged its hparams
"""
import glob
import json
import os
import subprocess

import pytest

from jobutil import ROOT, TINY, data_overrides, make_dataset, read_status, wait_for
from orchestrator import cli
from slurmutil import parse_scontrol_record, show_job, wait_for_job

pytestmark = pytest.mark.cluster
CONFIG = os.path.join(ROOT, "configs", "demo.yml")
PLAN = ["schedule.max_iters=10", "schedule.checkpoint_every_iters=2", "schedule.eval_every_iters=100",
        "resources.signal_delay_s=30", "resources.time=00:20:00"]
GRID = ["-p", "optimizer.base_lr=0.01,0.02", "-p", "data.batch_per_gpu=2,4"]  # BatchNorm needs 2+
NAME = "grid"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("data")), num_train=16)


@pytest.fixture(scope="module")
def sweep_dir(slurm_cluster, tmp_path_factory, data_root):
    work_dir = str(tmp_path_factory.mktemp("runs"))
    tiny = [o for o in TINY if not o.startswith("optimizer.base_lr=")]   # swept here
    args = ["sweep", CONFIG, *GRID, "--max-parallel", "2", "--name", NAME, "--executor", "slurm",
            "--partition", "dev", "--gpus", "1", "--cpus-per-gpu", "1", *tiny, *data_overrides(data_root),
            f"work_dir={work_dir}", *PLAN]
    patch = pytest.MonkeyPatch()
    patch.setenv("OMP_NUM_THREADS", "1")   # sbatch exports it to the jobs: 4 trainings share 2 cores
    patch.setenv("ORCH_CACHE_DIR", os.path.join(work_dir, ".cache"))
    assert cli.main(args) == 0
    yield os.path.join(work_dir, NAME)
    patch.undo()
    doc = json.load(open(os.path.join(work_dir, NAME, "sweep.json")))
    for array_id in doc["array_job_ids"]:   # nothing of ours keeps running after the module
        subprocess.run(["scancel", array_id], capture_output=True)


def sweep_doc(sweep_dir):
    with open(os.path.join(sweep_dir, "sweep.json")) as f:
        return json.load(f)


def array_tasks(array_id):
    """{task: scontrol fields} of every task SLURM shows for the array (pending ones share a line)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", array_id], capture_output=True, text=True).stdout
    tasks = {}
    for line in out.splitlines():
        fields = parse_scontrol_record(line)
        text = fields["ArrayTaskId"].split("%")[0]
        for part in text.split(","):
            low, _, high = part.partition("-")
            for task in range(int(low), int(high or low) + 1):
                tasks[task] = fields
    return tasks


def sweep_status(sweep_dir, capsys):
    capsys.readouterr()
    assert cli.main(["sweep", "status", sweep_dir, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def log_text(sweep_dir, job_id):
    return "".join(open(p).read() for p in sorted(glob.glob(os.path.join(sweep_dir, "logs", f"{job_id}_*.out"))))


def when_past(actions, iteration, timeout_s):
    """Run each point's action as soon as its status.json passes ``iteration`` (poll every 0.2 s)."""
    pending = dict(actions)

    def step():
        for run_dir in list(pending):
            if read_status(run_dir).get("iteration", 0) >= iteration:
                pending.pop(run_dir)()
        return not pending

    wait_for(step, timeout_s, f"{sorted(os.path.basename(p) for p in pending)} past iteration {iteration}")


@pytest.fixture(scope="module")
def disturbed(sweep_dir):
    """Cancel 3 (pending) and 0 (running), requeue 1, USR2 to 2; wait until 1 and 2 complete."""
    array_id = sweep_doc(sweep_dir)["array_job_ids"][0]
    point = lambda name: os.path.join(sweep_dir, name)  # noqa: E731
    subprocess.run(["scancel", f"{array_id}_3"], check=True)
    # past the checkpoint at iteration 2, so both have something to resume from
    when_past({point("p000"): lambda: subprocess.run(["scancel", f"{array_id}_0"], check=True),
               point("p001"): lambda: subprocess.run(["scontrol", "requeue", f"{array_id}_1"], check=True)},
              4, 420)
    when_past({point("p002"): lambda: subprocess.run(["scancel", "--signal=USR2", f"{array_id}_2"], check=True)},
              3, 420)
    for task in (1, 2):
        fields = wait_for_job(f"{array_id}_{task}", timeout_s=600)
        assert fields["JobState"] == "COMPLETED", log_text(sweep_dir, f"{array_id}_{task}")[-3000:]
    wait_for_job(f"{array_id}_0", timeout_s=60)
    return array_id


def test_one_job_array_holds_every_point(sweep_dir):
    doc = sweep_doc(sweep_dir)
    assert len(doc["array_job_ids"]) == 1 and doc["submissions"][0]["array"] == "0-3%2"
    array_id = doc["array_job_ids"][0]
    tasks = array_tasks(array_id)
    assert sorted(tasks) == [0, 1, 2, 3]
    assert {f["ArrayJobId"] for f in tasks.values()} == {array_id}
    assert {f["ArrayTaskThrottle"] for f in tasks.values()} == {"2"}
    script = open(os.path.join(sweep_dir, "logs", f"{array_id}_submission.sh")).read()
    assert "#SBATCH --array=0-3%2" in script and "-m jobs.launch" in script
    for i, point in enumerate(doc["points"]):
        plan = json.load(open(os.path.join(sweep_dir, point["name"], "plan.json")))
        assert plan["sweep"]["params"] == point["params"] and plan["config"]["optimizer"]["base_lr"] == \
            point["params"]["optimizer.base_lr"]


def test_requeued_tasks_restart_alone_resume_and_complete(disturbed, sweep_dir):
    array_id = disturbed
    assert int(show_job(f"{array_id}_1")["Restarts"]) == 1   # scontrol requeue <array>_1
    task2 = show_job(f"{array_id}_2")
    assert task2["JobId"] == array_id   # the last task to start holds the array's own id: `scontrol requeue
    assert int(task2["Restarts"]) == 1  # <that id>` would requeue every task; the launcher requeued <array>_2
    assert int(show_job(f"{array_id}_0")["Restarts"]) == 0
    text = log_text(sweep_dir, f"{array_id}_1")
    assert "DUE TO JOB REQUEUE" in text and "resumed from" in text
    text = log_text(sweep_dir, f"{array_id}_2")
    assert f"requeueing SLURM job {array_id}_2" in text and "resumed from" in text
    for name in ("p001", "p002"):
        status = read_status(os.path.join(sweep_dir, name))
        assert status["state"] == "COMPLETED" and status["iteration"] == 10


def test_status_lists_every_point_best_map_first(disturbed, sweep_dir, capsys):
    status = sweep_status(sweep_dir, capsys)
    rows = status["points"]
    assert sorted(r["point"] for r in rows) == ["p000", "p001", "p002", "p003"]
    states = {r["point"]: r["state"] for r in rows}
    assert states == {"p000": "CANCELLED", "p001": "COMPLETED", "p002": "COMPLETED", "p003": "CANCELLED"}
    maps = [r["best_bbox_mAP"] for r in rows]
    assert all(m is not None for m in maps[:2]) and maps[2:] == [None, None]
    assert maps[0] >= maps[1]
    assert {r["point"]: r["params"] for r in rows}["p002"] == {"optimizer.base_lr": 0.02, "data.batch_per_gpu": 2}
    assert {r["point"]: r["attempt"] for r in rows}["p001"] == 2   # one submission + one requeue
    # each point is a normal run: `orch status` agrees with the batched sweep status
    capsys.readouterr()
    assert cli.main(["status", os.path.join(sweep_dir, "p003"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "CANCELLED"   # cancelled while pending: gone


def test_resume_runs_only_the_cancelled_points(disturbed, sweep_dir, capsys):
    before = {p: os.path.getmtime(os.path.join(sweep_dir, p, "checkpoints", "final.pth")) for p in ("p001", "p002")}
    capsys.readouterr()
    assert cli.main(["sweep", "resume", sweep_dir]) == 0
    out = capsys.readouterr().out
    assert "2 point(s)" in out and "(--array=0,3%2)" in out and "p000 (CANCELLED), p003 (CANCELLED)" in out
    doc = sweep_doc(sweep_dir)
    new_array = doc["array_job_ids"][1]
    assert sorted(array_tasks(new_array)) == [0, 3]
    for task in (0, 3):
        fields = wait_for_job(f"{new_array}_{task}", timeout_s=600)
        assert fields["JobState"] == "COMPLETED", log_text(sweep_dir, f"{new_array}_{task}")[-3000:]
    assert "resumed from" in log_text(sweep_dir, f"{new_array}_0")      # from p000's own checkpoint
    assert "resumed from" not in log_text(sweep_dir, f"{new_array}_3")  # never ran before
    for point in ("p001", "p002"):
        attempts = json.load(open(os.path.join(sweep_dir, point, "submissions.json")))["attempts"]
        assert len(attempts) == 1
        assert os.path.getmtime(os.path.join(sweep_dir, point, "checkpoints", "final.pth")) == before[point]

    status = sweep_status(sweep_dir, capsys)
    assert [r["state"] for r in status["points"]] == ["COMPLETED"] * 4
    maps = [r["best_bbox_mAP"] for r in status["points"]]
    assert maps == sorted(maps, reverse=True)
    assert all(r["iteration"] == 10 for r in status["points"])
    # every point logged its swept keys with TensorBoard's hparams plugin
    for point in ("p000", "p001", "p002", "p003"):
        events = b"".join(open(p, "rb").read() for p in glob.glob(os.path.join(sweep_dir, point, "tb", "**", "*"),
                                                                   recursive=True) if os.path.isfile(p))
        assert b"optimizer.base_lr" in events and b"data.batch_per_gpu" in events
