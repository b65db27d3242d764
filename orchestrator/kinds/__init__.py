"""Trainer kinds: what runs on the nodes of a run, behind one seam (STYLE habit 16).

``trainer.kind`` in a config picks one: ``orch`` (the built-in trainer, ``jobs/train.py``; not a
module here) or one of :data:`KINDS`. Nothing outside a kind's module says ``if kind == ...``:
callers look the module up with :func:`get` and use its contract. Every module here is pure and
torch-free; none imports its toolbox (ultralytics is AGPL and only ever runs as a subprocess).

The contract of a kind module (``ultralytics``, ``rtdetr``, ``mmdet``, ``detectron2``, ``command``):

``NAME``, ``KEYS: dict[str, schema.Field]``, ``REQUIRED: tuple[str, ...]``
    The kind's ``trainer:`` keys (besides ``kind``), their types, defaults and docs; the config
    loader validates ``trainer`` against them (``schema.Field(dict, keys=KEYS, required=REQUIRED)``
    fits its checker), or calls :func:`check_trainer`.
``check(config, plan, source="the config") -> None``
    Raises :class:`base.KindError` (an ``OrchError``) for what the toolbox cannot do with this
    config and plan (unknown/missing keys, a key orch sets itself passed through again, ultralytics
    on two nodes, RT-DETR on CPU with more than one process, an ``s3://`` work_dir for a toolbox that
    writes files, an unknown ``{placeholder}``). ``config`` is the resolved config dict, ``plan`` the
    ``Plan.to_dict()``. Call it in ``orch plan``/``orch submit`` before anything is queued.
``node_command(plan_doc, node, resume_from=None) -> base.NodeCommand``
    Pure. ``plan_doc`` is plan.json's dict (``run_dir``, ``plan``, ``config``); ``node`` is
    ``{"node_rank", "nodes", "first_node" (host of rank 0), "port" (this attempt's rendezvous
    port)}``; ``resume_from`` the checkpoint to resume from (from ``resume_checkpoint``), or None
    for a fresh start. ``NodeCommand(argv, env, cwd, launcher, python)``: with ``launcher ==
    "torchrun"`` the job runs ``torchrun <its flags> *argv`` (under ``python -m
    torch.distributed.run`` when ``python`` is set: the toolbox's own environment); with
    ``"self"``/``"single"`` it runs ``argv`` as is, once per node. ``env`` is added to the job's.
    ``orch submit --dry-run`` prints these per node.
``output_dir(run_dir) -> str``
    Where the toolbox writes, inside the run dir (``<run_dir>/<kind>``; ultralytics
    ``<run_dir>/ultralytics/train``, command ``<run_dir>/output``).
``resume_checkpoint(run_dir, plan_doc, loadable=None) -> str | None``
    The toolbox's own newest checkpoint that loads, newest first, skipping torn files.
    ``loadable(url) -> bool`` is injected by the job (a ``torch.load`` in a try); without it a
    file counts when it exists and is not empty. detectron2's ``--resume`` reads ``last_checkpoint``
    only: when its answer differs from what that file names, the job rewrites ``last_checkpoint``.
``progress(run_dir, plan_doc) -> base.Progress``
    Epoch/iteration of max, metrics, bbox mAP (0-1), best mAP, latest checkpoint and ETA where the
    toolbox's own outputs give it, read through :mod:`orchestrator.storage`.
``before_start(run_dir, plan_doc, resume_from)`` (optional; detectron2)
    Called by the job on every node before each start, with the checkpoint it resumes from
    (detectron2: ``last_checkpoint`` is pointed at it).
``prepare_run(plan_doc)`` (ultralytics only, via :func:`prepare_run`)
    Writes what the toolbox needs in the run dir before the job starts (the YOLO dataset view).
"""
from __future__ import annotations

import difflib
from types import ModuleType
from typing import Any

from orchestrator.kinds import command, detectron2, mmdet, rtdetr, ultralytics
from orchestrator.kinds.base import KindError, NodeCommand, Progress

BUILTIN = "orch"
KINDS: dict[str, ModuleType] = {m.NAME: m for m in (ultralytics, rtdetr, mmdet, detectron2, command)}
KIND_NAMES = (BUILTIN, *KINDS)

__all__ = ["BUILTIN", "KINDS", "KIND_NAMES", "KindError", "NodeCommand", "Progress", "check_trainer", "get",
           "prepare_run"]


def get(kind: str, source: str = "the config") -> ModuleType:
    """The module of a toolbox kind; ``orch`` has none (it is the built-in trainer)."""
    if kind in KINDS:
        return KINDS[kind]
    if kind == BUILTIN:
        raise KindError(f"trainer kind 'orch' is the built-in trainer and has no kind module; "
                        f"check trainer.kind before calling orchestrator.kinds.get")
    near = difflib.get_close_matches(str(kind), KIND_NAMES, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    raise KindError(f"{source}: trainer.kind = {kind!r} is not a trainer kind; {hint}"
                    f"the kinds are: {', '.join(KIND_NAMES)}")


def check_trainer(config: dict[str, Any], plan: dict[str, Any], source: str = "the config") -> None:
    """Validate ``config["trainer"]`` for its kind and refuse what the toolbox cannot do."""
    kind = (config.get("trainer") or {}).get("kind", BUILTIN)
    if kind == BUILTIN:
        return
    get(kind, source).check(config, plan, source)


def prepare_run(plan_doc: dict[str, Any]) -> Any:
    """Run-dir files the kind needs before its job starts (at submit); None for kinds that need none."""
    kind = (plan_doc["config"].get("trainer") or {}).get("kind", BUILTIN)
    if kind == BUILTIN:
        return None
    prepare = getattr(get(kind), "prepare_run", None)
    return prepare(plan_doc) if prepare else None
