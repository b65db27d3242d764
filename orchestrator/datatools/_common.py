"""Helpers shared by the dataset tools: box parsing, image headers, safe JSON output."""
from __future__ import annotations

import json
import math
import posixpath
from typing import Any

from orchestrator import storage
from orchestrator.errors import OrchError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DatasetError(OrchError, ValueError):
    """A dataset that a tool cannot read or write; the message names the file and the fix."""


def parse_bbox(bbox: Any) -> tuple[float, float, float, float] | None:
    """COCO ``[x, y, w, h]`` as four finite floats, or None when the field is malformed."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return None
    values = []
    for v in bbox:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
        values.append(float(v))
    return values[0], values[1], values[2], values[3]


def is_int_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def image_size_of(image: dict[str, Any]) -> tuple[float, float] | None:
    """(width, height) of a COCO image entry when both are positive numbers, else None."""
    w, h = image.get("width"), image.get("height")
    for v in (w, h):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            return None
    return float(w), float(h)


class ImageMissing(Exception):
    pass


class ImageUnreadable(Exception):
    pass


def read_image_size(url: str) -> tuple[int, int]:
    """(width, height) from the image header only; raises ImageMissing / ImageUnreadable."""
    from PIL import Image, UnidentifiedImageError  # lazy: keeps `orch --help` fast

    try:
        with storage.open_url(url, "rb") as f:
            with Image.open(f) as img:
                return img.size
    except FileNotFoundError:
        raise ImageMissing(url) from None
    except storage.StorageError as exc:  # the store answered, but not with a file we can open
        raise ImageUnreadable(str(exc)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:  # PIL's decode errors
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
    storage.write_text(url, json.dumps(data, separators=(",", ":")) + "\n")


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
