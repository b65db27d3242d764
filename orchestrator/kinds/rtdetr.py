"""Trainer kind ``rtdetr``: a checkout of the official RT-DETR / RT-DETRv2 code (lyuwenyu/RT-DETR).

Runs ``tools/train.py -c CONFIG -u key=value … --output-dir <run_dir>/rtdetr`` in ``trainer.root``;
one process without torchrun (launcher ``single``), else under torchrun. Where the plan goes
(``-u`` keys of its YAML config): ``epoches`` (sic; whole epochs, rounded up),
``train_dataloader.total_batch_size`` / ``val_dataloader.total_batch_size`` (the code splits them
over the world size), ``optimizer.lr`` (the base group; param groups with their own ``lr`` in the
config keep it), ``lr_warmup_scheduler.warmup_duration`` (iterations), ``checkpoint_freq`` (epochs),
``print_freq``, the workers and, when ``data.train`` is set, the COCO files and image folders.
``--seed``; ``-t`` for ``model.init_checkpoint`` on a fresh start, ``-r`` on resume (never both:
the code refuses that); ``-d cpu`` with ``resources.use_cpu``. Its own LR schedule
(``lr_scheduler``, per epoch) is left as the config has it.

It writes ``last.pth`` every epoch with a plain ``torch.save`` (not atomic), ``checkpointNNNN.pth``
(0-based epoch) every ``checkpoint_freq`` epochs and ``log.txt`` (one JSON object per epoch, with
``test_coco_eval_bbox`` = the 12 COCO stats). Under torchrun on CPU it fails in its DDP wrapper,
so more than one process needs GPUs.
"""
from __future__ import annotations

import json
from typing import Any

from orchestrator import storage
from orchestrator.kinds import base
from orchestrator.kinds.base import KindError, NodeCommand, Progress
from orchestrator.schema import Field

NAME = "rtdetr"
KEYS: dict[str, Field] = {
    "root": Field((str,), doc="the RT-DETR checkout (the folder holding tools/train.py), e.g. ~/RT-DETR/rtdetrv2_pytorch"),
    "config": Field((str,), doc="its YAML config, relative to trainer.root or absolute"),
    "args": Field((dict,), default={}, doc="more -u key=value overrides, e.g. {eval_spatial_size: [320, 320]}"),
    "num_classes": Field((int,), nullable=True,
                         doc="highest category id + 1 (the code uses category ids as labels); needed with data.train"),
    "python": Field((str,), default="python3", doc="the python of the environment that has the RT-DETR requirements"),
}
REQUIRED = ("root", "config")
RESERVED = {
    "epoches": "schedule.epochs", "train_dataloader.total_batch_size": "data.total_batch_size",
    "train_dataloader.batch_size": "data.batch_per_gpu", "val_dataloader.total_batch_size": "data.val_batch_per_gpu",
    "optimizer.lr": "optimizer.base_lr", "checkpoint_freq": "schedule.checkpoint_every_epochs",
    "lr_warmup_scheduler.warmup_duration": "schedule.warmup_iters", "output_dir": "work_dir",
    "train_dataloader.dataset.ann_file": "data.train.ann_file", "train_dataloader.dataset.img_folder": "data.train.img_dir",
    "val_dataloader.dataset.ann_file": "data.val.ann_file", "val_dataloader.dataset.img_folder": "data.val.img_dir",
    "num_classes": "trainer.num_classes", "seed": "seed", "resume": "`orch resume`", "tuning": "model.init_checkpoint",
}


def output_dir(run_dir: str) -> str:
    return storage.join(run_dir, "rtdetr")


def check(config: dict[str, Any], plan: dict[str, Any], source: str = "the config") -> None:
    trainer = base.checked_settings(config, NAME, KEYS, REQUIRED, RESERVED, "args", source)
    if base.use_cpu(config) and plan["gpus"] > 1:
        raise KindError(f"the official RT-DETR code fails under torchrun on CPU (its DDP wrapper passes GPU device "
                        f"ids), but resources.use_cpu is set with {plan['gpus']} processes; use --gpus 1 on CPU, "
                        f"or GPUs without resources.use_cpu")
    train = (config.get("data") or {}).get("train") or {}
    if train.get("ann_file") and not trainer.get("num_classes"):
        raise KindError(f"{source}: trainer kind 'rtdetr' with data.train needs trainer.num_classes: the official "
                        f"code uses COCO category ids as labels (remap_mscoco_category off), so set it to the highest "
                        f"category id + 1 (e.g. 4 for ids 1..3)")


