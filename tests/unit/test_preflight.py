"""`--preflight`: the failure explanations and the sweep grouping (pure), then one real step each way.

The real steps run `python -m jobs.preflight` (torch) on a tiny synthetic dataset at 96 px: a few
seconds each on a 2-core machine.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from orchestrator import cli, preflight, schema
from jobutil import ROOT, TINY, data_overrides, make_dataset


def config(**data):
    cfg = schema.defaults()
    cfg["model"]["name"] = "ssdlite320_mobilenet_v3_large"
    cfg["data"].update(data)
    return cfg


@pytest.mark.parametrize("error_type,error,user_error,data,phase,fragments", [
    ("ValueError", "Expected more than 1 value per channel when training, got input size torch.Size([1, 128, 1, 1])",
     False, {}, "step", ["data.batch_per_gpu=1", "Set data.batch_per_gpu to 2 or more", "Nothing was submitted"]),
    ("ValueError", "Expected more than 1 value per channel when training, got input size [1, 8]", False,
     {"total_batch_size": 4}, "step", ["Set data.batch_per_gpu to 2 or more", "data.total_batch_size=4"]),
    ("RuntimeError", "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory", False, {},
     "step", ["ran out of memory on this machine's CPU", "Lower data.batch_per_gpu"]),
    ("AnnotationError", "/d/train.json: image 3 (/d/x.png) is 90x96 but the json says 96x96; fix it", True,
     {"train": {"ann_file": "/d/train.json", "img_dir": "/d"}}, "data",
     ["failed in reading the first batch of data.train (/d/train.json, images in /d): /d/train.json: image 3",
      "fix it. Nothing was submitted."]),
    ("UnpicklingError", "Weights only load failed", False, {}, "init_checkpoint",
     ["failed in loading model.init_checkpoint /w/init.pth with UnpicklingError: Weights only load failed.",
      "point model.init_checkpoint at a torch state_dict"]),
    ("KeyError", "'boxes'", False, {}, "step",
     ["failed in the step with KeyError: 'boxes'.", "fix the model, data or optimizer keys"]),
])
def test_explain_failure_names_what_to_change(error_type, error, user_error, data, phase, fragments):
    cfg = config(**data)
    cfg["model"]["init_checkpoint"] = "/w/init.pth"
    text = preflight.explain_failure(error_type, error, user_error, cfg, 1, phase)
    assert "\n" not in text and text.startswith("preflight: one training step of ssdlite320_mobilenet_v3_large")
    for fragment in fragments:
        assert fragment in text, text


def point(point_name, batch, **optimizer):
    cfg = config()
    cfg["optimizer"].update(optimizer)
    return SimpleNamespace(name=point_name, config=cfg, plan=SimpleNamespace(batch_per_gpu=batch))


def test_a_sweep_runs_one_step_per_distinct_model_data_and_batch():
    points = [point("p000", 1, base_lr=0.01), point("p001", 1, base_lr=0.02), point("p002", 2, base_lr=0.01),
              point("p003", 2, base_lr=0.02), point("p004", 2, name="adamw")]
    groups = preflight.distinct_steps(points)
    assert [[p.name for p in group] for group in groups] == [["p000", "p001"], ["p002", "p003"], ["p004"]]


@pytest.mark.parametrize("value", ["0", "-3", "soon"])
def test_a_bad_timeout_is_refused(monkeypatch, value):
    monkeypatch.setenv(preflight.TIMEOUT_ENV, value)
    with pytest.raises(preflight.OrchError, match=preflight.TIMEOUT_ENV):
        preflight.timeout_s()


# ---------------------------------------------------------------- one real step

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("preflight") / "data"), num_train=8, num_val=2)


def submit(capsys, work_dir, data_root, *extra):
    argv = ["submit", os.path.join(ROOT, "configs/demo.yml"), "--executor", "local", "--gpus", "1", "--preflight",
            *extra, *TINY, *data_overrides(data_root), f"work_dir={work_dir}"]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_preflight_success_prints_one_line_and_writes_nothing(tmp_path, capsys, data_root, monkeypatch):
    work_dir = tmp_path / "runs"
    scratch = tmp_path / "tmp"   # where the trainer's files go during the step: removed afterwards
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    code, out, err = submit(capsys, str(work_dir), data_root, "--dry-run", "data.batch_per_gpu=2")
    assert code == 0, err
    first = out.splitlines()[0]
    assert first.startswith("preflight: one training step of ssdlite320_mobilenet_v3_large at "
                            "data.batch_per_gpu=2 on this CPU: loss "), first
    assert float(first.split("loss ")[1].split(",")[0]) > 0
    assert "(dry run: nothing submitted)" in out
    assert not work_dir.exists()
    assert not [name for name in os.listdir(scratch) if name.startswith("orch-")]  # (torch keeps its own caches)


@pytest.fixture()
def broken_images_root(tmp_path, data_root):
    """The same dataset with every training image's bytes replaced: the json checks pass, a real step does not
    (the planner refuses what it can know, e.g. batch 1 under BatchNorm, before any step runs)."""
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(data_root, root)
    for name in os.listdir(root / "train"):
        (root / "train" / name).write_bytes(b"not an image")
    return str(root)


def test_preflight_failure_submits_nothing_and_names_the_key(tmp_path, capsys, broken_images_root):
    work_dir = tmp_path / "runs"
    code, out, err = submit(capsys, str(work_dir), broken_images_root, "data.batch_per_gpu=2")
    assert code != 0
    assert "failed in reading the first batch of data.train" in err and "Nothing was submitted" in err, err
    assert "Traceback" not in err and out == ""
    assert not work_dir.exists()


def test_sweep_preflight_runs_once_for_points_that_differ_in_lr_only(tmp_path, capsys, broken_images_root):
    work_dir = tmp_path / "runs"
    argv = ["sweep", os.path.join(ROOT, "configs/demo.yml"), "--executor", "slurm", "--gpus", "1", "--preflight",
            "-p", "optimizer.base_lr=0.01,0.02", "data.batch_per_gpu=2", "--name", "sw",
            *[o for o in TINY if not o.startswith("optimizer.base_lr=")], *data_overrides(broken_images_root),
            f"work_dir={work_dir}"]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code != 0
    assert err.count("preflight:") == 1 and "points p000, p001: preflight:" in err, err
    assert "failed in reading the first batch of data.train" in err
    assert not work_dir.exists()


def test_preflight_time_limit(tmp_path, capsys, data_root, monkeypatch):
    monkeypatch.setenv(preflight.TIMEOUT_ENV, "0.2")
    code, out, err = submit(capsys, str(tmp_path / "runs"), data_root, "--dry-run")
    assert code != 0 and "did not finish within 0.2 s" in err and preflight.TIMEOUT_ENV in err
    assert not (tmp_path / "runs").exists()
