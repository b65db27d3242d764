"""The dataset view that ultralytics reads, written from orch's COCO ``data:`` section (torch-free).

Layout under ``out_dir``::

    data.yaml                       path, train, val and names (category order)
    images/train/<file_name>        symlinks to the COCO images, never copies
    labels/train/<stem>.txt         one "index cx cy w h" line per box, normalised to [0, 1]
    images/val/...  labels/val/...

Category ids map to contiguous indices in sorted id order, the same rule the orch trainer uses
(:func:`orchestrator.cocofile.category_ids`); the val split is written with the train split's
mapping, so index k means the same class in both. The train split holds exactly the images the
planner counted (:func:`orchestrator.cocofile.train_image_ids`), so orch's iterations per epoch
and ultralytics' agree. Boxes are clipped to the image like the orch trainer does; crowd boxes are
left out. Writing again gives the same files; entries left from an earlier view are removed.
"""
from __future__ import annotations

import json
import os
from typing import Any

from orchestrator import cocofile, storage
from orchestrator.datatools._common import box_in_image, image_size_of, parse_bbox, read_image_sizes
from orchestrator.kinds.base import KindError

SPLITS = ("train", "val")


def write_yolo_view(coco_train_json: str, train_img_dir: str, coco_val_json: str | None, val_img_dir: str | None,
                    out_dir: str, filter_empty: bool = True) -> dict[str, Any]:
    """Write the view; returns {"data_yaml", "names", "train_images", "val_images", "labels"}.

    Without a val set, the train images are validated on (ultralytics needs a val split).
    """
    for url, key in ((out_dir, "the dataset view"), (train_img_dir, "data.train.img_dir"),
                     (val_img_dir or train_img_dir, "data.val.img_dir")):
        if not storage.is_local(url):
            raise KindError(f"{key} = {url} is a {storage.protocol(url)}:// URL; ultralytics reads images and "
                            f"labels as files, so the images must be on a local or NAS path (copy them there, "
                            f"or use another trainer.kind)")
    out_dir = storage.absolute(out_dir)
    train = cocofile.load_coco(coco_train_json)
    val = cocofile.load_coco(coco_val_json) if coco_val_json else train
    val_img_dir = val_img_dir if coco_val_json else train_img_dir
    ids = cocofile.category_ids(train)
    if not ids:
        raise KindError(f"{coco_train_json} has no categories: ultralytics needs the class names")
    index_of = {cid: k for k, cid in enumerate(ids)}
    unknown = sorted(set(cocofile.category_ids(val)) - set(ids))
    if unknown:
        raise KindError(f"{coco_val_json} has category ids {unknown} that {coco_train_json} lacks; the val "
                        f"set must use the train set's categories (fix the val file's 'categories')")
    name_of = {int(c["id"]): str(c.get("name", c["id"])) for c in train["categories"]}
    names = [name_of[cid] for cid in ids]

    kept = set(cocofile.train_image_ids(train, filter_empty, source=coco_train_json))
    counts = {}
    labels = 0
    for split, coco, img_dir, source in (("train", train, train_img_dir, coco_train_json),
                                          ("val", val, val_img_dir, coco_val_json or coco_train_json)):
        images = [img for img in coco["images"] if split == "val" or int(img["id"]) in kept]
        labels += _write_split(out_dir, split, images, coco["annotations"], storage.absolute(img_dir), index_of, source)
        counts[split] = len(images)

    data_yaml = os.path.join(out_dir, "data.yaml")
    # JSON is YAML: no yaml dependency, and names with ':' or quotes stay intact
    text = json.dumps({"path": out_dir, "train": "images/train", "val": "images/val",
                       "nc": len(names), "names": names}, indent=1) + "\n"
    _write_if_changed(data_yaml, text)
    return {"data_yaml": data_yaml, "names": names, "train_images": counts["train"],
            "val_images": counts["val"], "labels": labels}


def _write_split(out_dir: str, split: str, images: list[dict], annotations: list[dict], img_dir: str,
                 index_of: dict[int, int], source: str) -> int:
    boxes: dict[int, list[dict]] = {}
    for ann in annotations:
        if not ann.get("iscrowd", 0):
            boxes.setdefault(ann.get("image_id"), []).append(ann)
    image_root = os.path.join(out_dir, "images", split)
    label_root = os.path.join(out_dir, "labels", split)
    sizes = _image_sizes(images, img_dir)
    wanted_images, wanted_labels, written = set(), set(), 0
    for img, (width, height) in zip(images, sizes):
        rel = os.path.normpath(str(img["file_name"]))
        if rel.startswith("..") or os.path.isabs(rel):
            raise KindError(f"{source}: image file_name {img['file_name']!r} leaves the image folder; "
                            f"file names must be relative to data.{split}.img_dir")
        link = os.path.join(image_root, rel)
        _link(os.path.join(img_dir, rel), link)
        wanted_images.add(link)
        lines = []
        for ann in boxes.get(img["id"], []):
            cid = ann.get("category_id")
            if cid not in index_of:
                raise KindError(f"{source}: annotation {ann.get('id')!r} has category_id {cid!r}, which is not "
                                f"one of the categories {sorted(index_of)}; fix the file (`orch data check`)")
            box = parse_bbox(ann.get("bbox"))
            clipped = box_in_image(box, width, height) if box else None
            if clipped is None:
                continue
            x, y, w, h = clipped
            lines.append(f"{index_of[cid]} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
                         f"{w / width:.6f} {h / height:.6f}")
        label = os.path.join(label_root, os.path.splitext(rel)[0] + ".txt")
        _write_if_changed(label, "".join(line + "\n" for line in lines))
        wanted_labels.add(label)
        written += len(lines)
    _remove_others(image_root, wanted_images)
    _remove_others(label_root, wanted_labels)
    return written


def _image_sizes(images: list[dict], img_dir: str) -> list[tuple[float, float]]:
    known = [image_size_of(img) for img in images]
    missing = [i for i, size in enumerate(known) if size is None]
    if missing:
        read = read_image_sizes([os.path.join(img_dir, str(images[i]["file_name"])) for i in missing])
        for i, size in zip(missing, read):
            if isinstance(size, Exception):
                raise KindError(f"image {images[i]['file_name']!r} under {img_dir} has no width/height in the "
                                f"annotation file and cannot be read ({size}); fix it with `orch data check`")
            known[i] = size
    return known  # type: ignore[return-value]


def _link(target: str, link: str) -> None:
    if os.path.islink(link) and os.readlink(link) == target:
        return
    os.makedirs(os.path.dirname(link), exist_ok=True)
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(target, link)


def _write_if_changed(path: str, text: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _remove_others(root: str, wanted: set[str]) -> None:
    """Entries of an earlier view that this one does not hold (ultralytics would read them all)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if path not in wanted:
                os.remove(path)
