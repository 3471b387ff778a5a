"""Live services for the data-connector tests: URLs, reachability, a moto server, a TCP proxy.

Service URLs come from environment variables with loopback defaults. When a
service cannot be reached the test is skipped with a reason — except when
``CI=true``, where it fails: CI must never pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

DEFAULTS = {
    "postgres": ("SEAMLINE_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"),
    "mariadb": ("SEAMLINE_MARIADB", "mysql://root@127.0.0.1:3306/test"),
    "redis": ("SEAMLINE_REDIS", "redis://127.0.0.1:6379/0"),
    "mqtt": ("SEAMLINE_MQTT", "mqtt://127.0.0.1:1883"),
}
_PORTS = {"postgresql": 5432, "mysql": 3306, "redis": 6379, "mqtt": 1883}

REPO = Path(__file__).resolve().parents[3]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_url(name: str) -> str:
    env, default = DEFAULTS[name]
    return os.environ.get(env) or default


def unavailable(reason: str) -> None:
    """Skip, or fail when running in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a live service test never skips)")
    pytest.skip(reason)


def reachable(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require(name: str) -> str:
    """The URL of a service; skips (fails in CI) when it does not answer."""
    url = service_url(name)
    u = urlsplit(url)
    port = u.port or _PORTS.get(u.scheme.split("+")[0], 0)
    if not reachable(u.hostname or "127.0.0.1", port):
        env = DEFAULTS[name][0]
        unavailable(f"{name} is not reachable at {u.hostname}:{port} (set {env})")
    return url


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, deadline: float) -> bool:
    while time.monotonic() < deadline:
        if reachable(host, port, 0.2):
            return True
        time.sleep(0.05)
    return False


class MotoServer:
    """moto's standalone server (SQS, S3, ...) on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
        )
        if not wait_port("127.0.0.1", self.port, time.monotonic() + 30):
            self.stop()
            unavailable("moto server did not start within 30s (is moto[server] installed?)")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    try:
        import moto.server  # noqa: F401
    except ImportError:
        unavailable("moto[server] is not installed")
    srv = MotoServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(autouse=False)
def aws_env(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    """Credentials and region for botocore, pointing nowhere real."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return moto_server


class TcpProxy:
    """A loopback TCP proxy in a thread; ``drop()`` cuts every open connection (the broker stays up).

    Point a connector at ``proxy.host:proxy.port`` to simulate a dropped
    network connection mid-stream. ``pause()`` refuses new connections until
    ``resume()``.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind((self.host, 0))
        self._srv.listen(128)
        self._srv.settimeout(0.1)
        self.port = int(self._srv.getsockname()[1])
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._paused = threading.Event()
        self.accepted = 0
        self.drops = 0
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._srv.accept()
            except (TimeoutError, OSError):
                continue
            if self._paused.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._conns += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def drop(self) -> int:
        """Cut every open connection (RST-like close on both sides); returns how many were cut."""
        with self._lock:
            conns, self._conns = self._conns, []
            self.drops += 1
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()
        return len(conns) // 2

    def pause(self) -> None:
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._srv.close()
        self.drop()


@contextlib.contextmanager
def tcp_proxy(url: str, default_port: int) -> Iterator[tuple[TcpProxy, str]]:
    """A proxy in front of the service at ``url``; yields the proxy and the URL that goes through it."""
    u = urlsplit(url)
    proxy = TcpProxy(u.hostname or "127.0.0.1", u.port or default_port)
    netloc = u.netloc.rsplit("@", 1)
    auth = netloc[0] + "@" if len(netloc) == 2 else ""
    try:
        yield proxy, u._replace(netloc=f"{auth}127.0.0.1:{proxy.port}").geturl()
    finally:
        proxy.close()


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate()`` until true or fail after ``timeout`` seconds (sync)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def engine_env() -> dict[str, str]:
    """Environment of an engine subprocess: this interpreter's import path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *sys.path])}


class _Private:
    """A broker process of its own on a fixed free port (kept across stop/start), data in ``tmp``."""

    binary = ""
    default_port = 0

    def __init__(self, tmp: Path) -> None:
        import shutil

        exe = shutil.which(self.binary) or next(
            (str(p) for p in (Path("/usr/sbin") / self.binary, Path("/usr/bin") / self.binary) if p.exists()), None
        )
        if exe is None:
            unavailable(f"{self.binary} is not installed (needed for a private broker)")
        self.exe = str(exe)
        self.tmp = tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        log = (self.tmp / f"{self.binary}.log").open("ab")
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, cwd=self.tmp)
        log.close()
        if not wait_port("127.0.0.1", self.port, time.monotonic() + 20):
            self.stop()
            raise RuntimeError(f"{self.binary} did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and reachable("127.0.0.1", self.port, 0.2):
            time.sleep(0.05)


class PrivateMosquitto(_Private):
    """mosquitto with persistence and no limit on the messages queued for an offline session.

    (The stock configuration keeps at most 1,000 messages per offline session and drops the rest.)
    """

    binary = "mosquitto"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        conf = self.tmp / "mosquitto.conf"
        import getpass

        conf.write_text(
            # `user`: a broker started as root would switch to the user `mosquitto` and could not write here
            f"user {getpass.getuser()}\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {self.tmp}/\nautosave_interval 1\nmax_queued_messages 0\n"
            "max_inflight_messages 100\nmax_keepalive 300\n"
        )
        return [self.exe, "-c", str(conf)]


class PrivateRedis(_Private):
    """redis-server with an append-only file in ``tmp`` (data survives stop/start)."""

    binary = "redis-server"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def command(self) -> list[str]:
        return [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.tmp),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"]
