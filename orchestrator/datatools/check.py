"""`orch data check`: find what in a COCO dataset would break training or skew its results.

Each kind of finding has one severity:

* ``error`` — training would crash or silently learn/evaluate the wrong thing (missing images,
  references to unknown images or categories, duplicate ids, malformed boxes, sizes that disagree
  with the image files). ``orch data check`` exits 1.
* ``warning`` — the training job copes on its own (boxes are clipped to the image, boxes under
  1 px are dropped, images without boxes are skipped). Exit status 0.

The cheap mode (``read_images=False``) does only the JSON-level checks, in seconds even for COCO
itself; ``orch submit`` runs it before submitting.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from orchestrator import storage
from orchestrator.cocofile import MIN_BOX_SIZE, load_coco
from orchestrator.datatools._common import (
    DatasetError, ImageMissing, box_in_image, image_size_of, is_int_id, is_positive_number, parse_bbox,
    read_image_sizes,
)

ERROR, WARNING = "error", "warning"

# kind -> (severity, what one counted item is). The order is the order of the report.
FINDING_KINDS: dict[str, tuple[str, str]] = {
    "no_images": (ERROR, "the file lists no images"),
    "no_categories": (ERROR, "the file defines no categories"),
    "malformed_image": (ERROR, "image entries without an integer id, a file_name or a positive width/height"),
    "malformed_category": (ERROR, "category entries without an integer id"),
    "duplicate_image_id": (ERROR, "image entries repeating an id used before"),
    "duplicate_category_id": (ERROR, "category entries repeating an id used before"),
    "duplicate_annotation_id": (ERROR, "annotations repeating an id used before"),
    "malformed_annotation": (ERROR, "annotations without an integer id, image_id or category_id"),
    "malformed_bbox": (ERROR, "annotations whose bbox is not 4 finite numbers [x, y, w, h]"),
    "unknown_image_ref": (ERROR, "annotations pointing at an image id that is not in 'images'"),
    "unknown_category_ref": (ERROR, "annotations pointing at a category id that is not in 'categories'"),
    "missing_image": (ERROR, "image files that do not exist"),
    "unreadable_image": (ERROR, "image files that cannot be decoded"),
    "size_mismatch": (ERROR, "images whose real size differs from width/height in the json"),
    "negative_box": (ERROR, "boxes with a negative width or height (COCO boxes are [x, y, w, h]: the file was "
                            "written wrong, e.g. [x1, y1, x2, y2] with x2 < x1)"),
    "degenerate_box": (WARNING, "boxes with zero width or height (dropped)"),
    "tiny_box": (WARNING, "boxes under 1 px once clipped to the image, e.g. entirely outside it (dropped)"),
    "box_outside_image": (WARNING, "boxes extending past the image border (clipped)"),
    "missing_area": (WARNING, "annotations without a positive 'area' (COCO evaluation reads it; --fix sets w*h)"),
    "image_without_annotations": (WARNING, "images without any annotation (background images)"),
    "category_without_annotations": (WARNING, "categories that no annotation uses"),
}


@dataclass
class Finding:
    kind: str
    severity: str
    description: str
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "severity": self.severity, "description": self.description,
                "count": self.count, "examples": list(self.examples)}


@dataclass
class CheckReport:
    ann_url: str
    images_url: str | None
    images_read: bool
    num_images: int = 0
    num_annotations: int = 0
    num_categories: int = 0
    findings: dict[str, Finding] = field(default_factory=dict)
    histogram: list[dict[str, Any]] = field(default_factory=list)
    max_examples: int = 5

    def add(self, kind: str, example: str | Callable[[], str]) -> None:
        """Count one finding; ``example`` may be a callable, only called while examples are kept."""
        finding = self.findings.get(kind)
        if finding is None:
            severity, description = FINDING_KINDS[kind]
            finding = self.findings[kind] = Finding(kind, severity, description)
        finding.count += 1
        if len(finding.examples) < self.max_examples:
            finding.examples.append(example() if callable(example) else example)

    def count(self, kind: str) -> int:
        finding = self.findings.get(kind)
        return finding.count if finding else 0

    def _sorted(self, severity: str) -> list[Finding]:
        order = list(FINDING_KINDS)
        found = [f for f in self.findings.values() if f.severity == severity]
        return sorted(found, key=lambda f: order.index(f.kind))

    @property
    def errors(self) -> list[Finding]:
        return self._sorted(ERROR)

    @property
    def warnings(self) -> list[Finding]:
        return self._sorted(WARNING)

    @property
    def ok(self) -> bool:
        """True when nothing would break training (warnings allowed)."""
        return not self.errors

    def raise_for_errors(self) -> None:
        """Raise a one-sentence DatasetError when something would break training (for `orch submit`)."""
        if self.ok:
            return
        first = self.errors[0]
        counts = ", ".join(f"{f.count} {f.kind}" for f in self.errors)
        example = f" (e.g. {first.examples[0]})" if first.examples else ""
        raise DatasetError(f"annotation file {self.ann_url} would break training: {counts}{example}; "
                           f"`orch data check {self.ann_url}` lists them and `--fix OUT.json` writes a "
                           f"cleaned copy")

    def to_dict(self) -> dict[str, Any]:
        return {
            "ann_url": self.ann_url, "images_url": self.images_url, "images_read": self.images_read,
            "ok": self.ok, "num_images": self.num_images, "num_annotations": self.num_annotations,
            "num_categories": self.num_categories,
            "errors": [f.to_dict() for f in self.errors],
            "warnings": [f.to_dict() for f in self.warnings],
            "histogram": [dict(row) for row in self.histogram],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def render_text(self) -> str:
        lines = [f"dataset {self.ann_url}",
                 f"  {self.num_images} images, {self.num_annotations} annotations, "
                 f"{self.num_categories} categories"]
        if self.images_read:
            lines.append(f"  image files checked under {self.images_url}")
        else:
            lines.append("  image files not read (json-level checks only; pass --images DIR to read them)")
        for title, findings in (("errors (would break training or give wrong results)", self.errors),
                                ("warnings (handled by the training job, or by --fix)", self.warnings)):
            if not findings:
                continue
            lines.append("")
            lines.append(f"{sum(f.count for f in findings)} {title}:")
            for f in findings:
                lines.append(f"  [{f.kind}] {f.count} {f.description}")
                lines.extend(f"      {example}" for example in f.examples)
                if f.count > len(f.examples):
                    lines.append(f"      ... and {f.count - len(f.examples)} more")
                if f.kind == "missing_image" and f.count == self.num_images:
                    lines.append(f"      none of the images exist: is {self.images_url} the folder that "
                                 f"file_name is relative to?")
        lines.append("")
        lines.extend(_render_histogram(self.histogram))
        lines.append("")
        if self.ok:
            verdict = "OK: nothing would break training"
            if self.warnings:
                verdict += f" ({len(self.warnings)} kinds of warnings)"
        else:
            verdict = (f"FAILED: {sum(f.count for f in self.errors)} problems would break training; "
                       f"`orch data check {self.ann_url} --fix OUT.json` writes a cleaned copy")
        lines.append(verdict)
        return "\n".join(lines)


def _render_histogram(rows: list[dict[str, Any]], bar_width: int = 40) -> list[str]:
    if not rows:
        return ["per-class histogram: no categories"]
    name_width = max(4, max(len(str(r["name"])) for r in rows))
    top = max(r["annotations"] for r in rows) or 1
    lines = ["per-class histogram:",
             f"  {'id':>5}  {'name':<{name_width}}  {'boxes':>8}  {'images':>7}"]
    for r in rows:
        bar = "#" * (round(bar_width * r["annotations"] / top) if r["annotations"] else 0)
        lines.append(f"  {r['id']:>5}  {str(r['name']):<{name_width}}  {r['annotations']:>8}  "
                     f"{r['images']:>7}  {bar}")
    return lines


def check_dataset(ann_url: str, images_url: str | None, *, max_examples: int = 5,
                  read_images: bool = True, coco: dict[str, Any] | None = None) -> CheckReport:
    """Check a COCO annotation file (and, with ``read_images``, the image headers under ``images_url``).

    Only headers are read (``PIL.Image.open(...).size``), never whole images. ``coco``: the file's
    content when the caller has already loaded it (read once).
    """
    coco = coco if coco is not None else load_coco(ann_url)
    read_images = bool(read_images and images_url)
    report = CheckReport(ann_url, images_url, read_images, max_examples=max_examples)
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DatasetError(f"annotation file {ann_url}: '{key}' must be a list, "
                               f"not {type(coco.get(key)).__name__}: is it COCO format?")
    images, annotations, categories = coco["images"], coco["annotations"], coco["categories"]
    report.num_images, report.num_annotations, report.num_categories = (
        len(images), len(annotations), len(categories))

    image_by_id = _check_images(report, images)
    category_by_id = _check_categories(report, categories)
    per_category, images_with_anns = _check_annotations(report, annotations, image_by_id, category_by_id)

    for image_id, image in image_by_id.items():
        if image_id not in images_with_anns:
            report.add("image_without_annotations", f"image {image_id} {image.get('file_name')!r}")
    for cat_id, cat in category_by_id.items():
        if not per_category[cat_id][0]:
            report.add("category_without_annotations", f"category {cat_id} {cat.get('name')!r}")
    report.histogram = [
        {"id": cat_id, "name": cat.get("name", ""), "annotations": per_category[cat_id][0],
         "images": per_category[cat_id][1]}
        for cat_id, cat in sorted(category_by_id.items())
    ]
    if read_images:
        _check_image_files(report, image_by_id, images_url)
    return report


def _check_images(report: CheckReport, images: list[Any]) -> dict[int, dict[str, Any]]:
    if not images:
        report.add("no_images", "'images' is empty")
    image_by_id: dict[int, dict[str, Any]] = {}
    for index, image in enumerate(images):
        if not isinstance(image, dict) or not is_int_id(image.get("id")):
            report.add("malformed_image", f"images[{index}]: no integer 'id': {_short(image)}")
            continue
        image_id = image["id"]
        if image_id in image_by_id:
            report.add("duplicate_image_id", f"images[{index}]: id {image_id} "
                       f"({image.get('file_name')!r}) was used by {image_by_id[image_id].get('file_name')!r}")
            continue
        image_by_id[image_id] = image
        if not isinstance(image.get("file_name"), str) or not image["file_name"]:
            report.add("malformed_image", f"image {image_id}: no 'file_name'")
        elif image_size_of(image) is None:
            report.add("malformed_image", f"image {image_id} {image['file_name']!r}: width/height "
                       f"{image.get('width')!r}x{image.get('height')!r} are not positive numbers")
    return image_by_id


def _check_categories(report: CheckReport, categories: list[Any]) -> dict[int, dict[str, Any]]:
    if not categories:
        report.add("no_categories", "'categories' is empty")
    category_by_id: dict[int, dict[str, Any]] = {}
    for index, cat in enumerate(categories):
        if not isinstance(cat, dict) or not is_int_id(cat.get("id")):
            report.add("malformed_category", f"categories[{index}]: no integer 'id': {_short(cat)}")
            continue
        if cat["id"] in category_by_id:
            report.add("duplicate_category_id", f"categories[{index}]: id {cat['id']} ({cat.get('name')!r}) "
                       f"was used by {category_by_id[cat['id']].get('name')!r}")
            continue
        category_by_id[cat["id"]] = cat
    return category_by_id


def _check_annotations(report: CheckReport, annotations: list[Any], image_by_id: dict[int, dict[str, Any]],
                       category_by_id: dict[int, dict[str, Any]]):
    """Per-annotation checks; returns ({category id: [boxes, images]}, {image ids with annotations}).

    The loop runs once per box (860k for COCO), so it is kept tight: ``type(x) is int`` inline,
    examples built only while they are kept.
    """
    size_by_image = {image_id: image_size_of(image) for image_id, image in image_by_id.items()}
    boxes_per_category = dict.fromkeys(category_by_id, 0)
    category_image_pairs: set[tuple[int, int]] = set()
    seen_ids: set[int] = set()
    for index, ann in enumerate(annotations):
        if type(ann) is not dict:
            report.add("malformed_annotation", f"annotations[{index}]: not an object: {_short(ann)}")
            continue
        ann_id, image_id, cat_id = ann.get("id"), ann.get("image_id"), ann.get("category_id")
        where = f"annotation {ann_id}" if type(ann_id) is int else f"annotations[{index}]"
        if type(ann_id) is int:
            if ann_id in seen_ids:
                report.add("duplicate_annotation_id", f"annotations[{index}]: id {ann_id} was used before")
            else:
                seen_ids.add(ann_id)
        if type(image_id) is not int or type(cat_id) is not int or type(ann_id) is not int:
            missing = [k for k in ("id", "image_id", "category_id") if type(ann.get(k)) is not int]
            report.add("malformed_annotation", f"{where}: no integer {', '.join(missing)}")
        size = None
        if image_id in size_by_image:
            size = size_by_image[image_id]
            if cat_id in boxes_per_category:
                boxes_per_category[cat_id] += 1
                category_image_pairs.add((cat_id, image_id))
            else:
                category_image_pairs.add((None, image_id))
        elif type(image_id) is int:
            report.add("unknown_image_ref", f"{where}: image_id {image_id} is not in 'images'")
        if type(cat_id) is int and cat_id not in boxes_per_category:
            report.add("unknown_category_ref", f"{where}: category_id {cat_id} is not in 'categories'")
        _check_bbox(report, ann, where, image_id, size)

    images_per_category = Counter(cat_id for cat_id, _ in category_image_pairs)
    per_category = {cat_id: (boxes_per_category[cat_id], images_per_category[cat_id]) for cat_id in category_by_id}
    images_with_anns = {image_id for _, image_id in category_image_pairs}
    return per_category, images_with_anns


def _check_bbox(report: CheckReport, ann: dict[str, Any], where: str, image_id: Any,
                size: tuple[float, float] | None) -> None:
    """One bbox finding at most per annotation: malformed > degenerate > tiny > outside."""
    bbox = parse_bbox(ann.get("bbox"))
    if bbox is None:
        report.add("malformed_bbox", f"{where}: bbox {_short(ann.get('bbox'))}")
        return
    if not is_positive_number(ann.get("area")):
        report.add("missing_area", f"{where}: area {ann.get('area')!r}")
    x, y, w, h = bbox
    if w < 0 or h < 0:
        report.add("negative_box", f"{where}: bbox {list(bbox)} has w={w:g}, h={h:g}")
        return
    if w == 0 or h == 0:
        report.add("degenerate_box", f"{where}: bbox {list(bbox)} has w={w:g}, h={h:g}")
        return
    if size is None:  # unknown image or no usable size: reported above
        return
    width, height = size
    if x >= 0 and y >= 0 and x + w <= width and y + h <= height and w >= MIN_BOX_SIZE and h >= MIN_BOX_SIZE:
        return  # inside the image and kept as is: the common case, decided without a call
    kept = box_in_image(bbox, width, height)
    if kept is None:
        report.add("tiny_box", lambda: f"{where}: bbox {list(bbox)} in a {width:g}x{height:g} image "
                   f"(image {image_id})")
    elif kept != list(bbox):
        report.add("box_outside_image", lambda: f"{where}: bbox {list(bbox)} in a {width:g}x{height:g} image "
                   f"(image {image_id})")


def _check_image_files(report: CheckReport, image_by_id: dict[int, dict[str, Any]], images_url: str) -> None:
    entries = [(image_id, image) for image_id, image in image_by_id.items()
               if isinstance(image.get("file_name"), str) and image["file_name"]]
    urls = [storage.join(images_url, image["file_name"]) for _, image in entries]
    for (image_id, image), url, result in zip(entries, urls, read_image_sizes(urls)):
        where = f"image {image_id} {image['file_name']!r}"
        if isinstance(result, ImageMissing):
            report.add("missing_image", f"{where}: {url} does not exist")
        elif isinstance(result, Exception):
            report.add("unreadable_image", f"{where}: {result}")
        else:
            json_size = image_size_of(image)
            if json_size is not None and (int(json_size[0]), int(json_size[1])) != tuple(result):
                report.add("size_mismatch", f"{where}: json says {image.get('width')}x{image.get('height')}, "
                           f"the file is {result[0]}x{result[1]}")


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."
