"""Helpers shared by the dataset tools: box parsing, image headers, safe JSON output."""
from __future__ import annotations

import json
import math
import posixpath
from typing import Any

from orchestrator import storage
from orchestrator.cocofile import MIN_BOX_SIZE, clipped_box
from orchestrator.errors import OrchError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DatasetError(OrchError, ValueError):
    """A dataset that a tool cannot read or write; the message names the file and the fix."""


_NUMBER_TYPES = (int, float)  # compared with type(): JSON true/false must not pass as numbers


def parse_bbox(bbox: Any) -> tuple[float, float, float, float] | None:
    """COCO ``[x, y, w, h]`` as four finite numbers, or None when the field is malformed.

    Called once per annotation (a million times for COCO itself), hence the terse checks.
    """
    if type(bbox) not in (list, tuple) or len(bbox) != 4:
        return None
    x, y, w, h = bbox
    if (type(x) not in _NUMBER_TYPES or type(y) not in _NUMBER_TYPES or type(w) not in _NUMBER_TYPES
            or type(h) not in _NUMBER_TYPES):
        return None
    try:
        if not math.isfinite(x + y + w + h):  # NaN and inf propagate through the sum
            return None
    except OverflowError:  # an integer too large for a float
        return None
    return x, y, w, h


def is_int_id(value: Any) -> bool:
    return type(value) is int


def is_positive_number(value: Any) -> bool:
    return type(value) in _NUMBER_TYPES and value > 0 and math.isfinite(value)


def image_size_of(image: dict[str, Any]) -> tuple[float, float] | None:
    """(width, height) of a COCO image entry when both are positive numbers, else None."""
    w, h = image.get("width"), image.get("height")
    if is_positive_number(w) and is_positive_number(h):
        return w, h
    return None


def box_in_image(bbox: tuple[float, float, float, float], width: float, height: float) -> list[float] | None:
    """The box as [x, y, w, h] once clipped to the image (the training job's rule), None when dropped."""
    x, y, w, h = bbox
    if x >= 0 and y >= 0 and x + w <= width and y + h <= height and w >= MIN_BOX_SIZE and h >= MIN_BOX_SIZE:
        return [x, y, w, h]  # the common case, without building a list per coordinate
    clipped = clipped_box([x, y, w, h], width, height)
    if clipped is None:
        return None
    x1, y1, x2, y2 = clipped
    return [x1, y1, x2 - x1, y2 - y1]


class ImageMissing(Exception):
    pass


class ImageUnreadable(Exception):
    pass


HEADER_BLOCK_BYTES = 64 * 1024  # object stores: fetch this much per request, not fsspec's 5 MB default


def read_image_size(url: str) -> tuple[int, int]:
    """(width, height) from the image header only; raises ImageMissing / ImageUnreadable."""
    from PIL import Image, UnidentifiedImageError  # lazy: keeps `orch --help` fast

    try:
        if storage.is_local(url):
            opened = storage.open_url(url, "rb")
        else:
            fs, path = storage.filesystem(url)
            opened = fs.open(path, "rb", block_size=HEADER_BLOCK_BYTES)
        with opened as f, Image.open(f) as img:
            return img.size
    except FileNotFoundError:
        raise ImageMissing(url) from None
    except UnidentifiedImageError:
        raise ImageUnreadable("not an image format PIL can read (truncated or not an image?)") from None
    except Exception as exc:  # PIL's decode errors, a directory, a store's own error types: one image's problem
        raise ImageUnreadable(f"{type(exc).__name__}: {exc}") from None


