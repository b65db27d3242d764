"""`orch data check --fix`: write a cleaned copy of a COCO file; the input is never modified.

What is repaired, in this order:

1. categories without an integer id, or repeating an id, are dropped (the first one wins);
2. images without an integer id, file_name or positive size are dropped; an image repeating an id
   is dropped (the first one wins). With ``images_url``, images whose file is missing or
   unreadable are dropped, a missing width/height is read from the file, and an image whose real
   size disagrees with the json is dropped (its boxes were drawn on some other size);
3. annotations pointing at an unknown image/category, or whose bbox is malformed, zero/negative
   size or under 1 px once clipped, are dropped; boxes are clipped to the image; a missing or
   too-large ``area`` becomes w*h; annotations with no or a repeated id get fresh ids.

Images without annotations are kept: training skips them on its own.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from orchestrator import storage
from orchestrator.cocofile import load_coco
from orchestrator.datatools._common import (
    ImageMissing, box_in_image, image_size_of, is_int_id, is_positive_number, parse_bbox, read_image_sizes,
    refuse_overwrite, write_json,
)


def fix_dataset(ann_url: str, out_url: str, images_url: str | None = None) -> dict[str, Any]:
    """Write a cleaned copy of ``ann_url`` to ``out_url``; returns counts of what changed."""
    refuse_overwrite(ann_url, out_url, "fixing the dataset")
    coco = load_coco(ann_url)
    dropped: Counter = Counter()
    categories = _fix_categories(coco.get("categories") or [], dropped)
    images = _fix_images(coco["images"], images_url, dropped)
    listed_image_ids = {i.get("id") for i in coco["images"] if isinstance(i, dict)}
    annotations, changed = _fix_annotations(coco.get("annotations") or [], images, listed_image_ids,
                                            categories, dropped)

    out = {k: v for k, v in coco.items() if k not in ("images", "annotations", "categories")}
    out.update(images=list(images.values()), annotations=annotations, categories=list(categories.values()))
    write_json(out_url, out)
    return {
        "ann_url": ann_url, "out_url": out_url,
        "images_in": len(coco["images"]), "images_out": len(images),
        "annotations_in": len(coco.get("annotations") or []), "annotations_out": len(annotations),
        "categories_in": len(coco.get("categories") or []), "categories_out": len(categories),
        "dropped": dict(sorted(dropped.items())),
        "changed": dict(sorted(changed.items())),
    }


def _fix_categories(categories: list[Any], dropped: Counter) -> dict[int, dict[str, Any]]:
    kept: dict[int, dict[str, Any]] = {}
    for cat in categories:
        if not isinstance(cat, dict) or not is_int_id(cat.get("id")):
            dropped["malformed_category"] += 1
        elif cat["id"] in kept:
            dropped["duplicate_category_id"] += 1
        else:
            kept[cat["id"]] = cat
    return kept


def _fix_images(images: list[Any], images_url: str | None, dropped: Counter) -> dict[int, dict[str, Any]]:
    kept: dict[int, dict[str, Any]] = {}
    for image in images:
        if (not isinstance(image, dict) or not is_int_id(image.get("id"))
                or not isinstance(image.get("file_name"), str) or not image["file_name"]):
            dropped["malformed_image"] += 1
        elif image["id"] in kept:
            dropped["duplicate_image_id"] += 1
        elif image_size_of(image) is None and images_url is None:
            dropped["malformed_image"] += 1  # no size and no files to read it from
        else:
            kept[image["id"]] = dict(image)
    if images_url is None:
        return kept
    ids = list(kept)
    urls = [storage.join(images_url, kept[i]["file_name"]) for i in ids]
    for image_id, result in zip(ids, read_image_sizes(urls)):
        image = kept[image_id]
        if isinstance(result, ImageMissing):
            dropped["missing_image"] += 1
        elif isinstance(result, Exception):
            dropped["unreadable_image"] += 1
        elif image_size_of(image) is None:
            image["width"], image["height"] = result
            continue
        elif (int(image["width"]), int(image["height"])) != tuple(result):
            dropped["size_mismatch"] += 1
        else:
            continue
        del kept[image_id]
    return kept


def _fix_annotations(annotations: list[Any], images: dict[int, dict[str, Any]], listed_image_ids: set[Any],
                     categories: dict[int, dict[str, Any]], dropped: Counter):
    kept: list[dict[str, Any]] = []
    changed: Counter = Counter()
    for ann in annotations:
        if type(ann) is not dict or not is_int_id(ann.get("image_id")) or not is_int_id(ann.get("category_id")):
            dropped["malformed_annotation"] += 1
            continue
        if ann["image_id"] not in images:
            unknown = ann["image_id"] not in listed_image_ids
            dropped["unknown_image_ref" if unknown else "annotation_of_dropped_image"] += 1
            continue
        if ann["category_id"] not in categories:
            dropped["unknown_category_ref"] += 1
            continue
        bbox = parse_bbox(ann.get("bbox"))
        if bbox is None:
            dropped["malformed_bbox"] += 1
            continue
        if bbox[2] < 0 or bbox[3] < 0:
            dropped["negative_box"] += 1
            continue
        if bbox[2] == 0 or bbox[3] == 0:
            dropped["degenerate_box"] += 1
            continue
        width, height = image_size_of(images[ann["image_id"]])
        new_bbox = box_in_image(bbox, width, height)
        if new_bbox is None:
            dropped["tiny_box"] += 1
            continue
        clipped = new_bbox != list(bbox)
        if clipped:
            ann["bbox"] = new_bbox
            changed["box_clipped"] += 1
        box_area = new_bbox[2] * new_bbox[3]
        area = ann.get("area")
        if not is_positive_number(area):
            ann["area"] = box_area
            changed["area_filled"] += 1
        elif clipped and area > box_area:
            ann["area"] = box_area  # a clipped box cannot enclose more than itself
            changed["area_shrunk"] += 1
        kept.append(ann)
    _renumber_duplicates(kept, changed)
    return kept, changed


def _renumber_duplicates(annotations: list[dict[str, Any]], changed: Counter) -> None:
    """Keep the first use of each id; later repeats and missing ids get ids after the largest one."""
    next_id = max((a["id"] for a in annotations if is_int_id(a.get("id"))), default=0) + 1
    seen: set[int] = set()
    for ann in annotations:
        ann_id = ann.get("id")
        if is_int_id(ann_id) and ann_id not in seen:
            seen.add(ann_id)
            continue
        ann["id"] = next_id
        seen.add(next_id)
        next_id += 1
        changed["annotation_id_reassigned"] += 1
