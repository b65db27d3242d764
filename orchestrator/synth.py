"""A synthetic COCO detection dataset of coloured shapes on noise, for demos and tests (torch-free).

Each image holds 1-4 non-overlapping shapes (circle, square, triangle, ...) of varying size and
colour on a noisy background. Every box is the exact pixel extent of its shape (taken from the
shape's own mask), so ground truth is never off by a pixel. Output is a deterministic function of
``seed``; files go through :mod:`orchestrator.storage`, so ``out_dir_url`` may be any fsspec URL.

Layout written under ``out_dir_url``::

    train.json  val.json  train/000000.jpg ...  val/000000.jpg ...

The returned dict has the shape of ``config["data"]``'s ``train``/``val`` entries.
"""
from __future__ import annotations

import io
import json
import math
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from orchestrator import storage
from orchestrator.errors import OrchError

SHAPES = ("circle", "square", "triangle", "diamond", "cross")
MAX_SHAPES_PER_IMAGE = 4
_PLACEMENT_TRIES = 30
NOISE_AMPLITUDE = 32  # background pixels vary by up to this much around a random base colour


def make_synthetic_dataset(out_dir_url: str, num_train: int = 400, num_val: int = 100, image_size: int = 320,
                           seed: int = 0, classes: Sequence[str] = ("circle", "square", "triangle"),
                           category_ids: Sequence[int] | None = None, aspect_ratios: Sequence[float] = (1.0,),
                           image_format: str = "jpg") -> dict[str, Any]:
    """Write a train and a val split; returns their ann_file/img_dir URLs and the categories.

    ``category_ids`` (default 1..K) lets a test use sparse ids such as ``(3, 7, 11)``.
    ``aspect_ratios`` are width/height ratios drawn per image; the longer side is ``image_size``.
    """
    refuse_existing_dataset(out_dir_url)
    unknown = [c for c in classes if c not in SHAPES]
    if unknown:
        raise ValueError(f"unknown shape class(es) {unknown}; valid classes are {list(SHAPES)}")
    if not classes:
        raise ValueError("classes must name at least one shape")
    if category_ids is None:
        category_ids = list(range(1, len(classes) + 1))
    if len(category_ids) != len(classes) or len(set(category_ids)) != len(category_ids):
        raise ValueError(f"category_ids {list(category_ids)} must be {len(classes)} distinct ids, one per class")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format {image_format!r} must be 'jpg' or 'png'")
    categories = [{"id": int(cid), "name": name, "supercategory": "shape"}
                  for cid, name in zip(category_ids, classes)]
    root = np.random.SeedSequence(seed)
    train_seq, val_seq = root.spawn(2)
    result: dict[str, Any] = {"categories": categories, "num_classes": len(classes)}
    for split, count, seq in (("train", num_train, train_seq), ("val", num_val, val_seq)):
        rng = np.random.default_rng(seq)
        coco = _write_split(out_dir_url, split, count, image_size, rng, categories, aspect_ratios, image_format)
        ann_file = storage.join(out_dir_url, f"{split}.json")
        storage.write_text(ann_file, json.dumps(coco))
        result[split] = {"ann_file": ann_file, "img_dir": storage.join(out_dir_url, split),
                         "num_images": count, "num_annotations": len(coco["annotations"])}
    return result


def refuse_existing_dataset(out_dir_url: str) -> None:
    """Never overwrite: refuse a file, or a folder that already holds any of the files this would write."""
    if storage.exists(out_dir_url) and not storage.isdir(out_dir_url):
        raise OrchError(f"{out_dir_url} is a file: pass a new folder for the synthetic dataset")
    present = [name for name in ("train.json", "val.json", "train", "val")
               if storage.exists(storage.join(out_dir_url, name))]
    if present:
        raise OrchError(f"{out_dir_url} already holds {', '.join(present)}: `orch data synth` never overwrites a "
                        f"dataset; pass a new folder (or delete those first)")


