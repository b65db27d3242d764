"""What `orch eval | predict | export` read and write, checked without torch before any work is done.

* which checkpoint a ``CKPT`` argument names (a ``.pth`` file, a run dir or a run name) and
  whether its first bytes are a torch checkpoint at all (a text file is refused here, in
  milliseconds, instead of deep inside ``torch.load``);
* which images a folder holds;
* that an output path is none of the command's inputs: ``--out`` naming the checkpoint, its
  marker, an annotation file or an image, and ``--draw`` naming the image folder are refused
  (paths are compared after resolving ``..``, symlinks and hard links).

``jobs.predict`` builds on these; this module never imports torch, so the CLI refuses a bad
argument before spending seconds importing it.
"""
from __future__ import annotations

import os
from typing import Iterable

from orchestrator import runs, storage
from orchestrator.errors import OrchError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
BEST_NAME = "best.pth"
FINAL_NAME = "final.pth"
# torch.save writes a zip archive (torch >= 1.6) or, in the legacy format, a pickle (protocol 2+)
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def resolve_checkpoint(ref: str, work_dir: str | None = None) -> tuple[str, str | None]:
    """(checkpoint URL, run dir or None) for a .pth file, a run dir or a run name.

    A run dir gives its ``best.pth``, else ``final.pth``, else its latest complete periodic
    checkpoint; each counts only with its ``.done`` marker.
    """
    url = storage.absolute(ref)
    run_dir = _as_run_dir(url)
    if run_dir is None and "://" not in ref and "/" not in ref and not storage.exists(url):
        base = work_dir or os.environ.get("ORCH_WORK_DIR") or storage.absolute("runs")
        run_dir = _as_run_dir(storage.join(base, ref))  # a run name
    if run_dir is not None:
        return pick_run_checkpoint(run_dir), run_dir
    if is_hf_folder(url):  # a transformers detector's save_pretrained folder (with --model NAME)
        return url.rstrip("/"), None
    if not storage.exists(url) or storage.isdir(url):
        raise OrchError(f"checkpoint {url} does not exist; pass a .pth file, or a run dir (or run name) made by "
                        f"`orch submit` to use its best checkpoint")
    parent = storage.parent(url)
    if storage.basename(parent) == runs.CHECKPOINT_DIRNAME:
        run_dir = _as_run_dir(storage.parent(parent))
    return url, run_dir


def _as_run_dir(url: str) -> str | None:
    return url.rstrip("/") if storage.exists(storage.join(url, runs.PLAN_FILE)) else None


def pick_run_checkpoint(run_dir: str) -> str:
    directory = storage.join(run_dir, runs.CHECKPOINT_DIRNAME)
    for name in (BEST_NAME, FINAL_NAME):
        url = storage.join(directory, name)
        if storage.exists(url + runs.MARKER_SUFFIX) and storage.exists(url):
            return url
    complete = runs.complete_checkpoints(storage.listdir(directory)) if storage.isdir(directory) else []
    if not complete:
        raise OrchError(f"run {run_dir} has no complete checkpoint yet (no best.pth, final.pth or iter_*.pth with "
                        f"its .done marker); wait for the first one, or pass a .pth file")
    return storage.join(directory, complete[-1][1])


def is_hf_folder(url: str) -> bool:
    return storage.isdir(url) and storage.exists(storage.join(url, "config.json"))


def check_checkpoint_header(url: str) -> None:
    """Refuse a file whose first bytes are neither a zip archive nor a pickle: torch.save never wrote it."""
    if is_hf_folder(url):
        return  # safetensors, read by transformers
    with storage.open_url(url, "rb") as f:
        head = f.read(4)
    if head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC):
        return
    shown = "it is empty" if not head else f"it starts with {head!r}"
    raise OrchError(f"{url} is not a readable torch checkpoint ({shown}, not torch.save's zip or pickle "
                    f"format): pass a .pth written by orch (<run_dir>/checkpoints/) or by "
                    f"torch.save({{'model': state_dict}})")


def require_model_source(url: str, run_dir: str | None, model_name: str | None, config_file: str | None,
                         model_names: Iterable[str]) -> None:
    if run_dir is None and not model_name and not config_file:
        raise OrchError(f"{url} is not inside a run dir, so its model is unknown: pass --model NAME (one of "
                        f"{', '.join(sorted(model_names))}) or --config CFG")


def list_images(img_dir: str) -> list[str]:
    """Image file names directly under ``img_dir`` (any storage URL), sorted."""
    if not storage.isdir(img_dir):
        raise OrchError(f"image folder {img_dir} does not exist; pass a folder of {'/'.join(IMAGE_EXTENSIONS)} "
                        f"files")
    names = sorted(n for n in storage.listdir(img_dir) if n.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise OrchError(f"{img_dir} holds no images ({', '.join(IMAGE_EXTENSIONS)}); pass the folder that "
                        f"holds them")
    return names


def same_path(a: str, b: str) -> bool:
    """True when two URLs name the same file or folder (local ones after realpath, and same inode)."""
    if storage.is_local(a) and storage.is_local(b):
        pa, pb = os.path.realpath(storage.absolute(a)), os.path.realpath(storage.absolute(b))
        if pa == pb:
            return True
        try:
            return os.path.samefile(pa, pb)
        except OSError:
            return False
    return a.rstrip("/") == b.rstrip("/")


def refuse_output_over_inputs(out: str, flag: str, inputs: Iterable[tuple[str, str | None]],
                              folder: bool = False) -> None:
    """Refuse an output that is the same file or folder as one of ``inputs`` ((role, url) pairs), and an
    output file (``folder=False``) that is an existing folder or an output folder that is a file."""
    for role, url in inputs:
        if url and same_path(out, url):
            raise OrchError(f"{flag} {out} would overwrite its input ({role}): pass another path "
                            f"(inputs are never modified)")
    if storage.is_local(out) and os.path.exists(storage.absolute(out)):
        if not folder and os.path.isdir(storage.absolute(out)):
            raise OrchError(f"{flag} {out} is a folder: pass a file path")
        if folder and not os.path.isdir(storage.absolute(out)):
            raise OrchError(f"{flag} {out} is a file: pass a folder")


def refuse_output_in_folder(out: str, flag: str, folder: str | None, role: str) -> None:
    """Refuse an output that is an existing file directly inside an input folder (e.g. an image)."""
    if not folder or not storage.is_local(out) or not storage.is_local(folder):
        return
    path = os.path.realpath(storage.absolute(out))
    if os.path.exists(path) and os.path.dirname(path) == os.path.realpath(storage.absolute(folder)):
        raise OrchError(f"{flag} {out} would overwrite its input (a file of {role} {folder}): pass a path "
                        f"outside that folder")
