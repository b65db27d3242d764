"""An exponential moving average of the weights (``model.ema``), for any model.

The rule is RT-DETR's ``ModelEMA`` (itself YOLOv5's): after each optimizer step,
``ema = d * ema + (1 - d) * weights`` for every floating-point tensor of the state dict, with
``d = decay * (1 - exp(-updates / warmup_iters))`` so the early average follows the fast-moving
weights; integer buffers (BatchNorm step counters) are copied. The average is checkpointed
(:meth:`ModelEMA.state_dict`), restored exactly on resume, and evaluated instead of the raw weights.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import torch


class ModelEMA:
    def __init__(self, model: torch.nn.Module, decay: float, warmup_iters: int = 2000) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"model.ema.decay = {decay!r} must be >= 0 and < 1 (e.g. 0.9999)")
        self.decay, self.warmup_iters = float(decay), int(warmup_iters)
        self.updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    @classmethod
    def from_config(cls, model: torch.nn.Module, model_cfg: dict[str, Any]) -> "ModelEMA | None":
        ema = model_cfg.get("ema")
        if not ema:
            return None
        return cls(model, float(ema["decay"]), int(ema.get("warmup_iters", 2000)))

    def decay_at(self, updates: int) -> float:
        if self.warmup_iters <= 0:
            return self.decay
        return self.decay * (1 - math.exp(-updates / self.warmup_iters))

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = self.decay_at(self.updates)
        weights = model.state_dict()
        for key, average in self.module.state_dict().items():
            value = weights[key].detach()
            if average.dtype.is_floating_point:
                average.mul_(d).add_(value.to(average.dtype), alpha=1 - d)
            else:
                average.copy_(value)

    @torch.no_grad()
    def reset(self, model: torch.nn.Module) -> None:
        """Start the average again from ``model``'s weights (after loading an init checkpoint)."""
        self.module.load_state_dict(model.state_dict())
        self.updates = 0

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup_iters": self.warmup_iters}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
