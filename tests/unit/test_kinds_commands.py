"""Trainer kinds: the exact per-node command lines (golden files), resume arguments and refusals.

Regenerate the golden files after an intended change with ORCH_UPDATE_GOLDEN=1 and review the diff.
"""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kinds_util import TRAINERS, node, plan_doc_for, render  # noqa: E402

from orchestrator import kinds  # noqa: E402
from orchestrator.errors import OrchError  # noqa: E402

GOLDEN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden", "kinds")
RESUME_FROM = {
    "ultralytics": "/runs/demo/ultralytics/train/weights/last.pt", "rtdetr": "/runs/demo/rtdetr/last.pth",
    "mmdet": "/runs/demo/mmdet/epoch_3.pth", "detectron2": "/runs/demo/detectron2/model_0000999.pth",
    "command": "/runs/demo/output/last.pt",
}
SHAPES = {"1node": dict(gpus=4, gpus_per_node=8), "2node": dict(gpus=16, gpus_per_node=8)}
CASES = [(kind, shape) for kind in TRAINERS for shape in SHAPES if not (kind == "ultralytics" and shape == "2node")]


def rendered(kind: str, shape: str) -> str:
    doc = plan_doc_for(TRAINERS[kind], **SHAPES[shape])
    module = kinds.get(kind)
    module.check(doc["config"], doc["plan"])
    nodes = doc["plan"]["nodes"]
    parts = [render(module.node_command(doc, node(r, nodes)), r) for r in range(nodes)]
    parts.append("# resumed attempt\n" + render(module.node_command(doc, node(0, nodes), RESUME_FROM[kind]), 0))
    return "\n\n".join(parts) + "\n"


