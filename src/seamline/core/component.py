"""The three extension points: sources, steps and sinks.

A *source* hands the runtime batches of :class:`Delivery` objects
(message + ack + nack). A *step* turns one message into zero, one or many.
A *sink* writes a batch and either returns (all confirmed) or raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from seamline.core.clock import SYSTEM_CLOCK, Clock
from seamline.core.message import Message

if TYPE_CHECKING:
    from seamline.store.base import Store

__all__ = [
    "FILTERED",
    "BatchError",
    "BuildContext",
    "Defer",
    "Delivery",
    "Drop",
    "Emit",
    "EmitRaw",
    "Held",
    "LaneCodec",
    "RawBatch",
    "Sink",
    "Source",
    "Step",
    "write_each",
]

AckFn = Callable[[], Awaitable[None] | None]
NackFn = Callable[[bool], Awaitable[None] | None]


async def _confirmed() -> None:
    """The confirmation of a batch that is already confirmed."""


def _noop(*_: Any) -> None:
    return None


class Delivery:
    """A message from a source with its acknowledgement callbacks.

    ``ack()`` is called once every sink confirmed the message or it is
    durably in the store (retry schedule or DLQ). ``nack(requeue)`` is called
    when the runtime gives the message back (shutdown) so the source
    redelivers it later.
    """

    __slots__ = ("ack", "error", "message", "nack")

    def __init__(
        self,
        message: Message,
        ack: AckFn = _noop,
        nack: NackFn = _noop,
        error: BaseException | None = None,
    ) -> None:
        self.message = message
        self.ack = ack
        self.nack = nack
        #: set when the source could not decode the input: the message goes to the DLQ at once
        self.error = error


Emit = Callable[[list[Delivery]], Awaitable[None]]

#: what a step's body function returns to filter the message out (see ``Step.body_function``)
FILTERED: Any = type("Filtered", (), {"__repr__": lambda self: "FILTERED"})()


class RawBatch:
    """A batch of records as the source read them, not yet decoded (see ``Source.run_raw``).

    ``kind`` says what ``data`` holds:

    - ``"lines"``: the batch's non-blank NDJSON lines, each ending in a newline, exactly as read;
      ``first_record`` is the record number of the first line, ``name`` the file's name;
    - ``"records"``: the source's own payload (plain lists, bytes and strings), which a worker turns
      into records with the source's ``lane_decoder``.

    ``data`` None: only ``expand`` can handle this batch (e.g. a record over ``max_record_bytes``).
    ``expand()`` turns the batch into the deliveries ``run`` would have emitted for the same records
    (the runtime falls back to it whenever a record needs more than the fast path handles);
    ``ack()`` acknowledges the whole batch at once, and ``nack(requeue)`` gives it back.
    """

    __slots__ = (
        "ack",
        "correlation_field",
        "count",
        "data",
        "expand",
        "first_record",
        "id_field",
        "kind",
        "max_record_bytes",
        "nack",
        "name",
    )

    def __init__(
        self,
        data: Any,
        count: int,
        *,
        expand: Callable[[], list[Delivery]],
        ack: Callable[[], None],
        nack: NackFn = _noop,
        kind: str = "lines",
        first_record: int = 1,
        name: str = "",
        id_field: str | None = None,
        correlation_field: str | None = None,
        max_record_bytes: int = 0,
    ) -> None:
        self.data = data
        self.kind = kind
        self.max_record_bytes = max_record_bytes
        self.count = count
        self.first_record = first_record
        self.name = name
        self.id_field = id_field
        self.correlation_field = correlation_field
        self.expand = expand
        self.ack = ack
        self.nack = nack

    def request(self, now: float) -> list[Any]:
        """What a worker process is sent for this batch (see ``seamline.core.lane_worker``)."""
        if self.kind == "records":
            return ["records", now, self.data]
        return [now, self.first_record, self.name, self.id_field, self.correlation_field,
                self.max_record_bytes, self.data]


#: how a worker process decodes a source's records or encodes a sink's: ``(module, function,
#: settings)``; the worker imports the module and calls ``function(settings, ...)`` (see
#: ``Source.lane_decoder`` and ``Sink.lane_encoder``); settings are plain JSON values
LaneCodec = tuple[str, str, dict[str, Any]]

EmitRaw = Callable[[RawBatch], Awaitable[None]]


@dataclass
class BuildContext:
    """What a component factory may use: where the flow file is, the store, a clock."""

    flow: str
    base_dir: Path
    store: Store
    clock: Clock = SYSTEM_CLOCK
    label: str = ""
    batch_size: int = 500
    #: per-endpoint circuit breakers and rate limiters shared by every flow of the engine
    #: (``seamline.resilience.BreakerRegistry`` / ``RateLimiterRegistry``); sinks that call an
    #: endpoint per message use them directly and set ``Sink.guards_itself = True``
    breakers: Any = None
    limiters: Any = None
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("seamline"))

    def resolve_path(self, path: str | Path) -> Path:
        p = Path(path)
        return p if p.is_absolute() else (self.base_dir / p)


class Source:
    """Base class of sources. Override ``run``; ``finite`` sources end by themselves."""

    finite: ClassVar[bool] = False

    async def open(self) -> None:
        """Connect; called once before ``run``."""

    async def run(self, emit: Emit) -> None:
        """Call ``await emit(batch)`` until exhausted (finite) or cancelled."""
        raise NotImplementedError

    def can_run_raw(self) -> bool:
        """True when ``run_raw`` can hand over this source's records undecoded (the ``workers`` path)."""
        return False

    def lane_decoder(self) -> LaneCodec | None:
        """How a worker decodes this source's ``"records"`` batches: ``function(settings, payload, now)``
        returns ``[(id, correlation id or None, raw bytes, body, meta), ...]`` for the records of
        ``payload``, in order, or raises ``lane_worker.Fallback`` when the batch must run in the
        engine. A worker calls it on a batch's payload a slice (``lane_worker.CHUNK`` records) at
        a time. None: the source hands over NDJSON lines."""
        return None

    async def run_raw(self, emit_raw: EmitRaw) -> None:
        """Like ``run``, but hand over :class:`RawBatch` objects (only when ``can_run_raw``)."""
        raise NotImplementedError

    async def commit_acks(self) -> None:
        """Persist progress after a batch was acknowledged (offsets, checkpoints)."""

    async def close(self) -> None:
        """Release connections; called once, also after errors."""


