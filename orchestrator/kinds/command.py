"""Trainer kind ``command``: the user's own program, with orch's numbers in its arguments.

``trainer.argv`` is a list of arguments with ``{placeholder}`` fields (Python format syntax, so
``{lr:.4g}`` works and ``{{`` is a literal brace) filled from the plan: see :data:`PLACEHOLDERS`.
With ``launcher: torchrun`` (the default) ``argv`` is what torchrun runs (``train.py --lr {lr}``)
and orch adds torchrun's flags; ``self`` for a program that starts its own processes, ``single``
for one process. When the run has a checkpoint (``trainer.checkpoint``, a path template,
default ``{output_dir}/last.pt``), ``trainer.resume_args`` are appended, where ``{checkpoint}`` is
that file. The environment holds ``ORCH_PLAN`` (the run's plan.json), ``ORCH_RUN_DIR`` and
``ORCH_OUTPUT_DIR``. Progress is read from ``trainer.metrics_file`` (default
``{output_dir}/metrics.jsonl``): one JSON object per line; ``epoch``, ``iteration``, ``bbox_mAP``
(0-1) and ``eta_s`` are recognised, every other number is shown as a metric.
"""
from __future__ import annotations

import difflib
import json
import os
import string
from typing import Any

from orchestrator import storage
from orchestrator.kinds import base
from orchestrator.kinds.base import KindError, NodeCommand, Progress
from orchestrator.schema import Field

NAME = "command"
KEYS: dict[str, Field] = {
    "argv": Field((list,), doc="the program and its arguments, e.g. [train.py, --lr, '{lr}', --out, '{output_dir}']"),
    "resume_args": Field((list,), default=[], doc="appended when the run has a checkpoint, e.g. [--resume, '{checkpoint}']"),
    "checkpoint": Field((str,), default="{output_dir}/last.pt", doc="the file whose existence means: resume"),
    "launcher": Field((str,), default="torchrun", choices=base.LAUNCHERS,
                      doc="torchrun (orch starts it), self (the program spawns its processes) or single"),
    "cwd": Field((str,), nullable=True, doc="working directory (default: the job's)"),
    "env": Field((dict,), default={}, doc="more environment variables; values may hold placeholders"),
    "metrics_file": Field((str,), default="{output_dir}/metrics.jsonl", doc="JSON lines the program writes"),
}
REQUIRED = ("argv",)
PLAN_PLACEHOLDERS = ("lr", "base_lr", "max_iters", "batch_per_gpu", "total_batch_size", "val_batch_per_gpu",
                     "iters_per_epoch", "warmup_iters", "checkpoint_period_iters", "eval_period_iters",
                     "log_period_iters", "gpus", "nodes", "gpus_per_node", "train_images")
PLACEHOLDERS = (*PLAN_PLACEHOLDERS, "epochs", "node_rank", "run_dir", "output_dir", "plan_file", "seed",
                "num_workers", "train_ann_file", "train_img_dir", "val_ann_file", "val_img_dir", "checkpoint")
RESUME_ONLY = ("checkpoint",)


def output_dir(run_dir: str) -> str:
    return storage.join(run_dir, "output")


def _fields(template: str, where: str) -> list[tuple[str, str]]:
    """(name, format spec) of each placeholder; a malformed template is an error naming the key."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise KindError(f"{where} = {template!r} is not a valid template ({exc}); write a literal brace as "
                        f"{{{{ or }}}}") from None
    return [(name, spec or "") for _text, name, spec, _conv in parsed if name is not None]


def _templates(trainer: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(where, template, may use {checkpoint}) for every string the kind fills in."""
    out = [(f"trainer.argv[{i}]", str(a), False) for i, a in enumerate(trainer["argv"])]
    out += [(f"trainer.resume_args[{i}]", str(a), True) for i, a in enumerate(trainer["resume_args"])]
    out += [(f"trainer.env.{k}", str(v), False) for k, v in trainer["env"].items()]
    out += [("trainer.checkpoint", trainer["checkpoint"], False), ("trainer.metrics_file", trainer["metrics_file"], False)]
    if trainer.get("cwd"):
        out.append(("trainer.cwd", trainer["cwd"], False))
    return out


