"""`orch data convert yolo`: YOLO txt labels -> one COCO json.

Layouts understood (``SRC`` is what the user passes):

* ``SRC/images/...`` + ``SRC/labels/...`` siblings (sub-folders such as ``train/`` mirrored);
* ``SRC`` is itself an ``images`` folder (``.../images`` or ``.../images/train``) whose mirror
  under ``labels`` exists;
* images and ``.txt`` labels side by side in ``SRC`` (recursively).

``file_name`` in the output is relative to the *images dir*: ``SRC/images`` in the first layout,
``SRC`` otherwise. Every image below it is converted, so with split sub-folders
(``images/train``, ``images/val``) pass ``SRC/images/train`` to convert one split; the sub-folders
are returned as ``subfolders``. The images dir is returned as ``images_dir``; pass it as ``--images`` (or the config's image
folder) when training. A label line is ``class cx cy w h`` normalised to [0, 1] (a YOLO-seg
polygon ``class x1 y1 x2 y2 ...`` becomes its bounding box). A value outside [0, 1] (pixels
instead of fractions), NaN/inf or a zero or negative width/height is refused, naming ``file:line``.
Category ids are 1..K in the order of the class names, taken from ``classes`` or found in ``classes.txt`` / ``data.yaml`` (``names``).
An image without a label file is a background image (kept, no annotations).
"""
from __future__ import annotations

import math
import posixpath
from typing import Any

from orchestrator import storage
from orchestrator.datatools._common import (
    DatasetError, ImageMissing, is_image_name, list_files, read_image_sizes, refuse_output_in_dataset, refuse_overwrite,
    write_json,
)

CLASS_FILES = ("classes.txt", "data.yaml", "dataset.yaml", "data.yml", "dataset.yml")


def convert_yolo(src_dir: str, out_url: str, *, classes: list[str] | None = None) -> dict[str, Any]:
    """Convert a YOLO dataset under ``src_dir`` to a COCO file at ``out_url``; returns a summary."""
    src_dir = storage.absolute(src_dir).rstrip("/")
    if not storage.isdir(src_dir):
        raise DatasetError(f"YOLO dataset folder {src_dir} does not exist: pass the folder holding "
                           f"images/ and labels/ (or images with .txt labels beside them)")
    refuse_output_in_dataset(out_url, src_dir, "convert yolo")
    images_dir, labels_dir, layout = _find_layout(src_dir)
    for folder in (images_dir, labels_dir):  # the label folder may be a sibling of SRC
        refuse_output_in_dataset(out_url, folder, "convert yolo")
    names_from = "--classes"
    if classes is None:
        classes, names_from = _find_class_names(src_dir, images_dir, labels_dir)
        refuse_overwrite(names_from, out_url, "convert yolo --out")
    classes = [str(c) for c in classes]
    if not classes:
        raise DatasetError(f"the class list for {src_dir} is empty: pass --classes a,b,c")

    image_files = [f for f in list_files(images_dir) if is_image_name(f)]
    if not image_files:
        raise DatasetError(f"no images (.jpg/.png/...) under {images_dir}: is {src_dir} a YOLO dataset?")
    label_files = {f for f in list_files(labels_dir) if f.endswith(".txt") and posixpath.basename(f) not in CLASS_FILES}

    images, annotations, unreadable = [], [], []
    used_labels: set[str] = set()
    without_labels = 0
    urls = [storage.join(images_dir, f) for f in image_files]
    for rel, url, size in zip(image_files, urls, read_image_sizes(urls)):
        if isinstance(size, Exception):
            unreadable.append(f"{url}: {'does not exist' if isinstance(size, ImageMissing) else size}")
            continue
        width, height = size
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": rel, "width": width, "height": height})
        label_rel = posixpath.splitext(rel)[0] + ".txt"
        if label_rel not in label_files:
            without_labels += 1
            continue
        used_labels.add(label_rel)
        label_url = storage.join(labels_dir, label_rel)
        for class_index, box in _read_label_file(label_url, len(classes)):
            cx, cy, w, h = box
            bbox = [round((cx - w / 2) * width, 6), round((cy - h / 2) * height, 6),
                    round(w * width, 6), round(h * height, 6)]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": class_index + 1, "bbox": bbox,
                                "area": round(bbox[2] * bbox[3], 6), "iscrowd": 0})

    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    write_json(out_url, {"images": images, "annotations": annotations, "categories": categories})
    return {
        "out_url": out_url, "images_dir": images_dir, "labels_dir": labels_dir, "layout": layout,
        "class_names_from": names_from, "images": len(images), "annotations": len(annotations),
        "categories": len(categories), "images_without_labels": without_labels,
        "labels_without_images": len(label_files - used_labels), "unreadable_images": unreadable,
        "subfolders": sorted({f.split("/", 1)[0] for f in image_files if "/" in f}),
    }


