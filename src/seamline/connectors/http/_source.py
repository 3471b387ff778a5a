"""The ``http`` polling source: pages through an API, incrementally by a watermark.

The watermark (the largest value of a record field seen, plus the ids of the
records sitting exactly at that value, so ties are not delivered twice) is a
store checkpoint. It moves only past records that were acknowledged, in
order (:class:`~seamline.connectors.offsets.OffsetTracker`), in
``commit_acks``: a crash re-reads what was in flight and nothing else.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from typing import Any

import orjson

from seamline.connectors.http._client import HttpClient, HttpResponse, Template, render_value
from seamline.connectors.http._config import HttpSourceConfig
from seamline.connectors.offsets import OffsetTracker
from seamline.core.component import BuildContext, Delivery, Emit, Source
from seamline.core.errors import FatalError, RetryableError
from seamline.core.message import Message
from seamline.resilience.http_classify import redact_url
from seamline.resilience.retry import RetryPolicy

__all__ = ["HttpSource", "parse_link_next"]

log = logging.getLogger("seamline.connectors.http")

_LINK = re.compile(r"<([^>]*)>\s*((?:;\s*[^;,]*)*)")
_REL = re.compile(r";\s*rel\s*=\s*(?:\"([^\"]*)\"|([^\s;,]+))", re.I)


def parse_link_next(value: str | None) -> str | None:
    """The ``rel="next"`` target of an RFC 8288 ``Link`` header, or None."""
    if not value or len(value) > 16384:
        return None
    for m in _LINK.finditer(value):
        for rel in _REL.finditer(m.group(2) or ""):
            rels = (rel.group(1) or rel.group(2) or "").lower().split()
            if "next" in rels:
                return m.group(1).strip()
    return None


def _order_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (2, str(value))
    if isinstance(value, int | float):
        return (0, float(value))
    if isinstance(value, str):
        return (1, value)
    return (2, orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode())


def _nack(requeue: bool) -> None:
    """Nothing to do: an unacknowledged record is fetched again after a restart."""


class HttpSource(Source):
    finite = False

    def __init__(self, cfg: HttpSourceConfig, ctx: BuildContext) -> None:
        from seamline.mapping import compile as compile_expr

        self.cfg = cfg
        self.ctx = ctx
        self.clock = ctx.clock
        self.client = HttpClient(cfg, ctx)
        self.url = Template(cfg.url, url_encode=True)
        self.headers = {k: (v.reveal() if not isinstance(v, str) else v) for k, v in cfg.headers.items()}
        self.params = [(k, Template(v)) for k, v in cfg.params.items()]
        self.records = compile_expr(cfg.records) if cfg.records else None
        self.id_expr = compile_expr(cfg.id) if cfg.id else None
        pg = cfg.pagination
        self.cursor_expr = compile_expr(pg.cursor_path) if pg.cursor_path else None
        self.next_expr = compile_expr(pg.next_url_path) if pg.next_url_path else None
        if pg.type == "cursor" and self.cursor_expr is None:
            raise FatalError("pagination type cursor needs cursor_path", code="config.http.pagination")
        if pg.type == "next_url" and self.next_expr is None:
            raise FatalError("pagination type next_url needs next_url_path", code="config.http.pagination")
        wm = cfg.watermark
        self.wm_expr = compile_expr(wm.field) if wm is not None else None
        self.scope = f"http-source:{ctx.flow}"
        self.batch_size = ctx.batch_size
        self._tracker: OffsetTracker | None = None
        self._state: dict[str, Any] = {}
        self._policy = RetryPolicy(max_attempts=cfg.max_attempts, initial=0.5, cap=60.0)
        #: pages fetched so far (tests and metrics)
        self.pages = 0

    async def open(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        try:
            await self.commit_acks()
        finally:
            await self.client.close()
            # compiled expressions are freed here, on the loop's thread, not by a cyclic GC pass elsewhere
            self.records = self.id_expr = self.cursor_expr = self.next_expr = self.wm_expr = None
            self.params = []
            self.url = Template(self.url.source if self.url.static else "http://closed.invalid/")

    async def commit_acks(self) -> None:
        t = self._tracker
        if t is not None and t.dirty:
            t.dirty = False
            await self.ctx.store.put_checkpoint(self.scope, t.committed)

    # -- polling ----------------------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        saved = await self.ctx.store.get_checkpoint(self.scope)
        initial = self.cfg.watermark.initial if self.cfg.watermark is not None else None
        if isinstance(saved, dict) and "watermark" in saved:
            state = {"watermark": saved.get("watermark"), "ids_at": list(saved.get("ids_at") or [])}
        else:
            state = {"watermark": initial, "ids_at": []}
        self._state = state
        self._tracker = OffsetTracker(state)
        while True:
            try:
                await self._poll(emit)
            except (RetryableError, FatalError) as exc:
                if self.cfg.interval is None:
                    raise
                log.error("flow %s: poll of %s failed: %s", self.ctx.flow, redact_url(self.cfg.url), exc)
            if self.cfg.interval is None:
                return
            await self.clock.sleep(self.cfg.interval)

    async def _fetch(self, url: str, params: list[tuple[str, str]]) -> HttpResponse:
        attempt = 0
        while True:
            try:
                resp = await self.client.send(self.cfg.method, url, headers=dict(self.headers), params=params or None,
                                              follow_redirects=self.cfg.follow_redirects)
                self.pages += 1
                return resp
            except RetryableError as exc:
                attempt += 1
                if attempt >= self.cfg.max_attempts:
                    raise
                delay = min(self._policy.delay(attempt, retry_after=exc.retry_after), 300.0)
                log.warning("flow %s: page request failed (%s), attempt %d, next in %.1fs",
                            self.ctx.flow, exc.code, attempt, delay)
                await self.clock.sleep(delay)

    def _records(self, body: Any) -> list[Any]:
        found = self.records.evaluate(body) if self.records is not None else body
        if found is None:
            return []
        return list(found) if isinstance(found, list) else [found]

    def _id(self, rec: Any) -> str:
        if self.id_expr is not None:
            value = self.id_expr.evaluate(rec)
            if value is not None:
                return render_value(value)
        return hashlib.blake2b(orjson.dumps(rec, option=orjson.OPT_SORT_KEYS), digest_size=16).hexdigest()

    async def _poll(self, emit: Emit) -> None:
        cfg, pg = self.cfg, self.cfg.pagination
        assert self._tracker is not None
        tracker = self._tracker
        wm_cfg = cfg.watermark
        start_wm = self._state.get("watermark")
        start_ids = set(self._state.get("ids_at") or [])
        run_wm, run_ids = start_wm, set(start_ids)
        ctx = {"watermark": start_wm}
        base_url = self.url.render(ctx)
        base_params = [(k, t.render(ctx)) for k, t in self.params]
        if wm_cfg is not None and wm_cfg.param and start_wm is not None:
            base_params.append((wm_cfg.param, render_value(start_wm)))
        url: str = base_url
        page, offset, cursor = pg.start_page, 0, None
        use_params = True
        for _ in range(pg.max_pages):
            params = list(base_params) if use_params else []
            if pg.type == "page" and use_params:
                params.append((pg.page_param, str(page)))
                if pg.size_param and pg.size:
                    params.append((pg.size_param, str(pg.size)))
            elif pg.type == "offset":
                params += [(pg.offset_param, str(offset)), (pg.limit_param, str(pg.limit))]
            elif pg.type == "cursor" and cursor is not None:
                params.append((pg.cursor_param, cursor))
            resp = await self._fetch(url, params)
            body = resp.parsed("json")
            records = self._records(body)
            batch: list[Delivery] = []
            for rec in records:
                mid = self._id(rec)
                if self.wm_expr is not None:
                    value = self.wm_expr.evaluate(rec)
                    if value is not None:
                        if start_wm is not None:
                            k, s = _order_key(value), _order_key(start_wm)
                            if k < s or (k == s and mid in start_ids):
                                continue  # already delivered
                        if run_wm is None or _order_key(value) > _order_key(run_wm):
                            run_wm, run_ids = value, {mid}
                        elif _order_key(value) == _order_key(run_wm):
                            run_ids.add(mid)
                cap = wm_cfg.max_ids if wm_cfg is not None else 0
                end = {"watermark": run_wm, "ids_at": sorted(run_ids)[-cap:] if cap else []}
                ticket = tracker.track(end)
                msg = Message(rec, id=mid, headers={"http.source": redact_url(resp.url)})
                batch.append(Delivery(msg, functools.partial(tracker.ack, ticket), _nack))
                if len(batch) >= self.batch_size:
                    await emit(batch)
                    batch = []
            if batch:
                await emit(batch)
            # the next page
            if pg.type == "none" or not records:
                break
            if pg.type == "page":
                if pg.stop_on_short_page and pg.size and len(records) < pg.size:
                    break
                page += 1
            elif pg.type == "offset":
                if pg.stop_on_short_page and len(records) < pg.limit:
                    break
                offset += len(records)
            elif pg.type == "cursor":
                assert self.cursor_expr is not None
                nxt = self.cursor_expr.evaluate(body)
                if nxt in (None, "", False) or render_value(nxt) == cursor:
                    break
                cursor = render_value(nxt)
            else:
                if pg.type == "link":
                    target = parse_link_next(resp.headers.get("Link"))
                else:
                    assert self.next_expr is not None
                    found = self.next_expr.evaluate(body)
                    target = found if isinstance(found, str) and found else None
                if target is None:
                    break
                url = self._next_url(resp.url, target, base_url)
                use_params = False
        cap = wm_cfg.max_ids if wm_cfg is not None else 0
        self._state = {"watermark": run_wm, "ids_at": sorted(run_ids)[-cap:] if cap else []}

    def _next_url(self, current: str, target: str, base: str) -> str:
        from yarl import URL

        try:
            nxt = URL(current).join(URL(target))
        except ValueError:
            raise FatalError("the next page URL is not a valid URL", code="http.pagination.invalid") from None
        if nxt.origin() != URL(base).origin():
            raise FatalError(
                f"the next page URL leaves {URL(base).origin()} (credentials are never sent elsewhere)",
                code="http.pagination.cross_origin",
            )
        return str(nxt)

    def __repr__(self) -> str:
        return f"HttpSource({self.cfg.method} {self.url.source!r})"
