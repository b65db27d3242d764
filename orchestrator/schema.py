"""The config schema: every key a run config may hold, its type, default and constraint.

A ``Field`` describes a leaf; a plain ``dict`` describes a section. A ``Field`` with ``keys``
is a mapping that may be null (``data.augment.resize``) and with ``items`` a list of mappings
(``optimizer.param_groups``): their keys are checked like sections but get no defaults. ``FREE``
marks mappings whose keys are the user's (``storage_options``), so they are not checked for typos.
``model.kwargs`` is checked per model against :mod:`orchestrator.modelspec`. Every number has
sane bounds: a 20-digit epoch count is a typo, not a plan.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from orchestrator.modelspec import MODEL_NAMES

@dataclass(frozen=True)
class Field:
    types: tuple[type, ...]
    default: Any = None
    nullable: bool = False
    choices: tuple[Any, ...] | None = None
    check: Callable[[Any], str | None] | None = None  # returns a problem description or None
    doc: str = ""
    keys: dict[str, Any] | None = None   # a mapping whose keys are checked (no defaults filled in)
    items: dict[str, Any] | None = None  # a list of mappings, each checked against these keys
    required: tuple[str, ...] = ()       # keys such a mapping must hold


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


def between(low: float, high: float) -> Callable[[Any], str | None]:
    """Sane bounds: a 20-digit epoch count is a typo, not a plan."""
    def check(v: Any) -> str | None:
        if v < low:
            return "must be > 0" if low == 1 and isinstance(v, int) else f"must be >= {low:g}"
        return None if v <= high else f"must be at most {high:g}"
    return check


def positive_up_to(high: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return None if 0 < v <= high else f"must be > 0 and at most {high:g}"
    return check


def numbers_up_to(high: float) -> Callable[[Any], str | None]:
    def check(v: Any) -> str | None:
        return numbers_non_negative(v) or (None if all(x <= high for x in v) else f"must hold numbers <= {high:g}")
    return check


def sizes(v: Any) -> str | None:
    """One image size or a list of them (multi-scale training draws one per image)."""
    values = v if isinstance(v, list) else [v]
    ok = values and all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= MAX_SIZE_PX for x in values)
    return None if ok else f"must be a size in pixels (1 to {MAX_SIZE_PX}) or a non-empty list of them"


def betas(v: Any) -> str | None:
    ok = len(v) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in v)
    return None if ok else "must be a list of two numbers in [0, 1), e.g. [0.9, 0.999]"


def regex(v: Any) -> str | None:
    import re
    try:
        re.compile(v)
    except re.error as exc:
        return f"is not a valid regular expression ({exc})"
    return None


def at_least_two(v: Any) -> str | None:
    if v > 10_000:
        return "must be at most 10000"
    return None if v >= 2 else "must be >= 2 (the previous checkpoint must survive a torn write)"


MAX_SIZE_PX = 16384
MAX_ITERS = 10**9
MAX_EPOCHS = 100_000
INT = (int,)
NUM = (int, float)
STR = (str,)
BOOL = (bool,)
LIST = (list,)
DICT = (dict,)
FREE = Field(DICT, default=None, nullable=True, doc="free-form mapping passed through")

# Keys the training job reads inside lists and free-looking mappings (jobs.data, jobs.models read these too).
# The photometric order is the order the job applies the jitters in.
AUGMENT_RESIZE: dict[str, Field] = {
    "min_size": Field((int, list), check=sizes, doc="short side in px, or a list to draw from"),
    "max_size": Field(INT, nullable=True, check=between(1, MAX_SIZE_PX)),
}
AUGMENT_PHOTOMETRIC: dict[str, Field] = {
    "brightness": Field(NUM, nullable=True, check=between(0, 10)),
    "contrast": Field(NUM, nullable=True, check=between(0, 10)),
    "saturation": Field(NUM, nullable=True, check=between(0, 10)),
    "hue": Field(NUM, nullable=True, check=between(0, 0.5)),
}
# RT-DETR's RandomZoomOut(fill=0, side_range=(1, max_scale)) and RandomIoUCrop + SanitizeBoundingBoxes.
AUGMENT_ZOOM_OUT: dict[str, Field] = {
    "p": Field(NUM, check=probability, doc="chance per image (default 0.5)"),
    "max_scale": Field(NUM, check=between(1, 16), doc="canvas side up to this times the image's (default 4)"),
}
AUGMENT_IOU_CROP: dict[str, Field] = {
    "p": Field(NUM, check=probability, doc="chance per image (default 0.8)"),
}
PARAM_GROUP: dict[str, Field] = {
    "pattern": Field(STR, check=regex, doc="regex searched in parameter names; the first matching rule wins"),
    "lr_mult": Field(NUM, default=1.0, check=between(0, 1000)),
    "decay_mult": Field(NUM, default=1.0, check=between(0, 1000)),
}
# An exponential moving average of the weights (RT-DETR's ModelEMA): any model may use it; eval uses it.
EMA: dict[str, Field] = {
    "decay": Field(NUM, check=lambda v: None if 0 <= v < 1 else "must be >= 0 and < 1", doc="e.g. 0.9999"),
    "warmup_iters": Field(INT, default=2000, check=between(0, MAX_ITERS),
                          doc="decay ramps up as decay * (1 - exp(-updates / warmup_iters)); 0: no ramp"),
}

SCHEMA: dict[str, Any] = {
    "name": Field(STR, nullable=True, doc="run name prefix (default: the config file's stem)"),
    "work_dir": Field(STR, default="runs/", doc="where run dirs go: local path, NAS path or fsspec URL"),
    "seed": Field(INT, default=0, check=between(0, 2**63 - 1)),
    "storage_options": FREE,
    "model": {
        "name": Field(STR, default="ssdlite320_mobilenet_v3_large", choices=MODEL_NAMES),
        "init_checkpoint": Field(STR, nullable=True, doc="weights to fine-tune from (path or URL)"),
        "min_size": Field(INT, nullable=True, check=between(1, MAX_SIZE_PX)),
        "max_size": Field(INT, nullable=True, check=between(1, MAX_SIZE_PX)),
        "trainable_backbone_layers": Field(INT, nullable=True, check=non_negative,
                                           doc="range per model: orchestrator/modelspec.py"),
        "frozen_bn": Field(BOOL, nullable=True, doc="freeze backbone BatchNorm (default: when fine-tuning)"),
        "kwargs": Field(DICT, nullable=True, doc="detector keywords; per model: orchestrator/modelspec.py"),
        "ema": Field(DICT, nullable=True, keys=EMA, required=("decay",),
                     doc="{decay: 0.9999, warmup_iters: 2000}: EMA of the weights, saved, used for eval"),
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
        "batch_per_gpu": Field(INT, default=2, nullable=True, check=between(1, 1024)),
        "total_batch_size": Field(INT, nullable=True, check=between(1, 1_048_576),
                                  doc="alternative to batch_per_gpu: split across the GPUs"),
        "val_batch_per_gpu": Field(INT, nullable=True, check=between(1, 1024)),
        "num_workers": Field(INT, default=2, check=between(0, 256)),
        "pin_memory": Field(BOOL, nullable=True, doc="default: when CUDA is available"),
        "filter_empty": Field(BOOL, default=True, doc="drop training images without usable boxes"),
        "aspect_ratio_grouping": Field(BOOL, default=True),
        "augment": {
            "hflip": Field(NUM, default=0.5, check=probability),
            "resize": Field(DICT, nullable=True, keys=AUGMENT_RESIZE, required=("min_size",)),
            "photometric": Field(DICT, nullable=True, keys=AUGMENT_PHOTOMETRIC),
            "zoom_out": Field(DICT, nullable=True, keys=AUGMENT_ZOOM_OUT,
                              doc="{p: 0.5, max_scale: 4}: paste on a black canvas up to max_scale x larger"),
            "iou_crop": Field(DICT, nullable=True, keys=AUGMENT_IOU_CROP,
                              doc="{p: 0.8}: SSD-style crop keeping boxes at a drawn min IoU"),
            "multiscale": Field(LIST, nullable=True, check=sizes,
                                doc="[480, 512, ..., 800]: each training batch's size drawn from the list "
                                    "(transformer detectors; seeded by seed, epoch, step; off from stop_epoch)"),
            "stop_epoch": Field(INT, nullable=True, check=between(0, MAX_EPOCHS),
                                doc="from this epoch on, photometric, zoom_out, iou_crop and multiscale are off"),
        },
    },
    "optimizer": {
        "name": Field(STR, default="sgd", choices=("sgd", "adamw")),
        "base_lr": Field(NUM, default=0.02, check=positive),  # tests diverge a run on purpose with 1e12
        "base_batch_size": Field(INT, default=16, check=between(1, 1_048_576)),
        "lr_scaling": Field(STR, default="linear", choices=("linear", "sqrt", "none")),
        "momentum": Field(NUM, default=0.9, check=between(0, 1)),
        "betas": Field(LIST, default=[0.9, 0.999], check=betas),
        "weight_decay": Field(NUM, default=0.0001, check=between(0, 1)),
        "norm_weight_decay": Field(NUM, nullable=True, check=between(0, 1),
                                   doc="weight decay of norm layers' weights and biases (default: weight_decay)"),
        "param_groups": Field(LIST, default=[], items=PARAM_GROUP, required=("pattern",),
                              doc="[{pattern: backbone, lr_mult: 0.1}]"),
        "clip_grad_norm": Field(NUM, nullable=True, check=positive_up_to(1e6)),
    },
    "schedule": {
        "epochs": Field(INT, default=12, nullable=True, check=between(1, MAX_EPOCHS)),
        "max_iters": Field(INT, nullable=True, check=between(1, MAX_ITERS), doc="instead of epochs"),
        "warmup_iters": Field(INT, default=500, nullable=True, check=between(0, MAX_ITERS)),
        "warmup_epochs": Field(NUM, nullable=True, check=between(0, MAX_EPOCHS)),
        "warmup_factor": Field(NUM, default=0.001, check=probability),
        "lr_policy": Field(STR, default="multistep", choices=("multistep", "cosine", "constant")),
        "milestones": Field(LIST, default=[8, 11], nullable=True, check=numbers_up_to(MAX_EPOCHS),
                            doc="in epochs"),
        "milestones_iters": Field(LIST, nullable=True, check=numbers_up_to(MAX_ITERS)),
        "gamma": Field(NUM, default=0.1, check=positive_up_to(10)),
        "min_lr_ratio": Field(NUM, default=0.0, check=probability, doc="cosine floor"),
        "checkpoint_every_epochs": Field(NUM, default=1, nullable=True, check=positive_up_to(MAX_EPOCHS)),
        "checkpoint_every_iters": Field(INT, nullable=True, check=between(1, MAX_ITERS)),
        "eval_every_epochs": Field(NUM, default=1, nullable=True, check=positive_up_to(MAX_EPOCHS)),
        "eval_every_iters": Field(INT, nullable=True, check=between(1, MAX_ITERS)),
        "log_every_iters": Field(INT, default=20, check=between(1, MAX_ITERS)),
        "keep_last": Field(INT, default=2, check=at_least_two),
        "amp": Field(BOOL, default=True, doc="mixed precision on CUDA (ignored on CPU)"),
    },
    "resources": {
        "gpus": Field(INT, default=1, check=between(1, 65536)),
        "gpus_per_node": Field(INT, default=8, check=between(1, 64)),
        "nodes": Field(INT, nullable=True, check=between(1, 16384)),
        "partition": Field(STR, nullable=True),
        "time": Field(STR, default="24:00:00"),
        "account": Field(STR, nullable=True),
        "qos": Field(STR, nullable=True),
        "constraint": Field(STR, nullable=True),
        "exclude": Field(STR, nullable=True),
        "cpus_per_gpu": Field(INT, default=4, check=between(1, 1024)),
        "mem_per_gpu": Field(STR, nullable=True, doc="e.g. 32G"),
        "executor": Field(STR, default="slurm", choices=("slurm", "local")),
        "max_requeues": Field(INT, default=3, check=between(0, 1000)),
        "signal_delay_s": Field(INT, default=120, check=between(1, 86400)),
        "use_cpu": Field(BOOL, default=False, doc="force CPU + gloo even if CUDA is present"),
    },
    # The kind's own keys are checked per kind (orchestrator.kinds, via config._check_trainer).
    "trainer": Field(DICT, default={"kind": "orch"},
                     doc="what trains: kind (orch | ultralytics | rtdetr | mmdet | detectron2 | command) and its keys"),
}

# Pairs that say one thing two ways. One layer (a file, or the command line) may set only one of
# each; a later layer that sets one clears the other (the planner reads whichever is set).
# `needs_one`: the plan cannot be made with both null.
EITHER_OR: tuple[tuple[str, str, bool], ...] = (
    ("schedule.epochs", "schedule.max_iters", True),
    ("data.batch_per_gpu", "data.total_batch_size", True),
    ("schedule.warmup_iters", "schedule.warmup_epochs", True),
    ("schedule.milestones", "schedule.milestones_iters", False),
    ("schedule.checkpoint_every_epochs", "schedule.checkpoint_every_iters", False),
    ("schedule.eval_every_epochs", "schedule.eval_every_iters", False),
)

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
        elif spec.keys:
            paths.extend(all_key_paths(spec.keys, path + "."))
    return paths
