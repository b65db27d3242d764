"""Trainer kind ``detectron2``: detectron2 / detrex LazyConfig training (``train_net.py``).

Runs ``SCRIPT --config-file CONFIG --num-gpus G --num-machines N --machine-rank R --dist-url
tcp://FIRST_NODE:PORT [--resume] key=value …`` in ``trainer.root``; detectron2's ``launch`` spawns
one process per GPU itself (launcher ``self``). Where the plan goes (LazyConfig overrides, the
numbers a detrex user computes by hand): ``train.max_iter``, ``train.eval_period``,
``train.checkpointer.period``, ``train.log_period``, ``optimizer.lr``,
``dataloader.train.total_batch_size``, ``dataloader.train.num_workers``, ``train.output_dir``,
``train.seed``, ``lr_multiplier.warmup_length`` (a fraction of max_iter, as detectron2's
WarmupParamScheduler takes it) and ``train.device=cpu`` with ``resources.use_cpu``. The
config's step schedule (``lr_multiplier.scheduler``) is left as it is.

detectron2 writes ``<output_dir>/last_checkpoint`` (the file name of the newest
``model_NNNNNNN.pth``; ``--resume`` loads it) and ``metrics.json`` (one JSON object per line:
``iteration``, losses, ``lr``, ``eta_seconds``; eval lines with ``bbox/AP`` in percent).
"""
from __future__ import annotations

import json
from typing import Any

from orchestrator import storage
from orchestrator.kinds import base
from orchestrator.kinds.base import KindError, NodeCommand, Progress
from orchestrator.schema import Field

NAME = "detectron2"
KEYS: dict[str, Field] = {
    "root": Field((str,), doc="the detectron2 / detrex checkout the script runs in"),
    "config": Field((str,), doc="the LazyConfig (.py), relative to trainer.root or absolute"),
    "overrides": Field((dict,), default={}, doc="more LazyConfig overrides, e.g. {model.num_classes: 3}"),
    "script": Field((str,), default="tools/train_net.py",
                    doc="the training script, relative to trainer.root (detectron2: tools/lazyconfig_train_net.py)"),
    "python": Field((str,), default="python3", doc="the python of the environment that has detectron2"),
}
REQUIRED = ("root", "config")
RESERVED = {
    "train.max_iter": "schedule.max_iters (or schedule.epochs)", "train.eval_period": "schedule.eval_every_iters",
    "train.checkpointer.period": "schedule.checkpoint_every_iters", "optimizer.lr": "optimizer.base_lr",
    "dataloader.train.total_batch_size": "data.total_batch_size", "train.output_dir": "work_dir",
    "train.seed": "seed", "train.log_period": "schedule.log_every_iters",
    "lr_multiplier.warmup_length": "schedule.warmup_iters", "train.device": "resources.use_cpu",
}


def output_dir(run_dir: str) -> str:
    return storage.join(run_dir, "detectron2")


def check(config: dict[str, Any], plan: dict[str, Any], source: str = "the config") -> None:
    trainer = base.checked_settings(config, NAME, KEYS, REQUIRED, RESERVED, "overrides", source)
    if base.use_cpu(config) and plan["gpus"] > 1:
        raise KindError(f"detectron2's launch starts NCCL processes, which need GPUs, but resources.use_cpu is set "
                        f"with {plan['gpus']} processes; use --gpus 1 on CPU, or GPUs without resources.use_cpu")


def _overrides(config: dict[str, Any], plan: dict[str, Any], trainer: dict[str, Any], run_dir: str) -> dict[str, Any]:
    pairs: dict[str, Any] = {
        "train.max_iter": plan["max_iters"], "train.eval_period": plan["eval_period_iters"],
        "train.checkpointer.period": plan["checkpoint_period_iters"], "train.log_period": plan.get("log_period_iters", 20),
        "optimizer.lr": plan["lr"], "dataloader.train.total_batch_size": plan["total_batch_size"],
        "dataloader.train.num_workers": (config.get("data") or {}).get("num_workers", 2),
        "train.output_dir": output_dir(run_dir), "train.seed": config.get("seed", 0),
    }
    if plan["max_iters"] and plan.get("warmup_iters"):
        pairs["lr_multiplier.warmup_length"] = round(plan["warmup_iters"] / plan["max_iters"], 8)
    if base.use_cpu(config):
        pairs["train.device"] = "cpu"
    pairs.update(trainer["overrides"])
    return pairs


