"""Submission without a cluster: validation, the rendered sbatch script (golden), state rules.

That submission really works is proven against the real SLURM cluster in tests/cluster/.
"""
import json
import os
import sys

import pytest

from orchestrator import cli, submission
from orchestrator.executors.base import JobRequest, SubmissionError, time_to_minutes

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(__file__)), "golden", "dry_run_slurm.txt")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _no_cluster_limits(monkeypatch):
    """The dry-runs here render for a cluster that is not this machine's (the test cluster may be up)."""
    monkeypatch.setenv("ORCH_SKIP_SLURM_CHECK", "1")


def request(**kw):
    base = dict(run_name="exp1", run_dir="/runs/exp1", log_dir="/runs/exp1/logs", nodes=2, gpus_per_node=8)
    base.update(kw)
    return JobRequest(**base)


@pytest.mark.parametrize("field,value,fragment", [
    ("run_name", "exp\n#SBATCH --uid=0", "control character"),
    ("run_name", "bad name", "is not valid"),
    ("run_name", "-starts-with-dash", "is not valid"),
    ("partition", "dev\nrm -rf /", "control character"),
    ("partition", "dev;reboot", "is not valid"),
    ("account", "acct$(id)", "is not valid"),
    ("qos", "high\tqos", "control character"),
    ("exclude", "node1 node2", "is not valid"),
    ("time", "forever", "is not valid"),
    ("mem_per_gpu", "lots", "is not valid"),
    ("run_dir", "/runs/a\nb", "control character"),
    ("nodes", 0, "must be a whole number"),
])
def test_every_sbatch_bound_value_is_validated(field, value, fragment):
    with pytest.raises(SubmissionError, match=fragment):
        request(**{field: value})


@pytest.mark.parametrize("partition,constraint,exclude", [
    ("dev", "a100&ib", "node[01-04],node9"), ("dev,long", "v100|a100", None),
])
def test_valid_values_pass(partition, constraint, exclude):
    request(partition=partition, constraint=constraint, exclude=exclude)


@pytest.mark.parametrize("text,minutes", [
    ("24:00:00", 1440), ("1-00:00:00", 1440), ("1-12:00:00", 2160), ("30", 30), ("10:30", 11), ("2-12", 3600), ("0:00:30", 1),
])
def test_time_to_minutes(text, minutes):
    assert time_to_minutes(text) == minutes


@pytest.mark.parametrize("scheduler,job,cancelled,expected", [
    ("PENDING", None, False, "PENDING"),
    ("RUNNING", "RUNNING", False, "RUNNING"),
    ("REQUEUED", "PREEMPTED", False, "REQUEUED"),
    ("COMPLETED", "COMPLETED", False, "COMPLETED"),
    ("COMPLETED", "FAILED", False, "FAILED"),        # the launcher exited 0 but training said no
    ("FAILED", "FAILED", False, "FAILED"),
    ("CANCELLED", "PREEMPTED", False, "CANCELLED"),
    ("TIMEOUT", "RUNNING", False, "TIMEOUT"),
    ("ENDED", "COMPLETED", False, "COMPLETED"),      # local: the process is gone, the job's word decides
    ("ENDED", "PREEMPTED", True, "CANCELLED"),
    ("ENDED", "RUNNING", False, "FAILED"),           # killed without a word
    ("UNKNOWN", "COMPLETED", False, "COMPLETED"),    # SLURM forgot the job
])
def test_combine_states(scheduler, job, cancelled, expected):
    assert submission.combine_states(scheduler, job, cancelled) == expected


@pytest.fixture
def tiny_data(tmp_path):
    from orchestrator.synth import make_synthetic_dataset
    make_synthetic_dataset(str(tmp_path / "data"), num_train=8, num_val=2, image_size=64, seed=0)
    return str(tmp_path / "data")