def check(config: dict[str, Any], plan: dict[str, Any], source: str = "the config") -> None:
    base.check_keys(config.get("trainer") or {}, NAME, KEYS, REQUIRED, source)
    trainer = base.settings(config, KEYS)
    if not trainer["argv"]:
        raise KindError(f"{source}: trainer.argv is empty; give the program and its arguments, e.g. "
                        f"[train.py, --lr, '{{lr}}']")
    if trainer["launcher"] not in base.LAUNCHERS:
        raise KindError(f"{source}: trainer.launcher = {trainer['launcher']!r} is not one of {', '.join(base.LAUNCHERS)}")
    for where, template, resume in _templates(trainer):
        for name, _spec in _fields(template, f"{source}: {where}"):
            if name in RESUME_ONLY and not resume:
                raise KindError(f"{source}: {where} uses {{{name}}}, which exists only in trainer.resume_args "
                                f"(a fresh start has no checkpoint)")
            if name not in PLACEHOLDERS:
                near = difflib.get_close_matches(name, PLACEHOLDERS, n=1, cutoff=0.5)
                hint = f"did you mean {{{near[0]}}}? " if near else ""
                raise KindError(f"{source}: {where} = {template!r} uses the unknown placeholder {{{name}}}; {hint}"
                                f"the placeholders are: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}")
    program = str(trainer["argv"][0]) if trainer["argv"] else ""
    if trainer["launcher"] == "torchrun" and os.path.basename(program).startswith("python"):
        raise KindError(f"{source}: trainer.argv starts with {program!r}, but torchrun runs the script under "
                        f"python itself; drop it (argv: [train.py, ...]), or use launcher: self/single for a "
                        f"whole command")
    if trainer["launcher"] == "single" and plan["gpus"] > 1:
        raise KindError(f"{source}: trainer.launcher = 'single' runs one process, but the plan has {plan['gpus']} GPUs; "
                        f"use launcher: torchrun, or launcher: self when the program starts its own processes")


def values(plan_doc: dict[str, Any], node: dict[str, Any] | None = None, checkpoint: str | None = None) -> dict[str, Any]:
    """What each placeholder stands for in this run (and on this node)."""
    config, plan, run_dir = plan_doc["config"], plan_doc["plan"], plan_doc["run_dir"]
    data = config.get("data") or {}
    train, val = data.get("train") or {}, data.get("val") or {}
    out = {name: plan.get(name) for name in PLAN_PLACEHOLDERS}
    out.update(epochs=base.whole_epochs(plan), node_rank=(node or {}).get("node_rank", 0), run_dir=run_dir,
               output_dir=output_dir(run_dir), plan_file=storage.join(run_dir, "plan.json"),
               seed=config.get("seed", 0), num_workers=data.get("num_workers", 2),
               train_ann_file=train.get("ann_file"), train_img_dir=train.get("img_dir"),
               val_ann_file=val.get("ann_file"), val_img_dir=val.get("img_dir"), checkpoint=checkpoint)
    return out


def fill(template: str, table: dict[str, Any]) -> str:
    """One template filled in: numbers without a format spec as :func:`base.number` writes them."""
    parts = []
    for text, name, spec, conv in string.Formatter().parse(template):
        parts.append(text)
        if name is None:
            continue
        value = table[name]
        if conv:
            value = repr(value) if conv == "r" else str(value)
        parts.append(format(value, spec) if spec else base.value_text(value))
    return "".join(parts)


def node_command(plan_doc: dict[str, Any], node: dict[str, Any], resume_from: str | None = None) -> NodeCommand:
    config, run_dir = plan_doc["config"], plan_doc["run_dir"]
    trainer = base.settings(config, KEYS)
    table = values(plan_doc, node, resume_from)
    argv = [fill(str(a), table) for a in trainer["argv"]]
    if resume_from:
        argv += [fill(str(a), table) for a in trainer["resume_args"]]
    env = {"ORCH_PLAN": table["plan_file"], "ORCH_RUN_DIR": run_dir, "ORCH_OUTPUT_DIR": table["output_dir"]}
    env.update({k: fill(str(v), table) for k, v in trainer["env"].items()})
    cwd = fill(trainer["cwd"], table) if trainer.get("cwd") else None
    return NodeCommand(argv=argv, env=env, cwd=cwd, launcher=trainer["launcher"])


def resume_checkpoint(run_dir: str, plan_doc: dict[str, Any], loadable: base.Loadable | None = None) -> str | None:
    """``trainer.checkpoint`` filled in, when it exists (and loads)."""
    trainer = base.settings(plan_doc["config"], KEYS)
    return base.newest_loadable([fill(trainer["checkpoint"], values({**plan_doc, "run_dir": run_dir}))], loadable)


def progress(run_dir: str, plan_doc: dict[str, Any]) -> Progress:
    plan = plan_doc["plan"]
    trainer = base.settings(plan_doc["config"], KEYS)
    table = values({**plan_doc, "run_dir": run_dir})
    last: dict[str, Any] = {}
    maps: list[float] = []
    for line in base.read_lines(fill(trainer["metrics_file"], table)):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            last.update(record)
            if isinstance(record.get("bbox_mAP"), (int, float)):
                maps.append(record["bbox_mAP"])
    metrics = {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    return Progress(kind=NAME, epoch=last.get("epoch"), max_epochs=table["epochs"], iteration=last.get("iteration"),
                    max_iters=plan["max_iters"], metrics=metrics, bbox_mAP=last.get("bbox_mAP"),
                    best_bbox_mAP=max(maps) if maps else None, eta_s=last.get("eta_s"),
                    latest_checkpoint=resume_checkpoint(run_dir, plan_doc))
