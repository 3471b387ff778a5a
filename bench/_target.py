"""The HTTP target of the benchmarks: a minimal HTTP/1.1 keep-alive responder on raw asyncio.

It answers 201 to every POST, counts them, and serves ``GET /count`` and ``POST /reset``.
It is written on raw asyncio so that the target is not the bottleneck and takes as little
of the machine's CPU as it can: what a benchmark compares is what each side under test
spends per request, not how fast a Python web framework answers.
"""

from __future__ import annotations

import asyncio

__all__ = ["serve"]


def serve(port: int) -> None:
    """Serve on 127.0.0.1:``port`` until killed."""
    count = 0
    ok = (b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
          b'{"ok":true}')

    def answer(body: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body)

    class Target(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t: asyncio.Transport = transport  # type: ignore[assignment]
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            nonlocal count
            buf = self.buf + data
            out = []
            while True:
                head_end = buf.find(b"\r\n\r\n")
                if head_end < 0:
                    break
                head = buf[:head_end].lower()
                length = 0
                at = head.find(b"\r\ncontent-length:")
                if at >= 0:
                    eol = head.find(b"\r\n", at + 2)
                    length = int(head[at + 17:eol if eol >= 0 else len(head)])
                total = head_end + 4 + length
                if len(buf) < total:
                    break
                if head.startswith(b"get /count"):
                    out.append(answer(b'{"count":%d}' % count))
                elif head.startswith(b"post /reset"):
                    count = 0
                    out.append(answer(b'{"ok":true}'))
                else:
                    count += 1
                    out.append(ok)
                buf = buf[total:]
            self.buf = buf
            if out:
                self.t.write(b"".join(out))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Target, "127.0.0.1", port, backlog=256)
        async with server:
            await server.serve_forever()

    asyncio.run(main())
