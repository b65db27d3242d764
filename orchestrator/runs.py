"""Run dirs and their records: plan a config, create a run dir, find, list and read runs.

A run dir lives under ``work_dir`` (any fsspec URL); its files are described in docs/design.md.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import yaml

from orchestrator import cocofile, planner, storage
from orchestrator import config as config_mod
from orchestrator.errors import OrchError

PLAN_FILE = "plan.json"
CONFIG_FILE = "config.yml"
SUBMISSIONS_FILE = "submissions.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
# Checkpoint layout (jobs/checkpoint.py writes it): iter_<9 digits>.pth counts once <name>.done exists.
CHECKPOINT_DIRNAME = "checkpoints"
CHECKPOINT_RE = re.compile(r"^iter_(\d{9})\.pth$")
MARKER_SUFFIX = ".done"
PLAN_KEYS = (("run_name", str), ("plan", dict), ("config", dict))   # what every reader of plan.json needs
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def format_eta(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    text = str(dt.timedelta(seconds=rest))
    return f"{days} day, {text}" if days else text


def complete_checkpoints(names: list[str]) -> list[tuple[int, str]]:
    """(iteration, name) of the periodic checkpoints among ``names`` whose marker is there too, oldest first."""
    present = set(names)
    return sorted((int(m.group(1)), name) for name in names
                  if (m := CHECKPOINT_RE.match(name)) and name + MARKER_SUFFIX in present)


def latest_checkpoint(run_dir: str) -> str | None:
    """URL of the newest complete periodic checkpoint of a run (torch-free, for `orch status`)."""
    ckpt_dir = storage.join(run_dir, CHECKPOINT_DIRNAME)
    complete = complete_checkpoints(storage.listdir(ckpt_dir))
    return storage.join(ckpt_dir, complete[-1][1]) if complete else None


def build_plan(config: dict[str, Any], gpus: int | None = None, train_images: int | None = None) -> planner.Plan:
    """Read what the planner needs (the training-set size) and call it."""
    if train_images is None:
        ann_file = config["data"]["train"]["ann_file"]
        if not ann_file:
            raise OrchError("data.train.ann_file is not set; point it at a COCO json "
                            "(or pass --train-images N to plan without data)")
        if not storage.exists(ann_file):
            raise OrchError(f"data.train.ann_file {ann_file} does not exist; point it at your COCO json "
                            "(override: data.train.ann_file=PATH), or plan without data: --train-images N")
        train_images = cocofile.count_train_images(ann_file, config["data"]["filter_empty"])
        if train_images < 1:
            raise OrchError(f"data.train.ann_file {ann_file} has no image to train on"
                            + (" (data.filter_empty drops every image without a usable box)"
                               if config["data"]["filter_empty"] else "")
                            + f"; check it with `orch data check {ann_file}`")
    plan = planner.make_plan(config, train_images, gpus=gpus)
    from orchestrator import kinds  # a toolbox's refusals (one node, no CPU torchrun, ...) before anything is queued

    kinds.check_trainer(config, plan.to_dict())
    return plan


def check_run_name(name: str) -> str:
    if not RUN_NAME_RE.match(name):
        raise OrchError(f"run name {name!r} is not valid: use letters, digits, '.', '_' and '-' "
                        "(at most 128, starting with a letter or digit)")
    return name


def new_run_name(prefix: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now()
    return check_run_name(f"{prefix}-{now.strftime('%Y%m%d-%H%M%S')}")


def plan_document(run_name: str, run_dir: str, plan: planner.Plan, config: dict[str, Any],
                  sweep: dict[str, Any] | None = None) -> dict[str, Any]:
    """plan.json: the single input of the training job.

    A sweep's point also carries ``"sweep": {"name", "point", "params"}`` (the swept keys and
    this point's values), which the job logs as TensorBoard hparams.
    """
    plan_dict = plan.to_dict()
    safe_config = config_mod.redact_secrets(config)
    doc = {
        "version": 1,
        "run_name": run_name,
        "run_dir": run_dir,
        "plan_hash": planner.plan_hash(plan_dict, config),
        "plan": plan_dict,
        "config": safe_config,
    }
    if sweep is not None:
        doc["sweep"] = sweep
    return doc


def create_run_dir(work_dir: str, run_name: str, plan: planner.Plan, config: dict[str, Any],
                   sweep: dict[str, Any] | None = None) -> dict[str, Any]:
    """Create ``<work_dir>/<run_name>`` with config.yml, plan.json and the kind's own files; refuse to overwrite a run."""
    run_dir = storage.join(work_dir, check_run_name(run_name))
    if storage.exists(storage.join(run_dir, PLAN_FILE)):
        raise OrchError(f"run {run_dir} already exists; pick another --name or `orch resume {run_name}`")
    doc = plan_document(run_name, run_dir, plan, config, sweep=sweep)
    storage.makedirs(run_dir)
    storage.write_text(storage.join(run_dir, CONFIG_FILE), _config_yaml(doc["config"]))
    write_json(storage.join(run_dir, PLAN_FILE), doc)
    from orchestrator import kinds

    kinds.prepare_run(doc)  # what a toolbox needs in the run dir before its job starts (ultralytics: the YOLO view)
    return doc


_SECTION_YAML: dict[str, str] = {}   # JSON of one top-level section → its YAML text


def _config_yaml(config: dict[str, Any]) -> str:
    """config.yml text, as config.to_yaml writes it, built section by section with a cache.

    A sweep writes a thousand configs that differ in a key or two: the YAML representer is the slow
    part (pure Python), so each top-level section is dumped once and reused (libyaml when present).
    """
    fast = getattr(yaml, "__with_libyaml__", False)
    parts = []
    for key, value in config.items():
        cache_key = json.dumps([key, value], sort_keys=True, default=repr)
        text = _SECTION_YAML.get(cache_key)
        if text is None:
            text = (yaml.dump({key: value}, Dumper=yaml.CSafeDumper, sort_keys=False, default_flow_style=False)
                    if fast else config_mod.to_yaml({key: value}))
            if len(_SECTION_YAML) > 1024:
                _SECTION_YAML.clear()
            _SECTION_YAML[cache_key] = text
        parts.append(text)
    return "".join(parts) if parts else config_mod.to_yaml(config)


def write_json(url: str, data: Any) -> None:
    storage.write_text(url, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(url: str, default: Any = None) -> Any:
    try:
        return json.loads(storage.read_text(url))
    except FileNotFoundError:
        return default


def read_plan(run_dir_or_plan: str) -> dict[str, Any]:
    url = run_dir_or_plan if run_dir_or_plan.endswith(".json") else storage.join(run_dir_or_plan, PLAN_FILE)
    try:
        doc = read_json(url)
    except ValueError as exc:   # a truncated or hand-edited file: name it, never a traceback
        raise OrchError(f"{url} is damaged: not valid JSON ({exc}). `orch submit` wrote it and the job reads it; "
                        "restore it from a copy, or submit the run again under a new --name") from None
    if doc is None:
        raise OrchError(f"no plan at {url}: is this a run dir made by `orch submit`?")
    if not isinstance(doc, dict) or not all(isinstance(doc.get(key), kind) for key, kind in PLAN_KEYS):
        expected = ", ".join(f"{key!r} ({kind.__name__})" for key, kind in PLAN_KEYS)
        raise OrchError(f"{url} is damaged: expected a JSON object with {expected}. `orch submit` wrote it and "
                        "the job reads it; restore it from a copy, or submit the run again under a new --name")
    return doc
