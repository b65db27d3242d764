"""The arguments a kind renders are read by the toolbox's own parser as the values orch meant.

Each test runs the toolbox's parsing code (not its training) in a subprocess; it is skipped where
that toolbox is not installed (ultralytics and mmengine from PyPI, the official RT-DETR checkout in
../shared/thirdparty). mmdetection and detectron2 need compiled extensions and are checked by the
golden files only.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kinds_util import TRAINERS, node, plan_doc_for  # noqa: E402

from orchestrator import kinds  # noqa: E402

RTDETR_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "thirdparty",
                                           "rtdetrv2_pytorch"))
RTDETR_ROOT = os.environ.get("ORCH_RTDETR_ROOT", RTDETR_ROOT)
if not os.path.isdir(RTDETR_ROOT):
    RTDETR_ROOT = "/work/shared/thirdparty/rtdetrv2_pytorch"


def run_python(code: str, cwd: str | None = None) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None, reason="ultralytics is not installed")
def test_ultralytics_reads_the_yolo_arguments_with_their_types():
    doc = plan_doc_for(TRAINERS["ultralytics"], gpus=4)
    argv = kinds.get("ultralytics").node_command(doc, node(0, 1)).argv
    # orch's wrapper (it adds the preemption callback) takes `yolo`'s own arguments
    assert argv[1:5] == ["-m", "jobs.ultralytics_train", "detect", "train"]
    code = ("import json, sys; from ultralytics.cfg import get_cfg, parse_key_value_pair\n"
            f"pairs = dict(parse_key_value_pair(a) for a in {argv[5:]!r})\n"
            "cfg = get_cfg(overrides=pairs)\n"  # validates names and types like `yolo` does
            "print(json.dumps({k: getattr(cfg, k) for k in pairs}, default=str))")
    got = run_python(code)
    assert got["epochs"] == 12 and got["batch"] == 16 and got["lr0"] == 0.02 and got["save_period"] == 1
    assert got["warmup_epochs"] == pytest.approx(100 / 63, abs=1e-4) and got["exist_ok"] is True
    assert got["device"] == [0, 1, 2, 3] and got["optimizer"] == "SGD" and got["imgsz"] == 320


@pytest.mark.skipif(importlib.util.find_spec("mmengine") is None, reason="mmengine is not installed")
def test_mmengine_reads_the_cfg_options_with_their_types():
    trainer = dict(TRAINERS["mmdet"], cfg_options={"model.bbox_head.num_classes": 3, "custom_hooks": [],
                                                  "train_dataloader.dataset.ann_file": "/d/ann.json",
                                                  "train_dataloader.dataset.metainfo.classes": ["a", "b"]})
    argv = kinds.get("mmdet").node_command(plan_doc_for(trainer, gpus=4), node(0, 1)).argv
    options = argv[argv.index("--cfg-options") + 1:]
    code = ("import argparse, json; from mmengine.config import Config, DictAction\n"
            "p = argparse.ArgumentParser(); p.add_argument('--cfg-options', nargs='+', action=DictAction)\n"
            f"args = p.parse_args(['--cfg-options', *{options!r}])\n"
            "cfg = Config(dict(train_cfg=dict(type='EpochBasedTrainLoop', max_epochs=300, val_interval=10),\n"
            "    optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)), auto_scale_lr=dict(enable=True, base_batch_size=16),\n"
            "    default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=10)), custom_hooks=[dict(type='X')]))\n"
            "cfg.merge_from_dict(args.cfg_options)\n"
            "print(json.dumps(cfg.to_dict(), default=str))")
    got = run_python(code)
    assert got["optim_wrapper"]["optimizer"] == {"type": "SGD", "lr": 0.02}
    assert got["train_cfg"] == {"type": "EpochBasedTrainLoop", "max_epochs": 12, "val_interval": 1}
    assert got["auto_scale_lr"] == {"enable": False, "base_batch_size": 16}
    assert got["default_hooks"]["checkpoint"]["interval"] == 1 and got["randomness"]["seed"] == 0
    assert got["train_dataloader"]["batch_size"] == 4 and got["model"]["bbox_head"]["num_classes"] == 3
    assert got["custom_hooks"] == [] and got["train_dataloader"]["dataset"]["ann_file"] == "/d/ann.json"
    assert got["train_dataloader"]["dataset"]["metainfo"]["classes"] == ["a", "b"]


@pytest.mark.skipif(not os.path.isdir(RTDETR_ROOT) or importlib.util.find_spec("torch") is None,
                    reason="the official RT-DETR checkout (or torch) is not here")
def test_the_official_rtdetr_code_reads_the_update_keys():
    trainer = dict(TRAINERS["rtdetr"], root=RTDETR_ROOT, args={"eval_spatial_size": [320, 320], "tag": "yes"})
    doc = plan_doc_for(trainer, gpus=1, resources={"use_cpu": True})
    cmd = kinds.get("rtdetr").node_command(doc, node(0, 1))
    argv = cmd.argv
    updates = argv[argv.index("-u") + 1: argv.index("--output-dir")]
    code = ("import json, sys; sys.path.insert(0, '.'); from src.core import YAMLConfig, yaml_utils\n"
            f"cfg = YAMLConfig({argv[argv.index('-c') + 1]!r}, **yaml_utils.parse_cli({updates!r}))\n"
            "y = cfg.yaml_cfg\n"
            "print(json.dumps({'epoches': y['epoches'], 'train_bs': y['train_dataloader']['total_batch_size'],\n"
            "    'val_bs': y['val_dataloader']['total_batch_size'], 'lr': y['optimizer']['lr'],\n"
            "    'warmup': y['lr_warmup_scheduler'], 'checkpoint_freq': y['checkpoint_freq'],\n"
            "    'img_folder': y['train_dataloader']['dataset']['img_folder'], 'num_classes': y['num_classes'],\n"
            "    'remap': y['remap_mscoco_category'], 'size': y['eval_spatial_size'], 'tag': y['tag']}))")
    got = run_python(code, cwd=cmd.cwd)
    plan = doc["plan"]
    assert got == {"epoches": 12, "train_bs": plan["total_batch_size"], "val_bs": plan["total_batch_size"],
                   "lr": plan["lr"], "warmup": {"type": "LinearWarmup", "warmup_duration": 100},
                   "checkpoint_freq": 1, "img_folder": "/data/train", "num_classes": 4, "remap": False,
                   "size": [320, 320], "tag": "yes"}
    assert argv[:2] == ["python3", "tools/train.py"] and argv[-2:] == ["-d", "cpu"]