def _find_layout(src_dir: str) -> tuple[str, str, str]:
    """(images dir, labels dir, layout name) for a YOLO dataset folder."""
    if storage.isdir(storage.join(src_dir, "images")):
        labels = storage.join(src_dir, "labels")
        if storage.isdir(labels):
            return storage.join(src_dir, "images"), labels, "images/ + labels/"
        return storage.join(src_dir, "images"), storage.join(src_dir, "images"), "side by side"
    proto, sep, path = src_dir.rpartition("://") if "://" in src_dir else ("", "", src_dir)
    parts = path.split("/")
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        labels = proto + sep + "/".join(parts[:i] + ["labels"] + parts[i + 1:])
        if storage.isdir(labels):
            return src_dir, labels, "images/ + labels/"
    return src_dir, src_dir, "side by side"


def _find_class_names(src_dir: str, images_dir: str, labels_dir: str) -> tuple[list[str], str]:
    folders = [src_dir, labels_dir, images_dir]
    for folder in (images_dir, src_dir):  # .../dataset/images[/train] -> .../dataset
        parts = folder.rstrip("/").split("/")
        if "images" in parts:
            folders.append("/".join(parts[:len(parts) - 1 - parts[::-1].index("images")]))
    for folder in dict.fromkeys(folders):
        for name in CLASS_FILES:
            url = storage.join(folder, name)
            if storage.exists(url):
                return read_class_names(url), url
    raise DatasetError(f"no class names for the YOLO dataset {src_dir}: add classes.txt (one name a line) "
                       f"or data.yaml with 'names', or pass --classes a,b,c")


def read_class_names(spec: str | list[str]) -> list[str]:
    """Class names from a list, a classes.txt / data.yaml file, or a comma-separated string."""
    if isinstance(spec, list):
        return [str(s) for s in spec]
    if storage.exists(spec) and not storage.isdir(spec):
        text = storage.read_text(spec)
        if spec.endswith((".yaml", ".yml")):
            return _names_from_yaml(spec, text)
        names = [line.strip() for line in text.splitlines() if line.strip()]
        if not names:
            raise DatasetError(f"class names file {spec} is empty: write one class name per line")
        return names
    names = [s.strip() for s in spec.split(",") if s.strip()]
    if not names or ("," not in spec and ("/" in spec or spec.endswith((".txt", ".yaml", ".yml")))):
        raise DatasetError(f"--classes {spec!r} is neither an existing file nor a comma-separated list "
                           f"of names: pass e.g. --classes cat,dog or --classes classes.txt")
    return names


def _names_from_yaml(url: str, text: str) -> list[str]:
    import yaml  # lazy: only the YOLO converter needs it

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DatasetError(f"{url} is not valid YAML: {exc}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        keys = sorted(names)
        if keys != list(range(len(keys))):
            raise DatasetError(f"{url}: 'names' keys must be 0..{len(keys) - 1}, got {keys}")
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names:
        raise DatasetError(f"{url} has no 'names' list: add names: [cat, dog, ...]")
    return [str(n) for n in names]


def _read_label_file(url: str, num_classes: int):
    """Yield (class index, (cx, cy, w, h)) for each line of a YOLO label file."""
    for line_no, line in enumerate(storage.read_text(url).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            class_index = int(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise DatasetError(f"{url}:{line_no}: {line.strip()!r} is not 'class cx cy w h' numbers") from None
        if len(values) == 4:
            box = tuple(values)
        elif len(values) >= 6 and len(values) % 2 == 0:  # YOLO-seg polygon
            xs, ys = values[0::2], values[1::2]
            box = ((min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2, max(xs) - min(xs), max(ys) - min(ys))
        else:
            raise DatasetError(f"{url}:{line_no}: expected 'class cx cy w h' (5 numbers), "
                               f"got {len(fields)}: {line.strip()!r}")
        _check_normalised(url, line_no, line, box, polygon=len(values) > 4)
        if not 0 <= class_index < num_classes:
            raise DatasetError(f"{url}:{line_no}: class {class_index} is outside 0..{num_classes - 1}: "
                               f"the class list has {num_classes} names; pass the full list with --classes")
        yield class_index, box


# a label written with a few digits may round 1.0 up a hair; anything beyond is not normalised
_NORMALISED_SLACK = 1e-6


def _check_normalised(url: str, line_no: int, line: str, box: tuple[float, ...], polygon: bool) -> None:
    """Refuse what no image can hold: NaN/inf, values outside [0, 1] (pixels instead of fractions of the
    image size), a zero or negative width or height."""
    cx, cy, w, h = box
    if not all(math.isfinite(v) for v in box):
        raise DatasetError(f"{url}:{line_no}: {line.strip()!r} has a NaN or infinite value: write finite numbers "
                           f"'class cx cy w h' normalised to [0, 1]")
    if w <= 0 or h <= 0:
        which = "width" if w <= 0 else "height"
        raise DatasetError(f"{url}:{line_no}: {line.strip()!r}: the box {which} is {w if w <= 0 else h:g}; a box "
                           f"needs a positive width and height: fix or delete the line")
    if polygon:
        values = [cx - w / 2, cx + w / 2, cy - h / 2, cy + h / 2]
        names = "polygon coordinates"
    else:
        values = list(box)
        names = "cx cy w h"
    if not all(-_NORMALISED_SLACK <= v <= 1 + _NORMALISED_SLACK for v in values):
        raise DatasetError(f"{url}:{line_no}: {line.strip()!r}: {names} must be normalised to [0, 1] (fractions of "
                           f"the image width and height), got {max(values, key=abs):g}; divide pixel values by "
                           f"the image size")
