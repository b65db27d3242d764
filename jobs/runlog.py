"""What rank 0 tells the world: console lines, metrics.jsonl, TensorBoard, status.json.

Files go to the run dir through the storage seam. TensorBoard needs a local directory, so for a
remote run dir events are written to a local temp dir and uploaded at every flush.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from typing import Any

from orchestrator import runs, storage

log = logging.getLogger("orch.job")


class RunLog:
    """Only rank 0 creates one with ``enabled=True``; other ranks get a silent one."""

    def __init__(self, run_dir: str, max_iters: int, enabled: bool, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.max_iters = max_iters
        self.enabled = enabled
        self.metrics_url = storage.join(run_dir, runs.METRICS_FILE)
        self.status_url = storage.join(run_dir, runs.STATUS_FILE)
        self._pending_metrics: list[str] = []
        self._status: dict[str, Any] = {"state": "RUNNING", "iteration": 0, "max_iters": max_iters,
                                        "metrics": {}, "eval": {}, "latest_checkpoint": None,
                                        "job_id": os.environ.get("ORCH_JOB_ID")}   # set by jobs.launch
        self._writer = None
        self._tb_local: str | None = None
        self._tty = sys.stderr.isatty()
        self._bar_shown = False
        if enabled and tensorboard:
            self._open_tensorboard()

    # -------------------------------------------------------------- TensorBoard
    def _open_tensorboard(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        tb_url = storage.join(self.run_dir, "tb")
        if storage.is_local(tb_url):
            self._tb_local = storage.local_path(tb_url)
        else:
            self._tb_local = tempfile.mkdtemp(prefix="orch-tb-")
            self._tb_remote = tb_url
        self._writer = SummaryWriter(self._tb_local)

    def scalars(self, values: dict[str, float], iteration: int, prefix: str) -> None:
        if self._writer is None:
            return
        for key, value in values.items():
            self._writer.add_scalar(f"{prefix}/{key}", value, iteration)

    def hparams(self, hparams: dict[str, Any], metrics: dict[str, float]) -> None:
        if self._writer is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        self._writer.add_hparams(clean, {f"hparam/{k}": v for k, v in metrics.items()}, run_name="hparams")

    # -------------------------------------------------------------- console and files
    def info(self, message: str) -> None:
        if self.enabled:
            if self._bar_shown:
                sys.stderr.write("\r\033[K")  # clear the progress bar before a log line
                self._bar_shown = False
            log.info(message)

    def progress_bar(self, iteration: int, eta_s: float, width: int = 30) -> None:
        """A one-line bar on the terminal (only when attached to one; logs in files stay clean)."""
        if not (self.enabled and self._tty):
            return
        done = int(width * iteration / max(1, self.max_iters))
        sys.stderr.write(f"\r[{'#' * done}{'.' * (width - done)}] {iteration}/{self.max_iters}  "
                         f"eta {runs.format_eta(eta_s)}\033[K")
        sys.stderr.flush()
        self._bar_shown = True

    def metrics(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._pending_metrics.append(json.dumps(record, sort_keys=True))

    def status(self, **fields: Any) -> None:
        if self.enabled:
            self._status.update(fields)

    def flush(self) -> None:
        """Push metrics, status and TensorBoard events to the run dir (never raises: training goes on)."""
        if not self.enabled:
            return
        try:
            if self._pending_metrics:
                storage.append_text(self.metrics_url, "\n".join(self._pending_metrics) + "\n")
                self._pending_metrics = []
            self._status["updated_at"] = runs.now_iso()
            storage.write_text(self.status_url, json.dumps(self._status, indent=2, default=str) + "\n")
            if self._writer is not None:
                self._writer.flush()
                if hasattr(self, "_tb_remote"):
                    for name in os.listdir(self._tb_local):
                        storage.put_file(os.path.join(self._tb_local, name), storage.join(self._tb_remote, name))
        except storage.StorageError as exc:
            log.error("could not write progress to %s (training goes on): %s", self.run_dir, exc)

    def close(self) -> None:
        self.flush()
        if self._writer is not None:
            self._writer.close()


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (``getrusage(RUSAGE_SELF).ru_maxrss``, KiB on
    Linux): what ``memory_mb`` reports on CPU, where there is no CUDA allocator to ask."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def record_failure(run_dir: str, max_iters: int, message: str) -> None:
    """The job's final word when it failed before its RunLog existed (rank 0; never raises).

    status.json has one owner, this module: the failure keeps what an earlier attempt reported
    (its iteration, metrics) and adds state FAILED and the error.
    """
    url = storage.join(run_dir, runs.STATUS_FILE)
    try:
        try:
            status = runs.read_json(url, default={})
        except ValueError:
            status = {}
        status = status if isinstance(status, dict) else {}
        status.update(state="FAILED", error=message, max_iters=max_iters, updated_at=runs.now_iso(),
                      job_id=os.environ.get("ORCH_JOB_ID"))
        storage.write_text(url, json.dumps(status, indent=2, default=str) + "\n")
    except (storage.StorageError, OSError) as exc:
        log.error("could not record the failure in %s: %s", run_dir, exc)


class Progress:
    """Step timing for the log line: moving averages of step and data time, ETA, img/s."""

    def __init__(self, window: int = 20) -> None:
        self.window = window
        self.step_times: list[float] = []
        self.data_times: list[float] = []
        self.last = time.perf_counter()

    def tick(self, data_time: float) -> None:
        now = time.perf_counter()
        self.step_times = (self.step_times + [now - self.last])[-self.window:]
        self.data_times = (self.data_times + [data_time])[-self.window:]
        self.last = now

    def reset_clock(self) -> None:
        self.last = time.perf_counter()

    @property
    def step_time(self) -> float:
        return sum(self.step_times) / max(1, len(self.step_times))

    @property
    def data_time(self) -> float:
        return sum(self.data_times) / max(1, len(self.data_times))


def setup_console_logging(rank: int) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank{rank}] %(levelname)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    for noisy in ("faster_coco_eval", "faster_coco_eval.core", "pycocotools"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
