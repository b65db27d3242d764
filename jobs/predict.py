"""Inference from an orch checkpoint: load it as a model, predict a folder of images, draw, evaluate.

What a checkpoint does not record is found this way (``load_model``):

* **which model** (name, input size, frozen BatchNorm): ``--config CFG`` if given, else the run's
  ``plan.json`` when the checkpoint sits in ``<run_dir>/checkpoints/``, else ``--model NAME``.
  Frozen BatchNorm is read off the weights (FrozenBatchNorm2d keeps no ``num_batches_tracked``),
  so a model fine-tuned from a pretrained checkpoint loads without its ``init_checkpoint``.
* **how many classes**: from the shapes of the classification head in the weights.
* **which category ids** (contiguous label ``k+1`` is ``category_ids[k]``, jobs/data's rule): from
  the TRAINING annotation file: ``--categories TRAIN.json``, else the config's
  ``data.train.ann_file``; failing both, from the val file (``orch eval --data``, or the
  config's ``data.val.ann_file``), with a note, since that is right only when both files list
  the same categories.

The weights are loaded with ``torch.load(weights_only=True)`` and, when the checkpoint has its
``.done`` marker, checked against it first.
"""
from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from torch import nn

from jobs import models
from jobs.checkpoint import CheckpointManager, marker_url
from orchestrator import cocofile, modelspec, runs, storage
from orchestrator.modelio import (  # noqa: F401 - torch-free, re-exported for callers of jobs.predict
    IMAGE_EXTENSIONS, list_images, pick_run_checkpoint, require_model_source, resolve_checkpoint,
)
from orchestrator import config as config_mod
from orchestrator.errors import OrchError

# (classification weight, regression weight) per family; classes = 4 * rows(cls) / rows(reg), since
# both heads have one row block per anchor (Faster R-CNN: one class-score row per class)
_HEAD_KEYS = (
    ("fasterrcnn", "roi_heads.box_predictor.cls_score.weight", None),
    ("retinanet", "head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight"),
    ("fcos", "head.classification_head.cls_logits.weight", "head.regression_head.bbox_reg.weight"),
    ("ssdlite", "head.classification_head.module_list.0.1.weight", "head.regression_head.module_list.0.1.weight"),
    ("ssd300", "head.classification_head.module_list.0.weight", "head.regression_head.module_list.0.weight"),
)


@dataclass
class LoadedModel:
    """A detector in eval mode plus what is needed to read its outputs."""

    model: nn.Module
    name: str
    model_cfg: dict[str, Any]
    num_classes: int                       # background included
    checkpoint_url: str
    run_dir: str | None = None
    config: dict[str, Any] | None = None   # the run's (or --config's) resolved config
    category_ids: list[int] | None = None  # label k+1 <-> category_ids[k]; None when unknown
    class_names: dict[int, str] = field(default_factory=dict)
    categories_from: str | None = None
    iteration: int | None = None
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    @property
    def label_to_cat_id(self) -> dict[int, int]:
        return {k + 1: cid for k, cid in enumerate(self.category_ids or [])}

    def describe(self) -> str:
        where = f" ({self.categories_from})" if self.categories_from else ""
        at = f", iteration {self.iteration}" if self.iteration is not None else ""
        return (f"checkpoint {self.checkpoint_url}{at}\nmodel      {self.name}, {self.num_classes - 1} classes "
                f"+ background{where}")


# ---------------------------------------------------------------- finding and reading checkpoints

def read_checkpoint(url: str) -> dict[str, Any]:
    """The checkpoint's state (weights_only), checked against its ``.done`` marker when it has one."""
    manager = CheckpointManager(storage.parent(url), async_save=False, retry_attempts=2)
    return manager.load(url, require_marker=storage.exists(marker_url(url)))


def model_state(state: dict[str, Any], url: str) -> dict[str, torch.Tensor]:
    """The weights to infer with: the EMA of the weights when the run kept one (model.ema; what its eval measured)."""
    ema = state.get("ema")
    weights = ema["module"] if isinstance(ema, dict) and isinstance(ema.get("module"), dict) else state.get("model")
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        keys = sorted(str(k) for k in state)[:8]
        raise OrchError(f"{url} has no 'model' state_dict (its keys: {keys}): it is not an orch checkpoint; use "
                        f"one from <run_dir>/checkpoints/, or re-save the weights as {{'model': model.state_dict()}}")
    return models.strip_wrapper_prefixes(weights)


