"""COCO detection data for the training job: dataset, augmentation, deterministic batches, loaders.

Two rules make an exact resume possible (docs/design.md, "Determinism"):

* Batches come from :class:`DistributedGroupedBatchSampler`: epoch ``e`` is a permutation seeded
  by ``(seed, e)``, grouped by aspect ratio and cut into global batches of
  ``world_size * batch_per_gpu``; rank ``r`` takes slice ``r`` of each. Resuming at
  ``(epoch, step)`` starts at that step without touching the earlier batches.
* Augmentation randomness is drawn from a ``torch.Generator`` seeded by
  ``(seed, epoch, image index)``: the sampler hands ``(index, epoch)`` pairs to the dataset, so
  whichever worker process loads a sample draws the same flip, scale and colour jitter.

Category ids of any kind (Roboflow's unused id 0, sparse ids) map to contiguous labels ``1..K``
in :func:`orchestrator.cocofile.category_ids` order; ``label_to_cat_id`` maps back.
"""
from __future__ import annotations

import hashlib
import io
import logging
import math
import random
import signal
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from orchestrator import cocofile, storage
from orchestrator.cocofile import AnnotationError
from orchestrator.schema import AUGMENT_IOU_CROP, AUGMENT_PHOTOMETRIC, AUGMENT_RESIZE, AUGMENT_ZOOM_OUT

log = logging.getLogger(__name__)

DEFAULT_AUGMENT: dict[str, Any] = {"hflip": 0.5, "resize": None, "photometric": None, "zoom_out": None,
                                   "iou_crop": None, "multiscale": None, "stop_epoch": None}
