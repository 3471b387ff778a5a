"""A real local HTTP server whose answers are scripted: the target of failure tests.

In-process (the server runs on the test's event loop)::

    async with FaultServer() as server:
        server.script("/orders", Times(2, Respond(503, headers={"Retry-After": "1"})), default=Respond(201))
        ...  # point a sink at server.url_for("/orders")
        assert server.count("/orders") == 3

In a background thread, for tests that drive the engine in a subprocess::

    with FaultServer() as server:
        ...

Or as a process of its own, scripted over its admin API (see
:class:`FaultServerClient`)::

    python -m seamline.testing.faultserver --port 0 --script '{"path": "/x", "behaviours": [...]}'

Behaviours: :class:`Respond`, :class:`Latency`, :class:`Hang`, :class:`Reset`
(TCP RST, no answer), :class:`HalfWritten` (headers promise more body than is
sent); combinators :class:`Sequence`, :class:`Times` and :class:`Every`. Each
path has a queue of behaviours, consumed one per request, then its default;
paths without a script use the wildcard script (``path=None``), then the
server default (``Respond(200)``). Every request is recorded with the
behaviour applied to it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json as _json
import signal
import socket
import struct
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from aiohttp import web

from seamline.core.clock import SYSTEM_CLOCK, Clock

__all__ = [
    "Action",
    "Behaviour",
    "Every",
    "FaultServer",
    "FaultServerClient",
    "HalfWritten",
    "Hang",
    "Latency",
    "ReceivedRequest",
    "Reset",
    "Respond",
    "Sequence",
    "Times",
    "behaviour_from_dict",
]

ADMIN_PREFIX = "/_fault/"
_MAX_BODY = 64 * 1024 * 1024


# -- behaviours ----------------------------------------------------------------------------------


class Behaviour:
    """Anything that can be scripted: an :class:`Action` or a combinator of actions."""

    def next_action(self) -> Action | None:
        """The action for the next request, or ``None`` once this behaviour is used up."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """JSON form, as accepted by :func:`behaviour_from_dict`."""
        raise NotImplementedError


class Action(Behaviour):
    """A concrete answer to one request. In a queue it is used once; as a default, forever."""

    def next_action(self) -> Action | None:
        return self

    async def apply(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        """Answer ``request``; ``closing`` is set when the server shuts down."""
        raise NotImplementedError


def _dropped() -> web.StreamResponse:
    """What a handler returns after taking the connection over (aiohttp cannot send it)."""
    return web.Response(status=204)


def _reset_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # linger 0: close() sends RST, not FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _headers_from(data: Any) -> dict[str, str]:
    if not isinstance(data, Mapping):
        raise ValueError("'headers' must be an object of strings")
    return {str(k): str(v) for k, v in data.items()}


@dataclass(frozen=True)
class Respond(Action):
    """Answer with ``status``, ``headers`` and a body (``json``, text or bytes)."""

    status: int = 200
    body: bytes | str | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str | None = None

    async def apply(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        headers = dict(self.headers)
        content_type = self.content_type
        if self.json is not None:
            payload = _json.dumps(self.json).encode()
            content_type = content_type or "application/json"
        elif isinstance(self.body, str):
            payload = self.body.encode()
            content_type = content_type or "text/plain; charset=utf-8"
        else:
            payload = self.body or b""
        if content_type and not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = content_type
        return web.Response(status=self.status, body=payload or None, headers=headers)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "respond", "status": self.status}
        if self.headers:
            data["headers"] = dict(self.headers)
        if self.json is not None:
            data["json"] = self.json
        if isinstance(self.body, str):
            data["body"] = self.body
        elif self.body:
            data["body_base64"] = base64.b64encode(self.body).decode()
        if self.content_type:
            data["content_type"] = self.content_type
        return data


@dataclass(frozen=True)
class Latency(Action):
    """Wait ``seconds``, then do ``then`` (default ``Respond(200)``)."""

    seconds: float
    then: Action | None = None

    async def apply(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        try:
            await asyncio.wait_for(closing.wait(), self.seconds)
        except TimeoutError:
            return await (self.then or Respond()).apply(request, closing)
        if request.transport is not None:  # the server is closing: drop the connection
            request.transport.abort()
        return _dropped()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "latency", "seconds": self.seconds}
        if self.then is not None:
            data["then"] = self.then.to_dict()
        return data


@dataclass(frozen=True)
class Hang(Action):
    """Never answer; the connection is dropped when the server closes."""

    async def apply(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        await closing.wait()
        if request.transport is not None:
            request.transport.abort()
        return _dropped()

    def to_dict(self) -> dict[str, Any]:
        return {"type": "hang"}


@dataclass(frozen=True)
class Reset(Action):
    """Close the TCP connection abruptly (RST) without any response."""

    async def apply(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        _reset_connection(request)
        return _dropped()

    def to_dict(self) -> dict[str, Any]:
        return {"type": "reset"}


@dataclass(frozen=True)
class HalfWritten(Action):
    """Send the status line and headers promising ``content_length`` bytes, send ``body``, close."""

    status: int = 200
    content_length: int = 1000
    body: bytes = b"0123456789"
    headers: Mapping[str, str] = field(default_factory=dict)

    async def apply(self, request: web.Request, closing: asyncio.Event) -> web.StreamResponse:
        transport = request.transport
        if transport is None:
            return _dropped()
        try:
            phrase = HTTPStatus(self.status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {self.status} {phrase}", f"Content-Length: {self.content_length}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        if not any(k.lower() == "content-type" for k in self.headers):
            lines.append("Content-Type: application/octet-stream")
        lines.append("Connection: close")
        transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body)
        transport.close()  # flushes what was written, then FIN
        return _dropped()

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "type": "half_written",
            "status": self.status,
            "content_length": self.content_length,
            "body_base64": base64.b64encode(self.body).decode(),
        }
        if self.headers:
            data["headers"] = dict(self.headers)
        return data


class Sequence(Behaviour):
    """The given behaviours in order, one request each (combinators until used up)."""

    def __init__(self, items: Iterable[Behaviour]) -> None:
        self.items = list(items)
        self._index = 0

    def next_action(self) -> Action | None:
        while self._index < len(self.items):
            item = self.items[self._index]
            action = item.next_action()
            if isinstance(item, Action) or action is None:
                self._index += 1
            if action is not None:
                return action
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"type": "sequence", "items": [item.to_dict() for item in self.items]}

    def __repr__(self) -> str:
        return f"Sequence({self.items!r})"


class Times(Behaviour):
    """``behaviour`` for the next ``n`` requests: "fail N times, then" the default."""

    def __init__(self, n: int, behaviour: Behaviour) -> None:
        if n < 0:
            raise ValueError(f"Times needs n >= 0, got {n}")
        self.n = n
        self.behaviour = behaviour
        self._used = 0

    def next_action(self) -> Action | None:
        if self._used >= self.n:
            return None
        action = self.behaviour.next_action()
        if action is not None:
            self._used += 1
        return action

    def to_dict(self) -> dict[str, Any]:
        return {"type": "times", "n": self.n, "behaviour": self.behaviour.to_dict()}

    def __repr__(self) -> str:
        return f"Times({self.n}, {self.behaviour!r})"


class Every(Behaviour):
    """``behaviour`` for every ``n``-th request (the n-th, 2n-th, ...), ``otherwise`` for the rest.

    It is never used up, so script it as a default (or last in a queue).
    """

    def __init__(self, n: int, behaviour: Behaviour, otherwise: Behaviour | None = None) -> None:
        if n < 1:
            raise ValueError(f"Every needs n >= 1, got {n}")
        self.n = n
        self.behaviour = behaviour
        self.otherwise: Behaviour = otherwise or Respond()
        self._count = 0

    def next_action(self) -> Action | None:
        self._count += 1
        chosen = self.behaviour if self._count % self.n == 0 else self.otherwise
        return chosen.next_action() or Respond()

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "every",
            "n": self.n,
            "behaviour": self.behaviour.to_dict(),
            "otherwise": self.otherwise.to_dict(),
        }

    def __repr__(self) -> str:
        return f"Every({self.n}, {self.behaviour!r}, otherwise={self.otherwise!r})"


def _action_from(data: Any, what: str) -> Action:
    behaviour = behaviour_from_dict(data)
    if not isinstance(behaviour, Action):
        raise ValueError(f"{what} must be a plain behaviour (respond, latency, hang, reset, half_written)")
    return behaviour


def behaviour_from_dict(data: Any) -> Behaviour:
    """Build a behaviour from its JSON form, e.g. ``{"type": "respond", "status": 503}``.

    Raises ``ValueError`` naming the problem for unknown types or bad fields.
    """
    if not isinstance(data, Mapping) or not isinstance(data.get("type"), str):
        raise ValueError(f"a behaviour is an object with a 'type', got {data!r}")
    kind = data["type"]
    try:
        if kind == "respond":
            body: bytes | str | None = data.get("body")
            if "body_base64" in data:
                body = base64.b64decode(data["body_base64"])
            return Respond(
                status=int(data.get("status", 200)),
                body=body,
                json=data.get("json"),
                headers=_headers_from(data.get("headers", {})),
                content_type=data.get("content_type"),
            )
        if kind == "latency":
            then = data.get("then")
            return Latency(float(data["seconds"]), _action_from(then, "'then'") if then is not None else None)
        if kind == "hang":
            return Hang()
        if kind == "reset":
            return Reset()
        if kind == "half_written":
            return HalfWritten(
                status=int(data.get("status", 200)),
                content_length=int(data.get("content_length", 1000)),
                body=base64.b64decode(data["body_base64"]) if "body_base64" in data else b"0123456789",
                headers=_headers_from(data.get("headers", {})),
            )
        if kind == "sequence":
            return Sequence(behaviour_from_dict(item) for item in data["items"])
        if kind == "times":
            return Times(int(data["n"]), behaviour_from_dict(data["behaviour"]))
        if kind == "every":
            otherwise = data.get("otherwise")
            return Every(
                int(data["n"]),
                behaviour_from_dict(data["behaviour"]),
                behaviour_from_dict(otherwise) if otherwise is not None else None,
            )
    except KeyError as exc:
        raise ValueError(f"behaviour {kind!r} needs the field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"behaviour {kind!r} is invalid: {exc}") from None
    raise ValueError(
        f"unknown behaviour type {kind!r}; use respond, latency, hang, reset, half_written, sequence, times or every"
    )


# -- recording -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the server saw it, with the behaviour it got."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: Unix time of arrival
    timestamp: float
    behaviour: Action

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive)."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        """The body parsed as JSON."""
        return _json.loads(self.body)

    def to_dict(self) -> dict[str, Any]:
        try:
            text: str | None = self.body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        return {
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": [list(pair) for pair in self.headers],
            "body_base64": base64.b64encode(self.body).decode(),
            "body_text": text,
            "timestamp": self.timestamp,
            "behaviour": self.behaviour.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReceivedRequest:
        return cls(
            method=data["method"],
            path=data["path"],
            query={k: list(v) for k, v in data["query"].items()},
            headers=tuple((str(k), str(v)) for k, v in data["headers"]),
            body=base64.b64decode(data["body_base64"]),
            timestamp=float(data["timestamp"]),
            behaviour=_action_from(data["behaviour"], "a recorded behaviour"),
        )


@dataclass
class _Script:
    queue: deque[Behaviour] = field(default_factory=deque)
    default: Behaviour | None = None


def _script_entry(
    path: str | None, behaviours: Iterable[Behaviour], default: Behaviour | None, replace: bool
) -> dict[str, Any]:
    return {
        "path": path,
        "behaviours": [b.to_dict() for b in behaviours],
        "default": default.to_dict() if default is not None else None,
        "replace": replace,
    }


# -- the server ----------------------------------------------------------------------------------


class FaultServer:
    """A scripted HTTP server on ``host`` (default 127.0.0.1) and ``port`` (0: any free port).

    Use ``async with`` on the test's loop, or ``with`` to run it in a
    background thread. Scripting and inspection are thread-safe.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Behaviour | None = None,
        admin: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        shutdown_timeout: float = 2.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._initial_default: Behaviour = default or Respond()
        self._default = self._initial_default
        self._admin = admin
        self._clock = clock
        self._shutdown_timeout = shutdown_timeout
        self._lock = threading.Lock()
        self._scripts: dict[str | None, _Script] = {}
        self._records: list[ReceivedRequest] = []
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None
        self._thread_error: BaseException | None = None

    # -- addresses --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the fault server is not running")
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self.host}:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + (path if path.startswith("/") else "/" + path)

    # -- scripting --------------------------------------------------------------------------------

    def script(
        self,
        path: str | None,
        *behaviours: Behaviour,
        default: Behaviour | None = None,
        replace: bool = False,
    ) -> None:
        """Queue ``behaviours`` for ``path`` (``None``: any unscripted path), one per request.

        ``default`` answers once the queue is used up (and stays until
        replaced); ``replace`` drops what was queued before.
        """
        with self._lock:
            slot = self._scripts.setdefault(path, _Script())
            if replace:
                slot.queue.clear()
                slot.default = None
            slot.queue.extend(behaviours)
            if default is not None:
                slot.default = default

    def set_default(self, behaviour: Behaviour) -> None:
        """What any request gets when no script applies (initially ``Respond(200)``)."""
        with self._lock:
            self._default = behaviour

    def load_script(self, spec: Any) -> None:
        """Apply a script in JSON form: an entry or a list of entries.

        An entry is ``{"path": "/x" | null, "behaviours": [...], "default": {...},
        "replace": false}``; behaviours as in :func:`behaviour_from_dict`.
        """
        entries = spec if isinstance(spec, list) else [spec]
        parsed: list[tuple[str | None, list[Behaviour], Behaviour | None, bool]] = []
        for entry in entries:
            if not isinstance(entry, Mapping):
                raise ValueError(f"a script entry is an object with 'path' and 'behaviours', got {entry!r}")
            path = entry.get("path")
            if path is not None and not isinstance(path, str):
                raise ValueError(f"script 'path' must be a string or null, got {path!r}")
            items = entry.get("behaviours", [])
            if not isinstance(items, list):
                raise ValueError("script 'behaviours' must be a list")
            default = entry.get("default")
            parsed.append(
                (
                    path,
                    [behaviour_from_dict(item) for item in items],
                    behaviour_from_dict(default) if default is not None else None,
                    bool(entry.get("replace", False)),
                )
            )
        for path, behaviours, default, replace in parsed:
            self.script(path, *behaviours, default=default, replace=replace)

    def reset(self) -> None:
        """Forget every script and every recorded request."""
        with self._lock:
            self._scripts.clear()
            self._records.clear()
            self._default = self._initial_default

    def _pick(self, path: str) -> Action:
        for key in (path, None):
            slot = self._scripts.get(key)
            if slot is None:
                continue
            while slot.queue:
                head = slot.queue[0]
                action = head.next_action()
                if isinstance(head, Action) or action is None:
                    slot.queue.popleft()
                if action is not None:
                    return action
            if slot.default is not None:
                return slot.default.next_action() or Respond()
        return self._default.next_action() or Respond()

    # -- the receiving side -----------------------------------------------------------------------

    def received(self, path: str | None = None) -> list[ReceivedRequest]:
        """Requests received so far (for ``path``, or all), oldest first."""
        with self._lock:
            return [r for r in self._records if path is None or r.path == path]

    def received_bodies(self, path: str | None = None) -> list[bytes]:
        return [r.body for r in self.received(path)]

    def received_json(self, path: str | None = None) -> list[Any]:
        return [r.json() for r in self.received(path)]

    def count(self, path: str | None = None) -> int:
        return len(self.received(path))

    def clear(self) -> None:
        """Forget the recorded requests (scripts stay)."""
        with self._lock:
            self._records.clear()

    async def wait_for(self, n: int, path: str | None = None, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Wait (real time) until at least ``n`` requests arrived; raises ``TimeoutError``."""
        deadline = time.monotonic() + timeout
        while len(got := self.received(path)) < n:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(got)} of {n} requests arrived within {timeout:g}s")
            await asyncio.sleep(0.005)
        return got

    def wait_for_sync(self, n: int, path: str | None = None, timeout: float = 5.0) -> list[ReceivedRequest]:
        """Blocking :meth:`wait_for`, for thread-mode servers."""
        deadline = time.monotonic() + timeout
        while len(got := self.received(path)) < n:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"{len(got)} of {n} requests arrived within {timeout:g}s")
            time.sleep(0.005)
        return got

    # -- request handling -------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self._admin and request.path.startswith(ADMIN_PREFIX):
            return web.json_response({"error": f"no admin route {request.method} {request.path}"}, status=404)
        body = await request.read()
        with self._lock:
            action = self._pick(request.path)
            self._records.append(
                ReceivedRequest(
                    method=request.method,
                    path=request.path,
                    query={k: request.query.getall(k) for k in request.query},
                    headers=tuple(request.headers.items()),
                    body=body,
                    timestamp=self._clock.now(),
                    behaviour=action,
                )
            )
        assert self._closing is not None
        return await action.apply(request, self._closing)

    async def _admin_script(self, request: web.Request) -> web.StreamResponse:
        try:
            self.load_script(await request.json())
        except ValueError as exc:  # JSON errors are ValueErrors too
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response({"ok": True})

    async def _admin_received(self, request: web.Request) -> web.StreamResponse:
        records = self.received(request.query.get("path"))
        return web.json_response({"requests": [r.to_dict() for r in records]})

    async def _admin_count(self, request: web.Request) -> web.StreamResponse:
        return web.json_response({"count": self.count(request.query.get("path"))})

    async def _admin_clear(self, request: web.Request) -> web.StreamResponse:
        self.clear()
        return web.json_response({"ok": True})

    async def _admin_reset(self, request: web.Request) -> web.StreamResponse:
        self.reset()
        return web.json_response({"ok": True})

    def _app(self) -> web.Application:
        app = web.Application(client_max_size=_MAX_BODY)
        if self._admin:
            app.router.add_post(ADMIN_PREFIX + "script", self._admin_script)
            app.router.add_get(ADMIN_PREFIX + "received", self._admin_received)
            app.router.add_get(ADMIN_PREFIX + "count", self._admin_count)
            app.router.add_post(ADMIN_PREFIX + "clear", self._admin_clear)
            app.router.add_post(ADMIN_PREFIX + "reset", self._admin_reset)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    # -- lifecycle on the current loop ------------------------------------------------------------

    async def start(self) -> None:
        """Start listening on the running loop."""
        if self._runner is not None:
            raise RuntimeError("the fault server is already running")
        self._closing = asyncio.Event()
        runner = web.AppRunner(
            self._app(), access_log=None, handle_signals=False, shutdown_timeout=self._shutdown_timeout
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self._requested_port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Drop hanging requests and stop listening."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        assert self._closing is not None
        self._closing.set()
        await runner.cleanup()
        self._port = None

    async def __aenter__(self) -> FaultServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- lifecycle in a background thread ---------------------------------------------------------

    def start_in_thread(self, timeout: float = 10.0) -> None:
        """Run the server on its own loop in a daemon thread; returns once it listens."""
        if self._thread is not None:
            raise RuntimeError("the fault server is already running in a thread")
        ready = threading.Event()
        self._thread_error = None
        self._thread = threading.Thread(target=self._thread_main, args=(ready,), name="faultserver", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise RuntimeError(f"the fault server did not start within {timeout:g}s")
        if self._thread_error is not None:
            self._thread.join(timeout)
            self._thread = None
            raise self._thread_error

    def stop_thread(self, timeout: float = 10.0) -> None:
        """Stop a server started with :meth:`start_in_thread` and join its thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop = self._thread_loop, self._thread_stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # loop already stopped
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError(f"the fault server thread did not stop within {timeout:g}s")

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve_until_stopped(ready))
        except BaseException as exc:  # reported to the starting thread
            self._thread_error = exc
        finally:
            ready.set()

    async def _serve_until_stopped(self, ready: threading.Event) -> None:
        self._thread_loop = asyncio.get_running_loop()
        self._thread_stop = asyncio.Event()
        await self.start()
        ready.set()
        try:
            await self._thread_stop.wait()
        finally:
            await self.close()

    def __enter__(self) -> FaultServer:
        self.start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()


