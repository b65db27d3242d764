"""Learning rate by iteration (torch-free, pure): linear warmup, then multistep / cosine / constant.

The schedule's only state is the iteration, so a resumed run gets exactly the same lr.
"""
from __future__ import annotations

import bisect
import math
from typing import Any


def lr_factor(iteration: int, plan: dict[str, Any]) -> float:
    """Multiplier of ``plan["lr"]`` for the step that starts at ``iteration`` (0-based)."""
    max_iters = plan["max_iters"]
    policy = plan["lr_policy"]
    if policy == "multistep":
        factor = plan["gamma"] ** bisect.bisect_right(plan["milestones_iters"], iteration)
    elif policy == "cosine":
        floor = plan.get("min_lr_ratio", 0.0)
        progress = min(iteration, max_iters) / max(1, max_iters)
        factor = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    elif policy == "constant":
        factor = 1.0
    else:
        raise ValueError(f"unknown lr_policy {policy!r}")
    warmup = plan["warmup_iters"]
    if iteration < warmup:
        start = plan["warmup_factor"]
        factor *= start + (1 - start) * iteration / warmup
    return factor