def _update_pairs(config: dict[str, Any], plan: dict[str, Any], trainer: dict[str, Any]) -> dict[str, Any]:
    data = config.get("data") or {}
    workers = data.get("num_workers", 2)
    pairs: dict[str, Any] = {
        "epoches": base.whole_epochs(plan),
        "train_dataloader.total_batch_size": plan["total_batch_size"],
        "val_dataloader.total_batch_size": plan.get("val_batch_per_gpu", plan["batch_per_gpu"]) * plan["gpus"],
        "optimizer.lr": plan["lr"],
        "lr_warmup_scheduler.warmup_duration": plan["warmup_iters"],
        "checkpoint_freq": base.period_epochs(plan["checkpoint_period_iters"], plan),
        "print_freq": plan.get("log_period_iters", 20),
        "train_dataloader.num_workers": workers, "val_dataloader.num_workers": workers,
    }
    train, val = data.get("train") or {}, data.get("val") or {}
    if train.get("ann_file"):
        val = val if val.get("ann_file") else train
        pairs.update({
            "train_dataloader.dataset.img_folder": train["img_dir"], "train_dataloader.dataset.ann_file": train["ann_file"],
            "val_dataloader.dataset.img_folder": val["img_dir"], "val_dataloader.dataset.ann_file": val["ann_file"],
            "num_classes": trainer["num_classes"], "remap_mscoco_category": False,
        })
    pairs.update(trainer["args"])
    return pairs


def _yaml_value(value: Any) -> str:
    """A ``-u`` value as the code reads it back with yaml.load (YAML 1.1): ``null``/``true``, floats
    with a dot (``1e-05`` alone is a string to YAML), flow lists and mappings, and a string that
    YAML would read as something else (``yes``, a path holding ``': '``) as a JSON string."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        if "e" in text and "." not in text.split("e")[0]:
            mantissa, exponent = text.split("e")
            text = f"{mantissa}.0e{exponent if exponent[0] in '+-' else '+' + exponent}"
        return text
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml_value(str(k))}: {_yaml_value(v)}" for k, v in value.items()) + "}"
    import yaml  # lazy: only rendering a command needs it

    text = str(value)
    try:
        same = yaml.safe_load(text) == text
    except yaml.YAMLError:
        same = False
    return text if same and text.strip() == text and not text.startswith(("{", "[")) else json.dumps(text)


def node_command(plan_doc: dict[str, Any], node: dict[str, Any], resume_from: str | None = None) -> NodeCommand:
    config, plan, run_dir = plan_doc["config"], plan_doc["plan"], plan_doc["run_dir"]
    trainer = base.settings(config, KEYS)
    root = storage.absolute(trainer["root"])
    args = ["tools/train.py", "-c", storage.absolute(trainer["config"], root),
            "-u", *[f"{k}={_yaml_value(v)}" for k, v in _update_pairs(config, plan, trainer).items()],
            "--output-dir", output_dir(run_dir), "--seed", str(config.get("seed", 0))]
    init = (config.get("model") or {}).get("init_checkpoint")
    if resume_from:
        args += ["-r", resume_from]
    elif init:
        args += ["-t", init]
    if base.use_cpu(config):
        args += ["-d", "cpu"]
    env = {"ORCH_PLAN": storage.join(run_dir, "plan.json"), "ORCH_RUN_DIR": run_dir}
    if plan["gpus"] == 1:
        return NodeCommand(argv=[trainer["python"], *args], env=env, cwd=root, launcher="single")
    return NodeCommand(argv=args, env=env, cwd=root, launcher="torchrun", python=trainer["python"])


def checkpoint_candidates(run_dir: str) -> list[str]:
    out = output_dir(run_dir)
    return [storage.join(out, "last.pth")] + base.numbered_files(out, r"checkpoint(\d+)\.pth")


def resume_checkpoint(run_dir: str, plan_doc: dict[str, Any] | None = None,
                      loadable: base.Loadable | None = None) -> str | None:
    """``last.pth`` when it loads, else the newest ``checkpointNNNN.pth`` that does (a kill during the
    in-place write of last.pth leaves it torn). ``loadable`` is the job's torch-based check."""
    return base.newest_loadable(checkpoint_candidates(run_dir), loadable)


STAT_NAMES = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l")


def progress(run_dir: str, plan_doc: dict[str, Any]) -> Progress:
    """From ``log.txt``: ``{"train_lr", "train_loss", …, "test_coco_eval_bbox": [12 stats], "epoch" (0-based)}``."""
    plan = plan_doc["plan"]
    max_epochs = base.whole_epochs(plan)
    records = []
    for line in base.read_lines(storage.join(output_dir(run_dir), "log.txt")):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    latest = base.newest_loadable(checkpoint_candidates(run_dir), None)
    if not records:
        return Progress(kind=NAME, epoch=0, max_epochs=max_epochs, iteration=0,
                        max_iters=max_epochs * plan["iters_per_epoch"], latest_checkpoint=latest)
    last = records[-1]
    epochs_done = last["epoch"] + 1
    metrics = {k: v for k, v in last.items() if isinstance(v, (int, float)) and k != "n_parameters"}
    stats = last.get("test_coco_eval_bbox") or []
    metrics.update({name: value for name, value in zip(STAT_NAMES, stats)})
    maps = [r["test_coco_eval_bbox"][0] for r in records if r.get("test_coco_eval_bbox")]
    return Progress(kind=NAME, epoch=epochs_done, max_epochs=max_epochs, iteration=epochs_done * plan["iters_per_epoch"],
                    max_iters=max_epochs * plan["iters_per_epoch"], metrics=metrics,
                    bbox_mAP=stats[0] if stats else None, best_bbox_mAP=max(maps) if maps else None,
                    latest_checkpoint=latest)
