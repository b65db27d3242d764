"""The one storage seam: every path that may be remote is a ``str`` URL and goes through here.

Local paths, ``file://``, NAS mounts, ``s3://`` (s3fs) and ``memory://`` (tests) all work the same.
``pathlib.Path`` is never used on URLs: it mangles ``s3://bucket`` into ``s3:/bucket``.

How a store is reached is one explicit value, :class:`StorageOptions` (per-protocol fsspec
options, e.g. an on-prem endpoint and its keys). Each process builds it once at its entry point
and installs it with :func:`use` before its first read: the CLI from the user's
``ORCH_STORAGE_OPTIONS`` plus the config's ``storage_options``; a job from the
``ORCH_STORAGE_OPTIONS`` that `orch submit` handed it (so it needs no plan.json to learn how to
reach plan.json). The standard AWS_* variables (as for the aws CLI) apply below these options.
Secrets are never written anywhere, and a redacted ``***`` never reaches fsspec.
"""
from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import posixpath
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar


from orchestrator.errors import OrchError

T = TypeVar("T")

_LOCAL_PROTOCOLS = {"file", "local"}
_sync_deferred = False  # inside one_sync(): local writes skip their fsync; the block syncs once at its end


class StorageError(OrchError, RuntimeError):
    """A store could not be read or written; the message names the URL and the cause."""


SECRETS_ENV = "ORCH_STORAGE_OPTIONS"  # how storage options travel to a job (never via files), as JSON
REDACTED = "***"                      # what config.yml / plan.json hold instead of a secret
EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", None), "gcs": ("gcsfs", None),
          "az": ("adlfs", None), "abfs": ("adlfs", None)}  # protocol -> (module fsspec needs, orch extra)


@dataclass(frozen=True, repr=False)
class StorageOptions:
    """fsspec options per protocol (``{"s3": {"endpoint_url": ..., "key": ..., "secret": ...}}``).

    Never holds a redacted ``***`` (dropped when built: the real value comes from the
    environment). Its repr hides the values, so a log line or traceback leaks no secret.
    """
    by_protocol: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: Any, source: str = "storage_options") -> "StorageOptions":
        """From a config's ``storage_options`` (``source`` names it in errors). A flat mapping
        (``{"endpoint_url": ...}``) applies to s3, the common case."""
        if not raw:
            return cls()
        if not isinstance(raw, dict):
            raise OrchError(f"{source} must be a mapping of protocol to fsspec options, e.g. "
                            f"{{s3: {{endpoint_url: https://...}}}}; got a {type(raw).__name__}")
        nested = raw if all(isinstance(v, dict) for v in raw.values()) else {"s3": raw}
        return cls({str(proto): _without_redacted(opts) for proto, opts in nested.items()})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "StorageOptions":
        """From ``$ORCH_STORAGE_OPTIONS`` (JSON): what `orch submit` hands a job, or what a user sets to
        reach an existing run on a bucket. Empty when unset."""
        text = (os.environ if environ is None else environ).get(SECRETS_ENV, "").strip()
        if not text:
            return cls()
        try:
            raw = json.loads(text)
        except ValueError as exc:  # the value itself is not shown: it may hold a secret
            raise OrchError(f"${SECRETS_ENV} is not valid JSON ({exc.msg} at character {exc.pos}): set it to an "
                            f"object like '{{\"s3\": {{\"endpoint_url\": \"https://...\"}}}}', or unset it") from None
        return cls.parse(raw, source=f"${SECRETS_ENV}")

    def merged(self, over: "StorageOptions") -> "StorageOptions":
        """These options with ``over``'s on top, key by key within each protocol."""
        out = {proto: dict(opts) for proto, opts in self.by_protocol.items()}
        for proto, opts in over.by_protocol.items():
            out.setdefault(proto, {}).update(opts)
        return StorageOptions(out)

    def for_protocol(self, proto: str) -> dict[str, Any]:
        return copy.deepcopy(dict(self.by_protocol.get(proto, {})))  # fsspec may change nested dicts

    def to_json(self) -> str:
        return json.dumps({proto: dict(opts) for proto, opts in self.by_protocol.items()}, sort_keys=True)

    def __bool__(self) -> bool:
        return any(self.by_protocol.values())

    def __repr__(self) -> str:
        shown = {proto: sorted(opts) for proto, opts in self.by_protocol.items()}
        return f"StorageOptions(keys={shown})"


