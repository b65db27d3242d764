"""The transformer detectors behind the torchvision detector contract: one preprocessing, one target
conversion and one post-processing, used by training, eval and predict alike.

orch's loop speaks torchvision: a list of ``[3, H, W]`` float images in [0, 1] (any sizes) and
targets with ``boxes`` (xyxy pixels) and ``labels`` (1..K, 0 being torchvision's background).
:class:`DetrAdapter` turns that into what a ``transformers`` ``...ForObjectDetection`` takes and
back:

* :func:`preprocess`: RT-DETRv2 and D-FINE resize to one square (640 px) and only rescale to
  [0, 1], as the official code and ``RTDetrImageProcessor`` do; DETR, Deformable and Conditional
  DETR resize the short side (800, long side <= 1333), normalise with the ImageNet mean/std and
  pad the batch bottom-right with a ``pixel_mask``.
* :func:`to_hf_targets`: labels 0..K-1 and boxes as cxcywh normalised by the image size. A resize
  scales both axes of box and image alike, so the normalised box is the same before and after it.
* :func:`postprocess`: sigmoid scores with a top-k over queries x classes (the focal-loss models,
  as the official RT-DETR post-processor) or softmax without the "no object" class (DETR); boxes
  back to the pixels of the image as given, labels back to 1..K.

Which rule a family follows is the small table :data:`FAMILIES`; nothing else branches on it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from orchestrator import modelspec
from orchestrator.detr_table import detr_arch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FamilyRule:
    square: bool                      # resize to size x size (else short side, long side capped)
    normalize: bool                   # ImageNet mean/std after rescaling to [0, 1]
    scoring: str                      # "sigmoid_topk" | "softmax"
    top_k: int | None = None          # detections kept per image (None: one per query)
    losses_weighted: bool = True      # transformers' loss_dict already holds the weighted terms


FAMILIES: dict[str, FamilyRule] = {
    "rt_detr_v2": FamilyRule(square=True, normalize=False, scoring="sigmoid_topk"),
    "d_fine": FamilyRule(square=True, normalize=False, scoring="sigmoid_topk"),
    # The Deformable and Conditional DETR reference post-processors keep the top 100 of queries x classes
    "deformable_detr": FamilyRule(False, True, "sigmoid_topk", top_k=100, losses_weighted=False),
    "conditional_detr": FamilyRule(False, True, "sigmoid_topk", top_k=100, losses_weighted=False),
    "detr": FamilyRule(False, True, "softmax", losses_weighted=False),
}


@dataclass(frozen=True)
class Preprocessed:
    pixel_values: torch.Tensor        # [B, 3, H, W]
    pixel_mask: torch.Tensor | None   # [B, H, W], 1 on image pixels (None: no padding)


def input_sizes(model_cfg: dict[str, Any]) -> tuple[int, int | None]:
    """(short side or square side, long-side cap or None) from model.min_size/max_size."""
    spec = modelspec.MODELS[model_cfg["name"]]
    if spec.square_input:
        return modelspec.input_size(spec, model_cfg), None
    short = model_cfg.get("min_size") or spec.default_size
    return int(short), int(model_cfg.get("max_size") or modelspec.DETR_DEFAULT_MAX_SIZE)


def resized_shape(height: int, width: int, size: int, max_size: int | None) -> tuple[int, int]:
    if max_size is None:
        return size, size
    scale = size / min(height, width)
    if max(height, width) * scale > max_size:
        scale = max_size / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def preprocess(images: Sequence[torch.Tensor], rule: FamilyRule, size: int,
               max_size: int | None) -> Preprocessed:
    """The pixels the model sees for ``images`` (float [0, 1], any sizes)."""
    resized = []
    for image in images:
        h, w = resized_shape(image.shape[-2], image.shape[-1], size, None if rule.square else max_size)
        image = image.float()
        if (h, w) != tuple(image.shape[-2:]):
            image = F.interpolate(image[None], size=(h, w), mode="bilinear", align_corners=False,
                                  antialias=True)[0].clamp_(0, 1)
        if rule.normalize:
            mean = image.new_tensor(IMAGENET_MEAN)[:, None, None]
            std = image.new_tensor(IMAGENET_STD)[:, None, None]
            image = (image - mean) / std
        resized.append(image)
    height = max(img.shape[-2] for img in resized)
    width = max(img.shape[-1] for img in resized)
    if all(tuple(img.shape[-2:]) == (height, width) for img in resized):
        return Preprocessed(torch.stack(resized), None)
    batch = resized[0].new_zeros((len(resized), 3, height, width))
    mask = torch.zeros((len(resized), height, width), dtype=torch.long, device=batch.device)
    for k, img in enumerate(resized):
        batch[k, :, :img.shape[-2], :img.shape[-1]] = img
        mask[k, :img.shape[-2], :img.shape[-1]] = 1
    return Preprocessed(batch, mask)


def to_hf_targets(targets: Sequence[dict[str, Any]], sizes: Sequence[tuple[int, int]]) -> list[dict[str, Any]]:
    """orch targets (xyxy pixels of an image of ``sizes[k]`` = (H, W), labels 1..K) -> HF labels."""
    out = []
    for target, (height, width) in zip(targets, sizes):
        boxes = target["boxes"].float()
        scale = boxes.new_tensor([width, height, width, height])
        x0, y0, x1, y1 = (boxes / scale).clamp(0, 1).unbind(-1)
        cxcywh = torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)
        out.append({"class_labels": target["labels"].long() - 1, "boxes": cxcywh})
    return out


def postprocess(logits: torch.Tensor, pred_boxes: torch.Tensor, sizes: Sequence[tuple[int, int]],
                rule: FamilyRule) -> list[dict[str, torch.Tensor]]:
    """Detections in the pixels of images of ``sizes`` (H, W): xyxy boxes, scores, labels 1..K."""
    sizes_wh = torch.tensor([[w, h] for h, w in sizes], device=logits.device)
    boxes, scores, labels = postprocess_batch(logits, pred_boxes, sizes_wh, rule)
    return [{"boxes": boxes[b], "scores": scores[b], "labels": labels[b]} for b in range(len(sizes))]


def postprocess_batch(logits: torch.Tensor, pred_boxes: torch.Tensor, sizes_wh: torch.Tensor,
                      rule: FamilyRule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`postprocess` as tensors, which the ONNX export traces: ``sizes_wh`` [B, 2] (width,
    height, as the official RT-DETR's ``orig_target_sizes``) -> boxes [B, K, 4] xyxy pixels,
    scores [B, K], labels [B, K] (1..K)."""
    num_queries, num_classes = logits.shape[1], logits.shape[2]
    if rule.scoring == "softmax":
        scores, labels = logits.softmax(-1)[..., :-1].max(-1)
        query = torch.arange(num_queries, device=logits.device).expand(logits.shape[0], -1)
    else:
        k = min(rule.top_k or num_queries, num_queries * num_classes)
        scores, index = logits.sigmoid().flatten(1).topk(k, dim=1)
        labels, query = index % num_classes, index // num_classes
    cx, cy, w, h = pred_boxes.gather(1, query.unsqueeze(-1).expand(-1, -1, 4)).float().unbind(-1)
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)
    xyxy = xyxy * sizes_wh.to(xyxy.dtype).repeat(1, 2)[:, None, :]
    return xyxy, scores.float(), labels + 1


