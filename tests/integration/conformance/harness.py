"""The shared conformance suite for message connectors (sources and sinks), run live.

Every broker connector proves the same delivery contract against the real
broker: open and close; 1,000 messages with per-key order kept; at-least-once
through a dropped connection; nack → redelivery; ``kill -9`` of the engine
mid-stream loses nothing; a poison message goes to the DLQ; headers and
correlation id round trip; and, where the harness can run a private broker,
a broker restart mid-stream loses nothing and the flow recovers by itself.

How to plug a connector in
==========================

1. Write a :class:`Backend` subclass in ``test_conformance_<name>.py`` (in this
   folder). It tells the suite how to talk to the broker *without* seamline:

   ``name``
       the registered connector name (``kafka``, ``mqtt``, ...), used as the
       YAML key of the flow's source and sink.
   ``order``
       ``"key"`` when the broker keeps order per key only (Kafka partitions),
       ``"total"`` when one queue keeps the publish order.
   ``async new_channel(tag) -> str``
       create a fresh, unique topic/queue/stream and return its name.
   ``async publish(channel, messages)``
       publish :class:`WireMessage` s with the broker's own client, putting
       ``id``, ``correlation_id``, ``key`` and ``headers`` where the connector
       reads them (see ``seamline.connectors.wire``). Wait for the broker's
       confirmation.
   ``collect(channel)``
       an async context manager that reads the channel in the background from
       the beginning and yields a :class:`Collected` (call ``add`` with every
       :class:`WireMessage` read, translated back from the broker metadata).
   ``source_config(channel, group=...)`` / ``sink_config(channel)``
       the connector's YAML config as a dict (``group`` names the consumer
       group / durable consumer so that a restarted engine resumes).
   optional ``async unacked(channel, group) -> int | None``
       messages not yet acknowledged by ``group`` (None: cannot tell).
   optional ``behind_proxy()``
       an async context manager yielding ``(backend, proxy)``: a backend whose
       *engine-side* configs connect through a :class:`TcpProxy` (see
       ``tests/integration/brokers/broker_services.py``) so the suite can cut
       the connections. Without it the dropped-connection case is skipped.
   optional ``private_broker(tmp_path)``
       an async context manager yielding ``(backend, control)`` bound to a
       broker of its own; ``control.stop()`` / ``control.start()`` stop and
       restart it (blocking calls). Without it the restart case is skipped.
   ``async aclose()``
       delete what ``new_channel`` created and close clients.

2. Subclass :class:`ConformanceSuite` with a ``backend`` fixture::

       from tests.integration.conformance.harness import Backend, ConformanceSuite, ...

       class TestMqttConformance(ConformanceSuite):
           @pytest.fixture
           async def backend(self, mqtt_url):
               b = MqttBackend(mqtt_url)
               yield b
               await b.aclose()

   A service-URL fixture such as ``mqtt_url`` belongs in
   ``tests/integration/brokers/fixtures.py`` (imported by this folder's
   ``conftest.py``); it should call ``broker_services.require_service`` so an
   unreachable service skips locally and fails in CI. ``test_conformance_kafka.py``,
   ``test_conformance_rabbitmq.py`` and ``test_conformance_nats.py`` are complete
   examples, including ``behind_proxy`` and ``private_broker``.

   Class attributes tune the suite for slow brokers (``messages``,
   ``deadline``, ``pace``). Cases that do not apply to a connector can be
   overridden with a ``pytest.skip`` and a reason.

Service URLs come from environment variables; an unreachable service skips
the tests, or fails them when ``CI=true`` (``broker_services.require_service``).
Every wait polls with a deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import pytest
import yaml

from seamline.connectors.wire import is_valid_traceparent, new_traceparent

__all__ = [
    "Backend",
    "Collected",
    "ConformanceSuite",
    "EngineProcess",
    "InProcessEngine",
    "WireMessage",
    "dead_letters",
    "make_messages",
    "write_flow",
]


# -- data ---------------------------------------------------------------------------------------------------------


@dataclass
class WireMessage:
    """A message as a broker client sees it, translated to envelope terms."""

    id: str
    body: bytes
    key: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    correlation_id: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)


def make_messages(n: int, *, keys: int = 10, tag: str = "m") -> list[WireMessage]:
    """``n`` JSON messages over ``keys`` keys; body ``{"key": k, "seq": i_within_key, "n": i}``."""
    run = uuid.uuid4().hex[:8]
    out: list[WireMessage] = []
    seqs: dict[str, int] = {}
    for i in range(n):
        key = f"k{i % keys}"
        seq = seqs.get(key, 0)
        seqs[key] = seq + 1
        body = json.dumps({"key": key, "seq": seq, "n": i}).encode()
        out.append(WireMessage(id=f"{tag}-{run}-{i}", body=body, key=key))
    return out


class Collected:
    """What arrived on a channel so far (appended by the backend's reader)."""

    def __init__(self) -> None:
        self.messages: list[WireMessage] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()

    def add(self, msgs: Iterable[WireMessage]) -> None:
        self.messages.extend(msgs)
        self._changed.set()

    def fail(self, exc: BaseException) -> None:
        self.error = exc
        self._changed.set()

    def ids(self) -> set[str]:
        return {m.id for m in self.messages}

    def by_id(self) -> dict[str, WireMessage]:
        return {m.id: m for m in self.messages}

    async def wait_for(
        self,
        pred: Callable[[Collected], bool],
        timeout: float,
        what: str,
        *,
        alive: Callable[[], None] | None = None,
    ) -> None:
        """Wait until ``pred(self)`` holds; fail with ``what`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            if self.error is not None:
                raise AssertionError(f"reading the output failed: {self.error!r}")
            if pred(self):
                return
            if alive is not None:
                alive()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what} ({len(self.messages)} read)")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.25))

    async def wait_ids(self, ids: set[str], timeout: float, *, alive: Callable[[], None] | None = None) -> None:
        await self.wait_for(lambda c: ids <= c.ids(), timeout, f"{len(ids)} ids", alive=alive)


# -- the backend interface ------------------------------------------------------------------------------------------


class BrokerControl(ABC):
    """Stops and starts a private broker (blocking calls, run in a thread by the suite)."""

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def start(self) -> None: ...


class Backend(ABC):
    """How the suite talks to one broker without seamline. See the module docstring."""

    name: ClassVar[str]
    order: ClassVar[Literal["key", "total"]] = "key"

    @abstractmethod
    async def new_channel(self, tag: str) -> str: ...

    @abstractmethod
    async def publish(self, channel: str, messages: Sequence[WireMessage]) -> None: ...

    @abstractmethod
    def collect(self, channel: str) -> contextlib.AbstractAsyncContextManager[Collected]: ...

    @abstractmethod
    def source_config(self, channel: str, *, group: str) -> dict[str, Any]: ...

    @abstractmethod
    def sink_config(self, channel: str) -> dict[str, Any]: ...

    async def unacked(self, channel: str, group: str) -> int | None:
        return None

    def behind_proxy(self) -> contextlib.AbstractAsyncContextManager[tuple[Backend, Any]]:
        raise NotImplementedError

    def private_broker(self, tmp: Path) -> contextlib.AbstractAsyncContextManager[tuple[Backend, BrokerControl]]:
        raise NotImplementedError

    async def aclose(self) -> None:
        return None


# -- flows and engines ----------------------------------------------------------------------------------------------


def write_flow(
    directory: Path,
    name: str,
    *,
    source: dict[str, Any],
    sinks: list[dict[str, Any]],
    steps: list[dict[str, Any]] | None = None,
    settings: dict[str, Any] | None = None,
    on_error: dict[str, Any] | None = None,
) -> Path:
    """Write a flow file ``directory/name.yaml``; ``source`` and sinks are ``{connector: config}``."""
    directory.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {"flow": name, "source": source, "sinks": sinks}
    if steps:
        doc["steps"] = steps
    doc["settings"] = {"batch_size": 100, "drain_timeout": "10s", **(settings or {})}
    # patient enough for a broker restart (about a minute of retries), quick to notice recovery
    doc["on_error"] = on_error or {"retry": {"max_attempts": 60, "initial": "100ms", "max": "1s", "jitter": False}}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def pace_step(directory: Path, seconds: float) -> dict[str, Any]:
    """A step that waits ``seconds`` per message (without blocking the loop): keeps a stream
    in flight long enough to break something in the middle of it."""
    mod = f"pace_{uuid.uuid4().hex[:10]}"
    (directory / f"{mod}.py").write_text(
        "import asyncio\n\n\nasync def pace(body):\n"
        f"    await asyncio.sleep({seconds!r})\n    return body\n"
    )
    return {"python": {"label": "pace", "function": f"{mod}:pace"}}


class InProcessEngine:
    """Runs the flows of a folder with :class:`seamline.core.engine.Engine` in this event loop."""

    def __init__(self, flowdir: Path, state: Path, *, drain_timeout: float = 10.0) -> None:
        self.flowdir = flowdir
        self.state = state
        self.drain_timeout = drain_timeout
        self.engine: Any = None
        self.task: asyncio.Task[Any] | None = None
        self.result: Any = None

    async def __aenter__(self) -> InProcessEngine:
        from seamline.config.loader import load_flows
        from seamline.core.engine import Engine
        from seamline.store import open_store

        flows = load_flows(self.flowdir)
        self.engine = Engine(flows, open_store(str(self.state)), retry_poll=0.2)
        self.task = asyncio.create_task(
            self.engine.run(install_signals=False, drain_timeout=self.drain_timeout), name="engine"
        )
        return self

    def check(self) -> None:
        """Raise if the engine ended on its own (an error while opening, a source that died)."""
        assert self.task is not None
        if self.task.done():
            exc = self.task.exception()
            raise AssertionError(f"the engine stopped by itself: {exc!r}" if exc else "the engine stopped by itself")
        for r in self.engine.runners:
            if r.source_error is not None:
                raise AssertionError(f"flow {r.flow.name}: source failed: {r.source_error!r}")

    async def stop(self, timeout: float = 60.0) -> Any:
        if self.task is None:
            return self.result
        self.engine.request_stop()
        self.result = await asyncio.wait_for(self.task, timeout)
        self.task = None
        return self.result

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            try:
                await self.stop()
            except BaseException:
                if exc[0] is None:
                    raise


class EngineProcess:
    """``seamline run FLOWDIR --state PATH`` as a child process (to kill it like a crash would)."""

    def __init__(self, flowdir: Path, state: Path, log: Path) -> None:
        self.flowdir = flowdir
        self.state = state
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, SEAMLINE_LOG_LEVEL="INFO")
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "seamline.cli", "run", str(self.flowdir), "--state", str(self.state), "-q"],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def check(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"seamline run exited with {self.proc.returncode}:\n{self.tail()}")

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"seamline run did not stop within {timeout}s after SIGTERM:\n{self.tail()}") from exc

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def dead_letters(state: Path, flow: str | None = None) -> list[Any]:
    """The dead letters in the state store at ``state``."""
    from seamline.store import DlqFilter, open_store

    if not state.exists():
        return []
    store = open_store(str(state))
    await store.open()
    try:
        return list(await store.list_dead(DlqFilter(flow=flow)))
    finally:
        await store.close()


async def dead_letter_ids(state: Path, timeout: float = 20.0) -> set[str] | None:
    """The ids in the DLQ of a store an engine process is writing to; ``None`` when the store
    could not be read within ``timeout`` (the caller asks again later)."""
    try:
        return {d.msg_id for d in await asyncio.wait_for(dead_letters(state), timeout)}
    except TimeoutError:
        return None


@contextlib.asynccontextmanager
async def hang_report(after: float) -> AsyncIterator[None]:
    """If the block is still running after ``after`` seconds, print every task's and thread's stack
    (a hang then fails with where it hung, not only with the test's timeout)."""
    import faulthandler

    async def watch() -> None:
        await asyncio.sleep(after)
        print(f"--- still running after {after:g}s: task stacks ---", file=sys.stderr)
        for task in asyncio.all_tasks():
            task.print_stack(file=sys.stderr)
        print("--- thread stacks ---", file=sys.stderr, flush=True)
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def assert_key_order(messages: Sequence[WireMessage], order: str) -> None:
    """Per key (or overall, for ``total``), the first arrival of each ``seq`` is increasing."""
    seen: set[str] = set()
    last: dict[str, int] = {}
    prev_n = -1
    for m in messages:
        if m.id in seen:
            continue  # a redelivered duplicate
        seen.add(m.id)
        body = m.json()
        k, seq = body["key"], body["seq"]
        assert seq > last.get(k, -1), f"key {k}: seq {seq} arrived after {last.get(k)}"
        last[k] = seq
        if order == "total":
            assert body["n"] > prev_n, f"message {body['n']} arrived after {prev_n}"
            prev_n = body["n"]


def uid(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}"


async def to_thread(fn: Callable[[], Any]) -> Any:
    return await asyncio.to_thread(fn)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


# -- the suite ----------------------------------------------------------------------------------------------------


class ConformanceSuite:
    """The cases every message connector passes. Subclass it with a ``backend`` fixture."""

    #: messages in the volume case
    messages: ClassVar[int] = 1000
    #: how long any one wait may take
    deadline: ClassVar[float] = 60.0
    #: seconds per message in the crash and reconnect cases (keeps the stream in flight)
    pace: ClassVar[float] = 0.002
    #: settings every flow of the suite gets (e.g. ``workers``)
    flow_settings: ClassVar[dict[str, Any]] = {}

    # -- helpers -----------------------------------------------------------------------------------------------
    def pace_steps(self, flowdir: Path) -> list[dict[str, Any]]:
        """The steps that keep a stream in flight in the crash and reconnect cases (``pace`` seconds a
        message)."""
        return [pace_step(flowdir, self.pace)]

    def flow(
        self,
        backend: Backend,
        tmp: Path,
        *,
        src: str,
        dst: str,
        group: str,
        name: str = "conf",
        steps: list[dict[str, Any]] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> Path:
        flowdir = tmp / "flows"
        write_flow(
            flowdir,
            name,
            source={backend.name: backend.source_config(src, group=group)},
            sinks=[{backend.name: backend.sink_config(dst)}],
            steps=steps,
            settings={**self.flow_settings, **(settings or {})},
        )
        return flowdir

    # -- cases ---------------------------------------------------------------------------------------------------
    async def test_open_and_close(self, backend: Backend, tmp_path: Path) -> None:
        """Source and sink open and close cleanly, twice, with nothing to read; an idle engine stops at once."""
        from seamline.core.component import BuildContext
        from seamline.core.registry import get_spec
        from seamline.store import open_store

        src, dst = await backend.new_channel("open-in"), await backend.new_channel("open-out")
        store = open_store(str(tmp_path / "state.db"))
        await store.open()
        try:
            ctx = BuildContext(flow="conf-open", base_dir=tmp_path, store=store, batch_size=10)
            for _ in range(2):
                sspec = get_spec("source", backend.name)
                kspec = get_spec("sink", backend.name)
                assert sspec is not None and kspec is not None, f"{backend.name} is not registered as source and sink"
                source = sspec.factory(sspec.config.model_validate(backend.source_config(src, group=uid("g"))), ctx)
                sink = kspec.factory(kspec.config.model_validate(backend.sink_config(dst)), ctx)
                await sink.open()
                await source.open()
                await source.close()
                await sink.close()
        finally:
            await store.close()
        flowdir = self.flow(backend, tmp_path, src=src, dst=dst, group=uid("g"))
        async with InProcessEngine(flowdir, tmp_path / "state.db") as eng:
            await asyncio.sleep(0.5)
            eng.check()
            t0 = time.monotonic()
            result = await eng.stop()
        assert result.ok, result.errors
        assert time.monotonic() - t0 < 15, "an idle engine took too long to stop"

    async def test_thousand_messages_keep_key_order(self, backend: Backend, tmp_path: Path) -> None:
        """1,000 messages go through source → sink; none lost, bodies and keys intact, order kept per key."""
        src, dst = await backend.new_channel("vol-in"), await backend.new_channel("vol-out")
        msgs = make_messages(self.messages)
        await backend.publish(src, msgs)
        group = uid("g")
        flowdir = self.flow(backend, tmp_path, src=src, dst=dst, group=group)
        async with backend.collect(dst) as out, InProcessEngine(flowdir, tmp_path / "state.db") as eng:
            await out.wait_ids({m.id for m in msgs}, self.deadline, alive=eng.check)
            result = await eng.stop()
        assert result.ok, result.errors
        stats = result.stats["conf"]
        assert stats.dead == 0, stats.dead_reasons
        got = out.by_id()
        for m in msgs:
            g = got[m.id]
            assert g.body == m.body or g.json() == m.json()
            if backend.order == "key":
                assert g.key == m.key, f"key of {m.id}: {g.key!r} != {m.key!r}"
        assert_key_order(out.messages, backend.order)
        pending = await backend.unacked(src, group)
        assert pending in (None, 0), f"{pending} message(s) left unacknowledged"

    async def test_at_least_once_through_dropped_connection(self, backend: Backend, tmp_path: Path) -> None:
        """The broker connections are cut mid-stream (twice); every message still arrives."""
        try:
            cm = backend.behind_proxy()
        except NotImplementedError:
            pytest.skip(f"{backend.name}: the backend cannot put a proxy in front of the broker")
        async with cm as (b, proxy):
            src, dst = await b.new_channel("drop-in"), await b.new_channel("drop-out")
            msgs = make_messages(600)
            await b.publish(src, msgs)
            ids = {m.id for m in msgs}
            flowdir = tmp_path / "flows"
            flowdir.mkdir()
            steps = self.pace_steps(flowdir)
            self.flow(b, tmp_path, src=src, dst=dst, group=uid("g"), steps=steps, settings={"batch_size": 20})
            async with b.collect(dst) as out, InProcessEngine(flowdir, tmp_path / "state.db") as eng:
                for share in (0.2, 0.5):
                    await out.wait_for(lambda c, s=share: len(c.ids() & ids) >= len(ids) * s, self.deadline,
                                       f"{share:.0%} of the messages", alive=eng.check)
                    cut = 0
                    for _ in range(100):  # right after a cut the clients may still be reconnecting
                        cut = await asyncio.to_thread(proxy.drop)
                        if cut:
                            break
                        await asyncio.sleep(0.1)
                    assert cut > 0, "no connection went through the proxy"
                await out.wait_ids(ids, self.deadline, alive=eng.check)
                result = await eng.stop()
            assert result.ok, result.errors
            assert result.stats["conf"].dead == 0, result.stats["conf"].dead_reasons

    async def test_nack_redelivers(self, backend: Backend, tmp_path: Path) -> None:
        """A delivery given back with ``nack(requeue=True)`` comes again; acknowledged ones do not."""
        from seamline.core.component import BuildContext, Delivery
        from seamline.core.registry import get_spec
        from seamline.store import open_store

        src = await backend.new_channel("nack-in")
        msgs = make_messages(20, keys=2)
        await backend.publish(src, msgs)
        ids = {m.id for m in msgs}
        group = uid("g")
        spec = get_spec("source", backend.name)
        assert spec is not None
        cfg = spec.config.model_validate(backend.source_config(src, group=group))
        store = open_store(str(tmp_path / "state.db"))
        await store.open()
        ctx = BuildContext(flow="conf-nack", base_dir=tmp_path, store=store, batch_size=50)
        source = spec.factory(cfg, ctx)
        seen: dict[str, int] = {}
        acked: set[str] = set()
        done = asyncio.Event()

        async def emit(batch: list[Delivery]) -> None:
            for d in batch:
                n = seen.get(d.message.id, 0) + 1
                seen[d.message.id] = n
                if n == 1 and d.message.id.endswith(("1", "3", "5", "7")):
                    r = d.nack(True)
                else:
                    r = d.ack()
                    acked.add(d.message.id)
                if asyncio.iscoroutine(r):
                    await r
            await source.commit_acks()
            if acked >= ids:
                done.set()

        await source.open()
        task = asyncio.create_task(source.run(emit))
        try:
            await asyncio.wait_for(done.wait(), self.deadline)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await source.close()
            await store.close()
        nacked = {i for i in ids if i.endswith(("1", "3", "5", "7"))}
        assert nacked, "the test data has no message to nack"
        assert all(seen[i] >= 2 for i in nacked), {i: seen[i] for i in nacked}
        await eventually(lambda: self._settled(backend, src, group), 20, "every message acknowledged")

    async def _settled(self, backend: Backend, channel: str, group: str) -> bool:
        n = await backend.unacked(channel, group)
        return n in (None, 0)

    @pytest.mark.slow
    async def test_engine_sigkill_loses_nothing(self, backend: Backend, tmp_path: Path) -> None:
        """``kill -9`` of ``seamline run`` mid-stream, then a restart: every input id is in the output or the DLQ."""
        src, dst = await backend.new_channel("kill-in"), await backend.new_channel("kill-out")
        msgs = make_messages(1500)
        await backend.publish(src, msgs)
        ids = {m.id for m in msgs}
        flowdir = tmp_path / "flows"
        flowdir.mkdir()
        steps = self.pace_steps(flowdir)
        self.flow(backend, tmp_path, src=src, dst=dst, group=uid("g"), steps=steps, settings={"batch_size": 50})
        state = tmp_path / "state.db"
        proc = EngineProcess(flowdir, state, tmp_path / "engine.log")
        try:
            async with hang_report(200), backend.collect(dst) as out:
                proc.start()
                await out.wait_for(lambda c: len(c.ids() & ids) >= 300, self.deadline, "300 messages",
                                   alive=proc.check)
                proc.kill()
                before = len(out.ids() & ids)
                assert before < len(ids), "the stream finished before the kill: raise the pace"
                proc.start()
                dead: set[str] = set()

                async def done() -> bool:
                    proc.check()
                    if ids <= out.ids() | dead:
                        return True
                    dead.update(await dead_letter_ids(state) or ())
                    return ids <= out.ids() | dead

                await eventually(done, self.deadline, "every id in the output or the DLQ", every=0.5)
                code = proc.terminate()
                assert code == 0, proc.tail()
        finally:
            proc.cleanup()
        dl = await dead_letters(state)
        assert not dl, [(d.msg_id, d.error_message) for d in dl]
        missing = ids - out.ids()
        assert not missing, f"{len(missing)} lost"
        # each message got a trace context of its own: the engine, its restart and any forked
        # workers each draw their own ids
        tps = [m.headers.get("traceparent") for m in out.by_id().values()]
        assert all(map(is_valid_traceparent, tps)), tps[:5]
        assert len(set(tps)) == len(tps), f"{len(tps) - len(set(tps))} trace contexts drawn twice"

    async def test_poison_message_goes_to_dlq(self, backend: Backend, tmp_path: Path) -> None:
        """A message that is not JSON is dead-lettered with its reason; the others are delivered and
        nothing is left unacknowledged (the poison is not redelivered forever)."""
        src, dst = await backend.new_channel("poison-in"), await backend.new_channel("poison-out")
        good = make_messages(20, keys=2)
        poison = WireMessage(id=f"poison-{uuid.uuid4().hex[:8]}", body=b"{not json", key="k0")
        await backend.publish(src, [*good[:10], poison, *good[10:]])
        group = uid("g")
        flowdir = self.flow(backend, tmp_path, src=src, dst=dst, group=group)
        state = tmp_path / "state.db"
        async with backend.collect(dst) as out, InProcessEngine(flowdir, state) as eng:
            await out.wait_ids({m.id for m in good}, self.deadline, alive=eng.check)
            await eventually(lambda: _has_dead(state, poison.id), self.deadline, "the poison message in the DLQ")
            result = await eng.stop()
        assert result.ok, result.errors
        await eventually(lambda: self._settled(backend, src, group), 20, "every message acknowledged")
        dl = await dead_letters(state)
        assert [d.msg_id for d in dl] == [poison.id]
        assert dl[0].error_code == "format.json.syntax", dl[0].error_code
        assert poison.id not in out.ids()

    async def test_headers_and_correlation_round_trip(self, backend: Backend, tmp_path: Path) -> None:
        """id, correlation id, custom headers and ``traceparent`` survive source → sink; a missing
        ``traceparent`` is created, a missing correlation id defaults to the message id."""
        src, dst = await backend.new_channel("hdr-in"), await backend.new_channel("hdr-out")
        tp = new_traceparent()
        run = uuid.uuid4().hex[:8]
        full = WireMessage(
            id=f"full-{run}", body=b'{"a": 1}', key="k1", correlation_id=f"corr-{run}",
            headers={"x-tenant": "acme", "traceparent": tp},
        )
        bare = WireMessage(id=f"bare-{run}", body=b'{"a": 2}', key="k1")
        await backend.publish(src, [full, bare])
        flowdir = self.flow(backend, tmp_path, src=src, dst=dst, group=uid("g"))
        async with backend.collect(dst) as out, InProcessEngine(flowdir, tmp_path / "state.db") as eng:
            await out.wait_ids({full.id, bare.id}, self.deadline, alive=eng.check)
            result = await eng.stop()
        assert result.ok, result.errors
        got = out.by_id()
        f, b = got[full.id], got[bare.id]
        assert f.correlation_id == full.correlation_id
        assert f.headers.get("x-tenant") == "acme", f.headers
        assert f.headers.get("traceparent") == tp, f.headers
        assert b.correlation_id == bare.id, b
        assert is_valid_traceparent(b.headers.get("traceparent")), b.headers
        assert b.headers["traceparent"] != tp
        assert json.loads(f.body) == {"a": 1}

    @pytest.mark.slow
    async def test_broker_restart_loses_nothing(self, backend: Backend, tmp_path: Path) -> None:
        """The broker stops mid-stream and comes back: nothing is lost and the flow resumes by itself
        within 30 s of the broker being back."""
        try:
            cm = backend.private_broker(tmp_path / "broker")
        except NotImplementedError:
            pytest.skip(f"{backend.name}: the backend cannot run a private broker")
        async with cm as (b, control):
            src, dst = await b.new_channel("restart-in"), await b.new_channel("restart-out")
            msgs = make_messages(1000)
            await b.publish(src, msgs)
            ids = {m.id for m in msgs}
            flowdir = tmp_path / "flows"
            flowdir.mkdir()
            steps = self.pace_steps(flowdir)
            self.flow(b, tmp_path, src=src, dst=dst, group=uid("g"), steps=steps, settings={"batch_size": 20})
            state = tmp_path / "state.db"
            async with b.collect(dst) as out, InProcessEngine(flowdir, state) as eng:
                await out.wait_for(lambda c: len(c.ids() & ids) >= 200, self.deadline, "200 messages",
                                   alive=eng.check)
                await asyncio.to_thread(control.stop)
                await asyncio.sleep(1.0)  # the broker stays down for a moment: clients see refused connections
                await asyncio.to_thread(control.start)
                back = time.monotonic()
                # messages published after the restart prove the flow resumed by itself
                later = make_messages(100, tag="after")
                await b.publish(src, later)
                later_ids = {m.id for m in later}
                await out.wait_ids(later_ids, 30, alive=eng.check)
                recovered = time.monotonic() - back
                await out.wait_ids(ids | later_ids, self.deadline, alive=eng.check)
                result = await eng.stop()
            assert result.ok, result.errors
            assert recovered < 30, recovered
            dl = await dead_letters(state)
            assert not dl, [(d.msg_id, d.error_message) for d in dl]


async def _has_dead(state: Path, msg_id: str) -> bool:
    try:
        return any(d.msg_id == msg_id for d in await dead_letters(state))
    except Exception:
        return False


@contextlib.asynccontextmanager
async def background(coro_fn: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    """Run ``coro_fn`` as a task for the duration of the block, then cancel it."""
    task = asyncio.create_task(coro_fn())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
