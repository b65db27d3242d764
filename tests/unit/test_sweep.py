"""Sweeps without a cluster: point generation (tables), specs and their errors, the job-array script,
the sweep dir a submission leaves, batched status and resume over a fake scheduler.

That a sweep really runs as one job array is proven against the real SLURM cluster in
tests/cluster/test_sweep_slurm.py.
"""
import csv
import json
import math
import os
import sys

import pytest

from orchestrator import cli, runs, submission, sweep
from orchestrator.executors import Submitted
from orchestrator.executors.slurm import SlurmExecutor, format_array, parse_array_records, parse_array_task_ids
from orchestrator.sweep import SweepError, parse_param

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "configs", "demo.yml")


@pytest.fixture(autouse=True)
def _no_cluster_limits(monkeypatch):
    """Sweeps here are planned for a cluster that is not this machine's (the test cluster may be up)."""
    monkeypatch.setenv("ORCH_SKIP_SLURM_CHECK", "1")


# ---------------------------------------------------------------- specs

@pytest.mark.parametrize("text,key,kind,args", [
    ("optimizer.base_lr=0.01,0.02,0.04", "optimizer.base_lr", "values", (0.01, 0.02, 0.04)),
    ("optimizer.base_lr=1e-3,2e-3", "optimizer.base_lr", "values", (0.001, 0.002)),   # YAML 1.1 strings → numbers
    ("data.batch_per_gpu=2", "data.batch_per_gpu", "values", (2,)),
    ("optimizer.name=sgd, adamw", "optimizer.name", "values", ("sgd", "adamw")),
    ("schedule.milestones_iters=[5,8],[6]", "schedule.milestones_iters", "values", ([5, 8], [6])),
    ("data.filter_empty=true,false", "data.filter_empty", "values", (True, False)),
    (" optimizer.base_lr = loguniform(1e-4, 1e-2) ", "optimizer.base_lr", "loguniform", (1e-4, 1e-2)),
    ("optimizer.momentum=uniform(0.8,0.99)", "optimizer.momentum", "uniform", (0.8, 0.99)),
    ("data.batch_per_gpu=randint(1,4)", "data.batch_per_gpu", "randint", (1, 4)),
    ("optimizer.name=choice(sgd,adamw)", "optimizer.name", "choice", ("sgd", "adamw")),
])
def test_parse_param(text, key, kind, args):
    spec = parse_param(text)
    assert (spec.key, spec.kind, spec.args) == (key, kind, args)


@pytest.mark.parametrize("text,fragment", [
    ("optimizer.base_lr", "must look like key=v1,v2"),
    ("=0.1,0.2", "has an empty key"),
    ("optimizer..base_lr=1", "has an empty key"),
    ("optimizer.base_lr=", "has no values"),
    ("optimizer.base_lr=[0.1,0.2", "not valid YAML"),
    ("optimizer.base_lr=normal(0,1)", "unknown distribution 'normal'; valid: choice"),
    ("optimizer.base_lr=loguniform(0,1)", "loguniform bounds must be > 0"),
    ("optimizer.base_lr=loguniform(1e-2,1e-4)", "low (0.01) must be < high (0.0001)"),
    ("optimizer.base_lr=uniform(1)", "uniform takes 2 arguments (low, high), got 1"),
    ("optimizer.base_lr=uniform(a,b)", "low must be a number, got 'a'"),
    ("data.batch_per_gpu=randint(1.5,3)", "low must be an integer, got 1.5"),
    ("data.batch_per_gpu=randint(4,1)", "low (4) must be <= high (1)"),
    ("optimizer.name=choice()", "choice() needs at least one value"),
])
def test_bad_specs_are_clear_errors(text, fragment):
    with pytest.raises(SweepError) as info:
        parse_param(text)
    assert fragment in str(info.value)
    assert repr(text) in str(info.value) or text.split("=")[0] in str(info.value)


# ---------------------------------------------------------------- grid and random points

def specs(*texts):
    return [parse_param(t) for t in texts]


def test_grid_size_and_order_last_key_fastest():
    points = sweep.grid_points(specs("optimizer.base_lr=0.01,0.02,0.04", "data.batch_per_gpu=2,4"))
    assert len(points) == 6
    assert [(p["optimizer.base_lr"], p["data.batch_per_gpu"]) for p in points] == [
        (0.01, 2), (0.01, 4), (0.02, 2), (0.02, 4), (0.04, 2), (0.04, 4)]


