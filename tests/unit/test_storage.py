"""orchestrator/storage.py: atomic local writes, and one sync for a batch of them."""
import os

import pytest

from orchestrator import storage


@pytest.fixture
def counted(monkeypatch):
    calls = {"fsync": 0, "syncfs": []}
    real_fsync = os.fsync

    def fsync(fd):
        calls["fsync"] += 1
        real_fsync(fd)

    real_sync = storage._sync_filesystem

    def sync_filesystem(path, url):
        calls["syncfs"].append(path)
        real_sync(path, url)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(storage, "_sync_filesystem", sync_filesystem)
    return calls


def test_each_local_write_is_fsynced_outside_a_batch(tmp_path, counted):
    for i in range(3):
        storage.write_text(str(tmp_path / f"f{i}.json"), "{}")
    assert counted["fsync"] == 3 and counted["syncfs"] == []


def test_a_batch_syncs_its_file_system_once_and_writes_the_same_files(tmp_path, counted):
    root = str(tmp_path / "sweep")
    storage.makedirs(root)
    with storage.one_sync(root):
        for i in range(5):
            storage.write_text(storage.join(root, f"p{i}", "plan.json"), f"{i}")
        with storage.one_sync(root):  # nested: still the one sync of the outer block
            storage.write_text(storage.join(root, "sweep.json"), "s")
        assert counted["syncfs"] == []
    assert counted["fsync"] == 0 and counted["syncfs"] == [root]
    assert [storage.read_text(storage.join(root, f"p{i}", "plan.json")) for i in range(5)] == list("01234")
    assert not [n for _, _, files in os.walk(root) for n in files if ".tmp-" in n]  # renamed into place
    storage.write_text(storage.join(root, "after.json"), "{}")
    assert counted["fsync"] == 1  # back to one fsync per file after the block


def test_a_batch_that_raises_is_not_reported_as_synced(tmp_path, counted):
    with pytest.raises(RuntimeError, match="boom"):
        with storage.one_sync(str(tmp_path)):
            storage.write_text(str(tmp_path / "a.json"), "{}")
            raise RuntimeError("boom")
    assert counted["syncfs"] == []
    storage.write_text(str(tmp_path / "b.json"), "{}")
    assert counted["fsync"] == 1


def test_a_batch_on_an_object_store_needs_no_sync(counted):
    with storage.one_sync("memory://batch"):
        storage.write_text("memory://batch/a.json", "{}")
    assert storage.read_text("memory://batch/a.json") == "{}" and counted["syncfs"] == []


def test_sync_of_a_missing_directory_is_a_storage_error(tmp_path):
    with pytest.raises(storage.StorageError, match="could not sync"):
        storage._sync_filesystem(str(tmp_path / "gone"), str(tmp_path / "gone"))
