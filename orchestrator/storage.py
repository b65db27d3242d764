"""The one storage seam: every path that may be remote is a ``str`` URL and goes through here.

Local paths, ``file://``, NAS mounts, ``s3://`` (s3fs) and ``memory://`` (tests) all work the same.
``pathlib.Path`` is never used on URLs: it mangles ``s3://bucket`` into ``s3:/bucket``.

s3 credentials follow the aws CLI: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
AWS_DEFAULT_REGION and AWS_PROFILE are read by botocore; ``storage_options`` from the config
(see :func:`configure`) are passed to fsspec on top. They are never written anywhere.
"""
from __future__ import annotations

import contextlib
import json
import os
import posixpath
import time
import uuid
from typing import Any, Callable, Iterable, Iterator, TypeVar

import fsspec

from orchestrator.errors import OrchError

T = TypeVar("T")

_storage_options: dict[str, dict[str, Any]] = {}
_LOCAL_PROTOCOLS = {"file", "local"}
_sync_deferred = False  # inside one_sync(): local writes skip their fsync; the block syncs once at its end


class StorageError(OrchError, RuntimeError):
    """A store could not be read or written; the message names the URL and the cause."""


def configure(storage_options: dict[str, Any] | None) -> None:
    """Set per-protocol fsspec options, e.g. ``{"s3": {"endpoint_url": ...}}``.

    A flat mapping (``{"endpoint_url": ...}``) applies to s3, the common case.
    """
    _storage_options.clear()
    fs_cache_clear()
    if not storage_options:
        return
    if all(isinstance(v, dict) for v in storage_options.values()):
        _storage_options.update({k: dict(v) for k, v in storage_options.items()})
    else:
        _storage_options["s3"] = dict(storage_options)


SECRETS_ENV = "ORCH_STORAGE_OPTIONS"  # how config storage_options travel to a job (never via files)
_REDACTED = "***"


def job_storage_options(saved: dict[str, Any] | None) -> dict[str, Any]:
    """storage_options for a job: the run's saved (redacted) options, with the real values that
    `orch submit` handed over in the job's environment; redacted leftovers are dropped so the
    standard AWS_* variables apply."""
    def clean(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items() if v != _REDACTED}
        return node

    options = clean(saved or {})
    handed = os.environ.get(SECRETS_ENV)
    if handed:
        try:
            options = json.loads(handed)
        except ValueError:
            pass
    return options


@contextlib.contextmanager
def secrets_in_env(storage_options: dict[str, Any] | None) -> Iterator[None]:
    """Expose the config's storage_options to a job being submitted (its environment only)."""
    if not storage_options:
        yield
        return
    previous = os.environ.get(SECRETS_ENV)
    os.environ[SECRETS_ENV] = json.dumps(storage_options)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(SECRETS_ENV, None)
        else:
            os.environ[SECRETS_ENV] = previous


def fs_cache_clear() -> None:
    """Forget cached filesystem instances (and their s3 clients), e.g. after credentials changed.

    Each fsspec class keeps its own instance cache, so clearing AbstractFileSystem's alone
    leaves S3FileSystem's in place.
    """
    pending = [fsspec.AbstractFileSystem]
    while pending:
        cls = pending.pop()
        cls.clear_instance_cache()
        pending.extend(cls.__subclasses__())


def protocol(url: str) -> str:
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0]


def is_local(url: str) -> bool:
    return protocol(url) in _LOCAL_PROTOCOLS


def local_path(url: str) -> str:
    """The file system path of a local URL (``file:///x`` -> ``/x``)."""
    if not is_local(url):
        raise ValueError(f"{url!r} is not a local path")
    return url.split("://", 1)[1] if "://" in url else url


def absolute(url: str, base_dir: str | None = None) -> str:
    """Make a local path absolute (relative to ``base_dir`` or the cwd); leave URLs alone."""
    if not is_local(url):
        return url
    path = os.path.expanduser(local_path(url))
    if not os.path.isabs(path):
        path = os.path.join(base_dir or os.getcwd(), path)
    return os.path.normpath(path)


def _options_for(proto: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    if proto in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        if os.environ.get("AWS_PROFILE"):
            opts["profile"] = os.environ["AWS_PROFILE"]
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            opts.setdefault("client_kwargs", {})["region_name"] = region
    opts.update(_storage_options.get(proto, {}))
    return opts


def filesystem(url: str):
    """(fsspec filesystem, path inside it) for a URL."""
    proto = protocol(url)
    if proto in _LOCAL_PROTOCOLS:
        return fsspec.filesystem("file"), local_path(url)
    fs = fsspec.filesystem(proto, **_options_for(proto))
    return fs, fs._strip_protocol(url)


def join(base: str, *parts: str) -> str:
    """Join URL parts with '/', keeping the protocol (``s3://b/x`` + ``y`` -> ``s3://b/x/y``)."""
    if "://" in base:
        proto, rest = base.split("://", 1)
        return f"{proto}://" + posixpath.join(rest, *parts) if rest else f"{proto}://" + posixpath.join(*parts)
    return os.path.join(base, *parts)


def basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))


# Client libraries whose own exception types reach us unwrapped: s3fs re-raises botocore's
# connection errors (EndpointConnectionError, ReadTimeoutError ...) as they are, and these
# subclass neither OSError nor RuntimeError. Matched by module so that botocore is not imported.
_BACKEND_ERROR_MODULES = ("botocore", "aiobotocore", "aiohttp", "s3fs", "fsspec", "urllib3")


def _is_backend_error(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, ValueError, RuntimeError)):
        return True
    return type(exc).__module__.split(".", 1)[0] in _BACKEND_ERROR_MODULES


