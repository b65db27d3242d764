"""Run dirs and their records: plan a config, create a run dir, find, list and read runs.

A run dir lives under ``work_dir`` (any fsspec URL); its files are described in docs/design.md.
"""
from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from orchestrator import cocofile, planner, storage
from orchestrator import config as config_mod
from orchestrator.errors import OrchError

PLAN_FILE = "plan.json"
CONFIG_FILE = "config.yml"
SUBMISSIONS_FILE = "submissions.json"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def build_plan(config: dict[str, Any], gpus: int | None = None, train_images: int | None = None) -> planner.Plan:
    """Read what the planner needs (the training-set size) and call it."""
    if train_images is None:
        ann_file = config["data"]["train"]["ann_file"]
        if not ann_file:
            raise OrchError("data.train.ann_file is not set; point it at a COCO json "
                            "(or pass --train-images N to plan without data)")
        train_images = cocofile.count_train_images(ann_file, config["data"]["filter_empty"])
    return planner.make_plan(config, train_images, gpus=gpus)


def check_run_name(name: str) -> str:
    if not RUN_NAME_RE.match(name):
        raise OrchError(f"run name {name!r} is not valid: use letters, digits, '.', '_' and '-' "
                        "(at most 128, starting with a letter or digit)")
    return name


def new_run_name(prefix: str, now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now()
    return check_run_name(f"{prefix}-{now.strftime('%Y%m%d-%H%M%S')}")


def plan_document(run_name: str, run_dir: str, plan: planner.Plan, config: dict[str, Any]) -> dict[str, Any]:
    """plan.json: the single input of the training job."""
    plan_dict = plan.to_dict()
    safe_config = config_mod.redact_secrets(config)
    return {
        "version": 1,
        "run_name": run_name,
        "run_dir": run_dir,
        "plan_hash": planner.plan_hash(plan_dict, config),
        "plan": plan_dict,
        "config": safe_config,
    }


def create_run_dir(work_dir: str, run_name: str, plan: planner.Plan, config: dict[str, Any]) -> dict[str, Any]:
    """Create ``<work_dir>/<run_name>`` with config.yml and plan.json; refuse to overwrite a run."""
    run_dir = storage.join(work_dir, check_run_name(run_name))
    if storage.exists(storage.join(run_dir, PLAN_FILE)):
        raise OrchError(f"run {run_dir} already exists; pick another --name or `orch resume {run_name}`")
    doc = plan_document(run_name, run_dir, plan, config)
    storage.makedirs(run_dir)
    storage.write_text(storage.join(run_dir, CONFIG_FILE), config_mod.to_yaml(doc["config"]))
    write_json(storage.join(run_dir, PLAN_FILE), doc)
    return doc


def write_json(url: str, data: Any) -> None:
    storage.write_text(url, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(url: str, default: Any = None) -> Any:
    try:
        return json.loads(storage.read_text(url))
    except FileNotFoundError:
        return default


def read_plan(run_dir_or_plan: str) -> dict[str, Any]:
    url = run_dir_or_plan if run_dir_or_plan.endswith(".json") else storage.join(run_dir_or_plan, PLAN_FILE)
    doc = read_json(url)
    if doc is None:
        raise OrchError(f"no plan at {url}: is this a run dir made by `orch submit`?")
    return doc