def dry_run(tiny_data, capsys, *extra):
    args = ["submit", os.path.join(ROOT, "configs", "demo.yml"), "--dry-run", "--executor", "slurm",
            "--name", "golden", "--gpus", "16", "--gpus-per-node", "8", "--partition", "dev", "--time", "1-00:00:00",
            "--account", "vision", "--qos", "high", "--mem-per-gpu", "32G", "--exclude", "node[01-02]",
            "work_dir=/shared/runs", f"data.train.ann_file={tiny_data}/train.json",
            f"data.train.img_dir={tiny_data}/train", f"data.val.ann_file={tiny_data}/val.json",
            f"data.val.img_dir={tiny_data}/val", "data.batch_per_gpu=4", *extra]
    code = cli.main(args)
    out = capsys.readouterr().out
    return code, out.replace(sys.executable, "<python>").replace(tiny_data, "<data>")


def test_dry_run_matches_golden_file(tiny_data, capsys, tmp_path):
    code, out = dry_run(tiny_data, capsys)
    assert code == 0
    if os.environ.get("ORCH_UPDATE_GOLDEN"):
        with open(GOLDEN, "w") as f:
            f.write(out)
    with open(GOLDEN) as f:
        assert out == f.read()
    assert not os.path.exists("/shared/runs/golden")  # nothing written


def test_dry_run_script_has_what_slurm_needs(tiny_data, capsys):
    _, out = dry_run(tiny_data, capsys)
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --partition=dev", "#SBATCH --requeue", "#SBATCH --signal=USR2@120",
                 "#SBATCH --job-name=golden", "#SBATCH --time=1440", "#SBATCH --account=vision",
                 "#SBATCH --qos=high", "#SBATCH --mem-per-gpu=32G", "#SBATCH --exclude=node[01-02]"):
        assert line in out, line


def test_newline_in_name_is_refused_before_anything_is_written(tiny_data, tmp_path, capsys):
    code = cli.main(["submit", os.path.join(ROOT, "configs", "demo.yml"), "--executor", "slurm",
                     "--name", "evil\n#SBATCH --uid=0", f"work_dir={tmp_path}/runs",
                     f"data.train.ann_file={tiny_data}/train.json"])
    assert code == 2
    assert "is not valid" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs")


def test_broken_dataset_fails_before_submission(tmp_path, capsys):
    ann = tmp_path / "train.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]},
                                               {"id": 2, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]}],
                               "categories": [{"id": 1, "name": "a"}]}))
    code = cli.main(["submit", os.path.join(ROOT, "configs", "demo.yml"), "--executor", "local",
                     f"work_dir={tmp_path}/runs", f"data.train.ann_file={ann}", "data.val.ann_file=null"])
    err = capsys.readouterr().err
    assert code == 2 and "would break training" in err
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("text,refused", [
    ("1:99:00", "99 minutes"), ("0:30:61", "61 seconds"), ("1-24:00", "24 hours"), ("2-23:59:60", "60 seconds"),
    ("24:00:00", None), ("1-23:59:59", None), ("60:00", None), ("90", None), ("1-12", None), ("59:59", None)])
def test_time_fields_out_of_range_are_refused(text, refused):
    from orchestrator.executors.base import JobRequest, SubmissionError

    make = lambda: JobRequest(run_name="r", run_dir="/r", log_dir="/l", nodes=1, gpus_per_node=1, time=text)
    if refused is None:
        assert make().time == text
    else:
        with pytest.raises(SubmissionError, match=refused):
            make()


# ---------------------------------------------------------------- the same input checks for dry-run and submit

def broken_ann(folder):
    ann = os.path.join(folder, "broken.json")
    with open(ann, "w") as f:
        f.write(json.dumps({"images": [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}],
                               "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]},
                                               {"id": 2, "image_id": 7, "category_id": 1, "bbox": [1, 1, 5, 5]}],
                               "categories": [{"id": 1, "name": "a"}]}))
    return ann


