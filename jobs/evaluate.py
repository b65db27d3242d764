"""COCO bbox evaluation: model outputs -> COCO results -> the 12 standard numbers + per-class AP.

Detections always carry the ORIGINAL category ids of the annotation file (``label_to_cat_id``
maps the model's contiguous labels back), so results can be compared with any COCO tool.
faster-coco-eval (C++) is used when importable: ``tests/unit/test_evaluate.py`` checks that it
agrees with pycocotools to 1e-6, the reference we fall back on.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import logging
from typing import Any, Iterable, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

STAT_NAMES = ("bbox_mAP", "bbox_mAP_50", "bbox_mAP_75", "bbox_mAP_s", "bbox_mAP_m", "bbox_mAP_l",
              "bbox_AR_1", "bbox_AR_10", "bbox_AR_100", "bbox_AR_s", "bbox_AR_m", "bbox_AR_l")
# (AP or AR, IoU threshold, area, maxDets) for each stat, in pycocotools' summarize() order
_SUMMARY_ROWS = ((1, None, "all", 100), (1, 0.5, "all", 100), (1, 0.75, "all", 100),
                 (1, None, "small", 100), (1, None, "medium", 100), (1, None, "large", 100),
                 (0, None, "all", 1), (0, None, "all", 10), (0, None, "all", 100),
                 (0, None, "small", 100), (0, None, "medium", 100), (0, None, "large", 100))
BACKENDS = ("auto", "pycocotools", "faster")


def faster_available() -> bool:
    try:
        import faster_coco_eval  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown COCO eval backend {backend!r}; valid backends are {list(BACKENDS)}")
    if backend == "auto":
        return "faster" if faster_available() else "pycocotools"
    if backend == "faster":
        from orchestrator import extras

        extras.require("faster_coco_eval", "the COCO eval backend 'faster'")
    return backend


def _clean_gt(coco_gt: dict[str, Any]) -> dict[str, Any]:
    """A fresh copy pycocotools accepts (its evaluate() writes into annotation dicts): 'iscrowd',
    'area' and 'id' filled in when an export left them out."""
    annotations = []
    for k, ann in enumerate(coco_gt.get("annotations", [])):
        ann = dict(ann)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2]) * float(ann["bbox"][3]))
        ann.setdefault("id", k + 1)
        annotations.append(ann)
    return {"images": [dict(img) for img in coco_gt["images"]],
            "categories": [dict(c) for c in coco_gt["categories"]], "annotations": annotations}


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def _run_cocoeval(gt: dict[str, Any], detections: list[dict[str, Any]], category_ids: Sequence[int],
                  backend: str):
    """(precision [T,R,K,A,M], stats[12]) from the chosen backend, its prints silenced."""
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster":
            from faster_coco_eval import COCO, COCOeval_faster

            coco_gt = COCO(gt)
            coco_dt = coco_gt.loadRes(detections)
            evaluator = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=_quiet)  # it logs at INFO
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval

            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(detections)
            evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.catIds = list(category_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.eval["precision"]), [float(s) for s in evaluator.stats[:12]]


def summary_text(stats: Sequence[float]) -> str:
    """The 12 lines pycocotools' summarize() prints, from the 12 numbers."""
    lines = []
    for value, (ap, iou, area, max_dets) in zip(stats, _SUMMARY_ROWS):
        title, kind = ("Average Precision", "(AP)") if ap else ("Average Recall", "(AR)")
        iou_str = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        lines.append(f" {title:<18} {kind} @[ IoU={iou_str:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] "
                     f"= {value:0.3f}")
    return "\n".join(lines)