ZOOM_OUT_DEFAULTS = {"p": 0.5, "max_scale": 4.0}  # RT-DETR's RandomZoomOut(fill=0, side_range=(1, 4))
IOU_CROP_DEFAULTS = {"p": 0.8}                   # RT-DETR's RandomIoUCrop(p=0.8)
# torchvision's RandomIoUCrop defaults (SSD): crop scale, aspect ratio, min-IoU options, trials
_IOU_CROP_SCALE, _IOU_CROP_ASPECT = (0.3, 1.0), (0.5, 2.0)
_IOU_CROP_OPTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
_IOU_CROP_TRIALS, _IOU_CROP_ROUNDS = 40, 50
_PHOTOMETRIC_KEYS = tuple(AUGMENT_PHOTOMETRIC)  # the config schema's keys, in the order the jitters apply
_RESIZE_KEYS = tuple(AUGMENT_RESIZE)


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, e.g. ``(seed, epoch, index)``; stable across processes."""
    digest = hashlib.blake2b(":".join(str(int(p)) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


# ---------------------------------------------------------------- augmentation

def validate_augment(augment: dict[str, Any] | None) -> dict[str, Any]:
    """Fill defaults and reject unknown keys; ``None`` means no augmentation at all."""
    if augment is None:
        return {**DEFAULT_AUGMENT, "hflip": 0.0}
    unknown = sorted(set(augment) - set(DEFAULT_AUGMENT))
    if unknown:
        raise ValueError(f"data.augment: unknown key(s) {unknown}; valid keys are {sorted(DEFAULT_AUGMENT)}")
    cfg = {**DEFAULT_AUGMENT, **augment}
    if not 0.0 <= float(cfg["hflip"] or 0.0) <= 1.0:
        raise ValueError(f"data.augment.hflip: {cfg['hflip']!r} must be a probability in [0, 1]")
    cfg["hflip"] = float(cfg["hflip"] or 0.0)
    resize = cfg["resize"]
    if resize is not None:
        unknown = sorted(set(resize) - set(_RESIZE_KEYS))
        if unknown or "min_size" not in resize:
            raise ValueError(f"data.augment.resize: {resize!r} needs min_size (int or list) and optionally "
                             f"max_size; valid keys are {list(_RESIZE_KEYS)}")
        min_sizes = resize["min_size"]
        min_sizes = [int(min_sizes)] if isinstance(min_sizes, (int, float)) else [int(s) for s in min_sizes]
        if not min_sizes or min(min_sizes) <= 0:
            raise ValueError(f"data.augment.resize.min_size: {resize['min_size']!r} must be positive sizes")
        max_size = resize.get("max_size")
        cfg["resize"] = {"min_size": min_sizes, "max_size": int(max_size) if max_size else None}
    photometric = cfg["photometric"]
    if photometric is not None:
        unknown = sorted(set(photometric) - set(_PHOTOMETRIC_KEYS))
        if unknown:
            raise ValueError(f"data.augment.photometric: unknown key(s) {unknown}; valid keys are "
                             f"{list(_PHOTOMETRIC_KEYS)}")
        cfg["photometric"] = {k: float(photometric.get(k) or 0.0) for k in _PHOTOMETRIC_KEYS}
        if not 0.0 <= cfg["photometric"]["hue"] <= 0.5:
            raise ValueError(f"data.augment.photometric.hue: {photometric['hue']!r} must be in [0, 0.5]")
    for name, keys, defaults in (("zoom_out", AUGMENT_ZOOM_OUT, ZOOM_OUT_DEFAULTS),
                                 ("iou_crop", AUGMENT_IOU_CROP, IOU_CROP_DEFAULTS)):
        value = cfg[name]
        if value is None:
            continue
        unknown = sorted(set(value) - set(keys))
        if unknown:
            raise ValueError(f"data.augment.{name}: unknown key(s) {unknown}; valid keys are {list(keys)}")
        cfg[name] = {k: float(value.get(k) if value.get(k) is not None else v) for k, v in defaults.items()}
        if not 0.0 <= cfg[name]["p"] <= 1.0:
            raise ValueError(f"data.augment.{name}.p: {value['p']!r} must be a probability in [0, 1]")
    if cfg["zoom_out"] is not None and cfg["zoom_out"]["max_scale"] < 1.0:
        raise ValueError(f"data.augment.zoom_out.max_scale: {cfg['zoom_out']['max_scale']!r} must be >= 1")
    if cfg["multiscale"] is not None:
        scales = cfg["multiscale"]
        if not isinstance(scales, list) or not scales or not all(isinstance(x, int) and x > 0 for x in scales):
            raise ValueError(f"data.augment.multiscale: {scales!r} must be a non-empty list of sizes in pixels")
        cfg["multiscale"] = [int(x) for x in scales]
    if cfg["stop_epoch"] is not None:
        cfg["stop_epoch"] = int(cfg["stop_epoch"])
    return cfg


def augment_for_epoch(augment: dict[str, Any], epoch: int) -> dict[str, Any]:
    """The validated ``augment`` in effect at ``epoch``: from ``stop_epoch`` on, photometric,
    zoom-out and IoU-crop are off (RT-DETR's stop_epoch policy). A pure function of the epoch."""
    stop = augment.get("stop_epoch")
    if stop is None or epoch < stop:
        return augment
    return {**augment, "photometric": None, "zoom_out": None, "iou_crop": None}


def multiscale_size(augment: dict[str, Any] | None, seed: int, iteration: int, iters_per_epoch: int) -> int | None:
    """The input size (px) of global step ``iteration``'s training batch, drawn from
    ``augment["multiscale"]`` with a generator seeded by ``(seed, epoch, step)``: every rank draws
    the same, and a resume draws what the run would have. None (the model's own size) when
    multi-scale is off or from ``augment["stop_epoch"]`` on (RT-DETR's collate stops there too)."""
    sizes = (augment or {}).get("multiscale")
    epoch, step = divmod(int(iteration), int(iters_per_epoch))
    stop = (augment or {}).get("stop_epoch")
    if not sizes or (stop is not None and epoch >= stop):
        return None
    gen = torch.Generator().manual_seed(derive_seed(seed, epoch, step, 2))
    return int(sizes[int(torch.randint(len(sizes), (), generator=gen))])


def _zoom_out(image: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes, cfg: dict[str, float],
              gen: torch.Generator) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes]:
    """RandomZoomOut(fill=0, side_range=(1, max_scale)): the image pasted at a random place on a
    black canvas ``r`` times its size. Always four draws from ``gen``."""
    apply, ratio, left_draw, top_draw = torch.rand(4, generator=gen).tolist()
    if apply >= cfg["p"]:
        return image, boxes
    height, width = image.shape[-2:]
    ratio = 1.0 + (cfg["max_scale"] - 1.0) * ratio
    canvas_w, canvas_h = int(width * ratio), int(height * ratio)
    left, top = int((canvas_w - width) * left_draw), int((canvas_h - height) * top_draw)
    padding = [left, top, canvas_w - width - left, canvas_h - height - top]
    return F.pad(image, padding, fill=0), F.pad(boxes, padding)