def _without_redacted(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_redacted(v) for k, v in node.items() if v != REDACTED}
    return node


_active = StorageOptions()  # set once per process by its entry point (use), read by every call below


def use(options: StorageOptions) -> None:
    """Install this process's storage options; its entry point calls this before the first read."""
    global _active
    if options == _active:
        return
    _active = options
    fs_cache_clear()  # cached filesystems were built with the old options


def active() -> StorageOptions:
    """The storage options this process uses (hand them on to a job it submits)."""
    return _active


def configure(storage_options: dict[str, Any] | None) -> None:
    """Kept for callers of the old API: ``use(StorageOptions.parse(storage_options))``."""
    use(StorageOptions.parse(storage_options))


@contextlib.contextmanager
def secrets_in_env(options: StorageOptions | dict[str, Any] | None) -> Iterator[None]:
    """Hand ``options`` to a job being submitted inside this block: in its environment
    (``$ORCH_STORAGE_OPTIONS``), which the executor passes on, never in a file."""
    if not isinstance(options, StorageOptions):
        options = StorageOptions.parse(options)
    previous = os.environ.get(SECRETS_ENV)
    if options:
        os.environ[SECRETS_ENV] = options.to_json()
    else:
        os.environ.pop(SECRETS_ENV, None)  # a stale value of the caller's must not reach the job
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
    fsspec = sys.modules.get("fsspec")
    if fsspec is None:
        return   # never imported: nothing cached
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
    opts.update(_active.for_protocol(proto))
    return opts


class _LocalFS:
    """The few filesystem calls this module makes, for local paths, without importing fsspec: most
    commands (`orch plan`, `config show`, a dry-run) touch only local files, and fsspec with its
    asyncio stack is a third of their start-up time. Same behaviour as fsspec's LocalFileSystem for them."""

    def invalidate_cache(self, path: str | None = None) -> None:
        pass

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def info(self, path: str) -> dict[str, Any]:
        st = os.stat(path)
        return {"name": path, "size": st.st_size, "mtime": st.st_mtime,
                "type": "directory" if os.path.isdir(path) else "file"}

    def open(self, path: str, mode: str = "rb", **_: Any):
        return open(path, mode)

    def cat_file(self, path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def ls(self, path: str, detail: bool = False) -> list[str]:
        if not os.path.isdir(path):
            if os.path.exists(path):
                return [path]
            raise FileNotFoundError(path)
        return [os.path.join(path, name) for name in os.listdir(path)]

    def _strip_protocol(self, path: str) -> str:
        return local_path(path)

    def find(self, path: str, withdirs: bool = False) -> list[str]:
        if os.path.isfile(path):
            return [path]
        found = []
        for folder, dirs, files in os.walk(path):
            found += [os.path.join(folder, name) for name in files + (dirs if withdirs else [])]
        return sorted(found)

    def rm(self, path: str, recursive: bool = False) -> None:
        if os.path.isdir(path) and not os.path.islink(path):
            if not recursive:
                raise IsADirectoryError(path)
            shutil.rmtree(path)
        else:
            os.remove(path)


_LOCAL_FS = _LocalFS()


def filesystem(url: str):
    """(filesystem, path inside it) for a URL: fsspec's for remote protocols, a plain local one otherwise."""
    proto = protocol(url)
    if proto in _LOCAL_PROTOCOLS:
        return _LOCAL_FS, local_path(url)
    _require_backend(proto, url)
    import fsspec   # only here: local paths never pay for it

    fs = fsspec.filesystem(proto, **_options_for(proto))
    return fs, fs._strip_protocol(url)


def _require_backend(proto: str, url: str) -> None:
    """A missing optional package is one line naming what to install, before any work is done."""
    module, extra = EXTRAS.get(proto, (None, None))
    if module and importlib.util.find_spec(module) is None:
        install = f"pip install 'orch[{extra}]'" if extra else f"pip install {module}"
        raise OrchError(f"{url} needs the {module} package, which is not installed: {install}")


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
