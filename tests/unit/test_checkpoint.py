"""CheckpointManager over memory:// and local disk: layout, markers, pruning, torn writes, safety."""
from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import numpy as np
import pytest
import torch

from jobs.checkpoint import (CheckpointError, CheckpointManager, capture_rng_state, checkpoint_name,
                             deserialize, restore_rng_state, serialize)
from orchestrator import storage
from orchestrator.storage import StorageError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(params=["memory", "local"])
def run_dir(request, tmp_path):
    if request.param == "memory":
        url = f"memory://ckpt-tests/{uuid.uuid4().hex}/run"
        yield url
        storage.remove(url, recursive=True)
    else:
        yield str(tmp_path / "run")


def make_state(value: float, size: int = 4) -> dict:
    return {"model": {"w": torch.full((size,), float(value))}, "epoch": 0, "best_metric": None}


def names_in(manager: CheckpointManager) -> list[str]:
    return storage.listdir(manager.directory)


@pytest.mark.parametrize("async_save", [True, False])
def test_save_latest_load_round_trip(run_dir, async_save):
    manager = CheckpointManager(run_dir, async_save=async_save)
    assert manager.latest() is None and manager.list_complete() == []
    manager.save(make_state(1.0), 10)
    manager.save(make_state(2.0), 20)
    assert manager.wait() is True
    url = manager.latest()
    assert url == storage.join(run_dir, "checkpoints", "iter_000000020.pth")
    state = manager.load(url)
    assert state["iteration"] == 20
    assert torch.equal(state["model"]["w"], torch.full((4,), 2.0))
    marker = json.loads(storage.read_text(url + ".done"))
    assert marker["iteration"] == 20 and marker["size"] == len(storage.read_bytes(url))
    manager.close()


def test_keep_last_prunes_older_periodic_checkpoints(run_dir):
    manager = CheckpointManager(run_dir, keep_last=3)
    for iteration in range(1, 7):
        manager.save(make_state(iteration), iteration * 100, best=(iteration == 2))
    manager.close()
    assert [it for it, _ in manager.list_complete()] == [400, 500, 600]
    assert names_in(manager) == ["best.pth", "best.pth.done",
                                 "iter_000000400.pth", "iter_000000400.pth.done",
                                 "iter_000000500.pth", "iter_000000500.pth.done",
                                 "iter_000000600.pth", "iter_000000600.pth.done"]
    assert manager.load(manager.url("best.pth"))["iteration"] == 200  # best survives pruning


@pytest.mark.parametrize("keep_last", [0, 1, -3])
def test_keep_last_below_two_is_rejected(run_dir, keep_last):
    with pytest.raises(ValueError, match=r"keep_last must be an integer >= 2 \(got .*schedule.keep_last"):
        CheckpointManager(run_dir, keep_last=keep_last)


def test_best_and_final_are_overwritten_with_their_markers(run_dir):
    manager = CheckpointManager(run_dir, async_save=False)
    manager.save(make_state(1.0), 100, best=True)
    manager.save(make_state(2.0), 200)
    manager.save(make_state(3.0), 300, best=True, final=True)
    assert manager.load(manager.url("best.pth"))["iteration"] == 300
    assert manager.load(manager.url("final.pth"))["iteration"] == 300
    assert json.loads(storage.read_text(manager.url("best.pth.done")))["iteration"] == 300
    assert manager.latest() == manager.url(checkpoint_name(300))


def test_payload_without_marker_is_never_latest_nor_loaded(run_dir):
    manager = CheckpointManager(run_dir, async_save=False)
    manager.save(make_state(1.0), 100)
    torn = manager.url(checkpoint_name(200))
    storage.write_bytes(torn, serialize(make_state(2.0) | {"iteration": 200}))  # no marker
    storage.write_text(manager.url(checkpoint_name(300)) + ".done", "{}")       # marker, no payload
    assert manager.latest() == manager.url(checkpoint_name(100))
    with pytest.raises(CheckpointError, match="has no completion marker iter_000000200.pth.done"):
        manager.load(torn)
    # the next successful save cleans up both leftovers below it
    manager.save(make_state(4.0), 400)
    assert [it for it, _ in manager.list_complete()] == [100, 400]
    assert checkpoint_name(200) not in names_in(manager)