_LOSS_SUFFIX = re.compile(r"(_(aux|dn|enc|pre))?(_\d+)?$")


def grouped_losses(loss_dict: dict[str, torch.Tensor], rule: FamilyRule, config: Any) -> dict[str, torch.Tensor]:
    """The weighted loss terms summed per kind (aux/denoising/encoder copies folded in), so the
    values add up to the model's ``loss`` and the log stays a few columns wide."""
    weights = {"loss_ce": 1.0, "loss_bbox": getattr(config, "bbox_loss_coefficient", 1.0),
               "loss_giou": getattr(config, "giou_loss_coefficient", 1.0)}
    grouped: dict[str, torch.Tensor] = {}
    for key, value in loss_dict.items():
        base = _LOSS_SUFFIX.sub("", key)
        if rule.losses_weighted:
            weight = 1.0
        elif base in weights:
            weight = weights[base]
        else:
            continue  # e.g. DETR's cardinality error: logged by transformers, not a training loss
        grouped[base] = grouped[base] + value * weight if base in grouped else value * weight
    return grouped


_CLASS_HEADS = ("model.enc_score_head.weight", "class_embed.0.weight", "class_labels_classifier.weight")


def num_classes_in(name: str, weights: dict[str, torch.Tensor]) -> int | None:
    """Classes of ``name``'s weights, torchvision-style (object classes + 1); None without a class head."""
    rule = FAMILIES[detr_arch(name).family]
    for key in _CLASS_HEADS:
        if key in weights:
            rows = int(weights[key].shape[0])
            return rows if rule.scoring == "softmax" else rows + 1  # softmax heads have a "no object" row
    return None


class DetrAdapter:
    """How orch's loop trains, evaluates and loads weights into a ``transformers`` detector."""

    def __init__(self, model_cfg: dict[str, Any]) -> None:
        self.family = detr_arch(model_cfg["name"]).family
        self.rule = FAMILIES[self.family]
        self.size, self.max_size = input_sizes(model_cfg)

    @staticmethod
    def num_labels(num_classes_with_background: int) -> int:
        return num_classes_with_background - 1  # DETRs model "no object" themselves

    def inputs(self, images: Sequence[torch.Tensor], size: int | None = None) -> dict[str, torch.Tensor]:
        pre = preprocess(images, self.rule, size or self.size, self.max_size)
        return {"pixel_values": pre.pixel_values} if pre.pixel_mask is None else \
            {"pixel_values": pre.pixel_values, "pixel_mask": pre.pixel_mask}

    def forward_train(self, model: torch.nn.Module, images: Sequence[torch.Tensor],
                      targets: Sequence[dict[str, Any]], size: int | None = None) -> dict[str, torch.Tensor]:
        """``size``: this batch's multi-scale size (data.augment.multiscale), else the model's."""
        sizes = [tuple(img.shape[-2:]) for img in images]
        outputs = model(**self.inputs(images, size), labels=to_hf_targets(targets, sizes))
        config = getattr(model, "module", model).config  # DDP wraps the HF model
        return grouped_losses(outputs.loss_dict, self.rule, config)

    def predict(self, model: torch.nn.Module, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        sizes = [tuple(img.shape[-2:]) for img in images]
        outputs = model(**self.inputs(images))
        return postprocess(outputs.logits, outputs.pred_boxes, sizes, self.rule)

    def load_init(self, model: torch.nn.Module, url: str) -> dict[str, list]:
        from jobs import detr_weights

        return detr_weights.load_init_weights(model, url)