def infer_num_classes(name: str, weights: dict[str, torch.Tensor]) -> int | None:
    """Classes (background included) from the head's weight shapes; None when the keys are not there."""
    if modelspec.is_detr(name):
        from jobs.detr_adapter import num_classes_in

        return num_classes_in(name, weights)
    for family, cls_key, reg_key in _HEAD_KEYS:
        if not name.startswith(family) or cls_key not in weights:
            continue
        rows = int(weights[cls_key].shape[0])
        if reg_key is None:
            return rows
        if reg_key in weights and (4 * rows) % int(weights[reg_key].shape[0]) == 0:
            return 4 * rows // int(weights[reg_key].shape[0])
    return None


def inference_model_cfg(model_cfg: dict[str, Any], weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The config to rebuild the trained model for inference: no init checkpoint to read, nothing to
    freeze, and FrozenBatchNorm exactly where the weights have it."""
    cfg = {k: v for k, v in model_cfg.items() if k in models.MODEL_KEYS}
    cfg.update(init_checkpoint=None, trainable_backbone_layers=None, frozen_bn=None)
    name = cfg.get("name")
    if name in models.MODELS and models.MODELS[name].backbone != "ssd":
        cfg["frozen_bn"] = not any(k.startswith("backbone.body.") and k.endswith("num_batches_tracked")
                                   for k in weights)
    return cfg


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(ref: str, *, model_name: str | None = None, config_file: str | None = None,
               categories_file: str | None = None, fallback_categories_file: str | None = None,
               min_size: int | None = None, max_size: int | None = None, device: str | None = None,
               work_dir: str | None = None) -> LoadedModel:
    """Build the detector a checkpoint (or run) was trained as and load its weights (module docstring)."""
    url, run_dir = resolve_checkpoint(ref, work_dir)
    release = _release_weights(url, run_dir, model_name)
    state = {} if release is not None else read_checkpoint(url)
    weights = release if release is not None else model_state(state, url)
    config = None
    if config_file:
        config = config_mod.load_config(config_file).data
    elif run_dir is not None:
        config = runs.read_plan(run_dir)["config"]
    if config and config.get("storage_options"):  # e.g. the endpoint of the store holding the data
        # the run's (or --config's) options fill in what the user's $ORCH_STORAGE_OPTIONS leaves out
        storage.use(storage.StorageOptions.parse(config["storage_options"]).merged(storage.active()))
    model_cfg = dict((config or {}).get("model") or {})
    if model_name:
        model_cfg["name"] = model_name
    name = model_cfg.get("name")
    if not name:
        require_model_source(url, None, None, None, models.MODELS)
    if name not in models.MODELS:
        raise OrchError(f"unknown model {name!r}; valid names are {', '.join(sorted(models.MODELS))}")
    if min_size is not None:
        model_cfg["min_size"] = min_size
        if max_size is None and models.MODELS[name].backbone == "ssd":
            model_cfg["max_size"] = None  # SSD takes one square size: --min-size alone sets it
    if max_size is not None:
        model_cfg["max_size"] = max_size

    loaded = LoadedModel(model=nn.Identity(), name=name, model_cfg=model_cfg, num_classes=0, checkpoint_url=url,
                         run_dir=run_dir, config=config, iteration=state.get("iteration"),
                         device=device or default_device())
    data = (config or {}).get("data") or {}
    train_ann, val_ann = (data.get(split, {}).get("ann_file") for split in ("train", "val"))
    _find_categories(loaded, categories_file, train_ann, fallback_categories_file or val_ann)

    head_classes = infer_num_classes(name, weights)
    if loaded.category_ids is not None and head_classes is not None \
            and head_classes != len(loaded.category_ids) + 1:
        raise OrchError(f"{url} was trained for {head_classes - 1} classes but {loaded.categories_from} lists "
                        f"{len(loaded.category_ids)} categories: pass the annotation file it was trained on with "
                        f"--categories TRAIN.json")
    num_classes = head_classes or (len(loaded.category_ids) + 1 if loaded.category_ids is not None else None)
    if num_classes is None:
        raise OrchError(f"cannot tell how many classes {url} predicts as {name}: pass --model with the model it "
                        f"was trained as, or --categories TRAIN.json")
    loaded.num_classes = num_classes
    loaded.model = _build_and_load(inference_model_cfg(model_cfg, weights), num_classes, weights, url)
    loaded.model.to(loaded.device).eval()
    return loaded


def _release_weights(url: str, run_dir: str | None, model_name: str | None) -> dict[str, torch.Tensor] | None:
    """A transformer detector's release outside a run dir (an HF folder or an official RT-DETR .pth),
    in the model's own tensor names; None for anything else (an orch checkpoint)."""
    if run_dir is not None or not modelspec.is_detr(model_name):
        return None
    from jobs import detr_weights

    return detr_weights.release_state_dict(model_name, url)


def _find_categories(loaded: LoadedModel, categories_file: str | None, train_ann: str | None,
                     fallback: str | None) -> None:
    candidates = [(categories_file, "--categories"), (train_ann, "data.train.ann_file"),
                  (fallback, "fallback")]
    for source, role in candidates:
        if not source:
            continue
        source = storage.absolute(source)
        try:
            coco = cocofile.load_coco(source)
        except OrchError as exc:
            if role == "--categories":
                raise
            loaded.notes.append(f"{role} {source} could not be read ({exc})")
            continue
        if not coco["categories"]:
            raise OrchError(f"{source} lists no categories, so labels cannot be mapped to category ids; pass the "
                            f"training annotation file with --categories")
        loaded.category_ids = cocofile.category_ids(coco)
        loaded.class_names = {int(c["id"]): str(c.get("name", c["id"])) for c in coco["categories"]}
        loaded.categories_from = source
        if role == "fallback":
            loaded.notes.append(f"category ids come from {source}, not from the training annotation file: they are "
                                f"right only if both list the same categories (pass --categories TRAIN.json to be "
                                f"sure)")
        return


def _build_and_load(cfg: dict[str, Any], num_classes: int, weights: dict[str, torch.Tensor], url: str) -> nn.Module:
    try:
        model = models.build_model(cfg, num_classes)
    except ValueError as exc:
        raise OrchError(f"cannot build {cfg.get('name')} for {url}: {exc}") from None
    own = model.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    wrong = [k for k in own if k in weights and tuple(own[k].shape) != tuple(weights[k].shape)]
    if missing or unexpected or wrong:
        example = (missing + unexpected + wrong)[0]
        raise OrchError(f"{url} does not fit {cfg['name']} ({len(missing)} tensors missing, {len(unexpected)} "
                        f"unexpected, {len(wrong)} of another shape, e.g. {example}): pass --model with the model "
                        f"it was trained as (or the run's --config)")
    model.load_state_dict(weights)
    return model


# ---------------------------------------------------------------- images

def read_image(url: str) -> Image.Image:
    """RGB PIL image (no EXIF rotation: training reads pixels the same way, see jobs/data.py)."""
    try:
        with Image.open(io.BytesIO(storage.read_bytes(url))) as pil:
            return pil.convert("RGB")
    except (UnidentifiedImageError, OSError) as exc:
        raise OrchError(f"cannot decode image {url}: {exc}; remove it from the folder or re-encode it") from None


def to_tensor(image: Image.Image) -> torch.Tensor:
    """float32 [3, H, W] in [0, 1], what the detectors take (they normalise inside)."""
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).to(torch.float32).div_(255.0)