def node_command(plan_doc: dict[str, Any], node: dict[str, Any], resume_from: str | None = None) -> NodeCommand:
    """``node``: ``node_rank``, ``first_node`` (host) and ``port`` (the rendezvous port of this attempt)."""
    config, plan, run_dir = plan_doc["config"], plan_doc["plan"], plan_doc["run_dir"]
    trainer = base.settings(config, KEYS)
    root = storage.absolute(trainer["root"])
    host = "127.0.0.1" if plan["nodes"] == 1 else node["first_node"]
    argv = [trainer["python"], trainer["script"], "--config-file", storage.absolute(trainer["config"], root),
            "--num-gpus", str(plan["gpus_per_node"]), "--num-machines", str(plan["nodes"]),
            "--machine-rank", str(node.get("node_rank", 0)), "--dist-url", f"tcp://{host}:{node['port']}"]
    if resume_from:
        argv.append("--resume")  # detectron2 resumes from what last_checkpoint names (see resume_checkpoint)
    argv += base.key_values(_overrides(config, plan, trainer, run_dir))
    env = {"ORCH_PLAN": storage.join(run_dir, "plan.json"), "ORCH_RUN_DIR": run_dir}
    return NodeCommand(argv=argv, env=env, cwd=root, launcher="self")


def checkpoint_candidates(run_dir: str) -> list[str]:
    out = output_dir(run_dir)
    try:
        recorded = storage.read_text(storage.join(out, "last_checkpoint")).strip()
    except FileNotFoundError:
        recorded = ""
    named = [storage.join(out, storage.basename(recorded))] if recorded else []
    numbered = base.numbered_files(out, r"model_(\d+)\.pth")
    return named + [url for url in numbered if url not in named]


def resume_checkpoint(run_dir: str, plan_doc: dict[str, Any] | None = None,
                      loadable: base.Loadable | None = None) -> str | None:
    """What ``last_checkpoint`` names, else the newest loadable ``model_NNNNNNN.pth``.

    ``--resume`` loads only what ``last_checkpoint`` names: when this returns another file, the
    job must write that file's name into ``last_checkpoint`` before starting.
    """
    return base.newest_loadable(checkpoint_candidates(run_dir), loadable)


def before_start(run_dir: str, plan_doc: dict[str, Any], resume_from: str | None) -> None:
    """Point ``last_checkpoint`` at ``resume_from`` (``--resume`` loads only what it names), when it names another file."""
    if not resume_from:
        return
    url = storage.join(output_dir(run_dir), "last_checkpoint")
    try:
        recorded = storage.read_text(url).strip()
    except FileNotFoundError:
        recorded = ""
    if recorded != storage.basename(resume_from):
        storage.write_text(url, storage.basename(resume_from))


def progress(run_dir: str, plan_doc: dict[str, Any]) -> Progress:
    plan = plan_doc["plan"]
    train_line: dict[str, Any] = {}
    evals: list[dict[str, Any]] = []
    for line in base.read_lines(storage.join(output_dir(run_dir), "metrics.json")):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if "bbox/AP" in record:
            evals.append(record)
        if "total_loss" in record or "lr" in record:
            train_line = record
    metrics = {k: v for k, v in train_line.items() if isinstance(v, (int, float))}
    bbox_mAP = best = None
    if evals:
        names = {"bbox/AP": "bbox_mAP", "bbox/AP50": "bbox_mAP_50", "bbox/AP75": "bbox_mAP_75",
                 "bbox/APs": "bbox_mAP_s", "bbox/APm": "bbox_mAP_m", "bbox/APl": "bbox_mAP_l"}
        metrics.update({ours: evals[-1][theirs] / 100 for theirs, ours in names.items()
                        if isinstance(evals[-1].get(theirs), (int, float))})
        bbox_mAP = evals[-1]["bbox/AP"] / 100  # detectron2 reports percent
        best = max(r["bbox/AP"] for r in evals) / 100
    # "iteration" is detectron2's 0-based step: the count of finished iterations is one more
    iteration = max([int(r["iteration"]) + 1 for r in (train_line, *evals[-1:]) if "iteration" in r] or [0])
    return Progress(kind=NAME, iteration=iteration, max_iters=plan["max_iters"], metrics=metrics, bbox_mAP=bbox_mAP,
                    best_bbox_mAP=best, eta_s=train_line.get("eta_seconds"),
                    latest_checkpoint=base.newest_loadable(checkpoint_candidates(run_dir), None))
