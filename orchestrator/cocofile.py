"""Reading COCO annotation files (torch-free) and the one rule for which images a run trains on.

The planner counts images with :func:`train_image_ids` and the training job builds its dataset
from the same function, so iteration counts in the plan and in the job can never disagree.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any

from orchestrator import storage
from orchestrator.errors import OrchError

MIN_BOX_SIZE = 1.0  # boxes thinner than this (pixels) after clipping are dropped
_NUMBER_TYPES = (int, float)


class AnnotationError(OrchError, ValueError):
    """An annotation file that cannot be used; the message names the file and the problem."""


def load_coco(ann_url: str) -> dict[str, Any]:
    try:
        raw = storage.read_bytes(ann_url)
    except FileNotFoundError:
        raise AnnotationError(f"annotation file {ann_url} does not exist") from None
    try:
        coco = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for a binary file
        raise AnnotationError(f"annotation file {ann_url} is not valid JSON ({exc}); point the key at a COCO "
                              "json, or check it with `orch data check`") from None
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise AnnotationError(f"annotation file {ann_url} has no 'images' list: is it COCO format?")
    coco.setdefault("annotations", [])
    coco.setdefault("categories", [])
    return coco


class BadBoxError(AnnotationError):
    """A bbox of four values that are not all finite numbers (strings, null, NaN)."""


def clipped_box(bbox: list[float], width: float, height: float) -> list[float] | None:
    """COCO [x, y, w, h] clipped to the image as [x1, y1, x2, y2]; None when degenerate.

    Raises :class:`BadBoxError` for four values that are not finite numbers: such a file was
    written wrong, and dropping the box silently would hide it.
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    x, y, w, h = bbox
    # once per annotation of a million-box file: type() and one isfinite on the sum stay cheap
    if (type(x) not in _NUMBER_TYPES or type(y) not in _NUMBER_TYPES or type(w) not in _NUMBER_TYPES
            or type(h) not in _NUMBER_TYPES or not math.isfinite(x + y + w + h)):
        raise BadBoxError(f"bbox {bbox!r} is not four finite numbers")
    x, y, w, h = float(x), float(y), float(w), float(h)
    x1, y1 = max(0.0, x), max(0.0, y)
    x2, y2 = min(float(width), x + w), min(float(height), y + h)
    if x2 - x1 < MIN_BOX_SIZE or y2 - y1 < MIN_BOX_SIZE:
        return None
    return [x1, y1, x2, y2]


def train_image_ids(coco: dict[str, Any], filter_empty: bool, source: str = "the annotation file") -> list[int]:
    """Ids of the images a training run uses, sorted.

    With ``filter_empty`` (torchvision references' rule) an image counts only if it has at least
    one non-crowd annotation whose box survives clipping. ``source`` names the file in errors.
    """
    sizes: dict[int, tuple[Any, Any]] = {}
    for img in coco["images"]:
        image_id = img.get("id") if isinstance(img, dict) else None
        if type(image_id) is not int:
            raise AnnotationError(f"{source}: image {img!r:.120} has no integer 'id' (COCO image ids are "
                                  "integers); fix the file (`orch data check` lists every problem)")
        width, height = img.get("width"), img.get("height")
        if type(width) not in _NUMBER_TYPES or type(height) not in _NUMBER_TYPES or width <= 0 or height <= 0:
            raise AnnotationError(f"{source}: image {image_id} has no positive 'width' and 'height' "
                                  f"(width={width!r}, height={height!r}); fix the file (`orch data check` lists "
                                  "every problem)")
        sizes[image_id] = (width, height)
    ids = sorted(sizes)
    if not filter_empty:
        return ids
    keep: set[int] = set()
    for ann in coco["annotations"]:
        image_id = ann.get("image_id")
        if image_id not in sizes or ann.get("iscrowd", 0):
            continue
        try:
            box = clipped_box(ann.get("bbox"), *sizes[image_id])
        except BadBoxError as exc:
            raise AnnotationError(f"{source}: annotation {ann.get('id')!r} (image {image_id}): {exc}; fix the file "
                                  "(COCO boxes are [x, y, width, height] in pixels; `orch data check` lists "
                                  "every problem)") from None
        if box is not None:
            keep.add(image_id)
    return [i for i in ids if i in keep]


def category_ids(coco: dict[str, Any]) -> list[int]:
    """Category ids sorted; contiguous label ``k+1`` stands for ``category_ids[k]`` (0 = background)."""
    return sorted(int(c["id"]) for c in coco["categories"])


def _cache_path() -> str:
    root = os.environ.get("ORCH_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "orch")
    return os.path.join(root, "image_counts.json")


def count_train_images(ann_url: str, filter_empty: bool) -> int:
    """Number of training images, cached by (url, size, mtime/etag, filter) so a 450 MB file is read once."""
    meta = storage.info(ann_url)
    key = hashlib.sha256(json.dumps([ann_url, meta["size"], meta["version"], filter_empty]).encode()).hexdigest()
    cache_file = _cache_path()
    cache: dict[str, int] = {}
    try:
        with open(cache_file, encoding="utf-8") as f:
            cache = json.load(f)
        if key in cache:
            return int(cache[key])
    except (OSError, ValueError):
        cache = {}
    count = len(train_image_ids(load_coco(ann_url), filter_empty, source=ann_url))
    cache[key] = count
    try:
        storage.write_text(cache_file, json.dumps(cache))
    except storage.StorageError:
        pass  # a read-only home only costs a re-count next time
    return count
