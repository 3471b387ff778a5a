"""Track acknowledgements that arrive out of order; commit the contiguous prefix."""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["OffsetTracker"]


class OffsetTracker:
    """Positions handed out in order; ``committed`` is the end of the acked prefix.

    ``track(end)`` registers a message that ends at position ``end`` and
    returns its ticket; ``ack(ticket)`` marks it done. ``committed`` only
    moves past a message when it and every earlier one are acked, so a
    restart from ``committed`` re-reads what was in flight and nothing else.
    """

    def __init__(self, start: Any) -> None:
        self._committed = start
        self._pending: deque[list[Any]] = deque()  # [ticket, end, acked]
        self._next = 0
        self._by_ticket: dict[int, list[Any]] = {}
        self.dirty = False

    @property
    def committed(self) -> Any:
        return self._committed

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def track(self, end: Any) -> int:
        t = self._next
        self._next += 1
        entry = [t, end, False]
        self._pending.append(entry)
        self._by_ticket[t] = entry
        return t

    def ack(self, ticket: int) -> None:
        entry = self._by_ticket.pop(ticket, None)
        if entry is None:
            return
        entry[2] = True
        p = self._pending
        while p and p[0][2]:
            self._committed = p.popleft()[1]
            self.dirty = True
