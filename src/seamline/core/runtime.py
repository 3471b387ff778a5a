"""The asyncio runtime: moves messages from a source through steps to sinks.

Delivery contract: a source message is acknowledged only after every sink
it is routed to confirmed it, or it is durably in the store (a scheduled
retry or the dead-letter queue). Everything one batch changes in the store
(journal, retries, dead letters) is committed in one transaction before
any acknowledgement.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from seamline.core.clock import SYSTEM_CLOCK, Clock
from seamline.core.component import (
    BatchError,
    BuildContext,
    Defer,
    Delivery,
    Drop,
    Held,
    RawBatch,
    Sink,
    Source,
    Step,
)
from seamline.core.errors import FatalError, SeamlineError, classify
from seamline.core.flow import ComponentRef, Flow
from seamline.core.message import Message
from seamline.core.registry import get_spec
from seamline.core.sinkguard import SinkGuard
from seamline.resilience.retry import RetryPolicy
from seamline.store.base import Batch, DeadLetter, RetryEntry, Store

__all__ = ["FlowRunner", "FlowStats"]

log = logging.getLogger("seamline.runtime")

_SINKS = "sinks"
_DLQ = "$dlq"


def _digest(m: Message) -> str | None:
    try:
        return m.digest
    except (TypeError, ValueError):  # not encodable: the sink stage dead-letters it
        return None


def _encodable(m: Message) -> bool:
    try:
        m.raw  # noqa: B018 - encodes once and caches
    except (TypeError, ValueError):
        return False
    return True


def _error_chain(exc: BaseException) -> list[dict[str, Any]]:
    chain: list[dict[str, Any]] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen and len(chain) < 10:
        seen.add(id(cur))
        chain.append(
            {
                "type": type(cur).__name__,
                "code": getattr(cur, "code", None),
                "message": _scrub(getattr(cur, "message", None) or str(cur)),
                "details": _safe(getattr(cur, "details", None)),
            }
        )
        cur = cur.__cause__ or (None if cur.__suppress_context__ else cur.__context__)
    return chain


def _safe(v: Any) -> Any:
    if isinstance(v, str):
        return _scrub(v)
    if v is None or isinstance(v, int | float | bool):
        return v
    if isinstance(v, dict):
        return {str(k): _safe(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_safe(x) for x in v]
    return str(v)


def _dead_letter_message(d: DeadLetter) -> Message:
    """The original message, with the reason it died in its headers, for a broker DLQ."""
    m = Message.from_record(d.original)
    m.headers.update(
        {
            "seamline-dlq-id": d.dlq_id,
            "seamline-flow": d.flow,
            "seamline-step": d.step,
            "seamline-error-code": d.error_code,
            "seamline-error-class": d.error_class,
            "seamline-error": d.error_message[:500],
            "seamline-attempts": str(d.attempts),
            "seamline-dead-at": f"{d.dead_at:.3f}",
        }
    )
    m.route = None
    return m


def _settle(batch: Batch, m: Message, *, delivered: bool) -> None:
    """Commit what a step asked to commit once this message is settled (see ``Message.effects``)."""
    if m.custody:
        batch.unpark.append(m.custody)
        m.custody = None
    if not m.effects:
        return
    for eff in m.effects:
        if eff[1] == "delivered" and not delivered:
            continue
        if eff[0] == "idem":
            batch.idempotency.append((eff[2], eff[3], eff[4]))
        elif eff[0] == "checkpoint":
            batch.checkpoints[eff[2]] = eff[3]
    m.effects = None


def _record(original: dict[str, Any] | Message | None, fallback: Message) -> dict[str, Any]:
    if isinstance(original, dict):
        return original
    return (original or fallback).to_record()


def _scrub(text: str) -> str:
    from seamline.security.redaction import scrub_text

    return scrub_text(text)


def _text(exc: BaseException) -> str:
    """The error's message for the DLQ, the journal and logs, with known secrets removed."""
    msg = getattr(exc, "message", None)
    return _scrub((msg if isinstance(msg, str) else str(exc)).strip()) or type(exc).__name__


def _code(exc: BaseException) -> str:
    if isinstance(exc, SeamlineError):
        return exc.code
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionError | OSError):
        return "connection"
    return "error." + type(exc).__name__


@dataclass
class FlowStats:
    received: int = 0
    delivered: int = 0
    filtered: int = 0
    retried: int = 0
    dead: int = 0
    deferred: int = 0
    held: int = 0
    dead_reasons: list[tuple[str, str, str]] = field(default_factory=list)  # msg_id, step, reason

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "delivered": self.delivered,
            "filtered": self.filtered,
            "retries_scheduled": self.retried,
            "dead_lettered": self.dead,
            "deferred": self.deferred,
            "held": self.held,
        }


class _Work:
    """One unit travelling through the pipeline: a source delivery or a due retry."""

    __slots__ = (
        "attempt", "delivery", "first_at", "history", "message", "original", "pending", "resume", "rid", "settled",
    )

    def __init__(
        self,
        message: Message,
        *,
        delivery: Delivery | None = None,
        original: dict[str, Any] | Message | None = None,
        resume: int = 0,
        pending: list[str] | None = None,
        attempt: int = 0,
        history: list[dict[str, Any]] | None = None,
        first_at: float = 0.0,
        rid: str | None = None,
    ) -> None:
        self.message = message
        self.delivery = delivery
        self.original = original
        self.resume = resume
        self.pending = pending
        self.attempt = attempt
        self.history = history or []
        self.first_at = first_at
        self.rid = rid
        self.settled = False


