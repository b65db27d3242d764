"""What every job kind returns, and the small pure helpers the kinds share.

A kind never runs anything: it turns orch's plan into a :class:`NodeCommand` per node, names the
toolbox's own newest loadable checkpoint, and reads the toolbox's own progress files back as a
:class:`Progress`. Reading goes through :mod:`orchestrator.storage`; nothing here imports torch
or a toolbox.
"""
from __future__ import annotations

import copy
import difflib
import math
import os
import posixpath
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from orchestrator import storage
from orchestrator.errors import OrchError
from orchestrator.schema import Field

LAUNCHERS = ("torchrun", "self", "single")
# orch's checkout (it holds jobs/): the toolbox's python imports orch's hooks from here (PYTHONPATH)
ORCH_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A callable that says whether a checkpoint file can be loaded (the job passes one built on
# torch.load; without one, a file counts when it exists and is not empty).
Loadable = Callable[[str], bool]


class KindError(OrchError):
    """A trainer setting the toolbox cannot run; the message names the key, the value and the fix."""


@dataclass(frozen=True)
class NodeCommand:
    """What one node runs.

    ``launcher``: ``"torchrun"`` — ``argv`` is what follows torchrun's own flags (a script and its
    arguments), the launcher adds ``--nproc-per-node``/``--nnodes``/rendezvous; ``"self"`` — ``argv``
    is the whole command and the toolbox spawns its own per-GPU processes; ``"single"`` — ``argv``
    is the whole command of one process. ``python``: for ``"torchrun"``, the interpreter of the
    toolbox's environment that torchrun must run under (``python -m torch.distributed.run``), or
    None for the job's own.
    """
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    launcher: str = "single"
    python: str | None = None
    # the module the launcher runs as torchrun's agent: ``jobs.torchrun_wrapper`` keeps the agent alive through
    # the warning (the workers save and exit EXIT_REQUEUE); needs orch's checkout on the toolbox's PYTHONPATH
    agent: str = "torch.distributed.run"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Progress:
    """A toolbox's progress as ``orch status`` shows it; mAP values on orch's 0-1 scale."""
    kind: str
    epoch: int | None = None
    max_epochs: int | None = None
    iteration: int | None = None
    max_iters: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    bbox_mAP: float | None = None
    best_bbox_mAP: float | None = None
    latest_checkpoint: str | None = None
    eta_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def status_fields(self) -> dict[str, Any]:
        """The keys of orch's own ``status.json`` that ``orch status`` shows, filled from the toolbox."""
        evals = {k: v for k, v in self.metrics.items() if k.startswith("bbox_mAP")}
        if self.bbox_mAP is not None:
            evals["bbox_mAP"] = self.bbox_mAP
        return {"iteration": self.iteration or 0, "max_iters": self.max_iters or 0, "epoch": self.epoch,
                "max_epochs": self.max_epochs, "eta_s": self.eta_s,
                "metrics": {k: v for k, v in self.metrics.items() if k not in evals}, "eval": evals,
                "best_bbox_mAP": self.best_bbox_mAP, "latest_checkpoint": self.latest_checkpoint}


def settings(config: dict[str, Any], keys: dict[str, Field]) -> dict[str, Any]:
    """``config["trainer"]`` with the kind's defaults filled in (the loader may have done it already)."""
    trainer = dict(config.get("trainer") or {})
    for key, spec in keys.items():
        if trainer.get(key) is None:
            trainer[key] = copy.deepcopy(spec.default)
    return trainer


def check_keys(trainer: dict[str, Any], kind: str, keys: dict[str, Field], required: Iterable[str] = (),
               source: str = "the config") -> None:
    """Unknown keys (with a did-you-mean), missing required keys and wrong types, one error each."""
    for key, value in trainer.items():
        if key == "kind":
            continue
        if key not in keys:
            near = difflib.get_close_matches(key, list(keys), n=1)
            hint = f"did you mean trainer.{near[0]}? " if near else ""
            raise KindError(f"{source}: trainer.{key} is not a key of trainer kind {kind!r}; {hint}"
                            f"the keys are: {', '.join(sorted(keys))}")
        spec = keys[key]
        if value is None and (spec.nullable or spec.default is None):
            continue
        if not isinstance(value, spec.types) or (isinstance(value, bool) and bool not in spec.types):
            names = " or ".join(t.__name__ for t in spec.types)
            raise KindError(f"{source}: trainer.{key} = {value!r} must be a {names} ({spec.doc or kind})")
        if spec.choices and value not in spec.choices:
            near = difflib.get_close_matches(str(value), [str(c) for c in spec.choices], n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise KindError(f"{source}: trainer.{key} = {value!r} is not one of {', '.join(map(str, spec.choices))}; "
                            f"{hint}({spec.doc})")
    for key in required:
        if trainer.get(key) in (None, "", []):
            raise KindError(f"{source}: trainer kind {kind!r} needs trainer.{key} ({keys[key].doc})")


def require_local_work_dir(config: dict[str, Any], kind: str, source: str = "the config") -> None:
    """The toolboxes write with plain ``open()``: their output dir must be a file system path."""
    work_dir = str(config.get("work_dir") or "runs/")
    if not storage.is_local(work_dir):
        raise KindError(f"{source}: work_dir = {work_dir} is a {storage.protocol(work_dir)}:// URL, but trainer kind "
                        f"{kind!r} writes its outputs with plain file I/O; set work_dir to a local or NAS path "
                        f"(e.g. work_dir: /nfs/runs/)")


def use_cpu(config: dict[str, Any]) -> bool:
    return bool((config.get("resources") or {}).get("use_cpu"))


def whole_epochs(plan: dict[str, Any]) -> int:
    """Epoch-based toolboxes train whole epochs: a fractional plan is rounded up."""
    return max(1, math.ceil(plan["max_iters"] / plan["iters_per_epoch"] - 1e-9))


def period_epochs(period_iters: int, plan: dict[str, Any]) -> int:
    """An iteration period as whole epochs (at least 1), for toolboxes that count in epochs."""
    return max(1, round(period_iters / plan["iters_per_epoch"]))


def number(value: float) -> str:
    """A number as a toolbox's command line takes it: integers plain, floats without noise."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        return str(int(value))
    return f"{value:.10g}"


def value_text(value: Any) -> str:
    """A ``key=value`` right-hand side: numbers as :func:`number`, lists/bools in YAML/Python literal form."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (int, float)):
        return number(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(value_text(v) for v in value) + "]"
    return str(value)


def key_values(pairs: dict[str, Any]) -> list[str]:
    return [f"{key}={value_text(value)}" for key, value in pairs.items()]


def newest_loadable(candidates: Iterable[str], loadable: Loadable | None) -> str | None:
    """The first candidate (newest first) that exists and loads; a torn file is skipped."""
    for url in candidates:
        if not storage.exists(url):
            continue
        if loadable is not None:
            if loadable(url):
                return url
            continue
        if (storage.info(url).get("size") or 0) > 0:
            return url
    return None


def numbered_files(folder: str, pattern: str) -> list[str]:
    """URLs of the files in ``folder`` whose name matches ``pattern`` (one integer group), highest number first."""
    regex = re.compile(pattern)
    try:
        names = [posixpath.basename(p) for p in storage.listdir(folder)]
    except FileNotFoundError:
        return []
    found = [(int(m.group(1)), name) for name in names if (m := regex.fullmatch(name))]
    return [storage.join(folder, name) for _, name in sorted(found, reverse=True)]


def checked_settings(config: dict[str, Any], kind: str, keys: dict[str, Field], required: Iterable[str],
                     reserved: dict[str, str], passthrough: str, source: str) -> dict[str, Any]:
    """A toolbox kind's common checks: its keys (did-you-mean), a local work_dir, and no key of its
    pass-through mapping (``trainer.<passthrough>``) that orch sets from its plan. Returns the settings."""
    check_keys(config.get("trainer") or {}, kind, keys, required, source)
    require_local_work_dir(config, kind, source)
    trainer = settings(config, keys)
    refuse_reserved(trainer[passthrough], reserved, f"{source}: trainer.{passthrough}", kind)
    return trainer


def refuse_reserved(user_keys: Iterable[str], reserved: dict[str, str], where: str, kind: str) -> None:
    """A toolbox key that orch sets from its plan may not be set again in the pass-through keys."""
    for key in user_keys:
        if key in reserved:
            raise KindError(f"{where}: {key} is set by orch from its plan for trainer kind {kind!r}; "
                            f"remove it and set {reserved[key]} instead")


def read_lines(url: str) -> list[str]:
    """The complete lines of a file that a toolbox appends to (a half-written last line is left out)."""
    try:
        text = storage.read_text(url)
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    return [line for line in lines[:-1] if line.strip()]  # the part after the last newline may be torn


def eta_from_rate(done: float, total: float, elapsed_s: float) -> float | None:
    if not done or elapsed_s <= 0 or total <= done:
        return 0.0 if total and done >= total else None
    return elapsed_s / done * (total - done)