@pytest.mark.parametrize("texts,size", [
    (["a.b=1"], 1), (["a.b=1,2,3"], 3), (["a.b=1,2", "c.d=x,y,z", "e.f=true,false"], 12),
    (["a.b=choice(1,2)", "c.d=3,4"], 4),
])
def test_grid_sizes(texts, size):
    assert len(sweep.grid_points(specs(*texts))) == size


@pytest.mark.parametrize("texts,fragment", [
    (["optimizer.base_lr=loguniform(1e-4,1e-2)"], "draws random values: add --random N"),
    (["a.b=1,2", "a.b=3"], "-p a.b is given twice"),
    ([], "needs at least one -p"),
])
def test_grid_refusals(texts, fragment):
    with pytest.raises(SweepError, match=fragment.replace("(", r"\(")):
        sweep.grid_points(specs(*texts))


RANDOM = ("optimizer.base_lr=loguniform(1e-4,1e-2)", "optimizer.momentum=uniform(0.8,0.99)",
          "data.batch_per_gpu=randint(1,4)", "optimizer.name=choice(sgd,adamw)", "model.name=a,b")


def test_random_is_reproducible_with_a_seed_and_changes_with_it():
    a = sweep.random_points(specs(*RANDOM), 20, seed=7)
    assert a == sweep.random_points(specs(*RANDOM), 20, seed=7)
    assert a != sweep.random_points(specs(*RANDOM), 20, seed=8)
    assert len(a) == 20 and all(set(p) == {s.split("=")[0] for s in RANDOM} for p in a)


def test_random_values_stay_in_their_ranges():
    points = sweep.random_points(specs(*RANDOM), 2000, seed=0)
    lrs = [p["optimizer.base_lr"] for p in points]
    assert all(1e-4 <= lr <= 1e-2 for lr in lrs)
    # log-uniform: as many points below the geometric middle (1e-3) as above, not 10 %
    assert 0.4 < sum(lr < 1e-3 for lr in lrs) / len(lrs) < 0.6
    assert all(0.8 <= p["optimizer.momentum"] <= 0.99 for p in points)
    batches = [p["data.batch_per_gpu"] for p in points]
    assert set(batches) == {1, 2, 3, 4} and all(isinstance(b, int) for b in batches)   # randint: both ends
    assert {p["optimizer.name"] for p in points} == {"sgd", "adamw"}
    assert {p["model.name"] for p in points} == {"a", "b"}                              # a list: a choice
    assert all(len(f"{lr:.6g}") == len(repr(lr)) or repr(lr) == f"{lr:.6g}" or
               float(f"{lr:.6g}") == lr for lr in lrs)                                  # 6 significant digits


@pytest.mark.parametrize("count", [0, -1, sweep.MAX_POINTS + 1])
def test_random_count_must_be_sensible(count):
    with pytest.raises(SweepError, match="--random"):
        sweep.random_points(specs("a.b=uniform(0,1)"), count, seed=0)


@pytest.mark.parametrize("count,first,last", [(1, "p000", "p000"), (6, "p000", "p005"), (1000, "p000", "p999"),
                                              (1001, "p0000", "p1000")])
def test_point_names(count, first, last):
    fmt = sweep.point_format(count)
    assert (fmt % 0, fmt % (count - 1)) == (first, last)


# ---------------------------------------------------------------- SLURM array syntax

@pytest.mark.parametrize("ids,parallel,text", [
    ([0, 1, 2, 3, 4, 5], 2, "0-5%2"), ([1, 3], 4, "1,3%2"), ([0, 1, 2, 5, 7, 8, 9], None, "0-2,5,7-9"),
    ([4], None, "4"), (list(range(1000)), 16, "0-999%16"), ([3, 1, 1], None, "1,3"),
])
def test_format_array(ids, parallel, text):
    assert format_array(ids, parallel) == text


@pytest.mark.parametrize("text,ids", [("2-5%2", [2, 3, 4, 5]), ("[1,3,7-8]", [1, 3, 7, 8]), ("3", [3]),
                                      ("0-2,5", [0, 1, 2, 5])])
def test_parse_array_task_ids(text, ids):
    assert parse_array_task_ids(text) == ids