def test_payload_that_differs_from_its_marker_is_refused(run_dir):
    manager = CheckpointManager(run_dir, async_save=False)
    manager.save(make_state(1.0), 100)
    url = manager.latest()
    data = bytearray(storage.read_bytes(url))
    data[len(data) // 2] ^= 0xFF
    storage.write_bytes(url, bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256 in its marker"):
        manager.load(url)


def test_a_pickled_object_with_reduce_is_refused_not_executed(tmp_path):
    witness = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    url = str(tmp_path / "evil.pth")
    storage.write_bytes(url, serialize({"model": {}, "payload": Evil()}))
    manager = CheckpointManager(str(tmp_path / "run"))
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil.pth.*weights_only=True.*system"):
        manager.load(url, require_marker=False)
    assert not witness.exists()


def test_save_rejects_state_that_weights_only_could_not_load(run_dir):
    manager = CheckpointManager(run_dir, async_save=False)
    with pytest.raises(TypeError, match=r"state\['best_metric'\] is a numpy.float64"):
        manager.save({"model": {}, "best_metric": np.float64(0.5)}, 10)
    with pytest.raises(TypeError, match=r"state\['rng'\]\[0\] is a numpy.ndarray.*capture_rng_state"):
        manager.save({"model": {}, "rng": [np.random.get_state()[1]]}, 10)
    with pytest.raises(ValueError, match="no 'model' key"):
        manager.save({"iteration": 10}, 10)
    assert manager.latest() is None


def draw_numbers() -> list:
    return [random.random(), random.gauss(0, 1), float(np.random.rand()), float(np.random.randn()),
            torch.rand(3).tolist(), torch.randint(0, 1000, (2,)).tolist()]


def test_rng_state_round_trips_exactly_through_a_checkpoint(run_dir):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    draw_numbers()  # leaves a cached gaussian in python and numpy
    rng = capture_rng_state()
    expected = draw_numbers()
    manager = CheckpointManager(run_dir, async_save=False)
    manager.save({"model": {}, "rng": [rng, rng]}, 5)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(manager.load(manager.latest())["rng"][1])
    assert draw_numbers() == expected


def test_async_save_snapshots_the_state_and_returns_before_the_upload(run_dir, monkeypatch):
    real_write = storage.write_bytes

    def slow_write(url, data):
        if url.endswith(".pth"):
            time.sleep(0.5)
        real_write(url, data)

    monkeypatch.setattr(storage, "write_bytes", slow_write)
    manager = CheckpointManager(run_dir, async_save=True)
    weights = torch.zeros(1000)
    started = time.perf_counter()
    manager.save({"model": {"w": weights}}, 1)
    assert time.perf_counter() - started < 0.4, "save() waited for the upload"
    weights += 7  # training goes on and changes the weights in place
    assert manager.latest() is None  # still uploading
    assert manager.wait() is True
    assert torch.equal(manager.load(manager.latest())["model"]["w"], torch.zeros(1000))
    # one upload at a time: a second save waits for the first before queueing its own
    manager.save({"model": {"w": weights}}, 2)
    manager.save({"model": {"w": weights}}, 3)
    assert manager.last_save_stall_s >= 0.3
    manager.close()
    assert [it for it, _ in manager.list_complete()] == [2, 3]


def test_a_failing_store_is_logged_and_harms_nothing(run_dir, monkeypatch, caplog):
    manager = CheckpointManager(run_dir, keep_last=2, retry_attempts=3, retry_backoff_s=0.01)
    manager.save(make_state(1.0), 100)
    manager.save(make_state(2.0), 200)
    assert manager.wait()
    real_write = storage.write_bytes
    calls = []

    def broken_write(url, data):
        calls.append(url)
        raise StorageError(f"could not write {url}: ConnectionError: store is down")

    monkeypatch.setattr(storage, "write_bytes", broken_write)
    with caplog.at_level(logging.WARNING, logger="jobs.checkpoint"):
        manager.save(make_state(3.0), 300)  # must not raise
        assert manager.wait() is False
    assert len(calls) == 3  # retried
    failed = manager.url(checkpoint_name(300))
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and failed in errors[0].getMessage()
    assert "store is down" in errors[0].getMessage() and manager.failed_saves == 1
    assert [it for it, _ in manager.list_complete()] == [100, 200]  # nothing pruned
    monkeypatch.setattr(storage, "write_bytes", real_write)
    manager.save(make_state(4.0), 400)
    assert manager.close() is True and manager.last_error is None
    assert [it for it, _ in manager.list_complete()] == [200, 400]


# -- a writer killed with SIGKILL --------------------------------------------------------------
CHILD = textwrap.dedent("""
    import os, sys, time, torch
    from orchestrator import storage
    from jobs.checkpoint import CheckpointManager

    run_dir, phase = sys.argv[1], sys.argv[2]

    def hang():
        print("HANGING", flush=True)
        time.sleep(120)

    if phase == "payload":  # stop inside storage.write_bytes: temp file written, not yet renamed
        real_fsync = os.fsync
        def fsync(fd):
            real_fsync(fd)
            hang()
        os.fsync = fsync
    else:  # payload in place, marker not yet written
        real_write = storage.write_bytes
        def write_bytes(url, data):
            if url.endswith(".done"):
                hang()
            real_write(url, data)
        storage.write_bytes = write_bytes

    manager = CheckpointManager(run_dir, async_save=True)
    manager.save({"model": {"w": torch.ones(4_000_000)}}, 200)  # 16 MB
    manager.wait()
""")


def run_child_until_hanging(args: list[str], timeout_s: float = 60.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, text=True)
    deadline = time.monotonic() + timeout_s
    line = ""
    while time.monotonic() < deadline and child.poll() is None:
        line = child.stdout.readline()
        if line.strip() == "HANGING":
            return child
    child.kill()
    raise AssertionError(f"child never reached the write: {line!r} {child.stderr.read()}")


@pytest.mark.parametrize("phase", ["payload", "marker"])
def test_writer_killed_mid_save_leaves_previous_checkpoint_latest(tmp_path, phase):
    run_dir = str(tmp_path / "run")
    CheckpointManager(run_dir, async_save=False).save(make_state(1.0), 100)
    child = run_child_until_hanging([run_dir, phase])
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait(timeout=10) == -signal.SIGKILL

    manager = CheckpointManager(run_dir, async_save=False)
    names = names_in(manager)
    if phase == "payload":
        assert checkpoint_name(200) not in names
        assert any(n.startswith("iter_000000200.pth.tmp-") for n in names), names
    else:
        assert checkpoint_name(200) in names and checkpoint_name(200) + ".done" not in names
        with pytest.raises(CheckpointError, match="no completion marker"):
            manager.load(manager.url(checkpoint_name(200)))
    assert manager.latest() == manager.url(checkpoint_name(100))
    assert manager.load(manager.latest())["iteration"] == 100
    # the resumed job's next save works and sweeps the torn leftovers
    manager.save(make_state(3.0), 300)
    assert names_in(manager) == ["iter_000000100.pth", "iter_000000100.pth.done",
                                 "iter_000000300.pth", "iter_000000300.pth.done"]


def test_deserialize_names_the_url_for_garbage():
    with pytest.raises(CheckpointError, match="s3://b/x.pth is not a readable torch checkpoint"):
        deserialize(b"not a zip file", "s3://b/x.pth")