@torch.no_grad()
def run_batches(loaded: LoadedModel, img_dir: str, names: Sequence[str], batch_size: int = 4
                ) -> Iterator[tuple[str, Image.Image, dict[str, torch.Tensor]]]:
    """(file name, image, CPU output) per image, ``batch_size`` images per forward pass."""
    for start in range(0, len(names), max(1, batch_size)):
        chunk = names[start:start + max(1, batch_size)]
        images = [read_image(storage.join(img_dir, n)) for n in chunk]
        outputs = models.build_adapter(loaded.model_cfg).predict(loaded.model,
                                                                 [to_tensor(im).to(loaded.device) for im in images])
        for name, image, output in zip(chunk, images, outputs):
            yield name, image, {k: v.detach().cpu() for k, v in output.items()}


# ---------------------------------------------------------------- predict

def predict_folder(loaded: LoadedModel, img_dir: str, out_url: str, *, score_thr: float = 0.3, batch_size: int = 4,
                   draw_dir: str | None = None, image_ids_file: str | None = None) -> dict[str, Any]:
    """Predict every image in ``img_dir``; write COCO results (original category ids) to ``out_url``.

    Each result is ``{"image_id", "file_name", "category_id", "bbox": [x, y, w, h], "score"}``:
    a plain COCO results list (``COCO.loadRes`` reads it) with the file name added. Image ids are
    1..N in sorted file-name order, or those of ``image_ids_file`` (a COCO json, matched by
    ``file_name``) so the results can be scored against it.
    """
    if loaded.category_ids is None:
        raise OrchError(f"the category ids of {loaded.checkpoint_url} are unknown (no run dir): pass the training "
                        f"annotation file with --categories TRAIN.json")
    names = list_images(img_dir)
    ids = {n: k + 1 for k, n in enumerate(names)}
    if image_ids_file:
        coco = cocofile.load_coco(storage.absolute(image_ids_file))
        by_name = {str(img["file_name"]): int(img["id"]) for img in coco["images"]}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise OrchError(f"{image_ids_file} has no image with file_name {unknown[0]!r} ({len(unknown)} of "
                            f"{len(names)} files in {img_dir} are not in it); pass the annotation file of this folder")
        ids = {n: by_name[n] for n in names}
    label_to_cat_id = loaded.label_to_cat_id
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    empty = 0
    for name, image, output in run_batches(loaded, img_dir, names, batch_size):
        keep = output["scores"] >= score_thr
        kept = {k: v[keep] for k, v in output.items()}
        found = _to_coco(kept, ids[name], name, label_to_cat_id)
        empty += not found
        results += found
        if draw_dir:
            drawn = draw_detections(image, found, loaded.class_names)
            buffer = io.BytesIO()
            drawn.save(buffer, format=_pil_format(name))
            storage.write_bytes(storage.join(draw_dir, name), buffer.getvalue())
    storage.write_text(out_url, _results_json(results))
    return {"out": out_url, "images": len(names), "detections": len(results), "images_without_detections": empty,
            "seconds": time.perf_counter() - started, "draw_dir": draw_dir}