def test_parse_array_records_one_line_per_task_and_pending_ranges():
    out = ("JobId=3 ArrayJobId=3 ArrayTaskId=3,5%2 ArrayTaskThrottle=2 JobName=s JobState=PENDING "
           "Reason=JobArrayTaskLimit Restarts=0 NodeList= NumNodes=1\n"
           "JobId=6 ArrayJobId=3 ArrayTaskId=2 JobState=RUNNING Reason=None Restarts=0 NodeList=localhost\n"
           "JobId=5 ArrayJobId=3 ArrayTaskId=1 JobState=PENDING Reason=BeginTime Restarts=1 NodeList=(null)\n"
           "JobId=4 ArrayJobId=3 ArrayTaskId=0 JobState=COMPLETED Reason=None Restarts=0 NodeList=localhost\n")
    tasks = parse_array_records(out)
    assert sorted(tasks) == [0, 1, 2, 3, 5]
    assert tasks[0]["state"] == "COMPLETED" and tasks[2] == {"state": "RUNNING", "restarts": 0, "nodes": ["localhost"]}
    assert tasks[1]["restarts"] == 1 and tasks[1]["nodes"] == [] and tasks[1]["reason"] == "BeginTime"
    assert tasks[3]["state"] == tasks[5]["state"] == "PENDING"


# ---------------------------------------------------------------- the CLI: dry run and refusals

@pytest.fixture
def tiny_data(tmp_path):
    from orchestrator.synth import make_synthetic_dataset
    make_synthetic_dataset(str(tmp_path / "data"), num_train=8, num_val=2, image_size=64, seed=0)
    return str(tmp_path / "data")


def sweep_args(tiny_data, work_dir, *extra):
    return ["sweep", CONFIG, "--executor", "slurm", "--partition", "dev", "--gpus", "2", "--name", "lrs",
            f"work_dir={work_dir}", f"data.train.ann_file={tiny_data}/train.json",
            f"data.train.img_dir={tiny_data}/train", f"data.val.ann_file={tiny_data}/val.json",
            f"data.val.img_dir={tiny_data}/val", "schedule.epochs=2", *extra]


def test_dry_run_lists_every_point_with_its_own_plan_and_one_array_script(tiny_data, tmp_path, capsys):
    code = cli.main(sweep_args(tiny_data, tmp_path / "runs", "-p", "optimizer.base_lr=0.01,0.02,0.04",
                               "-p", "data.batch_per_gpu=2,4", "--max-parallel", "2", "--dry-run"))
    out = capsys.readouterr().out
    assert code == 0
    assert "grid of 6 points over optimizer.base_lr (3) × data.batch_per_gpu (2)" in out
    table = [line.split() for line in out.splitlines() if line.startswith("p00")]
    # POINT base_lr batch lr total-batch iters/epoch max-iters warmup: the planner ran per point
    assert [row[:7] for row in table] == [
        ["p000", "0.01", "2", "0.005", "4", "2", "4"], ["p001", "0.01", "4", "0.01", "8", "1", "2"],
        ["p002", "0.02", "2", "0.01", "4", "2", "4"], ["p003", "0.02", "4", "0.02", "8", "1", "2"],
        ["p004", "0.04", "2", "0.02", "4", "2", "4"], ["p005", "0.04", "4", "0.04", "8", "1", "2"]]
    for line in ("#SBATCH --array=0-5%2", "#SBATCH --job-name=lrs", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --requeue", "#SBATCH --signal=USR2@120", f"#SBATCH --chdir={tmp_path}/runs/lrs/logs",
                 f"#SBATCH --output={tmp_path}/runs/lrs/logs/%A_%a_0_log.out", f'RUN_DIR={tmp_path}/runs/lrs/p"$TASK"',
                 f'{sys.executable} -u -m jobs.launch "$RUN_DIR"'):
        assert line in out, line
    assert out.count("#SBATCH --array") == 1
    assert not os.path.exists(tmp_path / "runs")   # nothing written


def test_dry_run_random_search(tiny_data, tmp_path, capsys):
    args = sweep_args(tiny_data, tmp_path / "runs", "-p", "optimizer.base_lr=loguniform(1e-4,1e-2)",
                      "--random", "5", "--seed", "3", "--dry-run")
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert "random search: 5 points drawn with seed 3 from optimizer.base_lr ~ loguniform(0.0001, 0.01)" in first
    assert "#SBATCH --array=0-4\n" in first
    assert cli.main(args) == 0
    assert capsys.readouterr().out == first   # the same seed, the same points


