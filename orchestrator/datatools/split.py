"""`orch data split`: a deterministic train/val split by image.

An image goes to val when it is among the ``round(val_fraction * N)`` images with the smallest
``sha256("<seed>:<image id>")``: the split depends only on the seed and the ids (not on the numpy
version nor on the order of the file), and adding images later moves none of the others across.
Annotations follow their image; categories and the other top-level keys are copied to both files.
"""
from __future__ import annotations

import hashlib
from typing import Any

from orchestrator import storage
from orchestrator.cocofile import load_coco
from orchestrator.datatools._common import DatasetError, refuse_overwrite, same_file, write_json


def split_dataset(ann_url: str, val_fraction: float, seed: int, out_train_url: str,
                  out_val_url: str) -> dict[str, Any]:
    """Write ``out_train_url`` and ``out_val_url``; returns their image and annotation counts."""
    if not 0.0 < float(val_fraction) < 1.0:
        raise DatasetError(f"--val {val_fraction} is not a fraction between 0 and 1: pass e.g. --val 0.2")
    for url in (out_train_url, out_val_url):
        folder = storage.parent(url)
        if storage.exists(folder) and not storage.isdir(folder):
            raise DatasetError(f"--out-dir {folder} is a file: pass a folder for train.json and val.json")
    refuse_overwrite(ann_url, out_train_url, "the train split")
    refuse_overwrite(ann_url, out_val_url, "the val split")
    if same_file(out_train_url, out_val_url):
        raise DatasetError(f"the train and val splits would both be written to {out_train_url}: "
                           f"pass two different files")
    coco = load_coco(ann_url)
    images = coco["images"]
    ids = [img.get("id") if isinstance(img, dict) else None for img in images]
    if len(set(ids)) != len(ids) or None in ids:
        raise DatasetError(f"{ann_url} has duplicate or missing image ids: run "
                           f"`orch data check {ann_url} --fix OUT.json` first and split OUT.json")
    if len(ids) < 2:
        raise DatasetError(f"{ann_url} has {len(ids)} image(s): a split needs at least 2")
    num_val = min(len(ids) - 1, max(1, round(float(val_fraction) * len(ids))))
    order = sorted(ids, key=lambda i: hashlib.sha256(f"{int(seed)}:{i}".encode()).hexdigest())
    val_ids = set(order[:num_val])
    id_set = set(ids)  # annotations of unknown images go to neither file

    rest = {k: v for k, v in coco.items() if k not in ("images", "annotations")}
    summary: dict[str, Any] = {"ann_url": ann_url, "seed": int(seed), "val_fraction": float(val_fraction)}
    for name, url, keep in (("train", out_train_url, lambda i: i not in val_ids),
                            ("val", out_val_url, lambda i: i in val_ids)):
        part_images = [img for img in images if keep(img["id"])]
        part_anns = [a for a in coco["annotations"] if isinstance(a, dict) and a.get("image_id") in id_set
                     and keep(a["image_id"])]
        write_json(url, {**rest, "images": part_images, "annotations": part_anns})
        summary[name] = {"url": url, "images": len(part_images), "annotations": len(part_anns)}
    return summary
