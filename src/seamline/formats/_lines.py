"""Bounded line reading from binary streams, with byte offsets.

Shared by the NDJSON and CSV readers. A line longer than the limit is never
held in memory: it is reported by length and skipped up to its newline.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import IO, NamedTuple, Protocol

__all__ = ["Line", "ReadableBinary", "as_stream", "iter_lines"]

_SKIP_CHUNK = 64 * 1024


class ReadableBinary(Protocol):
    """The part of a binary file object the readers use."""

    def readline(self, size: int = -1, /) -> bytes: ...


class Line(NamedTuple):
    """One physical line: where it starts, its bytes (``None`` when over the limit) and its length."""

    offset: int
    data: bytes | None
    length: int


def as_stream(source: bytes | bytearray | memoryview | ReadableBinary | IO[bytes]) -> ReadableBinary:
    """Wrap bytes in a stream; pass file objects through."""
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(bytes(source))
    if not hasattr(source, "readline"):
        raise TypeError(f"expected bytes or a binary stream with readline(), got {type(source).__name__}")
    return source


def iter_lines(stream: ReadableBinary, *, max_line_bytes: int, start_offset: int = 0) -> Iterator[Line]:
    """Yield the lines of ``stream`` (newline included) with their byte offsets.

    A line longer than ``max_line_bytes`` (newline included) is yielded with
    ``data=None`` after its remainder has been skipped in fixed-size chunks.
    """
    offset = start_offset
    readline = stream.readline
    while True:
        chunk = readline(max_line_bytes + 1)
        if not chunk:
            return
        if not isinstance(chunk, bytes | bytearray):
            raise TypeError("the stream must be opened in binary mode")
        length = len(chunk)
        if length > max_line_bytes:
            while not chunk.endswith(b"\n"):
                chunk = readline(_SKIP_CHUNK)
                if not chunk:
                    break
                length += len(chunk)
            yield Line(offset, None, length)
        else:
            yield Line(offset, bytes(chunk), length)
        offset += length