class Step:
    """Base class of steps. Override ``process`` (sync) or ``process_async``."""

    is_async: ClassVar[bool] = False
    #: messages of a batch an async step has in work at once (set by the runtime from a call
    #: step's ``max_in_flight``); 1 runs them one after the other
    max_in_flight: int = 1
    #: set by the runtime: the step's label and its registered type name
    label: str = ""
    component: str = ""

    def process(self, message: Message) -> Message | Sequence[Message] | None:
        """Return the message (changed or not), several messages, or None to drop it."""
        raise NotImplementedError

    def body_function(self) -> Callable[[Any], Any] | None:
        """For steps that only look at the body and have no effects: a function from body to new
        body (or :data:`FILTERED`) that does what ``process`` does, so that the step can run in a
        worker process (the flow setting ``workers``). None: the step needs the whole message."""
        return None

    async def process_async(self, message: Message) -> Message | Sequence[Message] | None:
        return self.process(message)

    async def open(self) -> None:
        """Prepare resources (connections, caches)."""

    async def tick(self, now: float) -> Sequence[Message]:
        """Called about once a second: messages to release now (e.g. after a timeout)."""
        return ()

    def next_due(self) -> float | None:
        """When ``tick`` will next release something (``--until-idle`` waits for it), or None."""
        return None

    async def close(self) -> None:
        """Release resources."""


