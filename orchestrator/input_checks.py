"""The inputs a job reads exist and are usable: checked before anything is queued or written.

`orch submit`, `orch submit --dry-run` and `orch sweep` (once per distinct data) run the same
:func:`check_inputs`, so a dry-run refuses exactly what a submit refuses. Cheap by design: the
annotation files are read once and checked at JSON level (no image decoding), the image folder
is probed for the first few file names only, the init checkpoint is only looked up.
"""
from __future__ import annotations

from typing import Any

from orchestrator import storage
from orchestrator.cocofile import load_coco
from orchestrator.errors import OrchError

IMAGES_PROBED = 5   # image files looked up per split: enough to catch a wrong folder, cheap on S3


def check_inputs(config: dict[str, Any]) -> None:
    """Raise OrchError naming the key, the path and the fix for the first input the job could not use."""
    for split in ("train", "val"):
        entry = config["data"][split]
        if not entry.get("ann_file"):
            continue   # no val split: the job skips evaluation (train's is required when planning)
        coco = check_annotations(split, entry)
        check_images(split, entry, coco)
    init = config["model"].get("init_checkpoint")
    if init and not storage.exists(init):
        raise OrchError(f"model.init_checkpoint {init} does not exist; point it at the weights to fine-tune from "
                        "(override: model.init_checkpoint=PATH), or set it to null to train from scratch")


def check_annotations(split: str, entry: dict[str, Any]) -> dict[str, Any]:
    """The annotation file exists and passes the JSON-level check of `orch data check`; returns its content."""
    from orchestrator.datatools import check_dataset

    ann_file = entry["ann_file"]
    if not storage.exists(ann_file):
        raise OrchError(f"data.{split}.ann_file {ann_file} does not exist; point it at your COCO json "
                        f"(override: data.{split}.ann_file=PATH)")
    coco = load_coco(ann_file)
    report = check_dataset(ann_file, entry.get("img_dir") or "", read_images=False, coco=coco)
    if not report.ok:
        problems = "; ".join(f"{f.count} × {f.description}" for f in report.errors)
        raise OrchError(f"data.{split}.ann_file {ann_file} would break training: {problems}. Run `orch data check "
                        f"{ann_file} --images {entry.get('img_dir')}` for details, or `--fix OUT.json` for a "
                        "cleaned copy.")
    return coco


def check_images(split: str, entry: dict[str, Any], coco: dict[str, Any]) -> None:
    """``img_dir`` is set, exists, and holds the first IMAGES_PROBED images the annotations name."""
    img_dir, ann_file = entry.get("img_dir"), entry["ann_file"]
    fix = (f"set data.{split}.img_dir to the folder the file_name entries of {ann_file} are relative to "
           f"(override: data.{split}.img_dir=PATH)")
    if not img_dir:
        raise OrchError(f"data.{split}.img_dir is not set: {fix}")
    if not storage.isdir(img_dir):
        raise OrchError(f"data.{split}.img_dir {img_dir} does not exist or is not a folder: {fix}")
    names = [image["file_name"] for image in coco["images"][:IMAGES_PROBED]]
    missing = [name for name in names if not storage.exists(storage.join(img_dir, name))]
    if missing:
        raise OrchError(f"data.{split}.img_dir {img_dir} does not hold {len(missing)} of the first {len(names)} "
                        f"images {ann_file} names (e.g. {storage.join(img_dir, missing[0])}): {fix}")

