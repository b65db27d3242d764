"""A user's own torchrun training script, as the `command` trainer kind runs it (tests/e2e/test_toolbox_command.py).

    torchrun --nproc-per-node=2 tests/command_train.py --lr LR --iters N --out DIR [--every K] [--resume CKPT]

Reads the whole plan from $ORCH_PLAN (orch's plan.json), trains a tiny linear model with DDP over gloo on
seeded data, writes DIR/last.pt every K iterations (atomically: a temporary file renamed) and, on rank 0,
one JSON line per iteration to DIR/metrics.jsonl (iteration, epoch, loss, and a bbox_mAP-like score in
0-1 so that orch status can rank it). Knows nothing of orch beyond $ORCH_PLAN.
"""
import argparse
import json
import os
import time

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--iters", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--resume")
    parser.add_argument("--step-s", type=float, default=0.2, help="seconds per step, so a test can interrupt it")
    args = parser.parse_args()
    with open(os.environ["ORCH_PLAN"]) as f:
        plan = json.load(f)["plan"]
    assert plan["max_iters"] == args.iters and abs(plan["lr"] - args.lr) < 1e-12, "orch's numbers reach the script"

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    start = 0
    if args.resume:
        state = torch.load(args.resume, map_location="cpu", weights_only=True)
        model.module.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["iteration"]
        if rank == 0:
            print(f"resumed from {args.resume} at iteration {start}", flush=True)
    os.makedirs(args.out, exist_ok=True)
    target = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    for iteration in range(start + 1, args.iters + 1):
        gen = torch.Generator().manual_seed(iteration * world + rank)   # the same batches after a resume
        x = torch.randn(plan["batch_per_gpu"], 4, generator=gen)
        loss = torch.nn.functional.mse_loss(model(x), x @ target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        time.sleep(args.step_s)
        if rank == 0:
            record = {"iteration": iteration, "epoch": (iteration - 1) // plan["iters_per_epoch"] + 1,
                      "loss": loss.item(), "bbox_mAP": 1.0 / (1.0 + loss.item())}
            with open(os.path.join(args.out, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")
            if iteration % args.every == 0 or iteration == args.iters:
                tmp = os.path.join(args.out, "last.pt.tmp")
                torch.save({"model": model.module.state_dict(), "optimizer": optimizer.state_dict(),
                            "iteration": iteration}, tmp)
                os.replace(tmp, os.path.join(args.out, "last.pt"))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
