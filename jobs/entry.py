"""What every job process does first (``jobs.launch``, ``jobs.train``): learn how to reach the run
dir, then read its plan.

The storage options come from the environment `orch submit` (or `orch resume`, `orch sweep`)
handed the job, ``$ORCH_STORAGE_OPTIONS``, and are applied before the first read: plan.json may
sit on a bucket that only those options reach (an on-prem endpoint and its keys). A job started
by hand, without them, reads the plan with the standard AWS_* variables and then uses the plan's
own options (its secrets are redacted there; AWS_* supply them).
"""
from __future__ import annotations

from typing import Any

from orchestrator import runs, storage


def open_run(run_ref: str) -> dict[str, Any]:
    """Apply this job's storage options, then read and return the plan document of ``run_ref``
    (a run dir URL or its plan.json)."""
    handed = storage.StorageOptions.from_env()
    storage.use(handed)
    doc = runs.read_plan(run_ref)
    if not handed:
        storage.use(storage.StorageOptions.parse(doc["config"].get("storage_options"),
                                                 source=f"storage_options in {run_ref}"))
    return doc
