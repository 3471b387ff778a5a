"""The ``http`` sink and call step."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from seamline.connectors.http._client import HttpClient, Template, encode_body
from seamline.connectors.http._config import HttpCallConfig, HttpSinkConfig
from seamline.core.component import BatchError, BuildContext, Sink, Step
from seamline.core.message import Message
from seamline.resilience.http_classify import endpoint_key

__all__ = ["HttpCallStep", "HttpSink"]


class _Request:
    """Templates of one configured request (URL, headers, query, body)."""

    def __init__(self, cfg: Any) -> None:
        from seamline.mapping import compile as compile_expr
        from seamline.security.secrets import Secret

        self.url = Template(cfg.url, url_encode=True)
        self.headers: list[tuple[str, Template | str]] = []
        for name, value in cfg.headers.items():
            if isinstance(value, Secret):
                self.headers.append((name, value.reveal()))  # a secret is sent as it is, never templated
            else:
                t = Template(value)
                self.headers.append((name, t.source if t.static else t))
        self.params = [(k, Template(v)) for k, v in cfg.params.items()]
        self.body = compile_expr(cfg.body) if cfg.body else None
        self.body_format = cfg.body_format
        self.static = (
            self.url.static
            and all(isinstance(v, str) for _, v in self.headers)
            and all(t.static for _, t in self.params)
            and self.body is None
        )
        self.static_headers = {k: v for k, v in self.headers if isinstance(v, str)}
        #: the endpoint key when the scheme and host are not templated
        try:
            self.endpoint: str | None = endpoint_key(self.url.render({})) if self.url.static else None
        except ValueError:
            self.endpoint = None

    def release(self) -> None:
        """Drop the compiled expressions now, on the loop's thread (not in a cyclic GC pass elsewhere)."""
        self.headers = [(k, v) for k, v in self.headers if isinstance(v, str)]
        self.params = []
        self.body = None
        self.url = Template(self.url.source if self.url.static else "http://closed.invalid/")

    def context(self, m: Message) -> dict[str, Any]:
        return {"body": m.body, "headers": m.headers, "id": m.id, "correlation_id": m.correlation_id}

    def build(self, ctx: dict[str, Any] | None) -> tuple[str, dict[str, str], list[tuple[str, str]]]:
        headers = {k: (v if isinstance(v, str) else v.render(ctx)) for k, v in self.headers}
        params = [(k, t.render(ctx)) for k, t in self.params]
        return self.url.render(ctx), headers, params


class HttpSink(Sink):
    """POST/PUT/PATCH/DELETE each message; partial failures are reported per message."""

    guards_itself = True

    def __init__(self, cfg: HttpSinkConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.client = HttpClient(cfg, ctx)
        self.req = _Request(cfg)
        self.endpoint = self.req.endpoint
        self.method = cfg.method
        self.idem = cfg.idempotency_header
        self.max_in_flight = cfg.max_in_flight
        # requests in parallel keep no order anyway: let batches overlap, bounded by one
        # in-flight limit for the whole sink (not one per batch)
        self.ordered = cfg.max_in_flight <= 1
        self._slots: asyncio.Semaphore | None = None
        self._static_url = self.req.url.render(None) if self.req.url.static else None

    async def open(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        await self.client.close()
        self.req.release()

    async def _send(self, m: Message) -> None:
        req = self.req
        if req.static:
            url = self._static_url
            headers = dict(req.static_headers)
            params = [(k, t.render(None)) for k, t in req.params] if req.params else None
        else:
            c = req.context(m)
            url, headers, plist = req.build(c)
            params = plist or None
        assert url is not None
        if req.body is not None:
            body, ctype = encode_body(req.body.evaluate(req.context(m)), req.body_format)
        else:
            body, ctype = m.raw, m.content_type
        headers.setdefault("Content-Type", ctype)
        if self.idem:
            headers[self.idem] = m.id
        await self.client.send(self.method, url, headers=headers, params=params, body=body,
                               read_limit=min(65536, self.client.max_response), truncate=True,
                               follow_redirects=self.cfg.follow_redirects)

    async def write(self, batch: Sequence[Message]) -> None:
        errors: dict[int, BaseException] = {}
        items = iter(enumerate(batch))

        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        slots = self._slots

        async def worker() -> None:
            for i, m in items:
                try:
                    async with slots:
                        await self._send(m)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    errors[i] = exc

        n = min(self.max_in_flight, len(batch))
        if n <= 1:
            await worker()
        else:
            await asyncio.gather(*(worker() for _ in range(n)))
        if errors:
            raise BatchError(errors)

    def __repr__(self) -> str:
        return f"HttpSink({self.method} {self.req.url.source!r})"


class HttpCallStep(Step):
    """Call an endpoint per message and merge the answer into the message."""

    is_async = True

    def __init__(self, cfg: HttpCallConfig, ctx: BuildContext) -> None:
        from seamline.mapping import compile as compile_expr

        self.cfg = cfg
        self.client = HttpClient(cfg, ctx)
        self.req = _Request(cfg)
        self.merge = compile_expr(cfg.merge) if cfg.merge else None

    async def open(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        await self.client.close()
        self.req.release()
        self.merge = None

    async def process_async(self, message: Message) -> Message:
        req = self.req
        c = req.context(message)
        url, headers, params = req.build(c)
        body: bytes | None = None
        if req.body is not None:
            body, ctype = encode_body(req.body.evaluate(c), req.body_format)
            headers.setdefault("Content-Type", ctype)
        headers.setdefault("Accept", "application/json")
        resp = await self.client.send(self.cfg.method, url, headers=headers, params=params or None, body=body,
                                      follow_redirects=self.cfg.follow_redirects)
        parsed = resp.parsed(self.cfg.response_format)
        if self.merge is None:
            return message.evolve(parsed)
        view = {**c, "response": {"status": resp.status, "headers": resp.header_dict(), "body": parsed}}
        return message.evolve(self.merge.evaluate(view))

    def __repr__(self) -> str:
        return f"HttpCallStep({self.cfg.method} {self.req.url.source!r})"