def _iou_crop_window(boxes: torch.Tensor, height: int, width: int,
                     gen: torch.Generator) -> tuple[int, int, int, int] | None:
    """torchvision's RandomIoUCrop search (SSD): a window (top, left, h, w) holding some box centre
    with IoU >= a drawn minimum, or None (no crop). Bounded rounds, all draws from ``gen``."""
    from torchvision.ops import box_iou

    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    for _ in range(_IOU_CROP_ROUNDS):
        min_iou = _IOU_CROP_OPTIONS[int(torch.randint(len(_IOU_CROP_OPTIONS), (), generator=gen))]
        if min_iou >= 1.0:
            return None
        for _ in range(_IOU_CROP_TRIALS):
            low, high = _IOU_CROP_SCALE
            scale = (low + (high - low) * torch.rand(2, generator=gen)).tolist()
            new_w, new_h = int(width * scale[0]), int(height * scale[1])
            if new_h == 0 or not _IOU_CROP_ASPECT[0] <= new_w / new_h <= _IOU_CROP_ASPECT[1]:
                continue
            where = torch.rand(2, generator=gen).tolist()
            left, top = int((width - new_w) * where[0]), int((height - new_h) * where[1])
            if new_w == 0:
                continue
            right, bottom = left + new_w, top + new_h
            inside = ((left < centres[:, 0]) & (centres[:, 0] < right)
                      & (top < centres[:, 1]) & (centres[:, 1] < bottom))
            if not inside.any():
                continue
            window = torch.tensor([[left, top, right, bottom]], dtype=boxes.dtype)
            if float(box_iou(boxes[inside], window).max()) < min_iou:
                continue
            return top, left, new_h, new_w
    return None


