"""One real training step on this machine's CPU, before anything is queued (`orch submit --preflight`).

    python -m jobs.preflight < plan-document.json

Reads a plan document (what ``plan.json`` would hold; nothing is written anywhere the run will
live) from stdin, builds the job's own :class:`jobs.engine.Trainer` for one CPU process at the
plan's ``batch_per_gpu`` (the real model config, annotation file, images, augmentation,
optimizer and init checkpoint), takes the first batch of ``data.train`` and runs one
``Trainer.run_step``. Whatever the trainer writes goes to a temporary directory that is removed.
Data-loader workers are not started (``num_workers`` 0): the images go through the same dataset code.

The last stdout line is ``ORCH_PREFLIGHT {json}``: ``{"ok": true, "loss", "losses", "step_s",
"images"}`` or ``{"ok": false, "error_type", "error", "user_error", "phase"}``; the torch-free side
(:mod:`orchestrator.preflight`) turns a failure into one paragraph naming the key to change.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import sys
import tempfile
import time
from typing import Any

from orchestrator import storage
from orchestrator.errors import OrchError
from orchestrator.preflight import RESULT_PREFIX


def preflight_document(doc: dict[str, Any], run_dir: str) -> dict[str, Any]:
    """The plan document for one CPU process at the plan's batch_per_gpu, living in ``run_dir``."""
    trial = copy.deepcopy(doc)
    trial["run_dir"] = run_dir
    plan, config = trial["plan"], trial["config"]
    batch = int(plan["batch_per_gpu"])
    plan.update(gpus=1, nodes=1, gpus_per_node=1, total_batch_size=batch,
                iters_per_epoch=math.ceil(int(plan["train_images"]) / batch))
    config["data"]["num_workers"] = 0
    return trial


class _Phase:
    """Where the step is (build, init_checkpoint, data, step): the CLI names the keys of that phase."""
    name = "start"


phase = _Phase()


def one_step(doc: dict[str, Any]) -> dict[str, Any]:
    import torch

    from jobs.distributed import DistInfo
    from jobs.engine import Trainer

    with tempfile.TemporaryDirectory(prefix="orch-preflight-") as tmp:
        phase.name = "build"
        trainer = Trainer(preflight_document(doc, tmp), DistInfo(0, 1, 0, torch.device("cpu"), None))
        try:
            phase.name = "init_checkpoint"
            trainer.resume_or_load()  # nothing to resume in tmp: loads model.init_checkpoint, as the job would
            phase.name = "data"
            images, targets = next(iter(trainer.train_loader))
            phase.name = "step"
            start = time.perf_counter()
            losses = trainer.run_step(images, targets)
            step_s = time.perf_counter() - start
        finally:
            trainer.close()
    values = {k: float(v) for k, v in losses.items()}
    return {"loss": sum(values.values()), "losses": values, "step_s": step_s,
            "images": [list(img.shape[-2:]) for img in images]}


def main() -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        doc = json.load(sys.stdin)
        storage.use(storage.StorageOptions.from_env())  # handed over by the CLI, as to a job
        result = {"ok": True, **one_step(doc)}
    except Exception as exc:  # reported to the CLI, which names the key to change
        user_error = isinstance(exc, OrchError)  # already one paragraph naming the file/key and the fix
        text = " ".join(str(exc).split()) if user_error else (str(exc).strip().splitlines() or [""])[0]
        result = {"ok": False, "error_type": type(exc).__name__, "error": text[:2000], "user_error": user_error,
                  "phase": phase.name}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