@pytest.mark.parametrize("extra,fragment", [
    (["-p", "resources.gpus_per_node=2,1"], "p000 needs nodes = 1 and p001 (resources.gpus_per_node=1) needs 2"),
    (["-p", "resources.time=01:00:00,02:00:00"], "needs resources.time = 01:00:00"),
    (["-p", "optimizer.base_lrr=0.1,0.2"], "unknown key 'optimizer.base_lrr'; did you mean 'optimizer.base_lr'?"),
    (["-p", "optimizer.base_lr=-1,0.1"], "point p000 (optimizer.base_lr=-1)"),
    (["-p", "optimizer.base_lr=0.1,0.2", "optimizer.base_lr=0.3"], "optimizer.base_lr is both swept (-p) and set"),
    (["-p", "data.batch_per_gpu=2,4", "--executor", "local"], "a sweep runs as one SLURM job array"),
    (["-p", "optimizer.base_lr=0.1", "--max-parallel", "0"], "--max-parallel 0 must be at least 1"),
    (["-p", "optimizer.base_lr"], "must look like key=v1,v2"),
    ([], "needs at least one -p"),
    # issue 11 item 8: ssdlite320's BatchNorm cannot train on one image per GPU; refused before queueing
    (["-p", "data.batch_per_gpu=1,2"], "point p000 (data.batch_per_gpu=1): data.batch_per_gpu = 1: ssdlite320"),
])
def test_sweeps_that_cannot_run_are_refused_before_anything_is_written(tiny_data, tmp_path, capsys, extra, fragment):
    code = cli.main(sweep_args(tiny_data, tmp_path / "runs", *extra))
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and "Traceback" not in err
    assert not os.path.exists(tmp_path / "runs")


# ---------------------------------------------------------------- submit, status, resume (fake scheduler)

class FakeSlurm:
    """Stands in for sbatch/scontrol: records the arrays, answers array_status from a table."""

    def __init__(self, monkeypatch):
        self.arrays: list[tuple[str, list[int], str, str]] = []
        self.tasks: dict[str, dict[int, dict] | None] = {}
        self.released: list[str] = []
        self.cancelled: list[str] = []
        monkeypatch.setattr(SlurmExecutor, "release", lambda _, job_id: self.released.append(job_id))
        monkeypatch.setattr(SlurmExecutor, "cancel", lambda _, job_id: self.cancelled.append(job_id))
        monkeypatch.setattr(SlurmExecutor, "submit_array", lambda executor, *a, **kw: self._submit(executor, *a, **kw))
        monkeypatch.setattr(SlurmExecutor, "array_status", lambda _, array_id: self.tasks.get(array_id))
        monkeypatch.setattr(SlurmExecutor, "status", lambda _, job_id: {"state": "UNKNOWN", "restarts": 0})

    def _submit(self, executor, req, task_ids, run_dir_format, task_offset=0):
        script = executor.array_script(req, task_ids, run_dir_format, task_offset)
        array_id = str(100 + len(self.arrays))
        self.arrays.append((array_id, list(task_ids), run_dir_format, script))
        return Submitted(job_id=array_id, executor="slurm", log_dir=req.log_dir)


def write_job_status(run_dir, state, iteration, best=None):
    with open(os.path.join(run_dir, "status.json"), "w") as f:
        json.dump({"state": state, "iteration": iteration, "best_bbox_mAP": best,
                   "eval": {"bbox_mAP": best} if best is not None else {}}, f)


