"""Checkpoint save/load cost for a torchvision detector: size, save, load, and the training stall.

    python benchmarks/bench_checkpoint.py [--model NAME] [--repeats 3]
        [--s3-endpoint http://127.0.0.1:8333 --s3-bucket orch-bench]   # creds from AWS_* env

For each store: ``save sync`` is what save() costs the training thread with async_save=False
(serialize + sha256 + write payload + marker + prune); ``stall async`` is what it costs with
async_save=True (serialize only, the upload runs in the background) and ``async done`` is when
that background upload finished. Medians over --repeats.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import torchvision  # noqa: E402

from jobs.checkpoint import CheckpointManager, capture_rng_state, serialize  # noqa: E402
from orchestrator import storage  # noqa: E402


def build_state(model_name: str) -> dict:
    builder = getattr(torchvision.models.detection, model_name)
    model = builder(weights=None, weights_backbone=None, num_classes=91)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    for p in model.parameters():  # one step so that every momentum buffer exists
        p.grad = torch.randn_like(p) * 1e-3
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[400, 550], gamma=0.1)
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": None, "epoch": 3, "step_in_epoch": 7,
            "sampler_seed": 0, "rng": [capture_rng_state()], "world_size": 1, "best_metric": 0.25,
            "plan_hash": "0" * 64}


def median(values: list[float]) -> float:
    return statistics.median(values)


def bench_store(name: str, run_dir: str, state: dict, repeats: int) -> dict:
    sync_s, stall_s, done_s, load_s = [], [], [], []
    iteration = 0
    sync = CheckpointManager(run_dir, keep_last=2, async_save=False)
    for _ in range(repeats):
        iteration += 1
        started = time.perf_counter()
        sync.save(state, iteration)
        sync_s.append(time.perf_counter() - started)
        if sync.last_error:
            raise SystemExit(f"{name}: save failed: {sync.last_error}")
    sync.close()
    background = CheckpointManager(run_dir, keep_last=2, async_save=True)
    for _ in range(repeats):
        iteration += 1
        started = time.perf_counter()
        background.save(state, iteration)
        stall_s.append(time.perf_counter() - started)
        background.wait()
        done_s.append(time.perf_counter() - started)
    background.close()
    latest = background.latest()
    for _ in range(repeats):
        started = time.perf_counter()
        background.load(latest)
        load_s.append(time.perf_counter() - started)
    size = len(storage.read_bytes(latest))
    storage.remove(run_dir, recursive=True)
    return {"store": name, "size_mb": size / 1e6, "save_sync_s": median(sync_s),
            "stall_async_s": median(stall_s), "async_done_s": median(done_s), "load_s": median(load_s)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="fasterrcnn_mobilenet_v3_large_320_fpn")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--s3-endpoint", help="S3 endpoint URL; credentials from AWS_ACCESS_KEY_ID/"
                                              "AWS_SECRET_ACCESS_KEY")
    parser.add_argument("--s3-bucket", default="orch-bench")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    state = build_state(args.model)
    build_s = time.perf_counter() - started
    serialize_s = [0.0] * args.repeats
    for i in range(args.repeats):
        t0 = time.perf_counter()
        serialize(state)
        serialize_s[i] = time.perf_counter() - t0
    n_params = sum(t.numel() for t in state["model"].values())
    print(f"model {args.model}: {n_params / 1e6:.2f} M values in the state_dict, built in {build_s:.1f} s; "
          f"torch.save into memory {median(serialize_s):.3f} s; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats (medians)")

    tag = uuid.uuid4().hex[:8]
    stores = [("local disk", os.path.join(tempfile.mkdtemp(prefix="bench-ckpt-"), "run")),
              ("memory://", f"memory://bench-{tag}/run")]
    if args.s3_endpoint:
        os.environ["AWS_ENDPOINT_URL"] = args.s3_endpoint
        storage.fs_cache_clear()
        fs, _ = storage.filesystem(f"s3://{args.s3_bucket}")
        if not fs.exists(args.s3_bucket):
            fs.mkdir(args.s3_bucket)
        stores.append((f"s3 ({args.s3_endpoint})", f"s3://{args.s3_bucket}/bench-{tag}/run"))

    rows = [bench_store(name, url, state, args.repeats) for name, url in stores]
    header = f"{'store':<32} {'size MB':>8} {'save sync s':>12} {'stall async s':>14} {'async done s':>13} {'load s':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['store']:<32} {r['size_mb']:>8.1f} {r['save_sync_s']:>12.3f} {r['stall_async_s']:>14.3f} "
              f"{r['async_done_s']:>13.3f} {r['load_s']:>8.3f}")


if __name__ == "__main__":
    main()
