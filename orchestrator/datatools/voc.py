"""`orch data convert voc`: Pascal VOC XML -> one COCO json.

``SRC`` is a VOC folder (``SRC/Annotations/*.xml`` with images in ``SRC/JPEGImages``) or a folder
holding the XML files themselves (images beside them). ``file_name`` is the XML's ``<filename>``,
relative to the *images dir* (``SRC/JPEGImages`` when it exists, else the XML folder), returned as
``images_dir``: pass it as ``--images`` when training.

VOC boxes are 1-based inclusive pixel indices; the COCO box is
``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]`` (detectron2's VOC rule). A box with
``xmax < xmin`` or ``ymax < ymin``, a NaN/inf coordinate or a negative size is refused, naming the XML.
``difficult`` objects are kept with ``iscrowd: 1``, so training and COCO evaluation ignore them.
``image_set`` (e.g. ``trainval``) converts only the ids listed in ``SRC/ImageSets/Main/<set>.txt``,
as VOC's own splits do. Categories are the given ``classes`` in that order, else all object names sorted alphabetically
(so the ids do not depend on file order); ids are 1..K. Image ids follow the sorted XML paths.
"""
from __future__ import annotations

import math
import posixpath
import xml.etree.ElementTree as ElementTree
from typing import Any

from orchestrator import storage
from orchestrator.datatools._common import (
    DatasetError, ImageMissing, ImageUnreadable, list_files, read_image_size, refuse_output_in_dataset, write_json,
)


def convert_voc(src_dir: str, out_url: str, *, classes: list[str] | None = None,
                image_set: str | None = None) -> dict[str, Any]:
    """Convert the VOC XML files under ``src_dir`` to a COCO file at ``out_url``; returns a summary."""
    src_dir = storage.absolute(src_dir).rstrip("/")
    if not storage.isdir(src_dir):
        raise DatasetError(f"VOC dataset folder {src_dir} does not exist: pass the folder holding "
                           f"Annotations/ and JPEGImages/ (or the XML files)")
    refuse_output_in_dataset(out_url, src_dir, "convert voc")
    xml_dir = storage.join(src_dir, "Annotations")
    if not storage.isdir(xml_dir):
        xml_dir = src_dir
    images_dir = storage.join(src_dir, "JPEGImages")
    if not storage.isdir(images_dir):
        images_dir = xml_dir
    xml_files = [f for f in list_files(xml_dir) if f.lower().endswith(".xml")]
    if not xml_files:
        raise DatasetError(f"no .xml files under {xml_dir}: is {src_dir} a Pascal VOC dataset?")
    if image_set is not None:
        xml_files = _image_set_files(src_dir, image_set, xml_dir, xml_files)

    records = [_read_xml(storage.join(xml_dir, f), images_dir) for f in xml_files]
    seen_names = sorted({obj["name"] for rec in records for obj in rec["objects"]})
    if classes is None:
        classes = seen_names
    else:
        unknown = [n for n in seen_names if n not in classes]
        if unknown:
            raise DatasetError(f"objects in {xml_dir} are named {unknown}, which --classes does not list: "
                               f"add them to --classes or leave it out to take every name")
    category_id = {name: k + 1 for k, name in enumerate(classes)}

    images, annotations = [], []
    difficult = 0
    for image_id, rec in enumerate(records, start=1):
        images.append({"id": image_id, "file_name": rec["file_name"], "width": rec["width"],
                       "height": rec["height"]})
        for obj in rec["objects"]:
            xmin, ymin, xmax, ymax = obj["bndbox"]
            bbox = [xmin - 1.0, ymin - 1.0, xmax - xmin + 1.0, ymax - ymin + 1.0]
            difficult += obj["difficult"]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category_id[obj["name"]], "bbox": bbox,
                                "area": bbox[2] * bbox[3], "iscrowd": obj["difficult"]})
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    write_json(out_url, {"images": images, "annotations": annotations, "categories": categories})
    return {"out_url": out_url, "images_dir": images_dir, "xml_dir": xml_dir, "images": len(images),
            "annotations": len(annotations), "difficult_as_crowd": difficult,
            "categories": len(categories)}