# -- scripting a server in another process ------------------------------------------------------


class FaultServerClient:
    """Script and inspect a fault server in another process or thread over its admin API.

    Blocking and standard-library only; do not use it on the event loop the
    server itself runs on.
    """

    def __init__(self, url: str, *, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _call(self, method: str, route: str, payload: Any = None, path: str | None = None) -> Any:
        url = self.url + ADMIN_PREFIX + route
        if path is not None:
            url += "?" + urllib.parse.urlencode({"path": path})
        data = _json.dumps(payload).encode() if payload is not None else b"" if method == "POST" else None
        req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        with self._opener.open(req, timeout=self.timeout) as resp:
            return _json.loads(resp.read())

    def script(
        self,
        path: str | None,
        *behaviours: Behaviour,
        default: Behaviour | None = None,
        replace: bool = False,
    ) -> None:
        """As :meth:`FaultServer.script`."""
        self._call("POST", "script", _script_entry(path, behaviours, default, replace))

    def received(self, path: str | None = None) -> list[ReceivedRequest]:
        data = self._call("GET", "received", path=path)
        return [ReceivedRequest.from_dict(item) for item in data["requests"]]

    def received_bodies(self, path: str | None = None) -> list[bytes]:
        return [r.body for r in self.received(path)]

    def count(self, path: str | None = None) -> int:
        return int(self._call("GET", "count", path=path)["count"])

    def clear(self) -> None:
        self._call("POST", "clear")

    def reset(self) -> None:
        self._call("POST", "reset")


# -- command line -------------------------------------------------------------------------------


async def _serve_cli(server: FaultServer) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"faultserver listening on {server.url}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    """``python -m seamline.testing.faultserver [--host H] [--port N] [--script JSON|@FILE]``."""
    parser = argparse.ArgumentParser(
        prog="python -m seamline.testing.faultserver",
        description="Run a scripted HTTP fault server until SIGINT/SIGTERM; "
        "prints 'faultserver listening on URL' when ready.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--script", help="a script entry or list of entries as JSON, or @FILE holding it")
    args = parser.parse_args(argv)
    server = FaultServer(host=args.host, port=args.port)
    if args.script:
        text = args.script
        if text.startswith("@"):
            with open(text[1:], encoding="utf-8") as fh:
                text = fh.read()
        try:
            server.load_script(_json.loads(text))
        except ValueError as exc:
            print(f"invalid --script: {exc}", file=sys.stderr)
            return 2
    asyncio.run(_serve_cli(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
