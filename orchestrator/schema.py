"""The config schema: every key a run config may hold, its type, default and constraint.

A ``Field`` describes a leaf; a plain ``dict`` describes a section. ``FREE`` marks mappings
whose keys are the user's (passed through to a library), so they are not checked for typos.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

MODEL_NAMES = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_mobilenet_v3_large_320_fpn",
    "retinanet_resnet50_fpn",
    "retinanet_resnet50_fpn_v2",
    "fcos_resnet50_fpn",
    "ssd300_vgg16",
    "ssdlite320_mobilenet_v3_large",
)


@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    default: Any = None
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns a problem description or None
    doc: str = ""


def positive(v: Any) -> str | None:
    return None if v > 0 else "must be > 0"


def non_negative(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def probability(v: Any) -> str | None:
    return None if 0 <= v <= 1 else "must be between 0 and 1"


def numbers_non_negative(v: Any) -> str | None:
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in v):
        return "must be a list of numbers >= 0"
    return None


def at_least_two(v: Any) -> str | None:
    return None if v >= 2 else "must be >= 2 (the previous checkpoint must survive a torn write)"


INT = (int,)
NUM = (int, float)
STR = (str,)
BOOL = (bool,)
LIST = (list,)
DICT = (dict,)
FREE = Field(DICT, default=None, nullable=True, doc="free-form mapping passed through")

SCHEMA: dict[str, Any] = {
    "name": Field(STR, nullable=True, doc="run name prefix (default: the config file's stem)"),
    "work_dir": Field(STR, default="runs/", doc="where run dirs go: local path, NAS path or fsspec URL"),
    "seed": Field(INT, default=0, check=non_negative),
    "storage_options": FREE,
    "model": {
        "name": Field(STR, default="ssdlite320_mobilenet_v3_large", choices=MODEL_NAMES),
        "init_checkpoint": Field(STR, nullable=True, doc="weights to fine-tune from (path or URL)"),
        "min_size": Field(INT, nullable=True, check=positive),
        "max_size": Field(INT, nullable=True, check=positive),
        "trainable_backbone_layers": Field(INT, nullable=True, check=non_negative),
        "frozen_bn": Field(BOOL, nullable=True, doc="freeze backbone BatchNorm (default: when fine-tuning)"),
        "kwargs": FREE,
    },
    "data": {
        "train": {
            "ann_file": Field(STR, default=None, nullable=True),
            "img_dir": Field(STR, default=None, nullable=True),
        },
        "val": {
            "ann_file": Field(STR, default=None, nullable=True),
            "img_dir": Field(STR, default=None, nullable=True),
        },
        "batch_per_gpu": Field(INT, default=2, check=positive),
        "total_batch_size": Field(INT, nullable=True, check=positive,
                                  doc="alternative to batch_per_gpu: split across the GPUs"),
        "val_batch_per_gpu": Field(INT, nullable=True, check=positive),
        "num_workers": Field(INT, default=2, check=non_negative),
        "pin_memory": Field(BOOL, nullable=True, doc="default: when CUDA is available"),
        "filter_empty": Field(BOOL, default=True, doc="drop training images without usable boxes"),
        "aspect_ratio_grouping": Field(BOOL, default=True),
        "augment": {
            "hflip": Field(NUM, default=0.5, check=probability),
            "resize": FREE,
            "photometric": FREE,
        },
    },
    "optimizer": {
        "name": Field(STR, default="sgd", choices=("sgd", "adamw")),
        "base_lr": Field(NUM, default=0.02, check=positive),
        "base_batch_size": Field(INT, default=16, check=positive),
        "lr_scaling": Field(STR, default="linear", choices=("linear", "sqrt", "none")),
        "momentum": Field(NUM, default=0.9, check=non_negative),
        "betas": Field(LIST, default=[0.9, 0.999]),
        "weight_decay": Field(NUM, default=0.0001, check=non_negative),
        "norm_weight_decay": Field(NUM, nullable=True, check=non_negative),
        "param_groups": Field(LIST, default=[], doc="[{pattern: backbone, lr_mult: 0.1}]"),
        "clip_grad_norm": Field(NUM, nullable=True, check=positive),
    },
    "schedule": {
        "epochs": Field(INT, default=12, nullable=True, check=positive),
        "max_iters": Field(INT, nullable=True, check=positive, doc="instead of epochs"),
        "warmup_iters": Field(INT, default=500, check=non_negative),
        "warmup_epochs": Field(NUM, nullable=True, check=non_negative),
        "warmup_factor": Field(NUM, default=0.001, check=probability),
        "lr_policy": Field(STR, default="multistep", choices=("multistep", "cosine", "constant")),
        "milestones": Field(LIST, default=[8, 11], check=numbers_non_negative, doc="in epochs"),
        "milestones_iters": Field(LIST, nullable=True, check=numbers_non_negative),
        "gamma": Field(NUM, default=0.1, check=positive),
        "min_lr_ratio": Field(NUM, default=0.0, check=probability, doc="cosine floor"),
        "checkpoint_every_epochs": Field(NUM, default=1, nullable=True, check=positive),
        "checkpoint_every_iters": Field(INT, nullable=True, check=positive),
        "eval_every_epochs": Field(NUM, default=1, nullable=True, check=positive),
        "eval_every_iters": Field(INT, nullable=True, check=positive),
        "log_every_iters": Field(INT, default=20, check=positive),
        "keep_last": Field(INT, default=2, check=at_least_two),
        "amp": Field(BOOL, default=True, doc="mixed precision on CUDA (ignored on CPU)"),
    },
    "resources": {
        "gpus": Field(INT, default=1, check=positive),
        "gpus_per_node": Field(INT, default=8, check=positive),
        "nodes": Field(INT, nullable=True, check=positive),
        "partition": Field(STR, nullable=True),
        "time": Field(STR, default="24:00:00"),
        "account": Field(STR, nullable=True),
        "qos": Field(STR, nullable=True),
        "constraint": Field(STR, nullable=True),
        "exclude": Field(STR, nullable=True),
        "cpus_per_gpu": Field(INT, default=4, check=positive),
        "mem_per_gpu": Field(STR, nullable=True, doc="e.g. 32G"),
        "executor": Field(STR, default="slurm", choices=("slurm", "local")),
        "max_requeues": Field(INT, default=3, check=non_negative),
        "signal_delay_s": Field(INT, default=120, check=positive),
        "use_cpu": Field(BOOL, default=False, doc="force CPU + gloo even if CUDA is present"),
    },
}


def defaults(schema: dict[str, Any] = SCHEMA) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in schema.items():
        if isinstance(spec, dict):
            out[key] = defaults(spec)
        else:
            out[key] = _copy(spec.default)
    return out


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return dict(value)
    return value


def all_key_paths(schema: dict[str, Any] = SCHEMA, prefix: str = "") -> list[str]:
    paths = []
    for key, spec in schema.items():
        path = f"{prefix}{key}"
        paths.append(path)
        if isinstance(spec, dict):
            paths.extend(all_key_paths(spec, path + "."))
    return paths