def _write_split(out_dir_url: str, split: str, count: int, image_size: int, rng: np.random.Generator,
                 categories: list[dict[str, Any]], aspect_ratios: Sequence[float],
                 image_format: str) -> dict[str, Any]:
    images, annotations = [], []
    for index in range(count):
        ratio = float(aspect_ratios[int(rng.integers(len(aspect_ratios)))])
        width = image_size if ratio >= 1 else max(16, round(image_size * ratio))
        height = image_size if ratio <= 1 else max(16, round(image_size / ratio))
        image, shapes = _draw_image(width, height, rng, [c["name"] for c in categories])
        file_name = f"{index:06d}.{image_format}"
        buf = io.BytesIO()
        if image_format == "jpg":
            image.save(buf, format="JPEG", quality=92)
        else:
            image.save(buf, format="PNG")
        storage.write_bytes(storage.join(out_dir_url, split, file_name), buf.getvalue())
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        for class_index, (x1, y1, x2, y2) in shapes:
            w, h = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": categories[class_index]["id"],
                                "bbox": [x1, y1, w, h], "area": float(w * h), "iscrowd": 0})
    return {"info": {"description": f"orch synthetic shapes ({split})"}, "images": images,
            "annotations": annotations, "categories": categories}


def _draw_image(width: int, height: int, rng: np.random.Generator, shape_names: Sequence[str]):
    """Noise background plus 1-4 shapes; returns (PIL image, [(class_index, (x1, y1, x2, y2))])."""
    base = rng.integers(60, 196, size=3)
    # uniform uint8 noise in [0, 64) around base - 32: 20x cheaper than float gaussian noise, and
    # a power-of-two range needs no rejection sampling nor clipping
    noise = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) >> 2
    pixels = noise + (base - NOISE_AMPLITUDE).astype(np.uint8)[None, None, :]
    image = Image.fromarray(pixels, "RGB")
    short = min(width, height)
    shapes: list[tuple[int, tuple[int, int, int, int]]] = []
    for _ in range(int(rng.integers(1, MAX_SHAPES_PER_IMAGE + 1))):
        for _attempt in range(_PLACEMENT_TRIES):
            size = int(rng.integers(max(8, short // 8), max(9, short * 9 // 20) + 1))
            if size > short:
                continue
            x0 = int(rng.integers(0, width - size + 1))
            y0 = int(rng.integers(0, height - size + 1))
            if all(_gap(x0, y0, x0 + size, y0 + size, box) >= 2 for _, box in shapes):
                break
        else:
            continue  # no room left: fewer shapes in this image
        class_index = int(rng.integers(len(shape_names)))
        mask = Image.new("L", (size, size), 0)
        _draw_shape(ImageDraw.Draw(mask), shape_names[class_index], size, rng)
        extent = mask.getbbox()  # exact pixel extent of the drawn shape, right/bottom exclusive
        if extent is None:
            continue
        image.paste(_contrasting_colour(base, rng), (x0, y0, x0 + size, y0 + size), mask)
        shapes.append((class_index, (x0 + extent[0], y0 + extent[1], x0 + extent[2], y0 + extent[3])))
    return image, shapes


def _gap(x1: int, y1: int, x2: int, y2: int, other: tuple[int, int, int, int]) -> int:
    """Pixels between two boxes (negative when they overlap)."""
    ox1, oy1, ox2, oy2 = other
    return max(ox1 - x2, x1 - ox2, oy1 - y2, y1 - oy2)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, size: int, rng: np.random.Generator) -> None:
    x0 = y0 = 0
    x1 = y1 = size - 1  # PIL coordinates are inclusive
    if shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif shape == "triangle":
        # apex up or down so the class is not tied to one orientation
        if rng.random() < 0.5:
            draw.polygon([(x0 + size / 2, y0), (x0, y1), (x1, y1)], fill=255)
        else:
            draw.polygon([(x0, y0), (x1, y0), (x0 + size / 2, y1)], fill=255)
    elif shape == "diamond":
        c = size / 2
        draw.polygon([(x0 + c, y0), (x1, y0 + c), (x0 + c, y1), (x0, y0 + c)], fill=255)
    elif shape == "cross":
        t = max(2, size // 3)
        off = (size - t) // 2
        draw.rectangle((x0 + off, y0, x0 + off + t - 1, y1), fill=255)
        draw.rectangle((x0, y0 + off, x1, y0 + off + t - 1), fill=255)
    else:  # pragma: no cover - guarded by make_synthetic_dataset
        raise ValueError(shape)


def _contrasting_colour(base: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    """A saturated colour far enough from the background mean to stay visible through the noise."""
    for _ in range(20):
        colour = rng.integers(0, 256, size=3)
        colour[int(rng.integers(3))] = int(rng.choice([int(rng.integers(0, 40)), int(rng.integers(215, 256))]))
        if math.dist(colour.tolist(), base.tolist()) > 110:
            break
    return int(colour[0]), int(colour[1]), int(colour[2])
