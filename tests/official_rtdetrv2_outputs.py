"""Run the official RT-DETRv2 code (a separate checkout) as a program: seeded weights -> outputs.

    python tests/official_rtdetrv2_outputs.py RTDETR_DIR CONFIG_YML CHECKPOINT OUTPUTS [--size PX]

Builds the model of CONFIG_YML with the official code (no pretrained backbone), gives every weight
and BatchNorm statistic of its EMA copy a seeded random value and writes CHECKPOINT the way the
official solver's ``state_dict()`` does (date, last_epoch, model, ema {module, updates}, optimizer,
lr_scheduler, lr_warmup_scheduler, ...), with ``model`` left at its initial weights so that a
loader taking ``model`` instead of ``ema`` is caught. OUTPUTS holds one seeded image and the EMA
model's eval-mode ``pred_logits`` / ``pred_boxes`` for it. With ``--image FILE --detections OUT``,
OUT also gets the detections for FILE as the official deploy script
(``references/deploy/rtdetrv2_torch.py``) makes them: PIL -> ``Resize((PX, PX))`` -> ``ToTensor``,
the deploy-mode model and ``RTDETRPostProcessor`` with ``orig_target_sizes`` = (w, h) -> labels
(0-based), boxes (xyxy px of FILE) and scores, best first.
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime

import torch


def randomize(module: torch.nn.Module, gen: torch.Generator) -> None:
    """Seeded values scaled so that signals neither vanish nor explode through the depth: every
    weight (attention included) then changes the outputs measurably."""
    with torch.no_grad():
        for key, value in module.state_dict().items():
            if not value.dtype.is_floating_point or key.endswith(("anchors", "valid_mask", "num_points_scale")):
                continue   # derived buffers stay as the model computed them
            noise = torch.randn(value.shape, generator=gen)
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=gen) + 0.5)
            elif value.dim() >= 2:
                value.copy_(noise / value[0].numel() ** 0.5)
            elif "norm" in key and key.endswith("weight"):
                value.copy_(1 + 0.1 * noise)
            else:
                value.copy_(0.1 * noise)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rtdetr_dir")
    parser.add_argument("config")
    parser.add_argument("checkpoint")
    parser.add_argument("outputs")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--image", help="an image file to detect objects in, as the deploy script does")
    parser.add_argument("--detections", help="where to write the detections for --image")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.rtdetr_dir))
    from src.core import YAMLConfig   # the official code's own config loader

    config = YAMLConfig(args.config, PResNet={"pretrained": False},
                        eval_spatial_size=[args.size, args.size])
    torch.manual_seed(0)
    model = config.model
    ema = config.ema
    randomize(ema.module, torch.Generator().manual_seed(1))
    state = {"date": datetime.now().isoformat(), "last_epoch": 119}
    for key in ("model", "ema", "optimizer", "lr_scheduler", "lr_warmup_scheduler"):
        state[key] = getattr(config, key).state_dict()
    torch.save(state, args.checkpoint)

    image = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = ema.module.eval()(image)
    torch.save({"image": image, "pred_logits": out["pred_logits"], "pred_boxes": out["pred_boxes"]}, args.outputs)
    assert model is not ema.module
    if args.image:
        detect(config, ema.module, args.image, args.size, args.detections)


def detect(config, module: torch.nn.Module, image_file: str, size: int, out: str) -> None:
    """references/deploy/rtdetrv2_torch.py's steps, on ``module`` (the EMA weights it loads)."""
    import torchvision.transforms as T
    from PIL import Image

    model = module.deploy()
    postprocessor = config.postprocessor.deploy()
    im_pil = Image.open(image_file).convert("RGB")
    w, h = im_pil.size
    orig_size = torch.tensor([w, h])[None]
    im_data = T.Compose([T.Resize((size, size)), T.ToTensor()])(im_pil)[None]
    with torch.no_grad():
        labels, boxes, scores = postprocessor(model(im_data), orig_size)
    order = scores[0].argsort(descending=True)
    torch.save({"labels": labels[0][order], "boxes": boxes[0][order], "scores": scores[0][order]}, out)


if __name__ == "__main__":
    main()
