"""Helpers for tests that run real training jobs: tiny synthetic data, run dirs, weight comparison."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["model.name=ssdlite320_mobilenet_v3_large", "model.min_size=96", "model.max_size=96",
        "data.num_workers=1", "data.augment.hflip=0.5", "optimizer.base_lr=0.01", "optimizer.base_batch_size=2",
        "schedule.warmup_iters=2", "schedule.lr_policy=multistep", "schedule.milestones_iters=[5]",
        "schedule.log_every_iters=1", "schedule.eval_every_epochs=null"]


def make_dataset(root: str, num_train: int = 16, num_val: int = 4, size: int = 96) -> str:
    from orchestrator.synth import make_synthetic_dataset

    if not os.path.exists(os.path.join(root, "train.json")):
        make_synthetic_dataset(root, num_train=num_train, num_val=num_val, image_size=size, seed=0)
    return root


def data_overrides(data_root: str, val: bool = True) -> list[str]:
    out = [f"data.train.ann_file={data_root}/train.json", f"data.train.img_dir={data_root}/train"]
    if val:
        out += [f"data.val.ann_file={data_root}/val.json", f"data.val.img_dir={data_root}/val"]
    return out


def make_run(work_dir: str, name: str, data_root: str, gpus: int = 2, extra: list[str] | None = None,
             config: str = "configs/demo.yml") -> str:
    from orchestrator import config as config_mod
    from orchestrator import runs

    loaded = config_mod.load_config(os.path.join(ROOT, config),
                                    TINY + data_overrides(data_root) + [f"work_dir={work_dir}"] + (extra or []))
    plan = runs.build_plan(loaded.data, gpus=gpus)
    return runs.create_run_dir(work_dir, name, plan, loaded.data)["run_dir"]


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    e["OMP_NUM_THREADS"] = "1"
    e.pop("CUDA_VISIBLE_DEVICES", None)
    return e


def torchrun(run_dir: str, nproc: int = 2, timeout: int = 600, extra: list[str] | None = None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "jobs.train", run_dir] + (extra or [])
    return subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def read_status(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, "status.json")) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def load_weights(path: str) -> dict:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def assert_bitwise_equal(a: dict, b: dict) -> None:
    import torch

    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def train_iterations(run_dir: str) -> list[int]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r["iteration"] for r in map(json.loads, f) if r["type"] == "train"]