def _to_coco(output: dict[str, torch.Tensor], image_id: int, file_name: str,
             label_to_cat_id: dict[int, int]) -> list[dict[str, Any]]:
    from jobs.evaluate import predictions_to_coco

    found = predictions_to_coco([output], [image_id], label_to_cat_id)
    for det in found:
        det["file_name"] = file_name
    return found


def _results_json(results: list[dict[str, Any]]) -> str:
    import json

    # one detection per line: diffable, and still a single JSON list
    return "[\n" + ",\n".join(json.dumps(r) for r in results) + "\n]\n" if results else "[]\n"


def _pil_format(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower()
    return {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "bmp": "BMP", "webp": "WEBP", "tif": "TIFF",
            "tiff": "TIFF"}.get(ext, "PNG")


# 10 colours that stay apart on photos (tab10)
_PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
            (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def draw_detections(image: Image.Image, detections: Sequence[dict[str, Any]],
                    class_names: dict[int, str]) -> Image.Image:
    """A copy of ``image`` with each COCO detection's box and "name score" label drawn on it."""
    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    width = max(1, round(min(canvas.size) / 200))
    for det in sorted(detections, key=lambda d: d["score"]):  # best drawn last, on top
        x, y, w, h = det["bbox"]
        colour = _PALETTE[int(det["category_id"]) % len(_PALETTE)]
        draw.rectangle((x, y, x + w, y + h), outline=colour, width=width)
        text = f"{class_names.get(int(det['category_id']), det['category_id'])} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        lift = bottom - top + 2
        box_top = y - lift if y - lift >= 0 else y
        draw.rectangle((x, box_top, x + (right - left) + 4, box_top + lift), fill=colour)
        draw.text((x + 2, box_top + 1 - (top - y)), text, fill=(255, 255, 255), font=font)
    return canvas


# ---------------------------------------------------------------- evaluate

def evaluate_checkpoint(loaded: LoadedModel, ann_file: str, img_dir: str, *, batch_size: int = 4,
                        workers: int = 0) -> dict[str, Any]:
    """COCO bbox evaluation of the loaded model on ``ann_file`` / ``img_dir`` (jobs.evaluate)."""
    from torch.utils.data import DataLoader

    from jobs.data import CocoDetection, collate_fn
    from jobs.evaluate import evaluate_model

    dataset = CocoDetection(ann_file, img_dir, train=False, keep_coco=True)
    if loaded.category_ids is None:  # cannot happen with a fallback file, kept for direct callers
        raise OrchError(f"the category ids of {loaded.checkpoint_url} are unknown: pass --categories TRAIN.json")
    notes = []
    missing = sorted(set(dataset.category_ids) - set(loaded.category_ids))
    if missing:
        notes.append(f"{ann_file} has categories {missing} the model was not trained on: they are not evaluated")
    loader = DataLoader(dataset, batch_size=max(1, batch_size), shuffle=False, collate_fn=collate_fn,
                        num_workers=workers)
    started = time.perf_counter()
    result = evaluate_model(loaded.model, loader, dataset.coco, loaded.label_to_cat_id, loaded.device,
                            predict=models.build_adapter(loaded.model_cfg).predict)
    result.update(num_images=len(dataset), seconds=time.perf_counter() - started, notes=notes)
    return result