def _image_set_files(src_dir: str, image_set: str, xml_dir: str, xml_files: list[str]) -> list[str]:
    """The XML files of the ids in ``ImageSets/Main/<image_set>.txt`` (first word of each line), in file order."""
    sets_dir = storage.join(src_dir, "ImageSets", "Main")
    list_url = storage.join(sets_dir, f"{image_set}.txt")
    if not storage.exists(list_url):
        available = sorted(f[:-4] for f in list_files(sets_dir) if f.endswith(".txt") and "/" not in f)
        raise DatasetError(f"--image-set {image_set}: {list_url} does not exist"
                           + (f"; the sets there are: {', '.join(available)}" if available
                              else "; this dataset has no ImageSets/Main lists (leave --image-set out to convert every XML)"))
    by_id = {posixpath.splitext(f)[0]: f for f in xml_files}
    ids = [line.split()[0] for line in storage.read_text(list_url).splitlines() if line.strip()]
    missing = [i for i in ids if i not in by_id]
    if missing:
        raise DatasetError(f"{list_url} lists {len(missing)} id(s) with no XML in {xml_dir}, e.g. "
                           f"{', '.join(missing[:3])}: is the list from this dataset?")
    if not ids:
        raise DatasetError(f"{list_url} lists no image ids")
    return list(dict.fromkeys(by_id[i] for i in ids))


def _read_xml(url: str, images_dir: str) -> dict[str, Any]:
    try:
        root = ElementTree.fromstring(storage.read_bytes(url))
    except ElementTree.ParseError as exc:
        raise DatasetError(f"{url} is not valid XML ({exc}): fix or remove the file") from None
    file_name = (root.findtext("filename") or "").strip()
    if not file_name:
        file_name = posixpath.splitext(posixpath.basename(url))[0] + ".jpg"
    width = _number(root.findtext("size/width"), url, "size/width")
    height = _number(root.findtext("size/height"), url, "size/height")
    for value, what in ((width, "width"), (height, "height")):
        if value is not None and value < 0:
            raise DatasetError(f"{url}: size/{what} is {value:g}: an image size cannot be negative; write the "
                               f"image's real size (or 0 to read it from the image)")
    if not width or not height:  # some exporters write 0: the image header knows
        try:
            width, height = read_image_size(storage.join(images_dir, file_name))
        except (ImageMissing, ImageUnreadable):
            raise DatasetError(f"{url} has no usable <size> and the image {file_name} could not be read "
                               f"under {images_dir}: add <size><width>/<height> to the XML") from None
    objects = []
    for index, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise DatasetError(f"{url}: object {index} has no <name>: add the class name")
        where = f"object {index} ({name})"
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"{url}: {where} has no <bndbox>: add xmin/ymin/xmax/ymax")
        box = tuple(_number(bndbox.findtext(k), url, f"{where} bndbox/{k}", required=True)
                    for k in ("xmin", "ymin", "xmax", "ymax"))
        xmin, ymin, xmax, ymax = box
        for low, high, lo_name, hi_name in ((xmin, xmax, "xmin", "xmax"), (ymin, ymax, "ymin", "ymax")):
            if high < low:  # VOC boxes are inclusive pixel indices: xmax == xmin is a 1-px box
                raise DatasetError(f"{url}: {where} has {hi_name} {high:g} < {lo_name} {low:g}, an impossible box: "
                                   f"swap them or fix the annotation")
        difficult = _number(obj.findtext("difficult"), url, f"{where} difficult") or 0
        objects.append({"name": name, "bndbox": box, "difficult": 1 if difficult else 0})
    return {"file_name": file_name, "width": int(width or 0), "height": int(height or 0), "objects": objects}


def _number(text: str | None, url: str, what: str, required: bool = False) -> float | None:
    if text is None or not text.strip():
        if required:
            raise DatasetError(f"{url}: {what} is missing: every box needs xmin, ymin, xmax, ymax")
        return None
    try:
        value = float(text)
    except ValueError:
        raise DatasetError(f"{url}: {what} is {text.strip()!r}, not a number: fix the XML") from None
    if not math.isfinite(value):
        raise DatasetError(f"{url}: {what} is {text.strip()!r}, not a finite number (NaN and infinity are not "
                           f"valid in COCO JSON): fix the XML")
    return value
