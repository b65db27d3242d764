"""Checkpoints: one manager owns every checkpoint read and write, over ``orchestrator.storage``.

Layout (``<run_dir>/checkpoints/``, any storage URL)::

    iter_000000050.pth        torch.save(state) bytes
    iter_000000050.pth.done   completion marker, written LAST: {"iteration", "size", "sha256", ...}
    best.pth, best.pth.done   the state with the best bbox mAP so far
    final.pth, final.pth.done the state at the end of training

A checkpoint counts only once its marker exists, so a save torn by preemption, a crash or an
outage is never loaded: local files are written under a temp name and renamed
(``storage.write_bytes``), object-store objects appear whole on a single PUT, and in both
cases the marker follows the payload. Overwriting ``best.pth`` removes its marker first.
``load`` checks the payload against the marker's size and sha256, then unpickles with
``weights_only=True``: a checkpoint is untrusted input and may not run code.

The state callers put in (rank 0 saves; keys after ``iteration`` are what exact resume needs)::

    model          model state_dict (unwrapped from DDP)              required
    iteration      completed iterations = the next step index          added from save(iteration=)
    optimizer      optimizer.state_dict()
    scheduler      lr scheduler state_dict()
    scaler         torch.amp GradScaler state_dict(), or None without AMP
    epoch          epoch the next step belongs to
    step_in_epoch  steps of that epoch already done (the sampler starts there)
    sampler_seed   the deterministic batch sampler's seed
    rng            [capture_rng_state() of rank 0, rank 1, ...] gathered to rank 0
    world_size     ranks at save time (len(rng))
    best_metric    best bbox mAP so far, a plain float or None
    plan_hash      plan.json's plan_hash; resume refuses a checkpoint from another plan
    metrics        last eval values, plain floats (optional)

Everything must survive ``torch.load(weights_only=True)``: tensors, int/float/bool/str/None and
dict/list/tuple of those. ``save`` checks this up front and names the offending key; numpy
scalars (``np.float64`` from COCOeval) and numpy RNG states are the usual culprits, hence
:func:`capture_rng_state` / :func:`restore_rng_state`.

Usage (torchtitan style)::

    ckpt = CheckpointManager(run_dir, keep_last=cfg.keep_last)
    url = ckpt.latest()
    state = ckpt.load(url) if url else None
    ...
    ckpt.save(state, iteration, best=improved, final=done)   # returns once serialized
    ckpt.close()                                              # flushes the last upload
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import pickle
import random
import re
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from orchestrator import runs, storage
from orchestrator.errors import OrchError
from orchestrator.storage import StorageError

CHECKPOINT_DIRNAME = runs.CHECKPOINT_DIRNAME
MARKER_SUFFIX = runs.MARKER_SUFFIX
BEST_NAME = "best.pth"
FINAL_NAME = "final.pth"
MARKER_FORMAT_VERSION = 1
# Leftovers of a killed writer: payloads without a marker, storage.write_bytes temp files.
_PERIODIC_LEFTOVER_RE = re.compile(r"^iter_(\d{9})\.pth(\.done)?(\.tmp-[0-9a-f]+)?$")

log = logging.getLogger(__name__)


class CheckpointError(OrchError):
    """A checkpoint cannot be used: no marker, corrupt, or not loadable with weights_only."""


def checkpoint_name(iteration: int) -> str:
    return f"iter_{iteration:09d}.pth"


def marker_url(url: str) -> str:
    return url + MARKER_SUFFIX


# -- what weights_only accepts ------------------------------------------------------------------
_SAFE_LEAF_TYPES = (int, float, bool, str, bytes, bytearray, complex, type(None), torch.Size,
                    torch.device, torch.dtype)
_SAFE_CONTAINER_TYPES = (dict, OrderedDict, Counter, list, tuple, set)


def check_weights_only_loadable(state: Any, where: str = "state") -> None:
    """Raise TypeError naming the first value that ``torch.load(weights_only=True)`` would refuse.

    Exact types are checked on purpose: ``np.float64`` subclasses float but pickles as numpy.
    """
    kind = type(state)
    if kind in (torch.Tensor, torch.nn.Parameter) or kind in _SAFE_LEAF_TYPES:
        return
    if isinstance(state, torch.dtype):
        return
    if kind in _SAFE_CONTAINER_TYPES:
        if isinstance(state, dict):
            for key, value in state.items():
                check_weights_only_loadable(key, f"{where} key {key!r}")
                check_weights_only_loadable(value, f"{where}[{key!r}]")
        else:
            for i, value in enumerate(state):
                check_weights_only_loadable(value, f"{where}[{i}]")
        return
    hint = ""
    if kind.__module__.split(".")[0] == "numpy":
        hint = " (convert numpy values with float()/int()/torch.from_numpy(); RNG states with capture_rng_state())"
    raise TypeError(f"{where} is a {kind.__module__}.{kind.__qualname__}, which "
                    f"torch.load(weights_only=True) refuses, so the checkpoint could not be resumed "
                    f"from{hint}")


# -- RNG state ----------------------------------------------------------------------------------
def capture_rng_state() -> dict[str, Any]:
    """python/numpy/torch/CUDA global RNG states as tensors and plain values (weights_only-safe)."""
    py_version, py_internal, py_gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": int(py_version),
                   "state": torch.tensor(py_internal, dtype=torch.int64),
                   "gauss_next": py_gauss_next if py_gauss_next is None else float(py_gauss_next)},
        "numpy": {"name": str(np_name),
                  "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss),
                  "cached_gaussian": float(np_cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": [],
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`; CUDA states are restored for the devices present."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(x) for x in py["state"].tolist()), py["gauss_next"]))
    npst = state["numpy"]
    np.random.set_state((npst["name"], npst["keys"].numpy().astype(np.uint32), int(npst["pos"]),
                         int(npst["has_gauss"]), float(npst["cached_gaussian"])))
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        for device, cuda_state in enumerate(cuda_states[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu().to(torch.uint8), device)


# -- the manager --------------------------------------------------------------------------------
class _NotRetryable(Exception):
    """Carries a StorageError that retrying cannot fix (bad credentials, access denied)."""


class CheckpointManager:
    """save / latest / load / list_complete / wait / close for ``<run_dir>/checkpoints``.

    ``save`` serializes in the calling thread (the state is snapshotted when it returns) and,
    with ``async_save``, uploads in one background thread, one upload at a time. A failed upload
    is retried with backoff, then logged with ``logger.error``; it never raises into training and
    never prunes, so what was saved before stays intact.
    """

    def __init__(self, run_dir: str, keep_last: int = 2, async_save: bool = True,
                 retry_attempts: int = 5, retry_backoff_s: float = 0.5,
                 logger: logging.Logger | None = None):
        if not isinstance(keep_last, int) or keep_last < 2:
            raise ValueError(f"keep_last must be an integer >= 2 (got {keep_last!r}): with one checkpoint "
                             f"kept, a save torn by preemption leaves nothing to resume from; set "
                             f"schedule.keep_last to 2 or more")
        if retry_attempts < 1:
            raise ValueError(f"retry_attempts must be >= 1 (got {retry_attempts!r})")
        self.run_dir = run_dir
        self.directory = storage.join(run_dir, CHECKPOINT_DIRNAME)
        self.keep_last = keep_last
        self.async_save = async_save
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self.logger = logger or log
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ckpt-upload") if async_save else None
        self._pending: Future | None = None
        self._lock = threading.Lock()  # guards the counters below, written by the upload thread
        self._closed = False
        self.last_error: str | None = None     # of the most recent save; None when it succeeded
        self.failed_saves = 0
        self.last_saved_url: str | None = None
        self.last_save_stall_s = 0.0           # how long the last save() held the training thread
        self.last_upload_s = 0.0

    # -- writing ---------------------------------------------------------------------------------
    def save(self, state: dict[str, Any], iteration: int, *, best: bool = False, final: bool = False) -> None:
        """Save ``state`` as ``iter_<iteration>.pth`` (and ``best.pth`` / ``final.pth``).

        Raises only for caller bugs (a state that could not be loaded back); storage failures are
        logged and reported by :meth:`wait`, ``last_error`` and ``failed_saves``.
        """
        started = time.perf_counter()
        if self._closed:
            raise RuntimeError("CheckpointManager.save() after close()")
        state = self._checked_state(state, iteration)
        self._wait_pending()  # one upload at a time, and one payload in memory
        payload = serialize(state)
        names = [checkpoint_name(iteration)] + ([BEST_NAME] if best else []) + ([FINAL_NAME] if final else [])
        if self._executor is not None:
            self._pending = self._executor.submit(self._write_checkpoint, payload, iteration, names)
        else:
            self._write_checkpoint(payload, iteration, names)
        self.last_save_stall_s = time.perf_counter() - started

    def wait(self) -> bool:
        """Block until the pending upload is done; True when the most recent save succeeded."""
        self._wait_pending()
        return self.last_error is None

    def close(self) -> bool:
        if self._closed:
            return self.last_error is None
        ok = self.wait()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._closed = True
        return ok

    def __enter__(self) -> "CheckpointManager":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _wait_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()  # _write_checkpoint never raises

    def _checked_state(self, state: dict[str, Any], iteration: int) -> dict[str, Any]:
        if not isinstance(state, dict):
            raise TypeError(f"checkpoint state must be a dict, got {type(state).__name__}")
        if not isinstance(iteration, int) or isinstance(iteration, bool) or iteration < 0:
            raise ValueError(f"iteration must be a non-negative int, got {iteration!r}")
        if "model" not in state:
            raise ValueError("checkpoint state has no 'model' key; every checkpoint holds at least "
                             "model (a state_dict) and iteration (see jobs/checkpoint.py)")
        if "iteration" in state and state["iteration"] != iteration:
            raise ValueError(f"state['iteration'] = {state['iteration']!r} but save(iteration={iteration}); "
                             f"they must agree")
        state = {**state, "iteration": iteration}
        check_weights_only_loadable(state)
        return state

    def _write_checkpoint(self, payload: bytes, iteration: int, names: list[str]) -> bool:
        """Upload one payload under each name, marker last; prune on success. Never raises."""
        started = time.perf_counter()
        marker = {"format": MARKER_FORMAT_VERSION, "iteration": iteration, "size": len(payload),
                  "sha256": hashlib.sha256(payload).hexdigest(),
                  "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
        try:
            for name in names:
                url = storage.join(self.directory, name)
                self._upload_with_retry(url, payload, {**marker, "name": name})
        except Exception as exc:  # noqa: BLE001 - the training thread must go on
            with self._lock:
                self.failed_saves += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
            self.logger.error(
                "CHECKPOINT SAVE FAILED at iteration %d: %s (%s). Training continues; earlier checkpoints "
                "are untouched (last good: %s) and the next save will try again.",
                iteration, storage.join(self.directory, names[0]), self.last_error,
                self.last_saved_url or "none in this job")
            return False
        with self._lock:
            self.last_error = None
            self.last_saved_url = storage.join(self.directory, names[0])
            self.last_upload_s = time.perf_counter() - started
        self.logger.info("saved checkpoint %s (%.1f MB in %.2f s)%s", self.last_saved_url,
                         len(payload) / 1e6, self.last_upload_s,
                         "".join(f" + {n}" for n in names[1:]))
        self._prune(iteration)
        return True

    def _upload_with_retry(self, url: str, payload: bytes, marker: dict[str, Any]) -> None:
        def on_retry(attempt: int, exc: Exception) -> None:
            self.logger.warning("checkpoint upload %s failed (attempt %d/%d), retrying: %s",
                                url, attempt, self.retry_attempts, exc)

        try:
            storage.retry(lambda: self._upload(url, payload, marker), what=f"saving checkpoint {url}",
                          attempts=self.retry_attempts, backoff_s=self.retry_backoff_s, on_retry=on_retry)
        except _NotRetryable as exc:
            raise exc.args[0] from None

    @staticmethod
    def _upload(url: str, payload: bytes, marker: dict[str, Any]) -> None:
        try:
            # A stale marker must never vouch for a half-replaced payload (best.pth is rewritten).
            storage.remove(marker_url(url))
            storage.write_bytes(url, payload)
            storage.write_text(marker_url(url), json.dumps(marker, sort_keys=True))
        except StorageError as exc:
            if isinstance(exc.__cause__, PermissionError):
                raise _NotRetryable(exc) from exc
            raise

    def _prune(self, newest_iteration: int) -> None:
        """Keep the newest ``keep_last`` complete periodic checkpoints; drop older leftovers."""
        try:
            names = storage.listdir(self.directory)
            complete = [it for it, _ in self._complete_from(names)]
            keep = set(complete[-self.keep_last:]) | {newest_iteration}
            doomed_markers, doomed_payloads = [], []
            for name in names:
                match = _PERIODIC_LEFTOVER_RE.match(name)
                if not match:
                    continue
                iteration = int(match.group(1))
                if iteration in keep or iteration > newest_iteration:
                    continue
                (doomed_markers if name.endswith(MARKER_SUFFIX) else doomed_payloads).append(name)
            # markers first: an interrupted prune leaves payloads without markers, never the reverse
            for name in doomed_markers + doomed_payloads:
                storage.remove(storage.join(self.directory, name))
        except Exception as exc:  # noqa: BLE001 - pruning is housekeeping; the next save retries it
            self.logger.warning("could not prune old checkpoints in %s: %s", self.directory, exc)

    # -- reading ---------------------------------------------------------------------------------
    def _complete_from(self, names: list[str]) -> list[tuple[int, str]]:
        return [(iteration, storage.join(self.directory, name))
                for iteration, name in runs.complete_checkpoints(names)]

    def list_complete(self) -> list[tuple[int, str]]:
        """(iteration, url) of every periodic checkpoint whose marker and payload exist, oldest first."""
        return self._complete_from(storage.listdir(self.directory))

    def latest(self) -> str | None:
        """URL of the complete periodic checkpoint with the highest iteration, or None."""
        complete = self.list_complete()
        return complete[-1][1] if complete else None

    def url(self, name: str) -> str:
        """URL of ``best.pth``/``final.pth``/``iter_*.pth`` in this run's checkpoint directory."""
        return storage.join(self.directory, name)

    def load(self, url: str, *, require_marker: bool = True) -> dict[str, Any]:
        """Read and verify a checkpoint, then ``torch.load(..., weights_only=True)`` it on the CPU.

        ``require_marker=False`` is for files from elsewhere (e.g. pretrained weights): they are
        still unpickled with weights_only=True.
        """
        data = storage.retry(lambda: storage.read_bytes(url), what=f"reading checkpoint {url}",
                             attempts=self.retry_attempts, backoff_s=self.retry_backoff_s,
                             retry_on=(StorageError,))
        if require_marker:
            self._verify(url, data)
        return deserialize(data, url)

    def _verify(self, url: str, data: bytes) -> None:
        try:
            marker = json.loads(storage.read_text(marker_url(url)))
        except FileNotFoundError:
            raise CheckpointError(
                f"{url} has no completion marker {basename_of(marker_url(url))}: its write was torn or is "
                f"still in progress, so it is not loaded; use latest() to find the newest complete one"
            ) from None
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"completion marker {marker_url(url)} is not valid JSON: {exc}") from None
        if marker.get("size") != len(data):
            raise CheckpointError(f"{url} is {len(data)} bytes but its marker says {marker.get('size')}: "
                                  f"the file was changed after it was saved; refusing to load it")
        digest = hashlib.sha256(data).hexdigest()
        if marker.get("sha256") not in (None, digest):
            raise CheckpointError(f"{url} does not match the sha256 in its marker: the file is corrupt or "
                                  f"was replaced; refusing to load it")