class _Unit:
    """A message at the sink stage (one work item may yield several after a split)."""

    __slots__ = ("failed", "message", "targets", "work")

    def __init__(self, work: _Work, message: Message, targets: list[str]) -> None:
        self.work = work
        self.message = message
        self.targets = targets
        self.failed: dict[str, BaseException] = {}


class FlowRunner:
    """Runs one flow: source task, worker tasks and the retry scheduler."""

    def __init__(
        self,
        flow: Flow,
        store: Store,
        *,
        clock: Clock = SYSTEM_CLOCK,
        retry_poll: float = 1.0,
        retry_lease: float = 300.0,
        breakers: Any = None,
        limiters: Any = None,
        forked: list[Any] | None = None,
    ) -> None:
        self.flow = flow
        #: workers forked early for ``settings.workers`` (``lanes.prefork``), handed to the pool on open
        self._forked: list[Any] = list(forked or [])
        self.breakers = breakers
        self.limiters = limiters
        self.store = store
        self.clock = clock
        self.retry_poll = retry_poll
        self.retry_lease = retry_lease
        self.settings = flow.settings
        self.stats = FlowStats()
        self.policy: RetryPolicy = flow.on_error.retry.policy()
        self.source: Source | None = None
        self.steps: list[Step] = []
        self.sinks: dict[str, Sink] = {}
        self.guards: dict[str, SinkGuard] = {}
        self.step_policies: dict[str, RetryPolicy] = {}
        self._overrides: dict[str, str] = dict(getattr(flow.on_error, "classify", None) or {})
        self.sink_policies: dict[str, RetryPolicy] = {}
        self._queue: asyncio.Queue[list[_Work] | RawBatch | None] = asyncio.Queue(maxsize=self.settings.queue)
        self._tasks: list[asyncio.Task[Any]] = []
        self._source_task: asyncio.Task[None] | None = None
        self._source_done = asyncio.Event()
        self._source_error: BaseException | None = None
        self._inflight: dict[int, list[_Work] | RawBatch] = {}
        #: worker processes for the flow's pure steps (settings.workers), once open() found them usable
        self._lanes: Any = None
        self._seq = 0
        self._sink_turn: dict[str, int] = {}
        self._turn_changed = asyncio.Condition()
        self._retry_wake = asyncio.Event()
        self._stopping = False
        self._idle = asyncio.Event()
        self._journal = self.settings.journal
        self._retries_inflight = 0
        self._tick_task: asyncio.Task[None] | None = None
        self.tick_interval = 1.0
        self.dlq_sink: Sink | None = None
        self.dlq_guard: SinkGuard | None = None
        self._forward_task: asyncio.Task[None] | None = None
        self._forward_wake = asyncio.Event()
        self._forward_pending = True
        self.forward_interval = 5.0
        # sinks whose endpoint was unreachable when the flow started: opened again before each write
        self._unopened: dict[str, BaseException] = {}
        self._open_locks: dict[str, asyncio.Lock] = {}
        self._opened: set[str] = set()

    # -- building --------------------------------------------------------------------
    def _ctx(self, ref: ComponentRef) -> BuildContext:
        return BuildContext(
            flow=self.flow.name,
            base_dir=self.flow.base_dir,
            store=self.store,
            clock=self.clock,
            label=ref.label,
            batch_size=self.settings.batch_size,
            breakers=self.breakers,
            limiters=self.limiters,
        )

    def _build(self, ref: ComponentRef) -> Any:
        spec = get_spec(ref.role, ref.name)
        if spec is None:
            raise SeamlineError(f"unknown {ref.role} {ref.name!r}", code="config.unknown_component")
        comp = spec.factory(ref.config, self._ctx(ref))
        if ref.role in ("step", "sink"):
            comp.label = ref.label
            comp.component = ref.name
        return comp

    async def open(self) -> None:
        self.source = self._build(self.flow.source)
        self.steps = [self._build(r) for r in self.flow.steps]
        for st, ref in zip(self.steps, self.flow.steps, strict=True):
            inflight = getattr(ref.config, "max_in_flight", None)
            if inflight is not None and st.is_async:
                st.max_in_flight = int(inflight)
            retry = getattr(ref.config, "retry", None)
            if retry is not None and hasattr(retry, "policy"):
                self.step_policies[ref.label] = retry.policy()
        for ref in self.flow.sinks:
            sk = self._build(ref)
            self.sinks[ref.label] = sk
            self.guards[ref.label] = SinkGuard(
                sk, ref.config, flow=self.flow.name, breakers=self.breakers, limiters=self.limiters
            )
            retry = getattr(ref.config, "retry", None)
            self.sink_policies[ref.label] = retry.policy() if retry is not None else self.policy
            self._sink_turn[ref.label] = 0
        if self.flow.dlq_sink is not None:
            self.dlq_sink = self._build(self.flow.dlq_sink)
            self.dlq_guard = SinkGuard(
                self.dlq_sink, self.flow.dlq_sink.config, flow=self.flow.name,
                breakers=self.breakers, limiters=self.limiters,
            )
            await self._open_sink(_DLQ, self.dlq_sink)
        for st in self.steps:
            await st.open()
        for label, sk in self.sinks.items():
            await self._open_sink(label, sk)
        await self.source.open()
        if self.settings.workers:
            self._lanes = self._lane_pool()
            self._lanes.start()
        release = getattr(self.store, "release_leases", None)
        if release is not None:
            await release([self.flow.name])

    def _lane_pool(self) -> Any:
        """The worker processes of ``settings.workers``, or a config error saying why this flow cannot
        use them."""
        from seamline.core.lanes import LanePool

        def refuse(why: str) -> FatalError:
            return FatalError(f"flow {self.flow.name}: workers: {why}", code="config.workers")

        assert self.source is not None
        if not self.source.can_run_raw():
            raise refuse(f"the source ({self.flow.source.name}) cannot hand over raw records"
                         " (an NDJSON file, or Kafka records of a JSON content type)")
        steps = []
        for st, ref in zip(self.steps, self.flow.steps, strict=True):
            if st.body_function() is None:
                raise refuse(f"step '{ref.label}' ({ref.name}) needs the whole message, not only its body")
            spec = get_spec("step", ref.name)
            assert spec is not None
            steps.append([
                spec.factory.__module__, ref.name, ref.label,
                ref.config.model_dump(mode="json", by_alias=True, exclude_unset=True),
            ])
        if len(self.sinks) != 1:
            raise refuse(f"the flow needs exactly one sink, it has {len(self.sinks)}: {', '.join(self.sinks)}")
        label, sink = next(iter(self.sinks.items()))
        encoder, decoder = sink.lane_encoder(), self.source.lane_decoder()
        if encoder is None and not sink.accepts_lines():
            raise refuse(f"sink '{label}' ({sink.component}) cannot take records encoded in a worker")
        if encoder is not None and decoder is None:
            # its encoder needs the messages a source's decoder builds (headers, ids), not bare lines
            raise refuse(f"sink '{label}' ({sink.component}) takes records from a worker only when the source's"
                         f" are decoded there too; the source ({self.flow.source.name}) hands over NDJSON lines")
        plan = {
            "flow": self.flow.name, "base_dir": str(self.flow.base_dir), "steps": steps, "sinks": [label],
            "journal": self._journal, "decode": decoder, "encode": encoder,
        }
        forked, self._forked = self._forked, []
        return LanePool(self.settings.workers, plan, flow=self.flow.name, forked=forked)

    async def _open_sink(self, label: str, sink: Sink) -> BaseException | None:
        """Open a sink; an unreachable endpoint (a retryable error) does not stop the flow.

        Its messages fail with that error and wait as scheduled retries, and every write
        tries to open the sink again first. A fatal error (a missing table, bad
        credentials) still stops the start-up: it needs a person, not patience.
        """
        lock = self._open_locks.setdefault(label, asyncio.Lock())
        async with lock:
            if label in self._opened:  # another worker opened it while this one waited
                return None
            try:
                await sink.open()
            except Exception as exc:
                if not self._retryable(exc):
                    raise
                if label not in self._unopened:
                    log.warning("flow %s: sink %s is unreachable (%s: %s); its messages wait as retries"
                                " until it is back", self.flow.name, label, _code(exc), _text(exc))
                self._unopened[label] = exc
                return exc
            if self._unopened.pop(label, None) is not None:
                log.info("flow %s: sink %s is reachable again", self.flow.name, label)
            self._opened.add(label)
            return None

    async def close(self) -> None:
        for f in self._forked:  # forked early for a flow that did not get to use them
            f.discard()
        self._forked = []
        if self._lanes is not None:
            await self._lanes.stop()
            self._lanes = None
        for comp in [self.source, *self.steps, *self.sinks.values(), self.dlq_sink]:
            if comp is None:
                continue
            try:
                await comp.close()
            except Exception:
                log.exception("closing %s failed", comp)
        # drop the components here, on the event loop's thread: some hold native objects that
        # must not be freed by a garbage collection that happens to run on another thread
        self.source = None
        self.steps = []
        self.sinks = {}
        self.guards = {}
        self.dlq_sink = None
        self.dlq_guard = None

    # -- running -----------------------------------------------------------------------
    def start(self) -> None:
        self._source_task = asyncio.create_task(self._run_source(), name=f"{self.flow.name}:source")
        tasks = self.settings.concurrency
        if self._lanes is not None:
            # with worker processes, two batches per worker keep each fed while the engine writes the
            # other; four when the sink is pipelined, as each batch then also waits for its confirmation
            per_worker = 4 if any(sk.pipelined for sk in self.sinks.values()) else 2
            tasks = max(tasks, per_worker * self.settings.workers)
        for i in range(tasks):
            self._tasks.append(asyncio.create_task(self._worker(), name=f"{self.flow.name}:worker{i}"))
        if self.dlq_guard is not None:
            self._forward_task = asyncio.create_task(self._forward_loop(), name=f"{self.flow.name}:dlq")
        ticking = [i for i, st in enumerate(self.steps) if type(st).tick is not Step.tick]
        if ticking:
            self._tick_task = asyncio.create_task(self._tick_loop(ticking), name=f"{self.flow.name}:tick")
        self._tasks.append(asyncio.create_task(self._retry_loop(), name=f"{self.flow.name}:retries"))

    async def _emit(self, deliveries: list[Delivery]) -> None:
        if self._stopping:
            for d in deliveries:
                await _call(d.nack, True)
            raise asyncio.CancelledError
        now = self.clock.now()
        work = [_Work(d.message, delivery=d, first_at=now) for d in deliveries]
        for w in work:
            if w.delivery is not None and w.delivery.error is not None:
                w.resume = -1
        self.stats.received += len(work)
        try:
            await self._queue.put(work)
        except asyncio.CancelledError:
            for d in deliveries:
                await _call(d.nack, True)
            raise

    async def _emit_raw(self, rb: RawBatch) -> None:
        if self._stopping:
            await _call(rb.nack, True)
            raise asyncio.CancelledError
        self.stats.received += rb.count
        try:
            await self._queue.put(rb)
        except asyncio.CancelledError:
            await _call(rb.nack, True)
            raise

    async def _run_source(self) -> None:
        assert self.source is not None
        try:
            if self._lanes is not None:
                await self.source.run_raw(self._emit_raw)
            else:
                await self.source.run(self._emit)
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            self._source_error = exc
            log.error("flow %s: source failed: %s", self.flow.name, exc)
        finally:
            self._source_done.set()

    @property
    def source_error(self) -> BaseException | None:
        return self._source_error

    async def _worker(self) -> None:
        while True:
            items = await self._queue.get()
            if items is None:
                self._queue.task_done()
                return
            self._seq += 1
            seq = self._seq
            self._inflight[seq] = items
            try:
                if isinstance(items, RawBatch):
                    await self._process_raw(seq, items)
                else:
                    await self._process(seq, items)
            except asyncio.CancelledError:
                await _give_back(self._inflight.get(seq, items))
                raise
            except Exception:
                log.exception("flow %s: batch failed unexpectedly; giving it back", self.flow.name)
                await _give_back(self._inflight.get(seq, items), force=True)
            finally:
                self._inflight.pop(seq, None)
                self._queue.task_done()

    async def _forward_loop(self) -> None:
        """Publish dead letters to the flow's DLQ destination once they are safe in the store."""
        assert self.dlq_guard is not None
        guard = self.dlq_guard
        while not self._stopping:
            try:
                dead = await self.store.to_forward(self.flow.name, self.settings.batch_size)
            except Exception:
                log.exception("flow %s: reading dead letters to forward failed", self.flow.name)
                dead = []
            if (dead and _DLQ in self._unopened and self.dlq_sink is not None
                    and await self._open_sink(_DLQ, self.dlq_sink) is not None):
                dead = []  # still unreachable: they stay in the store; try again later
            if dead:
                msgs = [_dead_letter_message(d) for d in dead]
                done: list[str] = []
                try:
                    await guard.write(msgs)
                    done = [d.dlq_id for d in dead]
                except BatchError as be:
                    done = [d.dlq_id for i, d in enumerate(dead) if i not in be.errors]
                except Exception as exc:
                    log.warning("flow %s: publishing %d dead letter(s) failed, will retry: %s",
                                self.flow.name, len(dead), _text(exc))
                if done:
                    await self.store.mark_forwarded(done)
                if len(done) == len(dead):
                    continue
                self._forward_pending = False  # failing: the store keeps them; try again later
            else:
                self._forward_pending = False
            self._forward_wake.clear()
            sleeper = asyncio.ensure_future(self.clock.sleep(self.forward_interval))
            waker = asyncio.ensure_future(self._forward_wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
            self._forward_pending = True

    async def _tick_loop(self, indexes: list[int]) -> None:
        """Give steps that hold messages (resequence, aggregate) a chance to release them."""
        while not self._stopping:
            now = self.clock.now()
            for i in indexes:
                try:
                    released = list(await self.steps[i].tick(now))
                except Exception:
                    log.exception("flow %s: step %s tick failed", self.flow.name, self.steps[i].label)
                    continue
                if released:
                    work = [_Work(m, original=m.to_record(), resume=i + 1, first_at=now) for m in released]
                    self._retries_inflight += len(work)
                    await self._queue.put(work)
            await self.clock.sleep(self.tick_interval)

    async def _retry_loop(self) -> None:
        flows = [self.flow.name]
        while not self._stopping:
            now = self.clock.now()
            due = await self.store.due_retries(flows, now, self.settings.batch_size, self.retry_lease)
            if due:
                work = []
                for r in due:
                    msg = Message.from_record(r.message)
                    msg.attempt = r.attempt
                    work.append(
                        _Work(
                            msg,
                            original=r.original,
                            resume=r.resume,
                            pending=r.pending_sinks,
                            attempt=r.attempt,
                            history=r.history,
                            first_at=r.first_at,
                            rid=r.rid,
                        )
                    )
                self._retries_inflight += len(work)
                await self._queue.put(work)
                continue
            nxt = await self.store.next_retry_at(flows)
            # the clock read again: it may have moved while the store answered
            wait = self.retry_poll if nxt is None else max(0.0, min(self.retry_poll, nxt - self.clock.now()))
            self._retry_wake.clear()
            sleeper = asyncio.ensure_future(self.clock.sleep(wait))
            waker = asyncio.ensure_future(self._retry_wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()

    # -- the pipeline ----------------------------------------------------------------------
    async def _process(self, seq: int, items: list[_Work]) -> None:
        flow = self.flow.name
        journal: list[Any] = []
        hops = self._journal == "hops"
        edges = self._journal != "off"
        batch = Batch(journal=journal)
        units: list[_Unit] = []
        now = self.clock.now()
        all_sinks = list(self.sinks)
        nsteps = len(self.steps)
        steps = self.steps

        # each message goes through the steps in batch order; a step sees the whole batch before the
        # next step does, so a call step can have several of its requests in flight at once
        live: list[tuple[_Work, Message, str | None]] = []
        max_resume = 0
        for n_item, w in enumerate(items):
            if n_item & 255 == 255:
                # let I/O callbacks (a producer's delivery reports, heartbeats) run between long stretches
                await asyncio.sleep(0)
            m = w.message
            last_digest: str | None = None
            if w.original is None:
                # the record of the original is made only if the message fails
                w.original = m
                if edges:
                    last_digest = _digest(m)
                    journal.append((now, flow, m.id, m.correlation_id, "source", "received", 0, last_digest, None))
            elif edges:
                journal.append((now, flow, m.id, m.correlation_id, "retry", f"attempt {w.attempt + 1}", 0, None,
                                None))
            if w.resume < 0:
                assert w.delivery is not None and w.delivery.error is not None
                self._fail(batch, w, m, 0, "source", w.delivery.error, now, pending=None, force_dead=True)
                continue
            if w.resume > max_resume:
                max_resume = w.resume
            live.append((w, m, last_digest))

        for si in range(nsteps):
            if not live:
                break
            st = steps[si]
            # messages of retries that resume further on skip the steps they already passed
            todo = live if si >= max_resume else [x for x in live if x[0].resume <= si]
            if not todo:
                continue
            results, durations = await self._run_step(st, [x[1] for x in todo])
            nxt: list[tuple[_Work, Message, str | None]] = []
            k = 0
            for x in live:
                w, cur, last_digest = x
                if w.resume > si:
                    nxt.append(x)
                    continue
                r = results[k]
                dur = durations[k]
                k += 1
                if isinstance(r, BaseException):
                    if isinstance(r, Defer):
                        self._defer(batch, w, r.message or cur, si if r.rerun else si + 1, st.label, r, now)
                    elif isinstance(r, Drop):
                        if hops:
                            journal.append((now, flow, cur.id, cur.correlation_id, st.label, "dropped", 0, None,
                                            r.reason))
                        _settle(batch, cur, delivered=False)
                        self.stats.filtered += 1
                    elif isinstance(r, Held):
                        if hops:
                            journal.append((now, flow, cur.id, cur.correlation_id, st.label, "held", 0, None,
                                            r.reason))
                        self.stats.held += 1
                    else:
                        self._fail(batch, w, cur, si, st.label, r, now, pending=None)
                elif r is None:
                    if hops:
                        journal.append((now, flow, cur.id, cur.correlation_id, st.label, "filtered", dur, None,
                                        None))
                    _settle(batch, cur, delivered=False)
                    self.stats.filtered += 1
                elif isinstance(r, Message):
                    if hops:
                        if r is not cur or last_digest is None:
                            last_digest = _digest(r)
                        journal.append((now, flow, r.id, r.correlation_id, st.label, "ok", dur, last_digest, None))
                    nxt.append((w, r, last_digest))
                else:
                    for y in r:
                        dg = _digest(y) if hops else None
                        if hops:
                            journal.append((now, flow, y.id, y.correlation_id, st.label, "ok", dur, dg, None))
                        nxt.append((w, y, dg))
            live = nxt

        for w, cur, _dg in live:
            targets = all_sinks if cur.route is None else [s for s in cur.route if s in self.sinks]
            if w.pending is not None:
                targets = [s for s in targets if s in w.pending]
            if not targets:
                if hops:
                    journal.append((now, flow, cur.id, cur.correlation_id, "route", "no-target", 0, None, None))
                self.stats.filtered += 1
                continue
            units.append(_Unit(w, cur, targets))

        # sinks, in batch order per sink
        by_sink: dict[str, list[_Unit]] = {}
        for u in units:
            if u.message.is_decoded and not _encodable(u.message):
                bad = FatalError(
                    "the body cannot be encoded (not JSON-compatible data)", code="encode.body"
                )
                for s in u.targets:
                    u.failed[s] = bad
                continue
            for s in u.targets:
                by_sink.setdefault(s, []).append(u)
        if by_sink:
            await asyncio.gather(*(self._write(seq, label, us) for label, us in by_sink.items()))
        for label, sk in self.sinks.items():
            if label not in by_sink and sk.ordered:
                await self._advance_turn(label, seq)

        done_at = self.clock.now()
        for u in units:
            m = u.message
            _settle(batch, m, delivered=not u.failed)
            delivered = [s for s in u.targets if s not in u.failed]
            if edges and delivered:
                dg = _digest(m)
                for s in delivered:
                    journal.append((done_at, flow, m.id, m.correlation_id, s, "delivered", 0, dg, None))
            if not u.failed:
                self.stats.delivered += 1
                continue
            retryable = {s: e for s, e in u.failed.items() if self._retryable(e)}
            fatal = {s: e for s, e in u.failed.items() if s not in retryable}
            if edges:
                for s, e in u.failed.items():
                    detail = f"{_code(e)}: {_text(e)}"
                    journal.append((done_at, flow, m.id, m.correlation_id, s, "failed", 0, None, detail))
            if retryable:
                s0, e0 = next(iter(retryable.items()))
                self._fail(batch, u.work, m, nsteps, s0, e0, done_at, pending=list(retryable), policy_sink=s0)
            if fatal:
                s0, e0 = next(iter(fatal.items()))
                self._fail(batch, u.work, m, nsteps, s0, e0, done_at, pending=list(fatal), force_dead=True)

        # a retry row is done unless this batch scheduled it again (under the same id)
        rescheduled = {r.rid for r in batch.retries} if batch.retries else ()
        for w in items:
            if w.rid is not None and w.rid not in rescheduled:
                batch.retries_done.append(w.rid)
        batch.retries_done = list(dict.fromkeys(batch.retries_done))

        await self.store.commit(batch)
        acked = False
        for w in items:
            dlv = w.delivery
            if dlv is not None:
                w.settled = True
                pending_ack = dlv.ack()
                if pending_ack is not None:
                    await pending_ack
                acked = True
            else:
                self._retries_inflight -= 1
        if acked and self.source is not None:
            await self.source.commit_acks()
        if batch.retries:
            self._retry_wake.set()
        if batch.dead and self.dlq_guard is not None:
            self._forward_pending = True
            self._forward_wake.set()

    async def _process_raw(self, seq: int, rb: RawBatch) -> None:
        """A raw batch: a worker process runs the steps; the engine writes, journals and acknowledges.

        Whenever no worker answers with the whole batch done (a record that does not decode or
        that a step refuses, a worker that died) or the sink refuses the lines, the batch runs
        the usual way, from its original lines, so every record ends where it would have anyway.
        """
        now = self.clock.now()
        answer = None
        if rb.data is not None and self._lanes is not None:
            answer = await self._lanes.run(rb.request(now))
            if answer is not None and answer[0] != "ok":
                where = f"from record {rb.first_record}" if rb.kind == "lines" else f"of {rb.count} record(s)"
                log.debug("flow %s: batch %s runs in the engine: %s", self.flow.name, where, answer[1])
                answer = None
        if answer is not None:
            _, records, n_out, out_data, journal, keys, filtered, kept = answer
            label = next(iter(self.sinks))
            refused = await self._write_lines(seq, label, out_data, n_out)
            if refused is None:
                await self._settle_raw([rb.ack], now, records, journal, keys, n_out, filtered)
                return
            if isinstance(refused, BatchError) and kept is not None and len(refused.errors) < n_out:
                # the sink took the others: only the failed records run again, the usual way
                await self._process_failed_raw(seq, rb, now, answer, {kept[i] for i in refused.errors})
                return
        await self._run_in_engine(seq, now, rb.expand())

    async def _run_in_engine(self, seq: int, now: float, deliveries: list[Delivery]) -> None:
        items = [_Work(d.message, delivery=d, first_at=now, resume=-1 if d.error is not None else 0)
                 for d in deliveries]
        self._inflight[seq] = items
        await self._process(seq, items)

    async def _settle_raw(self, acks: list[Any], now: float, records: int, journal: bytes, keys: str,
                          delivered: int, filtered: int) -> None:
        """What a worker did of a batch is written: journal it, then acknowledge it (``acks``)."""
        batch = Batch()
        if journal:
            batch.journal_packed.append((now, self.flow.name, records, journal, keys, self.clock.now()))
        await self.store.commit(batch)
        for ack in acks:
            await _call(ack)
        if self.source is not None:
            await self.source.commit_acks()
        self.stats.delivered += delivered
        self.stats.filtered += filtered

    async def _process_failed_raw(self, seq: int, rb: RawBatch, now: float, answer: list[Any],
                                  failed: set[int]) -> None:
        """The sink refused some records of a worker's batch (by input index ``failed``): the others are
        journalled and acknowledged as the worker did them; the failed ones run again in the engine,
        from the start (retried or dead-lettered as any message is)."""
        import msgspec

        from seamline.store.base import key_token

        _, records, n_out, _, journal, _, filtered, _ = answer
        deliveries = rb.expand()
        keys = ""
        if journal:
            entries = [e for i, e in enumerate(msgspec.msgpack.decode(journal)) if i not in failed]
            tokens: dict[str, None] = {}
            for mid, corr, _hops in entries:
                tokens[mid] = None
                if corr is not None:
                    tokens[corr] = None
            journal = msgspec.msgpack.encode(entries) if entries else b""
            keys = " ".join(map(key_token, tokens))
            records = len(entries)
        done = [d.ack for i, d in enumerate(deliveries) if i not in failed]
        await self._settle_raw(done, now, records, journal, keys, n_out - len(failed), filtered)
        await self._run_in_engine(seq, now, [d for i, d in enumerate(deliveries) if i in failed])

    async def _write_lines(self, seq: int, label: str, data: Any, count: int) -> BaseException | None:
        """Write a worker's output to the sink in batch order (NDJSON lines, or what the sink's
        ``lane_encoder`` made); the error when the sink refused it. A pipelined sink is handed the
        batch in turn and confirms it after the turn passed on."""
        sink = self.sinks[label]
        if count == 0:
            if sink.ordered:
                await self._advance_turn(label, seq)
            return None
        if label in self._unopened:
            if sink.ordered:
                await self._advance_turn(label, seq)
            return self._unopened[label]
        guard = self.guards[label]
        confirms: list[Callable[[], Awaitable[None]]] = []

        async def write() -> None:
            if sink.lane_encoder() is None:
                await guard.write_lines(data, count)
            else:
                confirms.append(await guard.submit_encoded(data, count))

        try:
            await self._in_turn(seq, label, write)
            if confirms:
                await confirms[0]()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            what = _code(exc)
            if isinstance(exc, BatchError) and exc.errors:
                what = f"{len(exc.errors)} of {count} record(s), {_code(next(iter(exc.errors.values())))}"
            log.info("flow %s: sink %s refused a batch a worker encoded (%s); it runs the usual way",
                     self.flow.name, label, what)
            return exc
        return None

    async def _run_step(self, st: Step, msgs: list[Message]) -> tuple[list[Any], list[int]]:
        """Run one step over messages in batch order: ``(results, durations in µs)``, where a result
        is what the step returned or the exception it raised.

        An async step with ``max_in_flight`` > 1 (a call step) has that many messages in work at
        once; its results still come back in batch order.
        """
        n = len(msgs)
        results: list[Any] = [None] * n
        durations = [0] * n
        clock = time.perf_counter_ns
        if st.is_async and st.max_in_flight > 1 and n > 1:
            pending = iter(range(n))
            call = st.process_async

            async def worker() -> None:
                for i in pending:
                    t0 = clock()
                    try:
                        results[i] = await call(msgs[i])
                    except Exception as exc:
                        results[i] = exc
                        continue
                    durations[i] = (clock() - t0) // 1000

            await asyncio.gather(*(worker() for _ in range(min(st.max_in_flight, n))))
            return results, durations
        is_async = st.is_async
        for i in range(n):
            if i & 255 == 255:
                await asyncio.sleep(0)
            t0 = clock()
            try:
                results[i] = await st.process_async(msgs[i]) if is_async else st.process(msgs[i])
            except Exception as exc:
                results[i] = exc
                continue
            durations[i] = (clock() - t0) // 1000
        return results, durations

    def _fail(
        self,
        batch: Batch,
        w: _Work,
        m: Message,
        resume: int,
        where: str,
        exc: BaseException,
        now: float,
        *,
        pending: list[str] | None,
        policy_sink: str | None = None,
        force_dead: bool = False,
    ) -> None:
        flow = self.flow.name
        _settle(batch, m, delivered=False)
        attempts = w.attempt + 1
        record = {"at": now, "attempt": attempts, "step": where, "code": _code(exc), "error": _text(exc)[:500]}
        history = [*w.history, record]
        retry_after = getattr(exc, "retry_after", None)
        if policy_sink:
            policy = self.sink_policies.get(policy_sink, self.policy)
        else:
            policy = self.step_policies.get(where, self.policy)
        if not force_dead and self._retryable(exc):
            delay = policy.delay(attempts, retry_after=retry_after)
            if not policy.gives_up(attempts, first_attempt_at=w.first_at or now, now=now, next_delay=delay):
                reuse = w.rid is not None and all(r.rid != w.rid for r in batch.retries)
                rid = w.rid if (reuse and w.rid is not None) else f"{flow}:{m.id}:{uuid.uuid4().hex[:12]}"
                batch.retries.append(
                    RetryEntry(
                        rid=rid, flow=flow, msg_id=m.id, due_at=now + delay, attempt=attempts, resume=resume,
                        pending_sinks=pending, message=m.to_record(), original=_record(w.original, m),
                        history=history, first_at=w.first_at or now,
                    )
                )
                if self._journal != "off":
                    batch.journal.append((now, flow, m.id, m.correlation_id, where, "retry-scheduled", 0, None,
                                          f"{_code(exc)}: attempt {attempts}, next in {delay:.3f}s"))
                self.stats.retried += 1
                return
            reason = f"retries exhausted after {attempts} attempt(s): {_text(exc)}"
        else:
            reason = _text(exc)
        dlq_id = uuid.uuid4().hex
        batch.dead.append(
            DeadLetter(
                dlq_id=dlq_id, flow=flow, msg_id=m.id, correlation_id=m.correlation_id, step=where,
                error_code=_code(exc), error_class="retryable" if self._retryable(exc) else "fatal",
                error_message=reason[:2000], error_chain=_error_chain(exc), attempts=attempts, history=history,
                original=_record(w.original, m), current=m.to_record(), resume=resume,
                pending_sinks=pending, first_failed_at=(w.history[0]["at"] if w.history else now), dead_at=now,
            )
        )
        if self._journal != "off":
            batch.journal.append((now, flow, m.id, m.correlation_id, where, "dead-lettered", 0, None,
                                  f"{_code(exc)}: {reason[:300]}"))
        self.stats.dead += 1
        self.stats.dead_reasons.append((m.id, where, f"{_code(exc)}: {reason[:200]}"))

    def _retryable(self, exc: BaseException) -> bool:
        """The error's own verdict, unless the flow's ``on_error.classify`` says otherwise."""
        ov = self._overrides
        if ov:
            code = _code(exc)
            verdict = ov.get(code) or ov.get(type(exc).__name__)
            if verdict is None:
                for pattern, v in ov.items():
                    if pattern.endswith("*") and code.startswith(pattern[:-1]):
                        verdict = v
                        break
            if verdict is not None:
                return verdict == "retryable"
        return classify(exc)

    def _defer(self, batch: Batch, w: _Work, m: Message, resume: int, where: str, d: Defer, now: float) -> None:
        """Continue ``m`` at step ``resume`` when ``d.until`` comes; the store holds it meanwhile."""
        flow = self.flow.name
        reuse = w.rid is not None and all(r.rid != w.rid for r in batch.retries)
        rid = w.rid if (reuse and w.rid is not None) else f"{flow}:{m.id}:{uuid.uuid4().hex[:12]}"
        batch.retries.append(
            RetryEntry(
                rid=rid, flow=flow, msg_id=m.id, due_at=d.until, attempt=w.attempt, resume=resume,
                pending_sinks=w.pending, message=m.to_record(), original=_record(w.original, m),
                history=w.history, first_at=w.first_at or now, origin="defer",
            )
        )
        if self._journal != "off":
            batch.journal.append((now, flow, m.id, m.correlation_id, where, "deferred", 0, None,
                                  f"until {d.until:.3f}: {d.reason}" if d.reason else f"until {d.until:.3f}"))
        self.stats.deferred += 1

    async def _advance_turn(self, label: str, seq: int) -> None:
        async with self._turn_changed:
            await self._turn_changed.wait_for(lambda: self._sink_turn[label] >= seq - 1)
            self._sink_turn[label] = max(self._sink_turn[label], seq)
            self._turn_changed.notify_all()

    async def _write(self, seq: int, label: str, units: list[_Unit]) -> None:
        sink = self.sinks[label]
        if not sink.pipelined:
            await self._in_turn(seq, label, lambda: self._write_batch(sink, label, units))
            return
        # the batch is handed over in turn; its confirmation is awaited after the turn passed on,
        # so the next batch is handed over meanwhile
        confirms: list[Callable[[], Awaitable[None]]] = []

        async def hand_over() -> None:
            confirm = await self._submit_batch(sink, label, units)
            if confirm is not None:
                confirms.append(confirm)

        await self._in_turn(seq, label, hand_over)
        if confirms:
            try:
                await confirms[0]()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                _failed(label, units, exc)

    async def _submit_batch(self, sink: Sink, label: str, units: list[_Unit]) -> Callable[[], Awaitable[None]] | None:
        """Hand a batch to a pipelined sink; the wait for its confirmation, or None when it already failed."""
        if not await self._sink_open(sink, label, units):
            return None
        try:
            return await self.guards[label].submit([u.message for u in units])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _failed(label, units, exc)
            return None

    async def _in_turn(self, seq: int, label: str, write: Callable[[], Awaitable[None]]) -> None:
        """Run ``write`` for batch ``seq`` after the sink has taken every earlier batch (an unordered
        sink takes it at once, while earlier batches are still being written)."""
        if not self.sinks[label].ordered:
            await write()
            return
        async with self._turn_changed:
            await self._turn_changed.wait_for(lambda: self._sink_turn[label] >= seq - 1)
        try:
            await write()
        finally:
            async with self._turn_changed:
                # never back: a batch written a second time (a worker's output the sink refused, then
                # the usual way) comes after its turn has passed
                self._sink_turn[label] = max(self._sink_turn[label], seq)
                self._turn_changed.notify_all()

    async def _sink_open(self, sink: Sink, label: str, units: list[_Unit]) -> bool:
        """True when the sink is open (opened now if it was unreachable); else its error is recorded."""
        if label in self._unopened:
            err = await self._open_sink(label, sink)
            if err is not None:
                _failed(label, units, err)
                return False
        return True

    async def _write_batch(self, sink: Sink, label: str, units: list[_Unit]) -> None:
        if not await self._sink_open(sink, label, units):
            return
        guard = self.guards[label]
        try:
            await guard.write([u.message for u in units])
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, BatchError) or not (sink.atomic_batches and len(units) > 1):
                _failed(label, units, exc)
                return
            for u in units:
                try:
                    await guard.write([u.message])
                except asyncio.CancelledError:
                    raise
                except Exception as one:
                    u.failed[label] = one

    # -- lifecycle helpers --------------------------------------------------------------------
    def busy(self) -> bool:
        return bool(self._inflight) or not self._queue.empty() or self._retries_inflight > 0

    async def wait_idle(self, horizon: float) -> None:
        """Return once the source is drained, nothing is in flight and no retry is due within ``horizon``."""
        await self._source_done.wait()
        while True:
            await self._queue.join()
            if self.busy():
                await asyncio.sleep(0.01)
                continue
            nxt = await self.store.next_retry_at([self.flow.name])
            for st in self.steps:
                due = st.next_due()
                if due is not None and (nxt is None or due < nxt):
                    nxt = due
            now = self.clock.now()
            forwarding = self._forward_task is not None and self._forward_pending
            if (nxt is None or nxt > now + horizon) and not self.busy() and not forwarding:
                return
            await asyncio.sleep(min(0.05, self.retry_poll))

    async def abort(self) -> None:
        """Cancel every task of this flow at once (the engine is being torn down without a drain)."""
        self._stopping = True
        if self._lanes is not None:
            self._lanes.drain()
        tasks = [t for t in (self._source_task, self._tick_task, self._forward_task, *self._tasks) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks.clear()

    async def stop(self, timeout: float | None = None) -> None:
        """Stop intake, drain in-flight work up to ``timeout``, give back the rest."""
        self._stopping = True
        if self._lanes is not None:
            self._lanes.drain()
        timeout = self.settings.drain_timeout if timeout is None else timeout
        if self._source_task is not None and not self._source_task.done():
            self._source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._source_task
        for extra in (self._forward_task,):
            if extra is not None:
                extra.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await extra
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._tick_task
        # the retry loop only feeds the queue: stop it first
        retry_task = self._tasks[-1] if self._tasks else None
        if retry_task is not None:
            retry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await retry_task
        workers = self._tasks[:-1]
        # batches not yet started go back to the source now, oldest first, so that
        # nothing later in the stream is confirmed ahead of them
        while not self._queue.empty():
            queued = self._queue.get_nowait()
            self._queue.task_done()
            if queued is not None:
                await _give_back(queued)
        for _ in workers:
            await self._queue.put(None)
        if workers:
            _done, pending = await asyncio.wait(workers, timeout=timeout)
            for t in pending:
                t.cancel()
            for t in pending:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
        # whatever was not finished goes back to the source
        leftovers: list[list[_Work] | RawBatch] = list(self._inflight.values())
        self._inflight.clear()
        while not self._queue.empty():
            queued = self._queue.get_nowait()
            if queued:
                leftovers.append(queued)
        for entry in leftovers:
            await _give_back(entry)
        self._tasks.clear()


def _failed(label: str, units: list[_Unit], exc: BaseException) -> None:
    """Record a sink's failure on the messages it concerns (all of them unless it is a ``BatchError``)."""
    if isinstance(exc, BatchError):
        for i, e in exc.errors.items():
            units[i].failed[label] = e
    else:
        for u in units:
            u.failed[label] = exc


async def _give_back(entry: list[_Work] | RawBatch, *, force: bool = False) -> None:
    """Nack what was not settled (``force``: every delivery, as after an unexpected error)."""
    if isinstance(entry, RawBatch):
        await _call(entry.nack, True)
        return
    for w in entry:
        if w.delivery is not None and (force or not w.settled):
            w.settled = True
            await _call(w.delivery.nack, True)


async def _call(fn: Any, *args: Any) -> None:
    r = fn(*args)
    if inspect.isawaitable(r):
        await r
