"""Track acknowledgements that arrive out of order; commit the contiguous prefix."""

from __future__ import annotations

from collections import deque
from typing import Any

__all__ = ["GroupAck", "OffsetTracker"]


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


class GroupAck:
    """One acknowledgement shared by the messages of a group (a batch, or a batch's records of one
    partition): the group's ticket is acked when the last of its ``count`` messages is.

    The runtime acknowledges each delivery exactly once, so a count is enough; a group that
    holds back its ticket until the last message is done only ever commits less than per-message
    tickets would, never more. Call ``seal`` (ticket and count) before handing the messages out.
    """

    __slots__ = ("_remaining", "_ticket", "_tracker")

    def __init__(self, tracker: OffsetTracker) -> None:
        self._tracker = tracker
        self._ticket = -1
        self._remaining = 0

    def seal(self, end: Any, count: int) -> None:
        self._ticket = self._tracker.track(end)
        self._remaining = count

    def __call__(self) -> None:
        self._remaining -= 1
        if self._remaining == 0:
            self._tracker.ack(self._ticket)