def zoom_and_crop(image: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes, augment: dict[str, Any],
                  gen: torch.Generator) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes, torch.Tensor]:
    """RT-DETR's RandomZoomOut, RandomIoUCrop and SanitizeBoundingBoxes(min_size=1) from the
    validated ``augment``; every draw from ``gen``. Returns the image, the kept boxes and the keep
    mask over the input boxes (for the labels)."""
    keep = torch.ones(len(boxes), dtype=torch.bool)
    if augment.get("zoom_out") is not None:
        image, boxes = _zoom_out(image, boxes, augment["zoom_out"], gen)
    crop = augment.get("iou_crop")
    if crop is None or len(boxes) == 0:
        return image, boxes, keep
    if float(torch.rand((), generator=gen)) >= crop["p"]:
        return image, boxes, keep
    height, width = image.shape[-2:]
    plain = boxes.as_subclass(torch.Tensor)
    window = _iou_crop_window(plain, height, width, gen)
    if window is None:
        return image, boxes, keep
    top, left, new_h, new_w = window
    centres = (plain[:, :2] + plain[:, 2:]) / 2
    inside = ((left < centres[:, 0]) & (centres[:, 0] < left + new_w)
              & (top < centres[:, 1]) & (centres[:, 1] < top + new_h))
    image, boxes = F.crop(image, top, left, new_h, new_w), F.crop(boxes, top, left, new_h, new_w)
    cropped = boxes.as_subclass(torch.Tensor)
    keep = inside & ((cropped[:, 2] - cropped[:, 0]) >= 1) & ((cropped[:, 3] - cropped[:, 1]) >= 1)
    boxes = tv_tensors.wrap(cropped[keep], like=boxes)
    return image, boxes, keep


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def augment_sample(image: tv_tensors.Image, boxes: tv_tensors.BoundingBoxes, augment: dict[str, Any],
                   gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the validated ``augment`` config, every random choice drawn from ``gen``.

    The draws happen in a fixed order whether or not an option is enabled, so enabling one option
    never changes the draws of another.
    """
    flip_draw = float(torch.rand((), generator=gen))
    size_draw = int(torch.randint(0, 1 << 30, (), generator=gen))
    jitter_draws = torch.rand(4, generator=gen).tolist()
    jitter_order = torch.randperm(4, generator=gen).tolist()

    if flip_draw < augment["hflip"]:
        image, boxes = F.horizontal_flip(image), F.horizontal_flip(boxes)
    resize = augment["resize"]
    if resize is not None:
        height, width = image.shape[-2:]
        short_side = resize["min_size"][size_draw % len(resize["min_size"])]
        scale = short_side / min(height, width)
        if resize["max_size"] and max(height, width) * scale > resize["max_size"]:
            scale = resize["max_size"] / max(height, width)
        new_size = [max(1, round(height * scale)), max(1, round(width * scale))]
        image, boxes = F.resize(image, new_size, antialias=True), F.resize(boxes, new_size)
    photometric = augment["photometric"]
    if photometric is not None:
        for which in jitter_order:
            key = _PHOTOMETRIC_KEYS[which]
            amount = photometric[key]
            if amount <= 0:
                continue
            if key == "hue":
                image = F.adjust_hue(image, -amount + 2 * amount * jitter_draws[which])
            else:
                factor = max(0.0, 1 - amount + 2 * amount * jitter_draws[which])
                adjust = {"brightness": F.adjust_brightness, "contrast": F.adjust_contrast,
                          "saturation": F.adjust_saturation}[key]
                image = adjust(image, factor)
    return image, boxes


# ---------------------------------------------------------------- dataset

def _box_counts_line(name: str, counts: dict[str, int]) -> str:
    return (f"{name}: {counts['images']} images, {counts['boxes']} boxes kept; {counts['clipped']} clipped to "
            f"the image, {counts['dropped']} degenerate dropped, {counts['crowd']} crowd ignored, "
            f"{counts['empty_images_skipped']} images without boxes skipped")


class CocoDetection(Dataset):
    """Images and torchvision detection targets from a COCO json, both read through storage.

    ``dataset[i]`` uses the epoch set by :meth:`set_epoch`; ``dataset[(i, epoch)]`` (what the
    batch sampler yields) carries the epoch with the index, which also works in worker processes
    that never see ``set_epoch``.
    """

    def __init__(self, ann_file: str, img_dir: str, *, train: bool, filter_empty: bool = True,
                 augment: dict[str, Any] | None = None, seed: int = 0, keep_coco: bool = False):
        coco = cocofile.load_coco(ann_file)
        self.ann_file, self.img_dir, self.train, self.seed, self.epoch = ann_file, img_dir, train, seed, 0
        self.augment = validate_augment(augment) if train else validate_augment(None)
        self.category_ids = cocofile.category_ids(coco)
        self.cat_id_to_label = {cid: k + 1 for k, cid in enumerate(self.category_ids)}
        self.label_to_cat_id = {k + 1: cid for k, cid in enumerate(self.category_ids)}
        self.class_names = {int(c["id"]): str(c.get("name", c["id"])) for c in coco["categories"]}
        self.image_ids = cocofile.train_image_ids(coco, filter_empty, source=ann_file) if train else sorted(
            int(img["id"]) for img in coco["images"])
        images = {int(img["id"]): img for img in coco["images"]}
        self.file_names = [str(images[i]["file_name"]) for i in self.image_ids]
        self.sizes = [(int(images[i].get("width", 0)), int(images[i].get("height", 0))) for i in self.image_ids]
        self.boxes, self.labels, self.counts = self._targets(coco)
        self.counts["empty_images_skipped"] = len(coco["images"]) - len(self.image_ids)
        log.info(_box_counts_line(ann_file, self.counts))
        self.coco = coco if keep_coco else None  # a 450 MB json should not be copied into every worker

    def _targets(self, coco: dict[str, Any]):
        position = {image_id: k for k, image_id in enumerate(self.image_ids)}
        boxes: list[list[list[float]]] = [[] for _ in self.image_ids]
        labels: list[list[int]] = [[] for _ in self.image_ids]
        counts = {"images": len(self.image_ids), "boxes": 0, "clipped": 0, "dropped": 0, "crowd": 0}
        for ann in coco["annotations"]:
            k = position.get(ann.get("image_id"))
            if k is None:
                continue
            if ann.get("iscrowd", 0):
                counts["crowd"] += 1
                continue
            cat_id = ann.get("category_id")
            if cat_id not in self.cat_id_to_label:
                raise AnnotationError(f"{self.ann_file}: annotation {ann.get('id')} has category_id {cat_id!r}, "
                                      f"which is not among the categories {self.category_ids}; fix the file")
            width, height = self.sizes[k]
            try:
                box = cocofile.clipped_box(ann.get("bbox"), width, height)
            except cocofile.BadBoxError as exc:
                raise AnnotationError(f"{self.ann_file}: annotation {ann.get('id')!r}: {exc}; fix the file") from None
            if box is None:
                counts["dropped"] += 1
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if box != [x, y, x + w, y + h]:
                counts["clipped"] += 1
            boxes[k].append(box)
            labels[k].append(self.cat_id_to_label[cat_id])
            counts["boxes"] += 1
        as_boxes = [torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes]
        as_labels = [torch.tensor(lab, dtype=torch.int64) for lab in labels]
        return as_boxes, as_labels, counts

    def __len__(self) -> int:
        return len(self.image_ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def aspect_groups(self) -> list[int]:
        """0 for landscape or square (w >= h), 1 for portrait, from the json sizes (no image reads)."""
        return [0 if w >= h else 1 for w, h in self.sizes]

    def load_image(self, index: int) -> tv_tensors.Image:
        url = storage.join(self.img_dir, self.file_names[index])
        with Image.open(io.BytesIO(storage.read_bytes(url))) as pil:
            array = np.asarray(pil.convert("RGB"))
        width, height = self.sizes[index]
        if array.shape[:2] != (height, width):
            raise AnnotationError(f"{self.ann_file}: image {self.image_ids[index]} ({url}) is "
                                  f"{array.shape[1]}x{array.shape[0]} but the json says {width}x{height}; "
                                  f"boxes would be wrong: fix the width/height in the annotation file")
        return tv_tensors.Image(torch.from_numpy(array.copy()).permute(2, 0, 1))

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        index, epoch = (int(item[0]), int(item[1])) if isinstance(item, tuple) else (int(item), self.epoch)
        image = self.load_image(index)
        boxes = tv_tensors.BoundingBoxes(self.boxes[index].clone(), format="XYXY",
                                         canvas_size=tuple(image.shape[-2:]))
        labels = self.labels[index].clone()
        if self.train:
            augment = augment_for_epoch(self.augment, epoch)
            if augment["zoom_out"] is not None or augment["iou_crop"] is not None:
                # a generator of its own, so these never shift the flip/scale/jitter draws below
                spatial = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index, 1))
                image, boxes, keep = zoom_and_crop(image, boxes, augment, spatial)
                labels = labels[keep]
            gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch, index))
            image, boxes = augment_sample(image, boxes, augment, gen)
        target = {"boxes": boxes.as_subclass(torch.Tensor).to(torch.float32),
                  "labels": labels, "image_id": self.image_ids[index]}
        return F.to_dtype(image, torch.float32, scale=True).as_subclass(torch.Tensor), target


# ---------------------------------------------------------------- batches

class DistributedGroupedBatchSampler:
    """Deterministic per-rank batches of ``(index, epoch)`` pairs; ``iters_per_epoch`` per epoch.

    ``iters_per_epoch = ceil(len(group_ids) / (world_size * batch_per_gpu))`` (the planner's
    formula). Global batches are aspect-pure where possible; the last one or two are padded with
    other images of the same permutation (never one already in that batch, unless the dataset is
    smaller than a global batch) so every rank always gets a full batch.
    """

    def __init__(self, group_ids: Sequence[int], batch_per_gpu: int, world_size: int, rank: int, seed: int,
                 epoch: int = 0, start_step: int = 0, group_by_aspect: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if batch_per_gpu < 1 or not group_ids:
            raise ValueError(f"need batch_per_gpu >= 1 (got {batch_per_gpu}) and a non-empty dataset "
                             f"(got {len(group_ids)} images)")
        self.group_ids = [int(g) if group_by_aspect else 0 for g in group_ids]
        self.batch_per_gpu, self.world_size, self.rank, self.seed = batch_per_gpu, world_size, rank, seed
        self.total_batch = world_size * batch_per_gpu
        self.iters_per_epoch = math.ceil(len(self.group_ids) / self.total_batch)
        self.epoch, self.start_step = 0, 0
        self.set_epoch(epoch, start_step)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.iters_per_epoch:
            raise ValueError(f"start_step {start_step} is outside [0, {self.iters_per_epoch}]")
        self.epoch, self.start_step = int(epoch), int(start_step)

    def global_batches(self, epoch: int) -> list[list[int]]:
        """All global batches of an epoch (dataset indices), in order."""
        gen = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        order = torch.randperm(len(self.group_ids), generator=gen).tolist()
        size = self.total_batch
        batches: list[list[int]] = []
        pending: dict[int, list[int]] = {}
        for index in order:
            bucket = pending.setdefault(self.group_ids[index], [])
            bucket.append(index)
            if len(bucket) == size:
                batches.append(bucket)
                pending[self.group_ids[index]] = []
        leftovers = [bucket for _, bucket in sorted(pending.items()) if bucket]
        missing = self.iters_per_epoch - len(batches)
        if missing == len(leftovers):  # one batch per group: keep each aspect-pure where the group is big enough
            for bucket in leftovers:
                group = self.group_ids[bucket[0]]
                same = [i for i in order if self.group_ids[i] == group]
                batches.append(_fill(bucket, same + [i for i in order if self.group_ids[i] != group], size))
        elif missing == 1:  # both groups' leftovers fit in one batch
            batches.append(_fill([i for bucket in leftovers for i in bucket], order, size))
        assert len(batches) == self.iters_per_epoch and all(len(b) == size for b in batches)
        return batches

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, lo = self.epoch, self.rank * self.batch_per_gpu
        for batch in self.global_batches(epoch)[self.start_step:]:
            yield [(index, epoch) for index in batch[lo:lo + self.batch_per_gpu]]

    def __len__(self) -> int:
        return self.iters_per_epoch - self.start_step


def _fill(batch: list[int], candidates: list[int], size: int) -> list[int]:
    """Pad ``batch`` to ``size`` with ``candidates`` in order, skipping indices it already holds, so a
    global batch never shows one image to two ranks; only a dataset smaller than one global batch
    repeats images (cyclically)."""
    batch = list(batch)
    taken = set(batch)
    for index in candidates:
        if len(batch) == size:
            return batch
        if index not in taken:
            batch.append(index)
            taken.add(index)
    short = size - len(batch)
    return batch + [candidates[k % len(candidates)] for k in range(short)]


# ---------------------------------------------------------------- loaders

def collate_fn(batch):
    """(images, targets) tuples: detection images differ in size, so nothing is stacked."""
    return tuple(zip(*batch))


def worker_init_fn(worker_id: int) -> None:
    """Seed python and numpy from torch's per-worker seed (augmentation itself never uses them)."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    # SLURM signals every process of a job step (SIGUSR2 warning, SIGTERM): a loader worker that
    # died of it would crash the training process before it could checkpoint. The trainer acts.
    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def _data_cfg(config: dict[str, Any]) -> dict[str, Any]:
    data = config.get("data")
    if not isinstance(data, dict):
        raise ValueError("config has no 'data' section with train/val ann_file and img_dir")
    return data


def _split(data: dict[str, Any], name: str) -> tuple[str, str]:
    split = data.get(name)
    if not isinstance(split, dict) or not split.get("ann_file") or not split.get("img_dir"):
        raise ValueError(f"config data.{name} needs ann_file and img_dir, got {split!r}")
    return str(split["ann_file"]), str(split["img_dir"])


def _loader_kwargs(data: dict[str, Any], seed: int) -> dict[str, Any]:
    num_workers = int(data.get("num_workers", 2))
    return {"num_workers": num_workers, "collate_fn": collate_fn, "worker_init_fn": worker_init_fn,
            "pin_memory": bool(data.get("pin_memory", torch.cuda.is_available())),
            "persistent_workers": num_workers > 0,
            # the loader draws worker base seeds from this, never from the global RNG
            "generator": torch.Generator().manual_seed(seed)}


def build_train_dataset(config: dict[str, Any]) -> CocoDetection:
    data = _data_cfg(config)
    ann_file, img_dir = _split(data, "train")
    return CocoDetection(ann_file, img_dir, train=True, filter_empty=bool(data.get("filter_empty", True)),
                         augment=data.get("augment", DEFAULT_AUGMENT), seed=int(config.get("seed", 0)))


def build_train_loader(config: dict[str, Any], plan: dict[str, Any], rank: int, world_size: int,
                       epoch: int = 0, start_step: int = 0) -> DataLoader:
    """The rank's training loader starting at ``(epoch, start_step)``.

    For later epochs call ``loader.batch_sampler.set_epoch(e)``. Fails when the dataset no longer
    matches the plan (image count, iterations per epoch), since resume and schedule depend on it.
    """
    data = _data_cfg(config)
    seed = int(config.get("seed", 0))
    dataset = build_train_dataset(config)
    batch_per_gpu = int(plan.get("batch_per_gpu") or data["batch_per_gpu"])
    if plan.get("train_images") is not None and int(plan["train_images"]) != len(dataset):
        raise ValueError(f"{dataset.ann_file} now has {len(dataset)} training images but the plan counted "
                         f"{plan['train_images']}: the file changed since planning; submit a new run")
    sampler = DistributedGroupedBatchSampler(
        dataset.aspect_groups(), batch_per_gpu, world_size, rank, seed, epoch=epoch, start_step=start_step,
        group_by_aspect=bool(data.get("aspect_ratio_grouping", True)))
    if plan.get("iters_per_epoch") is not None and int(plan["iters_per_epoch"]) != sampler.iters_per_epoch:
        raise ValueError(f"plan says {plan['iters_per_epoch']} iterations per epoch but {len(dataset)} images at "
                         f"{world_size} x {batch_per_gpu} per GPU give {sampler.iters_per_epoch}: run with the "
                         f"planned {plan.get('gpus')} GPUs or submit a new run")
    dataset.set_epoch(epoch)
    return DataLoader(dataset, batch_sampler=sampler, **_loader_kwargs(data, derive_seed(seed, epoch, rank)))


def val_shard(num_images: int, rank: int, world_size: int) -> list[int]:
    """Rank ``r`` evaluates indices ``r, r + world, ...``: disjoint, no padding duplicates."""
    return list(range(rank, num_images, world_size))


def build_val_loader(config: dict[str, Any], plan: dict[str, Any], rank: int, world_size: int) -> DataLoader:
    """The rank's disjoint shard of all val images, unaugmented; ``loader.dataset.coco`` is the gt json."""
    data = _data_cfg(config)
    ann_file, img_dir = _split(data, "val")
    dataset = CocoDetection(ann_file, img_dir, train=False, keep_coco=True, seed=int(config.get("seed", 0)))
    batch_size = int(data.get("val_batch_per_gpu") or plan.get("batch_per_gpu") or data["batch_per_gpu"])
    shard = val_shard(len(dataset), rank, world_size)
    batches = [shard[k:k + batch_size] for k in range(0, len(shard), batch_size)]
    kwargs = _loader_kwargs(data, derive_seed(int(config.get("seed", 0)), rank))
    kwargs["persistent_workers"] = False  # evaluation runs now and then; idle workers would hold memory
    return DataLoader(dataset, batch_sampler=batches, **kwargs)