class Sink:
    """Base class of sinks. Override ``write``.

    ``write`` returns when every message of the batch is confirmed by the
    target. It raises an exception when the whole batch failed, or
    :class:`BatchError` when only some messages failed.
    ``atomic_batches`` says that a failed batch wrote nothing, so the runtime
    may split it and retry message by message to isolate the bad one.
    """

    atomic_batches: ClassVar[bool] = False
    #: True when the sink applies breaker and rate limit per request itself (e.g. HTTP);
    #: otherwise the runtime applies them around each ``write``
    guards_itself: ClassVar[bool] = False
    #: breaker/rate-limit key, e.g. ``https://api.example.com:443``; default: flow/label
    endpoint: str | None = None
    #: False when the sink does not keep the order of messages anyway (requests in parallel):
    #: then batches may be written while earlier ones are still being written, and the sink
    #: bounds its own in-flight work across batches
    ordered: bool = True
    #: True when the sink takes a batch in two phases (see ``submit``): handing a batch over fixes its
    #: place in the sink's order, and waiting for its confirmation may overlap later batches' hand-over
    pipelined: ClassVar[bool] = False
    #: set by the runtime: the sink's label and its registered type name
    label: str = ""
    component: str = ""

    async def open(self) -> None:
        """Connect."""

    async def write(self, batch: Sequence[Message]) -> None:
        raise NotImplementedError

    async def submit(self, batch: Sequence[Message]) -> Callable[[], Awaitable[None]]:
        """Hand ``batch`` over and return the wait for its confirmation, which returns or raises like
        ``write``. Once ``submit`` returned, a later batch is written after this one (a producer's
        send queue keeps that order) while this one is still being confirmed. A sink that sets
        ``pipelined`` overrides it; the default writes the whole batch here."""
        await self.write(batch)
        return _confirmed

    def accepts_lines(self) -> bool:
        """True when ``write_lines`` can take a batch as encoded NDJSON lines (the ``workers`` path)."""
        return False

    async def write_lines(self, data: bytes, count: int) -> None:
        """Write ``count`` records given as NDJSON (each line ends in a newline); same contract as
        ``write`` for the whole batch."""
        raise NotImplementedError

    def lane_encoder(self) -> LaneCodec | None:
        """How a worker encodes this sink's records (the ``workers`` path), for sinks that take more
        than NDJSON lines: ``function(settings, outputs)`` gets ``[(encoded body, body, meta), ...]``
        (meta as the source's decoder gave it) and returns the payload for ``submit_encoded`` as a
        list of lists, one item per output in each, or raises ``lane_worker.Fallback``. A worker
        encodes a batch a chunk at a time and joins the chunks' lists one by one. None: the sink
        takes NDJSON lines or cannot use workers."""
        return None

    async def submit_encoded(self, payload: Any, count: int) -> Callable[[], Awaitable[None]]:
        """Hand over ``count`` records a worker encoded (see ``lane_encoder``) and return the wait for
        their confirmation, as ``submit`` does for messages; a failure fails the whole batch."""
        raise NotImplementedError

    async def close(self) -> None:
        """Flush and release."""


class BatchError(Exception):
    """Some messages of a batch failed: ``errors`` maps batch index to the exception."""

    def __init__(self, errors: dict[int, BaseException]) -> None:
        super().__init__(f"{len(errors)} message(s) of the batch failed")
        self.errors = errors


class Defer(Exception):
    """Raised by a step: continue this message later, at ``until`` (Unix seconds).

    The runtime schedules it in the store (so it survives a restart) and
    acknowledges the source. It resumes at the next step, or at this step
    again when ``rerun`` is true. No attempt is counted.
    """

    def __init__(self, until: float, *, message: Message | None = None, rerun: bool = False, reason: str = "") -> None:
        super().__init__(reason or f"deferred until {until}")
        self.until = until
        self.message = message
        self.rerun = rerun
        self.reason = reason


class Held(Exception):
    """Raised by a step that has parked the message in the store (``Store.park``).

    The runtime journals it as held and acknowledges the source: the parked
    row is now the message's custody. The step releases it later by
    returning it (with ``message.custody`` set to the park id) from
    ``process``/``process_async`` or ``tick``; the row is deleted in the same
    transaction that settles the released message.
    """

    def __init__(self, reason: str = "held") -> None:
        super().__init__(reason)
        self.reason = reason


class Drop(Exception):
    """Raised by a step to drop a message on purpose (a duplicate, a stale version), with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def write_each(calls: Iterable[Awaitable[Any]]) -> None:
    """Run one call per message of a batch concurrently; raise :class:`BatchError` naming the failed ones.

    For sinks that talk to their target message by message (SOAP, GraphQL). A cancellation is
    re-raised, never reported as a message failure.
    """
    results = await asyncio.gather(*calls, return_exceptions=True)
    errors: dict[int, BaseException] = {}
    for i, r in enumerate(results):
        if isinstance(r, asyncio.CancelledError):
            raise r
        if isinstance(r, BaseException):
            errors[i] = r
    if errors:
        raise BatchError(errors)
