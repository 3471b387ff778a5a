"""The store interface: durable state of the runtime.

One interface, several implementations (SQLite embedded, PostgreSQL for
scale-out). Everything the delivery contract relies on lives here: the
inbox of push sources, scheduled retries, the dead-letter queue,
idempotency keys, checkpoints, the journal and the audit log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Batch",
    "DeadLetter",
    "DlqFilter",
    "InboxItem",
    "JournalEntry",
    "PackedJournal",
    "RetryEntry",
    "Store",
    "key_token",
]

# (ts, flow, msg_id, correlation_id, step, outcome, duration_us, digest, detail)
JournalRow = tuple[float, str, str, str, str, str, int, str | None, str | None]

#: a batch's journal already packed (a worker process did it): (first ts, flow, messages, entries
#: as msgpack of ``(message id, correlation id or None, hops)``, index document of the ids, done at);
#: a hop whose time is None took place at ``done at`` (the sink confirmed after the packing)
PackedJournal = tuple[float, str, int, bytes, str, float | None]


def key_token(key: str) -> str:
    """One journal index token per id whatever characters it has: its UTF-8 in hex (a digest if long)."""
    b = key.encode("utf-8", "surrogatepass")
    return b.hex() if len(b) <= 48 else "h" + hashlib.blake2b(b, digest_size=16).hexdigest()


#: a pushed message for ``Store.inbox_accept``: (record, idempotency scope, delivery id, key expires at)
InboxItem = tuple[dict[str, Any], str | None, str | None, float]


@dataclass
class JournalEntry:
    seq: int
    ts: float
    flow: str
    msg_id: str
    correlation_id: str
    step: str
    outcome: str
    duration_us: int
    digest: str | None
    detail: str | None


@dataclass
class RetryEntry:
    """A message waiting for its next attempt."""

    rid: str
    flow: str
    msg_id: str
    due_at: float
    attempt: int
    resume: int  # index of the step to resume at; len(steps) = sinks
    pending_sinks: list[str] | None  # None = all sinks the message is routed to
    message: dict[str, Any]  # Message.to_record() as it enters ``resume``
    original: dict[str, Any]  # Message.to_record() as the source handed it over
    history: list[dict[str, Any]] = field(default_factory=list)
    first_at: float = 0.0
    origin: str = "retry"  # retry | replay


@dataclass
class DeadLetter:
    dlq_id: str
    flow: str
    msg_id: str
    correlation_id: str
    step: str
    error_code: str
    error_class: str
    error_message: str
    error_chain: list[dict[str, Any]]
    attempts: int
    history: list[dict[str, Any]]
    original: dict[str, Any]
    current: dict[str, Any]
    resume: int
    pending_sinks: list[str] | None
    first_failed_at: float
    dead_at: float
    status: str = "dead"
    replays: int = 0


@dataclass
class DlqFilter:
    flow: str | None = None
    step: str | None = None
    error_class: str | None = None
    error_code: str | None = None
    since: float | None = None
    until: float | None = None
    status: str | None = "dead"
    ids: Sequence[str] | None = None
    limit: int | None = None


@dataclass
class Batch:
    """Everything one processed batch changes, committed in one transaction."""

    journal: list[JournalRow] = field(default_factory=list)
    journal_packed: list[PackedJournal] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    retries: list[RetryEntry] = field(default_factory=list)
    retries_done: list[str] = field(default_factory=list)
    checkpoints: dict[str, Any] = field(default_factory=dict)
    idempotency: list[tuple[str, str, float]] = field(default_factory=list)
    unpark: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (
            self.journal or self.journal_packed or self.dead or self.retries or self.retries_done or self.checkpoints
            or self.idempotency or self.unpark
        )


class Store(Protocol):
    """Durable runtime state. Every method is safe to call from the event loop."""

    url: str

    async def open(self) -> None: ...
    async def close(self) -> None: ...

    # hot path
    async def commit(self, batch: Batch) -> None: ...

    # checkpoints
    async def get_checkpoint(self, scope: str) -> Any: ...
    async def put_checkpoint(self, scope: str, value: Any) -> None: ...

    # retries
    async def due_retries(self, flows: Sequence[str], now: float, limit: int, lease: float) -> list[RetryEntry]: ...
    async def next_retry_at(self, flows: Sequence[str]) -> float | None: ...
    async def count_retries(self, flow: str | None = None) -> int: ...

    # dead letters
    async def list_dead(self, flt: DlqFilter) -> list[DeadLetter]: ...
    async def get_dead(self, dlq_id: str) -> DeadLetter | None: ...
    async def replay_dead(self, dlq_ids: Sequence[str], *, now: float, from_step: bool, actor: str,
                          edited: dict[str, dict[str, Any]] | None = None) -> int: ...
    async def purge_dead(self, dlq_ids: Sequence[str], *, actor: str) -> int: ...
    async def to_forward(self, flow: str, limit: int = 500) -> list[DeadLetter]: ...
    async def mark_forwarded(self, dlq_ids: Sequence[str]) -> None: ...
    async def update_dead_message(self, dlq_id: str, original: dict[str, Any], current: dict[str, Any],
                                  *, actor: str) -> None: ...

    # idempotency
    async def seen(self, scope: str, keys: Sequence[str], now: float) -> set[str]: ...
    async def remember(self, scope: str, keys: Sequence[tuple[str, float]]) -> None: ...

    # inbox (store-and-forward of push sources)
    async def inbox_put(self, flow: str, records: Sequence[dict[str, Any]],
                        idempotency: Sequence[tuple[str, str, float]] = ()) -> None: ...
    async def inbox_accept(
        self,
        flow: str,
        items: Sequence[InboxItem],
        now: float,
        lease_until: float | None = None,
    ) -> list[int | None]:
        """Store each ``(record, scope, key, expires_at)`` unless its key was seen before (and has not
        expired), remembering the key, all in one transaction. Per item: the stored row's ``seq``,
        or None for a duplicate. With ``lease_until`` the rows are stored already taken (leased)
        by the caller, who hands them on itself."""
        ...
    async def inbox_take(self, flow: str, limit: int, now: float, lease: float) -> list[tuple[int, dict[str, Any]]]: ...
    async def inbox_done(self, seqs: Sequence[int]) -> None: ...
    async def inbox_release(self, seqs: Sequence[int]) -> None: ...

    # parked messages (held by a step, e.g. resequence)
    async def park(self, scope: str, rows: Sequence[tuple[str, str, float, dict[str, Any]]]) -> None: ...
    async def parked(self, scope: str) -> list[tuple[str, str, float, dict[str, Any]]]: ...

    # journal and audit
    async def trace(self, any_id: str) -> list[JournalEntry]: ...
    async def audit(self, action: str, actor: str, detail: dict[str, Any]) -> None: ...
    async def audit_log(self, limit: int = 100) -> list[dict[str, Any]]: ...