def basename_of(url: str) -> str:
    return storage.basename(url)


def serialize(state: dict[str, Any]) -> bytes:
    """torch.save into bytes: copies every tensor (CUDA ones via the CPU), so the state is snapshotted."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def deserialize(data: bytes, url: str = "<bytes>") -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` and errors that name the URL."""
    if not data.startswith((b"PK\x03\x04", b"\x80")):  # torch.save's zip, or its legacy pickle format
        shown = "it is empty" if not data else f"it starts with {data[:8]!r}"
        raise CheckpointError(f"{url} is not a readable torch checkpoint ({shown}, not torch.save's zip or pickle "
                              f"format): "
                              f"pass a .pth written by orch or by torch.save({{'model': state_dict}})")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).strip().splitlines()
        reason = next((line for line in detail if "GLOBAL" in line), None)
        if reason is None:  # not an object we refuse: bytes that are no checkpoint at all
            raise CheckpointError(f"{url} is not a readable torch checkpoint: {detail[0] if detail else exc}") from None
        raise CheckpointError(
            f"refusing to load {url}: it contains Python objects other than tensors and plain containers "
            f"(torch.load weights_only=True: {reason.strip()}). Checkpoints are untrusted input and may "
            f"not run code; re-save it with plain state_dicts") from None
    except Exception as exc:  # noqa: BLE001 - garbage makes torch.load raise anything (IndexError, KeyError, ...)
        raise CheckpointError(f"{url} is not a readable torch checkpoint (truncated or not written by torch.save): "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{url} holds a {type(state).__name__}, not a checkpoint dict")
    return state