def read_image_sizes(urls: list[str]) -> list[tuple[int, int] | Exception]:
    """Header sizes of many images, concurrently (object stores answer one request at a time)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(url: str) -> tuple[int, int] | Exception:
        try:
            return read_image_size(url)
        except (ImageMissing, ImageUnreadable) as exc:
            return exc

    if not urls:
        return []
    workers = 4 if storage.is_local(urls[0]) else 32
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, urls))


def same_file(a: str, b: str) -> bool:
    """True when two URLs name the same file (local paths compared after normalisation)."""
    if storage.is_local(a) and storage.is_local(b):
        import os

        pa, pb = storage.absolute(a), storage.absolute(b)
        if os.path.exists(pa) and os.path.exists(pb):
            return os.path.samefile(pa, pb)
        return pa == pb
    return a.rstrip("/") == b.rstrip("/")


def refuse_overwrite(input_url: str, out_url: str, what: str) -> None:
    if same_file(input_url, out_url):
        raise DatasetError(
            f"{what} would overwrite its input {input_url}: pass a different output file "
            f"(the input is never modified in place)")


def write_json(url: str, data: dict[str, Any]) -> None:
    try:
        text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN/Infinity: Python would write them, but they are not JSON and no reader takes them
        raise DatasetError(f"refusing to write {url}: a value is NaN or infinite, which JSON cannot hold; "
                           f"fix the input it came from (run `orch data check` on it)") from None
    storage.write_text(url, text + "\n")


def refuse_output_in_dataset(out_url: str, src_dir: str, what: str) -> None:
    """Refuse an output that is a folder, or an existing file inside the dataset being read (a label, an
    image, an XML, a class list). The converters read no .json file, so an earlier output (an existing
    ``.json``) may be written again; any other existing file there is refused."""
    import os

    if not (storage.is_local(out_url) and storage.is_local(src_dir)):
        if out_url.rstrip("/") == src_dir.rstrip("/"):
            raise DatasetError(f"{what} --out {out_url} is the dataset folder itself: pass a .json file path")
        return
    out, src = os.path.realpath(storage.absolute(out_url)), os.path.realpath(storage.absolute(src_dir))
    if os.path.isdir(out):
        raise DatasetError(f"{what} --out {out_url} is a folder: pass a .json file path")
    if os.path.exists(out) and out.startswith(src + os.sep) and not out.lower().endswith(".json"):
        raise DatasetError(f"{what} --out {out_url} would overwrite its input (a file of the dataset {src_dir}): "
                           f"pass a new .json file (e.g. {src_dir}/annotations.json)")


def list_files(root_url: str) -> list[str]:
    """Paths of all files under ``root_url``, relative to it with '/' separators, sorted."""
    root = storage.absolute(root_url)
    fs, path = storage.filesystem(root)
    path = fs._strip_protocol(path).rstrip("/")
    try:
        found = fs.find(path, withdirs=False)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise storage.StorageError(f"could not list {root_url}: {exc}") from exc
    rel = []
    for p in found:
        p = str(p)
        if p.startswith(path + "/"):
            rel.append(p[len(path) + 1:])
    return sorted(rel)


def is_image_name(name: str) -> bool:
    return posixpath.splitext(name)[1].lower() in IMAGE_EXTENSIONS


FIRST_IMAGES_CHECKED = 8


def check_first_images(ann_url: str, img_dir: str, flag: str = "--images") -> None:
    """Refuse an image folder that does not hold the first images ``ann_url`` names (a wrong --images
    would otherwise fail inside a DataLoader worker, minutes later)."""
    from orchestrator.cocofile import load_coco

    ann_url, img_dir = storage.absolute(ann_url), storage.absolute(img_dir)
    coco = load_coco(ann_url)
    if not storage.isdir(img_dir):
        raise DatasetError(f"{flag} {img_dir} does not exist: pass the folder that {ann_url}'s file_name "
                           f"entries are relative to")
    names = [img.get("file_name") for img in coco["images"][:FIRST_IMAGES_CHECKED] if isinstance(img, dict)]
    missing = [n for n in names if not isinstance(n, str) or not storage.exists(storage.join(img_dir, n))]
    if missing:
        raise DatasetError(f"{flag} {img_dir} does not hold the images {ann_url} names ({len(missing)} of the "
                           f"first {len(names)} are missing, e.g. {missing[0]!r}): pass the folder that its "
                           f"file_name entries are relative to")
