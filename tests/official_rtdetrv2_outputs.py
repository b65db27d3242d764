"""Run the official RT-DETRv2 code (a separate checkout) as a program: seeded weights -> outputs.

    python tests/official_rtdetrv2_outputs.py RTDETR_DIR CONFIG_YML OUT_PTH [--size PX]

Builds the model of CONFIG_YML with the official code (no pretrained backbone), gives every
weight and BatchNorm statistic a seeded random value, runs one seeded image in eval mode and
saves ``{"model": state_dict, "image": x, "pred_logits": ..., "pred_boxes": ...}`` with plain
tensors, so a test can load it with ``weights_only=True`` and compare orch's model against it.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rtdetr_dir")
    parser.add_argument("config")
    parser.add_argument("out")
    parser.add_argument("--size", type=int, default=320)
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.rtdetr_dir))
    from src.core import YAMLConfig   # the official code's own config loader

    config = YAMLConfig(args.config, PResNet={"pretrained": False},
                        eval_spatial_size=[args.size, args.size])
    torch.manual_seed(0)
    model = config.model.eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for key, value in model.state_dict().items():
            if not value.dtype.is_floating_point or key.endswith(("anchors", "valid_mask", "num_points_scale")):
                continue   # derived buffers stay as the model computed them
            # Scaled so that signals neither vanish nor explode through the depth: every weight
            # (attention included) then changes the outputs measurably.
            noise = torch.randn(value.shape, generator=gen)
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif value.dim() >= 2:
                value.copy_(noise / value[0].numel() ** 0.5)
            elif "norm" in key and key.endswith("weight"):
                value.copy_(1 + 0.1 * noise)
            else:
                value.copy_(0.1 * noise)
        image = torch.rand(1, 3, args.size, args.size, generator=gen)
        out = model(image)
    torch.save({"model": {k: v.clone() for k, v in model.state_dict().items()}, "image": image,
                "pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}, args.out)


if __name__ == "__main__":
    main()
