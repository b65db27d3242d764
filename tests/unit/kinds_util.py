"""Plans and rendered node commands shared by the test_kinds_* tests."""
from __future__ import annotations

import copy
import shlex
from typing import Any

from orchestrator import planner, schema
from orchestrator.kinds import base
from orchestrator.kinds.base import ORCH_ROOT

TRAINERS: dict[str, dict[str, Any]] = {
    "ultralytics": {"kind": "ultralytics", "model": "yolo11n.yaml", "args": {"imgsz": 320, "mosaic": 0.5}},
    "rtdetr": {"kind": "rtdetr", "root": "/opt/RT-DETR/rtdetrv2_pytorch",
               "config": "configs/rtdetrv2/rtdetrv2_r18vd_120e_coco.yml", "num_classes": 4,
               "args": {"eval_spatial_size": [320, 320]}},
    "mmdet": {"kind": "mmdet", "root": "/opt/mmdetection", "config": "configs/rtmdet/rtmdet_tiny_8xb32-300e_coco.py",
              "cfg_options": {"model.bbox_head.num_classes": 3}},
    "detectron2": {"kind": "detectron2", "root": "/opt/detrex", "config": "projects/dino/configs/dino_r50_4scale_12ep.py",
                   "overrides": {"model.num_classes": 3}},
    "command": {"kind": "command", "argv": ["tests/train_script.py", "--lr", "{lr}", "--iters", "{max_iters}",
                                           "--batch", "{batch_per_gpu}", "--out", "{output_dir}"],
                "resume_args": ["--resume", "{checkpoint}"], "env": {"MY_EPOCHS": "{epochs}"}},
}


def config_for(trainer: dict[str, Any], **sections: Any) -> dict[str, Any]:
    config = schema.defaults()
    config["trainer"] = copy.deepcopy(trainer)
    config["work_dir"] = "/runs"
    config["data"]["train"] = {"ann_file": "/data/train.json", "img_dir": "/data/train"}
    config["data"]["val"] = {"ann_file": "/data/val.json", "img_dir": "/data/val"}
    config["data"]["batch_per_gpu"] = 4
    config["schedule"]["epochs"] = 12
    config["schedule"]["warmup_iters"] = 100
    for section, values in sections.items():
        config[section].update(values)
    return config


def plan_doc_for(trainer: dict[str, Any], gpus: int = 8, gpus_per_node: int = 8, train_images: int = 1000,
                 **sections: Any) -> dict[str, Any]:
    config = config_for(trainer, **sections)
    config["resources"]["gpus_per_node"] = gpus_per_node
    plan = planner.make_plan(config, train_images, gpus=gpus).to_dict()
    return {"version": 1, "run_name": "demo", "run_dir": "/runs/demo", "plan": plan, "config": config}


def node(rank: int, nodes: int) -> dict[str, Any]:
    return {"node_rank": rank, "nodes": nodes, "first_node": "gpu-node-01", "port": 29517}


def render(cmd: base.NodeCommand, rank: int) -> str:
    lines = [f"# node {rank}: launcher={cmd.launcher} cwd={cmd.cwd}" + (f" python={cmd.python}" if cmd.python else "")
             + (f" agent={cmd.agent}" if cmd.launcher == "torchrun" and cmd.agent != "torch.distributed.run" else "")]
    # the checkout's own path (where orch's mmengine hook is imported from) differs from machine to machine
    lines += [f"export {k}={shlex.quote(v.replace(ORCH_ROOT, '<orch>'))}" for k, v in sorted(cmd.env.items())]
    lines.append(shlex.join(cmd.argv))
    return "\n".join(lines)
