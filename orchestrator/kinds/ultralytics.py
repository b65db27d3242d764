"""Trainer kind ``ultralytics``: YOLO (v5u/v8/11) through the user's ``ultralytics`` install.

ultralytics is AGPL: the ``orchestrator`` package never imports it. It runs as ``yolo`` or, to save
at the preemption warning (``trainer.save_on_warning``, the default), as ``python -m jobs.ultralytics_train``:
``yolo``'s own entry point plus one callback, in a process of its own in the toolbox's environment.
It trains on one node and spawns its own DDP workers for ``device=0,1,…`` (launcher ``self``).
Where the plan goes: ``epochs`` (whole epochs, rounded up), ``batch`` (the total batch: ultralytics
splits it over the GPUs), ``lr0``, ``optimizer``/``momentum``/``weight_decay``, ``warmup_epochs``,
``save_period`` (checkpoint period in epochs), ``workers``, ``seed``; ``cos_lr``/``lrf`` for a cosine
or constant policy (a multistep policy keeps ultralytics' own linear decay). It validates every
epoch. Outputs go to ``<run_dir>/ultralytics/train`` (``weights/last.pt``, ``results.csv``); the
dataset view (:mod:`orchestrator.kinds.yolo_view`) to ``<run_dir>/ultralytics/data``.
A resume runs ``model=<last.pt> resume=True``: ultralytics restores its own arguments from the
checkpoint and accepts only a few (data, device, workers, save_period) again.
"""
from __future__ import annotations

import csv
import io
from typing import Any

from orchestrator import storage
from orchestrator.kinds import base
from orchestrator.kinds.base import KindError, NodeCommand, Progress
from orchestrator.schema import Field

NAME = "ultralytics"
KEYS: dict[str, Field] = {
    "model": Field((str,), doc="a model yaml (yolo11n.yaml: from scratch) or weights (yolo11n.pt)"),
    "args": Field((dict,), default={}, doc="more yolo key=value arguments, e.g. {imgsz: 640}"),
    "task": Field((str,), default="detect", choices=("detect",), doc="the yolo task"),
    "executable": Field((str,), default="yolo", doc="the yolo command of the environment that has ultralytics"),
    "save_on_warning": Field((bool,), default=True,
                             doc="run yolo through jobs/ultralytics_train.py, whose callback saves last.pt at the "
                                 "preemption warning (false: the plain yolo command)"),
    "python": Field((str,), default="python3",
                    doc="the python of the environment that has ultralytics (with trainer.save_on_warning)"),
}
REQUIRED = ("model",)
RESERVED = {  # yolo argument -> the orch key that sets it
    "data": "data.train / data.val", "epochs": "schedule.epochs", "batch": "data.total_batch_size",
    "lr0": "optimizer.base_lr", "optimizer": "optimizer.name", "momentum": "optimizer.momentum",
    "weight_decay": "optimizer.weight_decay", "warmup_epochs": "schedule.warmup_epochs",
    "save_period": "schedule.checkpoint_every_epochs", "project": "work_dir", "name": "name",
    "exist_ok": "work_dir", "device": "resources.gpus (or resources.use_cpu)", "resume": "`orch resume`",
    "workers": "data.num_workers", "seed": "seed", "model": "trainer.model",
}
OPTIMIZERS = {"sgd": "SGD", "adamw": "AdamW"}


def output_dir(run_dir: str) -> str:
    return storage.join(run_dir, "ultralytics", "train")


def dataset_dir(run_dir: str) -> str:
    return storage.join(run_dir, "ultralytics", "data")


def check(config: dict[str, Any], plan: dict[str, Any], source: str = "the config") -> None:
    trainer = base.checked_settings(config, NAME, KEYS, REQUIRED, RESERVED, "args", source)
    train = (config.get("data") or {}).get("train") or {}
    if not train.get("ann_file") or not train.get("img_dir"):
        raise KindError(f"{source}: trainer kind 'ultralytics' trains on the config's data: set data.train.ann_file "
                        f"and data.train.img_dir (COCO); orch writes the YOLO labels and data.yaml from them")
    if plan["nodes"] > 1:
        raise KindError(f"trainer kind 'ultralytics' trains on one node (it spawns its own DDP workers), but the "
                        f"plan has {plan['nodes']} nodes of {plan['gpus_per_node']} GPUs; use --gpus "
                        f"{plan['gpus_per_node']} or fewer")
    if base.use_cpu(config) and plan["gpus"] > 1:
        raise KindError(f"ultralytics trains on CPU in one process, but resources.use_cpu is set with {plan['gpus']} "
                        f"GPUs; use --gpus 1, or GPUs without resources.use_cpu")


def prepare_run(plan_doc: dict[str, Any]) -> dict[str, Any]:
    """Write the dataset view from the config's ``data:`` section (at submit, before queueing)."""
    from orchestrator.kinds.yolo_view import write_yolo_view

    data = plan_doc["config"]["data"]
    return write_yolo_view(data["train"]["ann_file"], data["train"]["img_dir"], (data.get("val") or {}).get("ann_file"),
                           (data.get("val") or {}).get("img_dir"), dataset_dir(plan_doc["run_dir"]),
                           filter_empty=data.get("filter_empty", True))


def _device(config: dict[str, Any], plan: dict[str, Any]) -> str:
    if base.use_cpu(config):
        return "cpu"
    return ",".join(str(i) for i in range(plan["gpus_per_node"]))