def _wrap(url: str, action: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except FileNotFoundError:
        raise
    except StorageError:
        raise
    except Exception as exc:
        if not _is_backend_error(exc):
            raise
        raise StorageError(f"could not {action} {url}: {type(exc).__name__}: {exc}") from exc


def _uncached(url: str):
    """(fs, path) with fsspec's listing cache for ``path`` dropped: s3fs answers ls/exists/info
    from listings it cached earlier, which hides files that another process wrote since."""
    fs, path = filesystem(url)
    fs.invalidate_cache(path)
    return fs, path


def exists(url: str) -> bool:
    fs, path = _uncached(url)
    return _wrap(url, "check", lambda: fs.exists(path))


def isdir(url: str) -> bool:
    fs, path = _uncached(url)
    return _wrap(url, "check", lambda: fs.isdir(path))


def info(url: str) -> dict[str, Any]:
    """size plus a version tag (mtime or etag) for cache keys."""
    fs, path = _uncached(url)
    raw = _wrap(url, "stat", lambda: fs.info(path))
    version = raw.get("mtime") or raw.get("LastModified") or raw.get("ETag") or raw.get("created")
    return {"size": raw.get("size"), "version": str(version)}


def open_url(url: str, mode: str = "rb"):
    fs, path = filesystem(url)
    if "w" in mode or "a" in mode:
        makedirs(parent(url))
    return _wrap(url, "open", lambda: fs.open(path, mode))


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return _wrap(url, "read", lambda: fs.cat_file(path))


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def parent(url: str) -> str:
    if "://" in url:
        proto, rest = url.split("://", 1)
        return f"{proto}://" + posixpath.dirname(rest.rstrip("/"))
    return os.path.dirname(os.path.abspath(url))


def makedirs(url: str) -> None:
    fs, path = filesystem(url)
    if is_local(url) or protocol(url) == "memory":
        _wrap(url, "create", lambda: fs.makedirs(path, exist_ok=True))
    # object stores have no directories: nothing to create


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole file so that readers see either the old or the new content, never a torn one.

    Local files: temp name then ``os.replace``. Object stores: a single PUT is atomic per object.
    """
    fs, path = filesystem(url)
    if is_local(url):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                if not _sync_deferred:
                    os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise StorageError(f"could not write {url}: {exc}") from exc
        return
    makedirs(parent(url))
    _wrap(url, "write", lambda: fs.pipe_file(path, data))


@contextlib.contextmanager
def one_sync(url: str) -> Iterator[None]:
    """Many small local writes under ``url`` made durable by one sync at the end instead of an
    fsync each (a 1,000-point sweep writes 3,000 files). Each file is still written under a temp
    name and renamed, so readers never see a torn one; what the block wrote is on disk once it
    exits normally. Object stores need nothing: each PUT is durable when it returns.
    """
    global _sync_deferred
    if not is_local(url) or _sync_deferred:
        yield
        return
    _sync_deferred = True
    try:
        yield
    finally:
        _sync_deferred = False
    _sync_filesystem(filesystem(url)[1], url)


def _sync_filesystem(path: str, url: str) -> None:
    """syncfs(2) on the file system holding ``path`` (Linux); sync(2) elsewhere."""
    import ctypes

    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise StorageError(f"could not sync {url}: {exc}") from exc
    try:
        syncfs = getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None)
        if syncfs is None:
            os.sync()
        elif syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise StorageError(f"could not sync {url}: {os.strerror(err)}")
    finally:
        os.close(fd)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def append_text(url: str, text: str) -> None:
    """Append to a log-like file (local: real append; object stores: read-modify-write)."""
    if is_local(url):
        path = local_path(url)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
        return
    old = read_text(url) if exists(url) else ""
    write_text(url, old + text)


def put_file(local_file: str, url: str) -> None:
    """Upload a local file to ``url`` (atomic as :func:`write_bytes`)."""
    fs, path = filesystem(url)
    if is_local(url):
        with open(local_file, "rb") as f:
            write_bytes(url, f.read())
        return
    makedirs(parent(url))
    _wrap(url, "upload to", lambda: fs.put_file(local_file, path))


def listdir(url: str) -> list[str]:
    """Names (not paths) directly under ``url``; [] when it does not exist."""
    fs, path = _uncached(url)
    try:
        entries = _wrap(url, "list", lambda: fs.ls(path, detail=False))
    except FileNotFoundError:
        return []
    names = sorted({posixpath.basename(str(e).rstrip("/")) for e in entries})
    return [n for n in names if n]


def remove(url: str, recursive: bool = False) -> None:
    fs, path = filesystem(url)
    try:
        _wrap(url, "remove", lambda: fs.rm(path, recursive=recursive))
    except FileNotFoundError:
        pass


def retry(fn: Callable[[], T], *, what: str, attempts: int = 5, backoff_s: float = 0.5,
          max_backoff_s: float = 8.0, on_retry: Callable[[int, Exception], None] | None = None,
          retry_on: Iterable[type[BaseException]] = (StorageError, OSError)) -> T:
    """Call ``fn`` up to ``attempts`` times with exponential backoff; re-raise the last error."""
    retry_on = tuple(retry_on)
    delay = backoff_s
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retry_on as exc:  # type: ignore[misc]
            if attempt == attempts:
                raise StorageError(f"{what} failed after {attempts} attempts: {exc}") from exc
            if on_retry:
                on_retry(attempt, exc)
            time.sleep(delay)
            delay = min(delay * 2, max_backoff_s)
    raise AssertionError("unreachable")