@pytest.fixture
def submitted_sweep(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ORCH_CACHE_DIR", str(tmp_path / "cache"))
    fake = FakeSlurm(monkeypatch)
    code = cli.main(sweep_args(tiny_data, tmp_path / "runs", "-p", "optimizer.base_lr=0.01,0.02",
                               "-p", "data.batch_per_gpu=2,4", "--max-parallel", "3"))
    out, err = capsys.readouterr()
    assert code == 0, err
    return fake, str(tmp_path / "runs" / "lrs"), out


def test_submit_writes_a_sweep_dir_of_normal_runs_and_one_array(submitted_sweep):
    fake, sweep_dir, out = submitted_sweep
    assert "submitted sweep lrs: 4 points as SLURM job array 100 (--array=0-3%3)" in out
    assert len(fake.arrays) == 1 and fake.arrays[0][1] == [0, 1, 2, 3]
    # submitted held, released once every run dir and record was written
    assert "#SBATCH --hold" in fake.arrays[0][3] and fake.released == ["100"] and fake.cancelled == []
    assert fake.arrays[0][2] == f"{sweep_dir}/p%03d"
    doc = json.load(open(os.path.join(sweep_dir, "sweep.json")))
    assert doc["array_job_ids"] == ["100"] and doc["submissions"][0]["array"] == "0-3%3"
    assert doc["mode"] == "grid" and [p["name"] for p in doc["points"]] == ["p000", "p001", "p002", "p003"]
    assert doc["points"][3]["params"] == {"optimizer.base_lr": 0.02, "data.batch_per_gpu": 4}
    for i, point in enumerate(doc["points"]):
        run_dir = os.path.join(sweep_dir, point["name"])
        plan = runs.read_plan(run_dir)
        assert plan["sweep"] == {"name": "lrs", "point": point["name"], "params": point["params"]}
        assert plan["config"]["optimizer"]["base_lr"] == point["params"]["optimizer.base_lr"]
        assert plan["plan"]["batch_per_gpu"] == point["params"]["data.batch_per_gpu"]
        attempts = json.load(open(os.path.join(run_dir, "submissions.json")))["attempts"]
        assert [a["job_id"] for a in attempts] == [f"100_{i}"]
        assert os.path.exists(os.path.join(run_dir, "config.yml"))
    # every point is a normal run: `orch status <sweep>/p002` works on it
    assert submission.run_status(os.path.join(sweep_dir, "p002"))["job_id"] == "100_2"


def test_hold_keeps_the_array_held(tiny_data, tmp_path, monkeypatch, capsys):
    fake = FakeSlurm(monkeypatch)
    code = cli.main(sweep_args(tiny_data, tmp_path / "runs", "-p", "optimizer.base_lr=0.01,0.02", "--hold"))
    assert code == 0
    assert "held: `scontrol release 100` starts it" in capsys.readouterr().out
    assert fake.released == [] and "#SBATCH --hold" in fake.arrays[0][3]


def test_a_failure_while_writing_cancels_the_array_and_leaves_nothing(tiny_data, tmp_path, monkeypatch, capsys):
    fake = FakeSlurm(monkeypatch)
    real = runs.create_run_dir

    def create_run_dir(work_dir, name, *args, **kwargs):
        if name == "p002":
            raise OSError("disk full")
        return real(work_dir, name, *args, **kwargs)

    monkeypatch.setattr(runs, "create_run_dir", create_run_dir)
    code = cli.main(sweep_args(tiny_data, tmp_path / "runs", "-p", "optimizer.base_lr=0.01,0.02,0.04"))
    assert code == 3 and "disk full" in capsys.readouterr().err
    assert fake.cancelled == ["100"] and fake.released == []
    assert not os.path.exists(tmp_path / "runs" / "lrs")


def test_a_second_sweep_with_the_same_name_is_refused(submitted_sweep, tiny_data, tmp_path, capsys):
    code = cli.main(sweep_args(tiny_data, tmp_path / "runs", "-p", "optimizer.base_lr=0.5"))
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_status_is_one_scheduler_query_per_array_sorted_by_map(submitted_sweep, tmp_path, capsys, monkeypatch):
    fake, sweep_dir, _ = submitted_sweep
    calls = []
    monkeypatch.setattr(SlurmExecutor, "array_status", lambda _, a: calls.append(a) or fake.tasks.get(a))
    fake.tasks["100"] = {0: {"state": "COMPLETED", "restarts": 0}, 1: {"state": "COMPLETED", "restarts": 1},
                         2: {"state": "RUNNING", "restarts": 0}}   # task 3: cancelled while pending (gone)
    write_job_status(os.path.join(sweep_dir, "p000"), "COMPLETED", 4, best=0.21)
    write_job_status(os.path.join(sweep_dir, "p001"), "COMPLETED", 2, best=0.35)
    write_job_status(os.path.join(sweep_dir, "p002"), "RUNNING", 1)
    csv_path = tmp_path / "sweep.csv"
    assert cli.main(["sweep", "status", sweep_dir, "--json", "--csv", str(csv_path)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert calls == ["100"]
    assert [(r["point"], r["state"], r["best_bbox_mAP"]) for r in status["points"]] == [
        ("p001", "COMPLETED", 0.35), ("p000", "COMPLETED", 0.21), ("p002", "RUNNING", None),
        ("p003", "CANCELLED", None)]
    assert status["points"][0]["params"] == {"optimizer.base_lr": 0.01, "data.batch_per_gpu": 4}
    assert status["points"][0]["attempt"] == 2   # one submission + one requeue
    assert status["counts"] == {"COMPLETED": 2, "RUNNING": 1, "CANCELLED": 1}
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["point"] for r in rows] == ["p001", "p000", "p002", "p003"]
    assert rows[0]["optimizer.base_lr"] == "0.01" and rows[0]["best_bbox_mAP"] == "0.35"
    assert cli.main(["sweep", "status", "lrs", "--work-dir", str(tmp_path / "runs")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("sweep lrs: 4 points (1 CANCELLED, 2 COMPLETED, 1 RUNNING)")
    assert table[1].split() == ["POINT", "optimizer.base_lr", "data.batch_per_gpu", "STATE", "ITER", "BEST", "mAP"]
    assert table[2].split() == ["p001", "0.01", "4", "COMPLETED", "2/2", "0.3500"]


def test_resume_resubmits_only_points_that_are_not_completed_nor_active(submitted_sweep, capsys):
    fake, sweep_dir, _ = submitted_sweep
    fake.tasks["100"] = {0: {"state": "COMPLETED", "restarts": 0}, 1: {"state": "CANCELLED", "restarts": 0},
                         2: {"state": "RUNNING", "restarts": 0}}   # 3: cancelled before it started
    write_job_status(os.path.join(sweep_dir, "p000"), "COMPLETED", 4, best=0.2)
    write_job_status(os.path.join(sweep_dir, "p001"), "PREEMPTED", 1)
    assert cli.main(["sweep", "resume", sweep_dir]) == 0
    out = capsys.readouterr().out
    assert "resumed sweep lrs: 2 point(s) as SLURM job array 101 (--array=1,3%2): p001 (CANCELLED), " \
           "p003 (CANCELLED)" in out
    assert fake.arrays[1][1] == [1, 3] and "#SBATCH --array=1,3%2" in fake.arrays[1][3]
    doc = json.load(open(os.path.join(sweep_dir, "sweep.json")))
    assert doc["array_job_ids"] == ["100", "101"] and doc["submissions"][1]["kind"] == "sweep-resume"
    jobs = {p: [a["job_id"] for a in json.load(open(os.path.join(sweep_dir, p, "submissions.json")))["attempts"]]
            for p in ("p000", "p001", "p002", "p003")}
    assert jobs == {"p000": ["100_0"], "p001": ["100_1", "101_1"], "p002": ["100_2"], "p003": ["100_3", "101_3"]}
    # now 1 and 3 are queued, 0 completed, 2 running: nothing left to resume
    fake.tasks["101"] = {1: {"state": "PENDING", "restarts": 0}, 3: {"state": "PENDING", "restarts": 0}}
    assert cli.main(["sweep", "resume", sweep_dir]) == 2
    assert "nothing to resume in sweep lrs" in capsys.readouterr().err


def test_status_of_an_unknown_sweep_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["sweep", "status", str(tmp_path / "nope")]) == 2
    assert "no sweep" in capsys.readouterr().err


# ---------------------------------------------------------------- what the job sees

def test_config_yml_text_is_unchanged_by_the_section_cache():
    from orchestrator import config as config_mod

    for name in sorted(os.listdir(os.path.join(ROOT, "configs"))):
        if name.endswith(".yml"):
            data = config_mod.load_config(os.path.join(ROOT, "configs", name)).data
            assert runs._config_yaml(data) == config_mod.to_yaml(data), name


def test_hparams_include_the_swept_keys():
    pytest.importorskip("torch")
    from jobs.engine import _hparams
    from orchestrator import config as config_mod, planner

    config = config_mod.load_config(CONFIG).data
    plan = planner.make_plan(config, 100).to_dict()
    assert "sweep" not in _hparams(config, plan)
    hp = _hparams(config, plan, {"name": "lrs", "point": "p003", "params": {"optimizer.base_lr": 0.02,
                                                                             "data.batch_per_gpu": 4}})
    assert hp["optimizer.base_lr"] == 0.02 and hp["data.batch_per_gpu"] == 4 and hp["sweep_point"] == "p003"
    assert hp["lr"] == plan["lr"] and not math.isnan(hp["max_iters"])


# ---------------------------------------------------------------- sweeps bigger than MaxArraySize

@pytest.mark.parametrize("indices,max_array_size,parallel,expected", [
    (range(4), 1001, None, [(0, [0, 1, 2, 3], None)]),
    (range(3000), 1001, None, [(0, list(range(1001)), None), (1001, list(range(1001)), None),
                               (2002, list(range(998)), None)]),
    (range(7), 3, 3, [(0, [0, 1, 2], 1), (3, [0, 1, 2], 1), (6, [0], 1)]),
    (range(7), 3, 5, [(0, [0, 1, 2], 2), (3, [0, 1, 2], 2), (6, [0], 1)]),
    (range(7), 3, 100, [(0, [0, 1, 2], 3), (3, [0, 1, 2], 3), (6, [0], 1)]),
    (range(4), 4, 3, [(0, [0, 1, 2, 3], 3)]),
    ([1, 3], 1001, 3, [(0, [1, 3], 2)]),                       # a resume keeps task i = point i
    ([2, 4, 5, 6, 11], 3, None, [(0, [2], None), (3, [1, 2], None), (6, [0], None), (9, [2], None)]),
])
def test_split_arrays(indices, max_array_size, parallel, expected):
    parts = sweep.split_arrays(indices, max_array_size, parallel)
    assert [(p.offset, p.task_ids, p.max_parallel) for p in parts] == expected
    assert all(task < max_array_size for p in parts for task in p.task_ids)
    assert [i for p in parts for i in p.point_indices] == sorted(indices)
    if parallel is not None:
        assert sum(p.max_parallel for p in parts) <= parallel


def test_max_parallel_below_the_number_of_arrays_is_refused():
    with pytest.raises(SweepError, match=r"--max-parallel 2 is less than the 3 job arrays these 3000 points need "
                                         r"\(this cluster's MaxArraySize is 1001\); use --max-parallel 3 or more"):
        sweep.split_arrays(range(3000), 1001, 2)


@pytest.fixture
def max_array_size_3(monkeypatch):
    from orchestrator import slurm_limits
    monkeypatch.setattr(slurm_limits, "array_limits", lambda: slurm_limits.ArrayLimits(3, 1000))


def test_a_sweep_bigger_than_max_array_size_is_several_held_arrays_released_together(
        tiny_data, tmp_path, monkeypatch, capsys, max_array_size_3):
    monkeypatch.setenv("ORCH_CACHE_DIR", str(tmp_path / "cache"))
    fake = FakeSlurm(monkeypatch)
    code = cli.main(sweep_args(tiny_data, tmp_path / "runs", "-p", "optimizer.base_lr=0.01,0.02,0.03,0.04,0.05",
                               "-p", "data.batch_per_gpu=2"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "5 points as 2 SLURM job arrays 100 (--array=0-2, points from 0), 101 (--array=0-1, points from 3)" in out
    sweep_dir = str(tmp_path / "runs" / "lrs")
    assert [(a[0], a[1]) for a in fake.arrays] == [("100", [0, 1, 2]), ("101", [0, 1])]
    assert all("#SBATCH --hold" in a[3] for a in fake.arrays) and fake.released == ["100", "101"]
    assert "printf -v TASK '%03d' \"$((SLURM_ARRAY_TASK_ID + 3))\"" in fake.arrays[1][3]
    assert "printf -v TASK '%03d' \"$SLURM_ARRAY_TASK_ID\"" in fake.arrays[0][3]
    assert f'RUN_DIR={sweep_dir}/p"$TASK"' in fake.arrays[1][3]
    doc = json.load(open(os.path.join(sweep_dir, "sweep.json")))
    assert doc["array_job_ids"] == ["100", "101"]
    assert [(s["task_offset"], s["task_ids"], s["array"]) for s in doc["submissions"]] == [
        (0, [0, 1, 2], "0-2"), (3, [0, 1], "0-1")]
    jobs = [json.load(open(os.path.join(sweep_dir, f"p00{i}", "submissions.json")))["attempts"][0]["job_id"]
            for i in range(5)]
    assert jobs == ["100_0", "100_1", "100_2", "101_0", "101_1"]

    # status: one query per array, every point whole
    fake.tasks["100"] = {0: {"state": "COMPLETED", "restarts": 0}, 1: {"state": "FAILED", "restarts": 0},
                         2: {"state": "RUNNING", "restarts": 0}}
    fake.tasks["101"] = {0: {"state": "PENDING", "restarts": 0}}      # task 1 cancelled before it started
    write_job_status(os.path.join(sweep_dir, "p000"), "COMPLETED", 4, best=0.3)
    write_job_status(os.path.join(sweep_dir, "p001"), "FAILED", 1)
    assert cli.main(["sweep", "status", sweep_dir, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["array_job_ids"] == ["100", "101"]
    assert sorted((r["point"], r["state"], r["job_id"]) for r in status["points"]) == [
        ("p000", "COMPLETED", "100_0"), ("p001", "FAILED", "100_1"), ("p002", "RUNNING", "100_2"),
        ("p003", "PENDING", "101_0"), ("p004", "CANCELLED", "101_1")]

    # resume: p001 and p004 again, in two arrays (4 is past MaxArraySize 3), released together
    assert cli.main(["sweep", "resume", sweep_dir]) == 0
    out = capsys.readouterr().out
    assert "resumed sweep lrs: 2 point(s) as 2 SLURM job arrays 102 (--array=1), 103 (--array=1)" in out
    assert [(a[0], a[1]) for a in fake.arrays[2:]] == [("102", [1]), ("103", [1])]
    assert f'"$((SLURM_ARRAY_TASK_ID + 3))"' in fake.arrays[3][3] and fake.released[2:] == ["102", "103"]
    attempts = {p: [a["job_id"] for a in json.load(open(os.path.join(sweep_dir, p, "submissions.json")))["attempts"]]
                for p in ("p001", "p004")}
    assert attempts == {"p001": ["100_1", "102_1"], "p004": ["101_1", "103_1"]}
    doc = json.load(open(os.path.join(sweep_dir, "sweep.json")))
    assert doc["array_job_ids"] == ["100", "101", "102", "103"]


def test_a_refused_second_array_cancels_the_first_and_leaves_nothing(tiny_data, tmp_path, monkeypatch, capsys,
                                                                     max_array_size_3):
    fake = FakeSlurm(monkeypatch)
    real = fake._submit

    def submit(executor, req, task_ids, run_dir_format, task_offset=0):
        if task_offset:
            raise sweep.OrchError("sbatch refused the job array: QOSMaxSubmitJobPerUserLimit")
        return real(executor, req, task_ids, run_dir_format, task_offset)

    monkeypatch.setattr(fake, "_submit", submit)
    code = cli.main(sweep_args(tiny_data, tmp_path / "runs", "-p", "optimizer.base_lr=0.01,0.02,0.03,0.04"))
    assert code == 2 and "QOSMaxSubmitJobPerUserLimit" in capsys.readouterr().err
    assert fake.cancelled == ["100"] and fake.released == []
    assert not os.path.exists(tmp_path / "runs" / "lrs")


def test_a_sweep_over_max_job_count_is_refused_up_front(tiny_data, tmp_path, monkeypatch, capsys):
    from orchestrator import slurm_limits
    monkeypatch.setattr(slurm_limits, "array_limits", lambda: slurm_limits.ArrayLimits(1001, 3))
    fake = FakeSlurm(monkeypatch)
    code = cli.main(sweep_args(tiny_data, tmp_path / "runs", "-p", "optimizer.base_lr=0.01,0.02,0.03,0.04",
                               "--dry-run"))
    err = capsys.readouterr().err
    assert code == 2 and "the sweep has 4 points but this cluster holds at most 3 jobs at once" in err
    assert fake.arrays == [] and not os.path.exists(tmp_path / "runs")


def test_sweep_input_checks_run_once_for_shared_data_and_name_a_swept_one(tiny_data, tmp_path, monkeypatch, capsys):
    from orchestrator import input_checks
    calls = []
    real = input_checks.check_inputs
    monkeypatch.setattr(input_checks, "check_inputs", lambda config: calls.append(1) or real(config))
    assert cli.main(sweep_args(tiny_data, tmp_path / "runs", "-p", "optimizer.base_lr=0.01,0.02,0.03",
                               "--dry-run")) == 0
    assert len(calls) == 1
    capsys.readouterr()
    code = cli.main(sweep_args(tiny_data, tmp_path / "runs", "-p",
                               f"model.init_checkpoint=null,{tmp_path}/nope.pth", "--dry-run"))
    err = capsys.readouterr().err
    assert code == 2 and f"point p001 (model.init_checkpoint={tmp_path}/nope.pth): model.init_checkpoint" in err
