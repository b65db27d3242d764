"""CheckpointManager against a real S3 server (SeaweedFS from tests/s3server.py) via s3:// URLs."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import torch

from jobs.checkpoint import CheckpointError, CheckpointManager, checkpoint_name
from orchestrator import storage
from orchestrator.storage import StorageError

pytestmark = pytest.mark.s3
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def run_dir(s3_server, monkeypatch):
    # botocore's own 5 attempts take ~6 s per refused connection; the manager's retries are
    # what is under test, so let each storage call fail fast.
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    storage.fs_cache_clear()
    yield s3_server.url("runs", uuid.uuid4().hex)
    storage.fs_cache_clear()


def make_state(value: float, size: int = 4) -> dict:
    return {"model": {"w": torch.full((size,), float(value))}, "epoch": 1}


def iterations(manager: CheckpointManager) -> list[int]:
    return [it for it, _ in manager.list_complete()]


def test_save_latest_load_over_s3(run_dir):
    assert run_dir.startswith("s3://")
    manager = CheckpointManager(run_dir, keep_last=2)
    for i in range(1, 4):
        manager.save(make_state(i), i * 10, best=(i == 1))
    assert manager.close() is True
    assert manager.latest() == f"{run_dir}/checkpoints/iter_000000030.pth"
    assert iterations(manager) == [20, 30]
    assert storage.listdir(manager.directory) == [
        "best.pth", "best.pth.done", "iter_000000020.pth", "iter_000000020.pth.done",
        "iter_000000030.pth", "iter_000000030.pth.done"]
    assert torch.equal(manager.load(manager.latest())["model"]["w"], torch.full((4,), 3.0))
    assert manager.load(manager.url("best.pth"))["iteration"] == 10


def test_wrong_secret_is_a_clear_storage_error_naming_the_url(run_dir, monkeypatch, caplog):
    manager = CheckpointManager(run_dir, retry_attempts=3, retry_backoff_s=0.01)
    manager.save(make_state(1.0), 10)
    assert manager.wait()
    with monkeypatch.context() as patch:
        patch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
        storage.fs_cache_clear()
        with pytest.raises(StorageError) as excinfo:
            manager.latest()
        message = str(excinfo.value)
        assert type(excinfo.value) is StorageError
        assert f"{run_dir}/checkpoints" in message and "signature" in message.lower()
        with caplog.at_level(logging.WARNING, logger="jobs.checkpoint"):
            manager.save(make_state(2.0), 20)
            assert manager.wait() is False
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and manager.url(checkpoint_name(20)) in errors[0]
        assert not [r for r in caplog.records if "retrying" in r.getMessage()], "auth errors are not retried"
    storage.fs_cache_clear()
    assert manager.latest() == manager.url(checkpoint_name(10))


def test_server_down_during_save_is_logged_and_harms_nothing(s3_server, run_dir, caplog):
    manager = CheckpointManager(run_dir, keep_last=2, retry_attempts=3, retry_backoff_s=0.2)
    manager.save(make_state(1.0), 100)
    assert manager.wait()
    s3_server.stop()
    try:
        with caplog.at_level(logging.WARNING, logger="jobs.checkpoint"):
            manager.save(make_state(2.0), 200)
            assert manager.last_save_stall_s < 1.0, "the training thread waited for the dead store"
            assert manager.wait() is False
    finally:
        s3_server.start()
    retries = [r for r in caplog.records if r.levelno == logging.WARNING and "retrying" in r.getMessage()]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(retries) == 2 and len(errors) == 1
    assert manager.url(checkpoint_name(200)) in errors[0] and "failed after 3 attempts" in errors[0]
    assert manager.latest() == manager.url(checkpoint_name(100))
    assert manager.load(manager.latest())["iteration"] == 100
    manager.save(make_state(3.0), 300)
    assert manager.close() is True
    assert iterations(manager) == [100, 300]


def test_save_succeeds_when_the_server_returns_while_retrying(s3_server, run_dir):
    manager = CheckpointManager(run_dir, retry_attempts=8, retry_backoff_s=0.5, async_save=True)
    s3_server.stop()
    try:
        manager.save(make_state(1.0), 100)  # the upload thread starts failing and retrying
        time.sleep(1.0)
        assert manager.last_saved_url is None and manager.failed_saves == 0  # still retrying
    finally:
        s3_server.start()
    assert manager.wait() is True
    assert manager.latest() == manager.url(checkpoint_name(100))


def test_latest_sees_checkpoints_written_by_another_process(run_dir):
    manager = CheckpointManager(run_dir, async_save=False)
    manager.save(make_state(1.0), 100)
    assert manager.latest() == manager.url(checkpoint_name(100))  # the listing is now cached
    code = ("import sys, torch\nfrom jobs.checkpoint import CheckpointManager\n"
            "CheckpointManager(sys.argv[1], async_save=False).save({'model': {}}, 200)\n")
    subprocess.run([sys.executable, "-c", code, run_dir], check=True, env=child_env(), timeout=120)
    assert manager.latest() == manager.url(checkpoint_name(200))


CHILD = textwrap.dedent("""
    import asyncio, sys, torch
    import s3fs
    from jobs.checkpoint import CheckpointManager

    # 5 MB parts (the S3 minimum) so that a 16 MB payload goes up as a multipart upload; stop
    # after the first part has landed, so that the kill falls in the middle of the upload.
    defaults = list(s3fs.S3FileSystem._pipe_file.__defaults__)
    defaults[0] = 5 * 2**20
    s3fs.S3FileSystem._pipe_file.__defaults__ = tuple(defaults)
    real_call = s3fs.S3FileSystem._call_s3

    async def call_s3(self, method, *args, **kwargs):
        out = await real_call(self, method, *args, **kwargs)
        if method == "upload_part":
            print("PART_UPLOADED", flush=True)
            await asyncio.sleep(120)
        return out

    s3fs.S3FileSystem._call_s3 = call_s3
    manager = CheckpointManager(sys.argv[1])
    manager.save({"model": {"w": torch.ones(4_000_000)}}, 200)
    manager.wait()
""")


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_process_killed_during_s3_upload_leaves_previous_checkpoint_latest(run_dir):
    manager = CheckpointManager(run_dir, async_save=False)
    manager.save(make_state(1.0), 100)
    child = subprocess.Popen([sys.executable, "-c", CHILD, run_dir], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=child_env(), text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "PART_UPLOADED", f"child never started its upload: {line!r} {child.stderr.read()}"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
    names = storage.listdir(manager.directory)
    assert checkpoint_name(200) not in names and checkpoint_name(200) + ".done" not in names
    assert manager.latest() == manager.url(checkpoint_name(100))
    assert manager.load(manager.latest())["iteration"] == 100
    with pytest.raises((CheckpointError, FileNotFoundError)):
        manager.load(manager.url(checkpoint_name(200)))
    manager.save(make_state(3.0), 300)
    assert iterations(manager) == [100, 300]
