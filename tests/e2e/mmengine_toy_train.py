"""A toy mmengine training script shaped like mmdetection's tools/train.py: CONFIG (a JSON file),
--work-dir, --resume and --cfg-options parsed by mmengine's own DictAction, then Runner.from_cfg.
The model and dataset are tiny and CPU-only; each iteration sleeps a little so a signal can land
mid-run. A user hook (custom_hooks) appends every trained iteration to <work_dir>/iters.txt."""
import argparse
import json
import os
import time

import torch
from mmengine.config import Config, DictAction
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, HOOKS, MODELS
from mmengine.runner import Runner
from torch.utils.data import Dataset

ITER_SLEEP_S = 0.05


@MODELS.register_module()
class ToyModel(BaseModel):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(2, 1)

    def forward(self, inputs, targets, mode="tensor"):
        time.sleep(ITER_SLEEP_S)
        out = self.linear(torch.stack(inputs) if isinstance(inputs, list) else inputs)
        if mode == "loss":
            return {"loss": ((out.squeeze(-1) - targets) ** 2).mean()}
        return out


@DATASETS.register_module()
class ToyDataset(Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, idx):
        x = torch.tensor([idx / 64.0, 1.0])
        return {"inputs": x, "targets": x.sum()}


@HOOKS.register_module()
class RecordIterHook(Hook):
    """The user's own hook: it must still run when orch adds its hook."""

    def before_train(self, runner):
        with open(os.path.join(runner.work_dir, f"pid-rank{runner.rank}"), "w") as f:
            f.write(str(os.getpid()))

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        name = "iters.txt" if runner.rank == 0 else f"iters-rank{runner.rank}.txt"
        with open(os.path.join(runner.work_dir, name), "a") as f:
            f.write(f"{runner.iter + 1}\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("--work-dir")
    parser.add_argument("--resume", nargs="?", const="auto")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction)
    parser.add_argument("--launcher", default="none")
    args = parser.parse_args()
    with open(args.config) as f:
        cfg = Config(json.load(f))
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    cfg.work_dir = args.work_dir
    cfg.launcher = args.launcher
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    if args.launcher == "pytorch":   # mmengine's own init_dist wants a GPU: gloo on CPU, set up first
        torch.distributed.init_process_group("gloo")
        cfg.model_wrapper_cfg = {"type": "MMDistributedDataParallel", "device_ids": None}
    Runner.from_cfg(cfg).train()


if __name__ == "__main__":
    main()
