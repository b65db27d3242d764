"""Training speed: the job's loop (jobs/engine.py) against a plain loop on the same model and data.

    python benchmarks/bench_train.py [--model ssdlite320_mobilenet_v3_large] [--iters 30] [--batch 4]
                                     [--size 320] [--workers 2] [--tiny]

``--model rtdetr_v2_r18vd`` (any transformer detector; pip install 'orch[detr]') benchmarks
``transformers``' model the same way; ``--tiny`` shrinks it to the tests' tiny variant
(orchestrator.detr_table.tiny_overrides). The plain loop calls the model through the same adapter
as the job (jobs.models.build_adapter: torchvision's ``model(images, targets)``, or the DETR
preprocessing and target conversion), so both loops feed the model the same tensors.

Prints, for each: seconds per iteration, images per second, data-wait fraction (time the loop
waited for the next batch / step time) and peak memory (CUDA max allocated, else process max RSS).
Both use jobs.data's loader on a synthetic dataset made on the spot; the first 3 iterations are
warm-up and not counted.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
WARMUP = 3


def peak_memory_mb(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_doc(tmp: str, args: argparse.Namespace) -> dict:
    from orchestrator import config as config_mod
    from orchestrator import runs
    from orchestrator.synth import make_synthetic_dataset

    data = os.path.join(tmp, "data")
    make_synthetic_dataset(data, num_train=max(64, args.batch * (args.iters + WARMUP)), num_val=4,
                           image_size=args.size, seed=0)
    overrides = [f"model.name={args.model}", f"data.train.ann_file={data}/train.json",
                 f"data.train.img_dir={data}/train", "data.val.ann_file=null", f"data.batch_per_gpu={args.batch}",
                 f"data.num_workers={args.workers}", f"schedule.max_iters={args.iters + WARMUP}",
                 "schedule.log_every_iters=10", "schedule.eval_every_iters=100000",
                 "schedule.checkpoint_every_iters=100000", f"work_dir={tmp}/runs", "optimizer.base_lr=0.001"]
    if args.size != 320 or "ssd" not in args.model:
        overrides += [f"model.min_size={args.size}", f"model.max_size={args.size}"]
    if args.tiny:
        import yaml

        from orchestrator.detr_table import tiny_overrides

        overrides.append(f"model.kwargs={yaml.safe_dump(tiny_overrides(args.model), default_flow_style=True).strip()}")
    loaded = config_mod.load_config(os.path.join(ROOT, "configs", "demo.yml"), overrides)
    plan = runs.build_plan(loaded.data, gpus=1)
    return runs.create_run_dir(f"{tmp}/runs", "bench", plan, loaded.data)


def plain_loop(doc: dict, device) -> dict:
    import torch

    from jobs import data, models

    loader = data.build_train_loader(doc["config"], doc["plan"], 0, 1)
    model = models.build_model(doc["config"]["model"], len(loader.dataset.category_ids) + 1).to(device).train()
    adapter = models.build_adapter(doc["config"]["model"])
    cfg = doc["config"]["optimizer"]  # the same SGD as the job's (momentum, weight decay)
    opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])
    steps, waits = [], []
    batches = iter(loader)
    last = time.perf_counter()
    for i in range(doc["plan"]["max_iters"]):
        t0 = time.perf_counter()
        try:
            images, targets = next(batches)
        except StopIteration:
            loader.batch_sampler.set_epoch(i // doc["plan"]["iters_per_epoch"])
            batches = iter(loader)
            images, targets = next(batches)
        wait = time.perf_counter() - t0
        images = [im.to(device) for im in images]
        targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
        loss = sum(adapter.forward_train(model, images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        now = time.perf_counter()
        if i >= WARMUP:
            steps.append(now - last)
            waits.append(wait)
        last = now
    return {"step_s": sum(steps) / len(steps), "wait_s": sum(waits) / len(waits), "memory_mb": peak_memory_mb(device)}


def job_loop(doc: dict, device) -> dict:
    from jobs import runlog
    from jobs.distributed import DistInfo
    from jobs.engine import Trainer

    # Time every iteration as the plain loop does: the engine calls Progress.tick once per step
    # (after the optimizer step, before logging), with that step's data wait. Its logged times
    # are 20-step moving averages, which would smear the slow first step over the next 19.
    ticks: list[tuple[float, float]] = []
    real_tick = runlog.Progress.tick

    def tick(self, data_time: float) -> None:
        ticks.append((time.perf_counter(), data_time))
        real_tick(self, data_time)

    runlog.Progress.tick = tick
    try:
        trainer = Trainer(doc, DistInfo(0, 1, 0, device, None))
        trainer.resume_or_load()
        trainer.train()
        trainer.close()
    finally:
        runlog.Progress.tick = real_tick
    steps = [b[0] - a[0] for a, b in zip(ticks, ticks[1:])][WARMUP - 1:]
    waits = [t[1] for t in ticks][WARMUP:]
    return {"step_s": sum(steps) / len(steps), "wait_s": sum(waits) / len(waits),
            "memory_mb": peak_memory_mb(device)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ssdlite320_mobilenet_v3_large")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", choices=("plain", "job"))
    parser.add_argument("--tiny", action="store_true", help="a transformer detector's tiny test variant")
    args = parser.parse_args()
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"{args.model}{' (tiny)' if args.tiny else ''}, batch {args.batch}, {args.size} px, {args.workers} workers, {args.iters} iterations "
          f"after {WARMUP} warm-up, device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'loop':<8} {'s/iter':>8} {'img/s':>8} {'data wait':>10} {'peak MB':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        doc = make_doc(tmp, args)
        for name, fn in (("plain", plain_loop), ("job", job_loop)):
            if args.only and args.only != name:
                continue
            r = fn(doc, device)
            print(f"{name:<8} {r['step_s']:>8.3f} {args.batch / r['step_s']:>8.1f} "
                  f"{100 * r['wait_s'] / r['step_s']:>9.1f}% {r['memory_mb']:>9.0f}")
            if name == "plain":
                import shutil
                shutil.rmtree(os.path.join(doc["run_dir"], "checkpoints"), ignore_errors=True)


if __name__ == "__main__":
    main()
