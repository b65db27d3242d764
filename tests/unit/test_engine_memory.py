"""train/memory_mb on CPU: the process's peak resident set (ru_maxrss), not 0."""
from __future__ import annotations

import json
import os

import pytest

from jobutil import make_dataset, make_run

torch = pytest.importorskip("torch")


def test_memory_mb_is_the_peak_rss_on_cpu(tmp_path):
    from jobs.distributed import DistInfo
    from jobs.engine import Trainer
    from jobs.runlog import Progress, peak_rss_mb
    from orchestrator import runs

    data_root = make_dataset(str(tmp_path / "data"), num_train=4, num_val=2)
    run_dir = make_run(str(tmp_path / "runs"), "mem", data_root, gpus=1, extra=["data.num_workers=0"])
    trainer = Trainer(runs.read_plan(run_dir), DistInfo(0, 1, 0, torch.device("cpu"), None))
    try:
        trainer.iteration = 1
        trainer.log_step({"loss_classifier": torch.tensor(1.5)}, Progress())
    finally:
        trainer.close()
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        record = json.loads(f.readline())
    assert record["type"] == "train"
    # a process that built a detector holds far more than 50 MiB; ru_maxrss only grows
    assert 50 < record["memory_mb"] <= peak_rss_mb()