@pytest.mark.parametrize("make_overrides,fragment", [
    (lambda d, t: [f"data.train.img_dir={t}/nope"],
     "data.train.img_dir {t}/nope does not exist or is not a folder: set data.train.img_dir to the folder the "
     "file_name entries of {d}/train.json are relative to (override: data.train.img_dir=PATH)"),
    (lambda d, t: [f"data.train.img_dir={d}"],   # the data root, not its train/ folder
     "data.train.img_dir {d} does not hold 5 of the first 5 images {d}/train.json names (e.g. {d}/000000.jpg)"),
    (lambda d, t: ["data.val.img_dir=null"], "data.val.img_dir is not set: set data.val.img_dir to the folder"),
    (lambda d, t: [f"data.val.ann_file={t}/val.json"],
     "data.val.ann_file {t}/val.json does not exist; point it at your COCO json (override: data.val.ann_file=PATH)"),
    (lambda d, t: [f"model.init_checkpoint={t}/weights.pth"],
     "model.init_checkpoint {t}/weights.pth does not exist; point it at the weights to fine-tune from"),
    (lambda d, t: [f"data.train.ann_file={broken_ann(t)}"],
     "data.train.ann_file {t}/broken.json would break training: 1 × annotations pointing at an image id"),
])
@pytest.mark.parametrize("executor,dry", [("slurm", True), ("slurm", False), ("local", True), ("local", False)])
def test_dry_run_and_submit_refuse_the_same_unusable_inputs(tiny_data, tmp_path, capsys, make_overrides, fragment,
                                                            executor, dry):
    work = tmp_path / "work"
    work.mkdir()
    args = ["submit", os.path.join(ROOT, "configs", "demo.yml"), "--executor", executor, "--gpus", "1",
            f"work_dir={work}/runs", f"data.train.ann_file={tiny_data}/train.json",
            f"data.train.img_dir={tiny_data}/train", f"data.val.ann_file={tiny_data}/val.json",
            f"data.val.img_dir={tiny_data}/val", *make_overrides(tiny_data, str(work))]
    code = cli.main(args + (["--dry-run"] if dry else []))
    out, err = capsys.readouterr()
    assert code == 2, out + err
    assert fragment.format(d=tiny_data, t=work) in err and "Traceback" not in err
    assert not os.path.exists(work / "runs")


def test_inputs_that_exist_pass(tiny_data, tmp_path, capsys):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"weights")
    code = cli.main(["submit", os.path.join(ROOT, "configs", "demo.yml"), "--executor", "slurm", "--dry-run",
                     f"work_dir={tmp_path}/runs", f"data.train.ann_file={tiny_data}/train.json",
                     f"data.train.img_dir={tiny_data}/train", "data.val.ann_file=null", "data.val.img_dir=null",
                     f"model.init_checkpoint={weights}"])
    assert code == 0, capsys.readouterr().err


def test_a_request_the_partition_cannot_run_is_refused_by_dry_run_and_submit(tiny_data, tmp_path, monkeypatch, capsys):
    from orchestrator import slurm_limits
    from test_slurm_limits import LOCAL_NODES, LOCAL_PARTITIONS
    monkeypatch.setattr(slurm_limits, "query_partitions",
                        lambda: slurm_limits.parse_partitions(LOCAL_PARTITIONS, LOCAL_NODES))
    base = ["submit", os.path.join(ROOT, "configs", "demo.yml"), "--executor", "slurm", "--gpus", "1",
            "--cpus-per-gpu", "16", f"work_dir={tmp_path}/runs", f"data.train.ann_file={tiny_data}/train.json",
            f"data.train.img_dir={tiny_data}/train", f"data.val.ann_file={tiny_data}/val.json",
            f"data.val.img_dir={tiny_data}/val"]
    for extra in (["--dry-run"], []):
        assert cli.main(base + extra) == 2
        assert "--cpus-per-gpu 16 needs 16 CPUs per node (1 GPUs × 16), partition dev's nodes with 1+ GPUs have 8: " \
               "use --cpus-per-gpu 8 or fewer" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "runs")