def node_command(plan_doc: dict[str, Any], node: dict[str, Any], resume_from: str | None = None) -> NodeCommand:
    config, plan, run_dir = plan_doc["config"], plan_doc["plan"], plan_doc["run_dir"]
    trainer = base.settings(config, KEYS)
    data_yaml = storage.join(dataset_dir(run_dir), "data.yaml")
    workers = (config.get("data") or {}).get("num_workers", 2)
    env = {"ORCH_PLAN": storage.join(run_dir, "plan.json"), "ORCH_RUN_DIR": run_dir}
    if trainer["save_on_warning"]:   # yolo's own command line, plus orch's callback (one GPU or CPU; see there)
        head = [trainer["python"], "-m", "jobs.ultralytics_train", trainer["task"], "train"]
        env["PYTHONPATH"] = base.ORCH_ROOT   # the launcher appends the job's own PYTHONPATH (jobs/toolbox_job.py)
    else:
        head = [trainer["executable"], trainer["task"], "train"]
    if resume_from:
        pairs = {"model": resume_from, "resume": True, "data": data_yaml, "device": _device(config, plan),
                 "workers": workers, "save_period": base.period_epochs(plan["checkpoint_period_iters"], plan)}
        return NodeCommand(argv=head + base.key_values(pairs), env=env, launcher="self")
    optimizer = config.get("optimizer") or {}
    pairs: dict[str, Any] = {
        "model": trainer["model"], "data": data_yaml, "epochs": base.whole_epochs(plan),
        "batch": plan["total_batch_size"], "lr0": plan["lr"],
        "optimizer": OPTIMIZERS.get(optimizer.get("name", "sgd"), "SGD"),
        "momentum": optimizer.get("momentum", 0.9), "weight_decay": optimizer.get("weight_decay", 0.0001),
        "warmup_epochs": round(plan["warmup_iters"] / plan["iters_per_epoch"], 4),
        "save_period": base.period_epochs(plan["checkpoint_period_iters"], plan),
        "project": storage.parent(output_dir(run_dir)), "name": storage.basename(output_dir(run_dir)),
        "exist_ok": True, "device": _device(config, plan), "workers": workers, "seed": config.get("seed", 0),
    }
    if plan.get("lr_policy") == "cosine":
        pairs.update(cos_lr=True, lrf=max(plan.get("min_lr_ratio", 0.0), 1e-6))
    elif plan.get("lr_policy") == "constant":
        pairs["lrf"] = 1.0
    pairs.update(trainer["args"])  # after orch's numbers, as the user wrote them
    return NodeCommand(argv=head + base.key_values(pairs), env=env, launcher="self")


def checkpoint_candidates(run_dir: str) -> list[str]:
    weights = storage.join(output_dir(run_dir), "weights")
    return [storage.join(weights, "last.pt")] + base.numbered_files(weights, r"epoch(\d+)\.pt")


def resume_checkpoint(run_dir: str, plan_doc: dict[str, Any] | None = None,
                      loadable: base.Loadable | None = None) -> str | None:
    """``weights/last.pt``, or the newest loadable ``epochN.pt`` when last.pt is torn (written in place)."""
    return base.newest_loadable(checkpoint_candidates(run_dir), loadable)


MAP_COLUMN = "metrics/mAP50-95(B)"
MAP50_COLUMN = "metrics/mAP50(B)"


def progress(run_dir: str, plan_doc: dict[str, Any]) -> Progress:
    """From ``results.csv``: one row per finished epoch (epoch 1-based, time = seconds since start)."""
    plan = plan_doc["plan"]
    max_epochs = base.whole_epochs(plan)
    rows = _read_results(storage.join(output_dir(run_dir), "results.csv"))
    latest = resume_checkpoint(run_dir, plan_doc)
    if not rows:
        return Progress(kind=NAME, epoch=0, max_epochs=max_epochs, iteration=0,
                        max_iters=max_epochs * plan["iters_per_epoch"], latest_checkpoint=latest)
    last = rows[-1]
    epoch = int(last.get("epoch", len(rows)))
    maps = [r[MAP_COLUMN] for r in rows if MAP_COLUMN in r]
    return Progress(
        kind=NAME, epoch=epoch, max_epochs=max_epochs, iteration=epoch * plan["iters_per_epoch"],
        max_iters=max_epochs * plan["iters_per_epoch"],
        metrics={**last, **({"bbox_mAP_50": last[MAP50_COLUMN]} if MAP50_COLUMN in last else {})},
        bbox_mAP=last.get(MAP_COLUMN), best_bbox_mAP=max(maps) if maps else None, latest_checkpoint=latest,
        eta_s=_eta_s(rows, max_epochs),
    )


def _eta_s(rows: list[dict[str, float]], max_epochs: int) -> float | None:
    """The rate of the current start only: ``time`` counts from each (re)start, so it drops at a resume."""
    start = 0
    for i in range(1, len(rows)):
        if rows[i].get("time", 0.0) < rows[i - 1].get("time", 0.0):
            start = i
    done_before = rows[start].get("epoch", start + 1) - 1  # epochs done when this start began
    last = rows[-1]
    return base.eta_from_rate(last.get("epoch", len(rows)) - done_before, max_epochs - done_before,
                              last.get("time", 0.0))


def _read_results(url: str) -> list[dict[str, float]]:
    lines = base.read_lines(url)
    if not lines:
        return []
    rows = []
    for record in csv.DictReader(io.StringIO("\n".join(lines))):
        row = {}
        for key, value in record.items():
            if key is None or value is None:
                continue
            try:
                row[key.strip()] = float(value)
            except ValueError:
                continue
        if row:
            rows.append(row)
    return rows