def per_class_table(per_class: Sequence[tuple[str, float]]) -> str:
    """mmdetection's per-category AP table: up to three (category, AP) column pairs per row."""
    if not per_class:
        return ""
    num_columns = min(6, len(per_class) * 2)
    flat = list(itertools.chain(*[(name, "nan" if np.isnan(ap) else f"{ap:0.3f}") for name, ap in per_class]))
    flat += [""] * (-len(flat) % num_columns)
    rows = [["category", "AP"] * (num_columns // 2)]
    rows += [flat[k:k + num_columns] for k in range(0, len(flat), num_columns)]
    widths = [max(len(row[c]) for row in rows) for c in range(num_columns)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    render = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    return "\n".join([rule, render[0], rule, *render[1:], rule])


def coco_evaluate(coco_gt_dict: dict[str, Any], detections: list[dict[str, Any]],
                  category_ids: Sequence[int] | None = None, backend: str = "auto") -> dict[str, Any]:
    """Evaluate COCO-format ``detections`` (original category ids) against ``coco_gt_dict``.

    Returns ``{"stats": {name: value}, "per_class": [(name, AP)], "summary": text, "backend": used}``;
    the summary holds pycocotools' 12 lines followed by mmdetection's per-class table.
    """
    used = _resolve_backend(backend)
    gt = _clean_gt(coco_gt_dict)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in gt["categories"]}
    if category_ids is None:
        category_ids = sorted(names)
    category_ids = [int(c) for c in category_ids]
    if not detections or not gt["annotations"]:
        stats = [0.0] * len(STAT_NAMES)
        per_class = [(names.get(c, str(c)), 0.0) for c in category_ids]
    else:
        # loadRes writes area/id into each result: give it copies
        precision, stats = _run_cocoeval(gt, [dict(d) for d in detections], category_ids, used)
        per_class = []
        for k, cat_id in enumerate(category_ids):
            p = precision[:, :, k, 0, -1]  # all IoUs, all recalls, area=all, maxDets=100
            p = p[p > -1]
            per_class.append((names.get(cat_id, str(cat_id)), float(np.mean(p)) if p.size else float("nan")))
    summary = summary_text(stats) + "\n" + per_class_table(per_class)
    return {"stats": dict(zip(STAT_NAMES, stats)), "per_class": per_class, "summary": summary, "backend": used}


def predictions_to_coco(outputs: Iterable[dict[str, torch.Tensor]], image_ids: Iterable[int],
                        label_to_cat_id: dict[int, int]) -> list[dict[str, Any]]:
    """Model outputs (xyxy boxes, contiguous labels, scores) -> COCO results (xywh, original ids)."""
    results = []
    for output, image_id in zip(outputs, image_ids):
        boxes = output["boxes"].detach().cpu().to(torch.float64)
        if boxes.numel() == 0:
            continue
        xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).tolist()
        for box, label, score in zip(xywh, output["labels"].tolist(), output["scores"].tolist()):
            if int(label) not in label_to_cat_id:
                continue  # the background label, or a class the dataset does not have
            results.append({"image_id": int(image_id), "category_id": int(label_to_cat_id[int(label)]),
                            "bbox": [round(v, 3) for v in box], "score": round(float(score), 5)})
    return results


def gather_detections(local: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """All ranks' detections on every rank (no-op without torch.distributed).

    Each rank evaluates a disjoint shard; should an image still appear on several ranks (a padded
    sampler), only the first rank's detections for it are kept.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(local)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(local))
    owner: dict[int, int] = {}
    merged = []
    for rank, part in enumerate(gathered):
        for det in part:
            if owner.setdefault(int(det["image_id"]), rank) == rank:
                merged.append(det)
    return merged


@torch.no_grad()
def evaluate_model(model: torch.nn.Module, loader, coco_gt: dict[str, Any], label_to_cat_id: dict[int, int],
                   device: torch.device | str, backend: str = "auto", predict=None) -> dict[str, Any]:
    """Run inference on this rank's shard, gather all ranks' detections, evaluate on every rank.

    ``predict(model, images)`` -> xyxy pixel boxes/scores/labels per image (``jobs.models.build_adapter``);
    None calls the model (the torchvision contract)."""
    was_training = model.training
    model.eval()
    detections: list[dict[str, Any]] = []
    try:
        for images, targets in loader:
            images = [img.to(device, non_blocking=True) for img in images]
            outputs = predict(model, images) if predict is not None else model(images)
            detections += predictions_to_coco(outputs, [t["image_id"] for t in targets], label_to_cat_id)
    finally:
        model.train(was_training)
    detections = gather_detections(detections)
    result = coco_evaluate(coco_gt, detections, sorted(label_to_cat_id.values()), backend=backend)
    result["num_detections"] = len(detections)
    return result
