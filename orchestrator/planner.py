"""Pure planning: a validated config plus the training-set size in, a :class:`Plan` out.

No I/O, no torch, no submitit: every function here is a table-testable calculation.
mmdetection's linear rule: base lr 0.02 at batch 16 → 0.01 for 4 GPUs × 2 images,
0.08 for 16 GPUs × 4 images.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from orchestrator import modelspec
from orchestrator.errors import OrchError


class PlanError(OrchError):
    """A config that cannot be turned into a plan; the message proposes the nearest valid values."""


@dataclass(frozen=True)
class Plan:
    gpus: int
    nodes: int
    gpus_per_node: int
    batch_per_gpu: int
    total_batch_size: int
    val_batch_per_gpu: int
    base_lr: float
    base_batch_size: int
    lr_scaling: str
    lr: float
    train_images: int
    iters_per_epoch: int
    epochs: float
    max_iters: int
    warmup_iters: int
    warmup_factor: float
    lr_policy: str
    milestones_iters: list[int]
    gamma: float
    min_lr_ratio: float
    checkpoint_period_iters: int
    eval_period_iters: int
    log_period_iters: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scale_lr(base_lr: float, base_batch_size: int, total_batch_size: int, rule: str) -> float:
    ratio = total_batch_size / base_batch_size
    if rule == "linear":
        return base_lr * ratio
    if rule == "sqrt":
        return base_lr * math.sqrt(ratio)
    if rule == "none":
        return base_lr
    raise PlanError(f"optimizer.lr_scaling = {rule!r} is not one of linear, sqrt, none")


def resolve_nodes(gpus: int, gpus_per_node: int, nodes: int | None = None) -> tuple[int, int]:
    """(nodes, gpus_per_node) for a GPU count; fewer GPUs than a node holds use one partial node."""
    if nodes is not None:
        if gpus > nodes * gpus_per_node:
            more = next(n for n in range(-(-gpus // gpus_per_node), gpus + 1) if gpus % n == 0)
            per_node = -(-gpus // nodes)
            raise PlanError(f"--nodes {nodes} × --gpus-per-node {gpus_per_node} hold {nodes * gpus_per_node} GPUs, "
                            f"not {gpus}; use --gpus {nodes * gpus_per_node}, or --nodes {more} "
                            f"({gpus // more} GPUs each), or --gpus-per-node {per_node}")
        if gpus % nodes:
            near = sorted({max(nodes, gpus // nodes * nodes), (gpus // nodes + 1) * nodes})
            raise PlanError(f"{gpus} GPUs cannot be spread evenly over {nodes} nodes; "
                            f"use --gpus {' or '.join(map(str, near))}, or another --nodes")
        return nodes, gpus // nodes
    if gpus <= gpus_per_node:
        return 1, gpus
    if gpus % gpus_per_node:
        lower = gpus // gpus_per_node * gpus_per_node
        upper = lower + gpus_per_node
        divisors = [d for d in range(gpus_per_node, 0, -1) if gpus % d == 0][:1]
        raise PlanError(f"{gpus} GPUs do not fill whole nodes of {gpus_per_node} GPUs; use --gpus {lower} "
                        f"or --gpus {upper}, or --gpus-per-node {divisors[0]} ({gpus // divisors[0]} nodes)")
    return gpus // gpus_per_node, gpus_per_node


def resolve_batch(gpus: int, batch_per_gpu: int, total_batch_size: int | None = None) -> tuple[int, int]:
    """(batch_per_gpu, total_batch_size); a requested total must split evenly over the GPUs."""
    if total_batch_size is None:
        return batch_per_gpu, gpus * batch_per_gpu
    if total_batch_size % gpus:
        lower = max(gpus, total_batch_size // gpus * gpus)
        upper = (total_batch_size // gpus + 1) * gpus
        raise PlanError(f"a total batch of {total_batch_size} cannot be shared evenly by {gpus} GPUs; "
                        f"use data.total_batch_size={lower} or {upper}")
    return total_batch_size // gpus, total_batch_size


def check_model_batch(model_cfg: dict[str, Any], batch_per_gpu: int, gpus: int) -> None:
    """Refuse a batch the model cannot train on (modelspec's measured limits), before any queue wait."""
    if batch_per_gpu != 1:
        return
    problem = modelspec.single_image_problem(model_cfg)
    if problem:
        spec = modelspec.MODELS[model_cfg["name"]]
        raise PlanError(f"data.batch_per_gpu = 1: {problem}; use data.batch_per_gpu=2 (or data.total_batch_size="
                        f"{2 * gpus} for {gpus} GPUs), or an input size above {spec.batchnorm_1x1_up_to_size} px "
                        f"(model.min_size)" + (", or model.frozen_bn=true" if spec.can_freeze_bn else ""))


def iters_per_epoch(train_images: int, total_batch_size: int) -> int:
    return math.ceil(train_images / total_batch_size)


def epochs_to_iters(epochs: float, iters_in_epoch: int) -> int:
    """Epochs (fractions allowed) as a whole number of iterations, at least 1 for a positive value."""
    if epochs <= 0:
        return 0
    return max(1, round(epochs * iters_in_epoch))


def _period(schedule: dict[str, Any], name: str, iters_in_epoch: int, max_iters: int) -> int:
    explicit = schedule.get(f"{name}_every_iters")
    if explicit:
        return int(explicit)
    epochs = schedule.get(f"{name}_every_epochs")
    if not epochs:
        return max_iters  # only at the end
    return epochs_to_iters(epochs, iters_in_epoch)


def make_plan(config: dict[str, Any], train_images: int, gpus: int | None = None) -> Plan:
    """The whole plan for a validated config and the number of training images."""
    res, data, opt, sched = config["resources"], config["data"], config["optimizer"], config["schedule"]
    gpus = gpus if gpus is not None else res["gpus"]
    if gpus < 1:
        raise PlanError(f"--gpus {gpus} must be at least 1")
    if train_images < 1:
        raise PlanError("the training set has no usable images (after dropping images without boxes, "
                        "data.filter_empty); check data.train.ann_file with `orch data check`")
    nodes, gpus_per_node = resolve_nodes(gpus, res["gpus_per_node"], res.get("nodes"))
    batch_per_gpu, total = resolve_batch(gpus, data["batch_per_gpu"], data.get("total_batch_size"))
    check_model_batch(config["model"], batch_per_gpu, gpus)
    lr = scale_lr(opt["base_lr"], opt["base_batch_size"], total, opt["lr_scaling"])
    ipe = iters_per_epoch(train_images, total)
    warnings: list[str] = []

    if sched.get("max_iters"):
        max_iters = int(sched["max_iters"])
        epochs = max_iters / ipe
    elif sched.get("epochs"):
        epochs = sched["epochs"]
        max_iters = epochs * ipe
    else:
        raise PlanError("set schedule.epochs or schedule.max_iters")
    if (data.get("augment") or {}).get("multiscale") and not modelspec.is_detr(config["model"]["name"]):
        raise PlanError(f"data.augment.multiscale: {config['model']['name']} resizes inside the model, so a "
                        f"per-batch size does not apply to it; use data.augment.resize={{min_size: [...]}} "
                        f"(a size per image) or remove data.augment.multiscale")
    stop_epoch = (data.get("augment") or {}).get("stop_epoch")
    if stop_epoch is not None and stop_epoch > math.ceil(epochs):
        raise PlanError(f"data.augment.stop_epoch = {stop_epoch} is past the run's {epochs:g} epochs, so the "
                        f"augmentations it should stop would never stop: set it to at most {math.ceil(epochs)} "
                        f"or null")

    if sched.get("milestones_iters") is not None:
        milestones = [int(m) for m in sched["milestones_iters"]]
    else:
        milestones = [epochs_to_iters(m, ipe) for m in sched.get("milestones") or []]
    if milestones != sorted(set(milestones)):
        raise PlanError(f"schedule milestones must increase strictly; got {milestones} iterations")
    if sched["lr_policy"] == "multistep" and any(m >= max_iters for m in milestones):
        warnings.append(f"milestones {[m for m in milestones if m >= max_iters]} are at or past the last "
                        f"iteration ({max_iters}) and will never apply")

    if sched.get("warmup_epochs") is not None:
        warmup = epochs_to_iters(sched["warmup_epochs"], ipe)
    else:
        warmup = int(sched["warmup_iters"])
    if warmup > max_iters:
        warnings.append(f"warmup ({warmup} iterations) is longer than the run; capped at {max_iters}")
        warmup = max_iters

    return Plan(
        gpus=gpus, nodes=nodes, gpus_per_node=gpus_per_node,
        batch_per_gpu=batch_per_gpu, total_batch_size=total,
        val_batch_per_gpu=data.get("val_batch_per_gpu") or batch_per_gpu,
        base_lr=opt["base_lr"], base_batch_size=opt["base_batch_size"], lr_scaling=opt["lr_scaling"], lr=lr,
        train_images=train_images, iters_per_epoch=ipe, epochs=epochs, max_iters=max_iters,
        warmup_iters=warmup, warmup_factor=sched["warmup_factor"], lr_policy=sched["lr_policy"],
        milestones_iters=milestones, gamma=sched["gamma"], min_lr_ratio=sched["min_lr_ratio"],
        checkpoint_period_iters=_period(sched, "checkpoint", ipe, max_iters),
        eval_period_iters=_period(sched, "eval", ipe, max_iters),
        log_period_iters=sched["log_every_iters"],
        warnings=warnings,
    )


# Keys that change what is computed; resources (time, partition, …) and names do not.
_HASH_EXCLUDED_CONFIG = ("resources", "name", "work_dir", "storage_options")


def plan_hash(plan: dict[str, Any], config: dict[str, Any]) -> str:
    """Fingerprint of everything that decides the training trajectory (for resume checks)."""
    numbers = {k: v for k, v in plan.items() if k not in ("warnings", "nodes", "gpus_per_node")}
    relevant = {k: v for k, v in config.items() if k not in _HASH_EXCLUDED_CONFIG}
    blob = json.dumps({"plan": numbers, "config": relevant}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


PLAN_TABLE_ROWS = [
    ("gpus", "GPUs"), ("nodes", "nodes"), ("gpus_per_node", "GPUs per node"),
    ("batch_per_gpu", "images per GPU"), ("total_batch_size", "total batch"),
    ("base_lr", "base lr"), ("base_batch_size", "base batch"), ("lr_scaling", "lr scaling"), ("lr", "lr"),
    ("train_images", "train images"), ("iters_per_epoch", "iterations / epoch"), ("epochs", "epochs"),
    ("max_iters", "max iterations"), ("warmup_iters", "warmup iterations"), ("lr_policy", "lr policy"),
    ("milestones_iters", "milestones (iters)"), ("checkpoint_period_iters", "checkpoint every (iters)"),
    ("eval_period_iters", "eval every (iters)"),
]


def lr_derivation(plan: Plan) -> str:
    """How the lr came out of the base lr, for the plan table: ``0.02 × 64 / 16`` (empty for none)."""
    if plan.lr_scaling == "linear":
        return f"{plan.base_lr:g} × {plan.total_batch_size} / {plan.base_batch_size}"
    if plan.lr_scaling == "sqrt":
        return f"{plan.base_lr:g} × sqrt({plan.total_batch_size} / {plan.base_batch_size})"
    return ""


def format_plan(plan: Plan) -> str:
    values = plan.to_dict()
    lines = []
    for key, label in PLAN_TABLE_ROWS:
        value = values[key]
        if key == "milestones_iters" and plan.lr_policy != "multistep":
            value = "-"
        if isinstance(value, float):
            value = f"{value:.6g}"
        line = f"  {label:<26} {value}"
        if key == "lr" and lr_derivation(plan):
            line = f"{line:<42} (= {lr_derivation(plan)})"
        lines.append(line)
    for warning in plan.warnings:
        lines.append(f"  warning: {warning}")
    return "\n".join(lines)