@pytest.mark.parametrize("kind,shape", CASES)
def test_node_commands_match_golden_file(kind, shape):
    path = os.path.join(GOLDEN_DIR, f"{kind}_{shape}.txt")
    text = rendered(kind, shape)
    if os.environ.get("ORCH_UPDATE_GOLDEN"):
        os.makedirs(GOLDEN_DIR, exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    with open(path) as f:
        assert text == f.read()


# The numbers of the plan, found in each toolbox's own keys (1 node of 4 GPUs × 4 images, 1000 images).
PLAN_KEYS = {
    "ultralytics": ["epochs=12", "batch=16", "lr0=0.02", "save_period=1", "device=0,1,2,3", "warmup_epochs=1.5873",
                    "optimizer=SGD", "exist_ok=True", "imgsz=320"],
    "rtdetr": ["epoches=12", "train_dataloader.total_batch_size=16", "val_dataloader.total_batch_size=16",
               "optimizer.lr=0.02", "checkpoint_freq=1", "lr_warmup_scheduler.warmup_duration=100",
               "num_classes=4", "remap_mscoco_category=false", "eval_spatial_size=[320, 320]"],
    "mmdet": ["optim_wrapper.optimizer.lr=0.02", "train_dataloader.batch_size=4", "train_cfg.max_epochs=12",
              "train_cfg.val_interval=1", "default_hooks.checkpoint.interval=1", "auto_scale_lr.enable=False"],
    "detectron2": ["train.max_iter=756", "train.eval_period=63", "train.checkpointer.period=63", "optimizer.lr=0.02",
                   "dataloader.train.total_batch_size=16", "train.output_dir=/runs/demo/detectron2",
                   "lr_multiplier.warmup_length=0.13227513"],
    "command": ["0.02", "756", "4", "/runs/demo/output"],
}


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_plan_numbers_reach_the_toolbox_keys(kind):
    doc = plan_doc_for(TRAINERS[kind], gpus=4)
    assert (doc["plan"]["lr"], doc["plan"]["total_batch_size"], doc["plan"]["max_iters"]) == (0.02, 16, 756)
    argv = kinds.get(kind).node_command(doc, node(0, 1)).argv
    for expected in PLAN_KEYS[kind]:
        assert expected in argv, f"{expected} not in {argv}"


@pytest.mark.parametrize("kind,added", [
    ("ultralytics", ["resume=True", "model=/runs/demo/ultralytics/train/weights/last.pt"]),
    ("rtdetr", ["-r", "/runs/demo/rtdetr/last.pth"]),
    ("mmdet", ["--resume", "/runs/demo/mmdet/epoch_3.pth"]),
    ("detectron2", ["--resume"]),
    ("command", ["--resume", "/runs/demo/output/last.pt"]),
])
def test_a_resumed_attempt_adds_the_toolbox_resume_argument(kind, added):
    doc = plan_doc_for(TRAINERS[kind], gpus=4)
    module = kinds.get(kind)
    fresh = module.node_command(doc, node(0, 1)).argv
    resumed = module.node_command(doc, node(0, 1), RESUME_FROM[kind]).argv
    for arg in added:
        assert arg in resumed and arg not in fresh


def test_sscma_resume_is_a_flag_without_a_path():
    trainer = dict(TRAINERS["mmdet"], root="/opt/ModelAssistant", resume_with_path=False)
    argv = kinds.get("mmdet").node_command(plan_doc_for(trainer, gpus=1), node(0, 1), RESUME_FROM["mmdet"]).argv
    assert argv[argv.index("--resume") + 1] == "--cfg-options" and RESUME_FROM["mmdet"] not in argv
    assert argv[:6] == ["python3", "tools/train.py", "/opt/ModelAssistant/configs/rtmdet/rtmdet_tiny_8xb32-300e_coco.py",
                        "--work-dir", "/runs/demo/mmdet", "--launcher"] and argv[6] == "none"


def test_mmdet_adds_orchs_preemption_hook_as_a_default_hook_unless_turned_off():
    from orchestrator.kinds import mmdet

    hooked = mmdet.node_command(plan_doc_for(TRAINERS["mmdet"], gpus=1), node(0, 1))
    assert f"{mmdet.HOOK_KEY}={mmdet.HOOK_TYPE}" in hooked.argv and not any("custom_hooks" in a for a in hooked.argv)
    assert hooked.env["PYTHONPATH"] == mmdet.ORCH_ROOT and os.path.isfile(os.path.join(mmdet.ORCH_ROOT, "jobs",
                                                                                        "mmengine_hook.py"))
    plain = mmdet.node_command(plan_doc_for(dict(TRAINERS["mmdet"], save_on_warning=False), gpus=1), node(0, 1))
    assert not any(a.startswith(mmdet.HOOK_KEY) for a in plain.argv) and "PYTHONPATH" not in plain.env
    # several GPUs: torchrun's agent is orch's, which outlives the warning while the workers save
    from orchestrator import toolbox

    for save, agent in ((True, "jobs.torchrun_wrapper"), (False, "torch.distributed.run")):
        cmd = mmdet.node_command(plan_doc_for(dict(TRAINERS["mmdet"], save_on_warning=save), gpus=4), node(0, 1))
        assert toolbox.command_line(cmd, 4, node(0, 1), "orch-1-0")[:3] == ["python3", "-m", agent]
    trainer = dict(TRAINERS["mmdet"], cfg_options={mmdet.HOOK_KEY: "MyHook"})
    doc = plan_doc_for(trainer, gpus=1)
    with pytest.raises(OrchError, match="save_on_warning"):
        mmdet.check(doc["config"], doc["plan"])


def test_rtdetr_tunes_from_init_checkpoint_only_on_a_fresh_start():
    doc = plan_doc_for(TRAINERS["rtdetr"], gpus=1, model={"init_checkpoint": "/w/rtdetrv2_r18vd.pth"})
    fresh = kinds.get("rtdetr").node_command(doc, node(0, 1))
    resumed = kinds.get("rtdetr").node_command(doc, node(0, 1), "/runs/demo/rtdetr/last.pth")
    assert fresh.argv[fresh.argv.index("-t") + 1] == "/w/rtdetrv2_r18vd.pth" and "-r" not in fresh.argv
    assert "-t" not in resumed.argv  # the official code refuses -t with -r
    assert (fresh.launcher, fresh.argv[:2], fresh.cwd) == ("single", ["python3", "tools/train.py"],
                                                           "/opt/RT-DETR/rtdetrv2_pytorch")


def test_rtdetr_on_cpu_runs_one_process_with_device_cpu():
    doc = plan_doc_for(TRAINERS["rtdetr"], gpus=1, resources={"use_cpu": True})
    cmd = kinds.get("rtdetr").node_command(doc, node(0, 1))
    assert cmd.launcher == "single" and cmd.argv[-2:] == ["-d", "cpu"]


@pytest.mark.parametrize("value", [None, True, 3, 0.02, 1e-05, 2.5e-05, 1e20, [96, 96], "yes", "a: b", "/p/x.json", "1e-3",
                                   "[x]", {"type": "Resize", "size": [96, 96], "p": None}, [{"lr": 1e-05}]])
def test_rtdetr_update_values_read_back_as_written(value):
    import yaml

    from orchestrator.kinds.rtdetr import _yaml_value

    assert yaml.load(_yaml_value(value), Loader=yaml.Loader) == value  # how tools/train.py reads -u values


def test_rtdetr_quotes_a_value_yaml_would_misread():
    trainer = dict(TRAINERS["rtdetr"], args={"tag": "yes", "note": "a: b"})
    argv = kinds.get("rtdetr").node_command(plan_doc_for(trainer, gpus=1), node(0, 1)).argv
    assert 'tag="yes"' in argv and 'note="a: b"' in argv


@pytest.mark.parametrize("kind,change,needle", [
    ("ultralytics", dict(gpus=16), "one node"),
    ("ultralytics", dict(gpus=2, resources={"use_cpu": True}), "--gpus 1"),
    ("rtdetr", dict(gpus=2, resources={"use_cpu": True}), "fails under torchrun on CPU"),
    ("mmdet", dict(gpus=2, resources={"use_cpu": True}), "NCCL"),
    ("detectron2", dict(gpus=4, resources={"use_cpu": True}), "NCCL"),
])
def test_check_refuses_what_the_toolbox_cannot_do(kind, change, needle):
    doc = plan_doc_for(TRAINERS[kind], **change)
    with pytest.raises(OrchError, match=needle):
        kinds.get(kind).check(doc["config"], doc["plan"])


@pytest.mark.parametrize("kind,trainer_change,needle", [
    ("ultralytics", {"modle": "x.yaml"}, r"trainer.modle .* did you mean trainer.model\?"),
    ("ultralytics", {"args": {"lr0": 0.1}}, r"lr0 is set by orch .* optimizer.base_lr"),
    ("rtdetr", {"args": {"epoches": 3}}, r"epoches is set by orch .* schedule.epochs"),
    ("rtdetr", {"num_classes": None}, r"trainer.num_classes"),
    ("rtdetr", {"root": None}, r"needs trainer.root"),
    ("mmdet", {"cfg_options": {"train_cfg.max_epochs": 3}}, r"schedule.epochs"),
    ("mmdet", {"cfg_options": {"data_root": "/my data/"}}, r"data_root = '/my data/' holds a space or a comma"),
    ("mmdet", {"cfg_options": {"data_root": "/a,b/"}}, r"holds a space or a comma"),
    ("detectron2", {"overrides": {"train.max_iter": 9}}, r"schedule.max_iters"),
    ("detectron2", {"config": 3}, r"trainer.config = 3 must be a str"),
    ("command", {"launcher": "torchrn"}, r"trainer.launcher = 'torchrn' is not one of .* did you mean 'torchrun'\?"),
])
def test_check_refuses_bad_trainer_keys_with_the_key_and_the_fix(kind, trainer_change, needle):
    doc = plan_doc_for(TRAINERS[kind], gpus=4)
    doc["config"]["trainer"].update(trainer_change)
    with pytest.raises(OrchError, match=needle):
        kinds.get(kind).check(doc["config"], doc["plan"])


@pytest.mark.parametrize("kind", ["ultralytics", "rtdetr", "mmdet", "detectron2"])
def test_toolboxes_that_write_files_refuse_an_s3_work_dir(kind):
    doc = plan_doc_for(TRAINERS[kind], gpus=1)
    doc["config"]["work_dir"] = "s3://bucket/runs"
    with pytest.raises(OrchError, match="s3:// URL.*local or NAS path"):
        kinds.get(kind).check(doc["config"], doc["plan"])


def test_unknown_kind_gets_a_did_you_mean():
    with pytest.raises(OrchError, match=r"'ultralytic' is not a trainer kind; did you mean 'ultralytics'\?"):
        kinds.get("ultralytic")
    doc = plan_doc_for({"kind": "orch"}, gpus=1)
    kinds.check_trainer(doc["config"], doc["plan"])  # the built-in trainer has nothing to check here
    assert kinds.KIND_NAMES == ("orch", "ultralytics", "rtdetr", "mmdet", "detectron2", "command")


def test_detectron2_machine_flags_per_node():
    doc = plan_doc_for(TRAINERS["detectron2"], gpus=16)
    argvs = [kinds.get("detectron2").node_command(doc, node(r, 2)).argv for r in range(2)]
    for rank, argv in enumerate(argvs):
        flags = dict(zip(argv[2:12:2], argv[3:12:2]))
        assert flags == {"--config-file": "/opt/detrex/projects/dino/configs/dino_r50_4scale_12ep.py", "--num-gpus": "8",
                         "--num-machines": "2", "--machine-rank": str(rank), "--dist-url": "tcp://gpu-node-01:29517"}


def test_the_kinds_package_imports_no_toolbox_and_no_torch():
    import subprocess

    code = ("import sys, orchestrator.kinds; "
            "print(sorted(m for m in ('torch', 'torchvision', 'submitit', 'ultralytics', 'mmengine', 'mmdet', "
            "'detectron2', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("kind", list(TRAINERS))
def test_every_kind_fills_the_contract(kind):
    module = kinds.get(kind)
    assert module.NAME == kind and set(module.REQUIRED) <= set(module.KEYS)
    assert all(spec.doc for spec in module.KEYS.values())
    for name in ("check", "node_command", "output_dir", "resume_checkpoint", "progress"):
        assert callable(getattr(module, name))
    assert module.output_dir("/runs/demo").startswith("/runs/demo/")
