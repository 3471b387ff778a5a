"""The ``graphql`` connector: queries and mutations as a sink, a call step and a polling source.

Requests go through gql's aiohttp transport. The document (``query``, or
``query_file`` relative to the flow file) is parsed once when the flow is
built, so a syntax error is reported by ``seamline validate``.

* **sink** -- one operation (typically a mutation) per message; several calls
  of a batch run at once (``concurrency``), each failed message is reported
  on its own. ``reject_when`` (a mapping over the response data) turns
  "user errors" carried inside a successful answer into a fatal error.
* **step** (``graphql`` step) -- query, then merge: ``merge:`` is a mapping over
  ``{"body": ..., "response": ...}`` giving the new body (``response`` is the
  answer's ``data``), ``target:`` sets the data at a dotted path, and with
  neither the data becomes the body.
* **source** -- polls a Relay connection (``connection: customers``) page by
  page (``pageInfo { hasNextPage endCursor }``, ``edges { cursor node }`` or
  ``nodes``); every node is a message. Progress is a checkpoint in the store,
  moved only past acknowledged messages, so a restart continues where the
  last acknowledged node was:

  - *cursor mode* (default): the next poll continues after the last cursor --
    for connections ordered so that new nodes come last;
  - *watermark mode* (``watermark: {field: updatedAt, variable: since}``):
    every poll starts at the first page with ``$since`` set to the highest
    ``updatedAt`` acknowledged so far; the server must order by that field
    and include nodes *equal* to it -- nodes already delivered at exactly
    that value are skipped by id, so neither a tie nor the boundary node is
    lost or delivered twice.

  ``mode: once`` makes one poll round and ends (a finite source, for
  ``seamline run --until-idle``); ``mode: continuous`` polls every
  ``interval``. A page that fails with a retryable error is tried again with
  backoff (``retry``).

Variables are built with mappings, as the soap connector's request: one
expression giving an object, or one per variable; expressions see the body
and ``$id``, ``$correlation_id``, ``$headers``.

Errors: an answer with ``errors[]`` is a fatal ``graphql.errors`` (messages,
paths and ``extensions.code`` in ``details``) -- unless ``partial: accept`` is
set and the answer has data: then the data is used and the errors travel with
the message in the ``graphql.errors`` header (step, source) or are logged
(sink). ``retryable_codes`` lists ``extensions.code`` values worth a retry
(``graphql.errors.retryable``). HTTP 429 and 5xx are retryable
(``http.status.NNN``, honouring ``Retry-After``), other 4xx fatal, timeouts and
connection failures retryable (``graphql.timeout``, ``graphql.connection``).
Error texts are scrubbed of every known secret (the bearer token included)
before they reach the journal, the DLQ or a log.

The endpoint passes the egress guard (``egress``, the same settings as the
http connector's: loopback and private addresses need ``allow_loopback`` /
``allow_private``), checked on the resolved address and every redirect.

gql is imported when a flow is built, never at module import.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import orjson
from pydantic import Field, model_validator

from seamline.config.models import CallStepConfig, ComponentConfig, RetryConfig, SinkConfig, SourceConfig
from seamline.config.types import Duration, MaybeSecret, SecretStr
from seamline.connectors.http import EgressSettings, TlsSettings
from seamline.connectors.offsets import OffsetTracker

# the call-connector helpers (request mapping, response merge, guards, transport errors) are shared with soap
from seamline.connectors.soap import (
    RequestTemplate,
    ResponseMerge,
    egress_policy,
    jsonable,
    require,
    scrub_library_logs,
    ssl_option,
    transport_error,
)
from seamline.connectors.wire import field_at
from seamline.core.component import BuildContext, Delivery, Emit, Sink, Source, Step, write_each
from seamline.core.errors import FatalError, RetryableError, SeamlineError
from seamline.core.message import Message, new_id
from seamline.core.registry import register
from seamline.resilience.http_classify import classify_status, error_for_response, redact_url
from seamline.security.redaction import scrub_text
from seamline.security.secrets import Secret

if TYPE_CHECKING:
    from seamline.mapping import Expression

__all__ = [
    "GraphQLCallStep",
    "GraphQLClient",
    "GraphQLSink",
    "GraphQLSinkConfig",
    "GraphQLSource",
    "GraphQLSourceConfig",
    "GraphQLStepConfig",
    "WatermarkConfig",
]

log = logging.getLogger("seamline.connectors.graphql")

#: message header carrying the errors of an accepted partial answer (JSON)
ERRORS_HEADER = "graphql.errors"
#: message header carrying a source node's edge cursor
CURSOR_HEADER = "graphql.cursor"
_MAX_IDS_AT_WATERMARK = 1000
_MAX_ERRORS = 10

# -- config ---------------------------------------------------------------------------------------


class GraphQLEndpoint(ComponentConfig):
    """Where and what to send: shared by the graphql sink, step and source."""

    url: str = Field(..., description="The GraphQL endpoint, e.g. `https://api.example.com/graphql`.")
    query: str | None = Field(None, description="The GraphQL document (query or mutation).")
    query_file: str | None = Field(None, description="A file holding the document, relative to the flow file.")
    operation_name: str | None = Field(None, description="Operation to run when the document holds several.")
    bearer_token: SecretStr | None = Field(
        None, description="Sent as `Authorization: Bearer ...`, e.g. `${env:API_TOKEN}`; never printed or stored."
    )
    headers: dict[str, MaybeSecret] = Field(
        default_factory=dict, description="Extra HTTP headers; values may use ${env:NAME} / ${file:PATH}."
    )
    timeout: Duration = Field(30.0, description="Time limit of one request.")
    partial: Literal["error", "accept"] = Field(
        "error",
        description="An answer with data and errors[]: `error` dead-letters it (graphql.errors); `accept` uses "
        "the data and passes the errors on in the `graphql.errors` header (or logs them, for the sink).",
    )
    retryable_codes: list[str] = Field(
        default_factory=list,
        description="`errors[].extensions.code` values that make the request worth retrying (e.g. RATE_LIMITED).",
    )
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS verification settings.")
    egress: EgressSettings = Field(
        default_factory=EgressSettings,
        description="Which hosts may be called: loopback and private addresses need `allow_loopback` / "
        "`allow_private`.",
    )

    @model_validator(mode="after")
    def _one_document(self) -> GraphQLEndpoint:
        if (self.query is None) == (self.query_file is None):
            raise ValueError("give exactly one of 'query' and 'query_file'")
        return self


class _CallOptions(ComponentConfig):
    variables: str | dict[str, str] | None = Field(
        None,
        description="Variables from the message: one JSONata expression giving an object, or one expression per "
        "variable. Expressions see the body and `$id`, `$correlation_id`, `$headers`. Default: the body itself.",
    )
    idempotency_header: str | None = Field(
        "Idempotency-Key", description="HTTP header carrying the message id, or null for none."
    )


class GraphQLSinkConfig(SinkConfig, GraphQLEndpoint, _CallOptions):
    """Run a mutation (or any operation) per message; the answer is the delivery."""

    reject_when: str | None = Field(
        None,
        description="JSONata over the answer's data; a truthy result (true, a non-empty list or text) makes the "
        "message fail fatally with `graphql.rejected`, e.g. `upsertCustomer.userErrors`.",
    )
    concurrency: int = Field(4, ge=1, le=64, description="Requests of one batch in flight at once.")


class GraphQLStepConfig(CallStepConfig, GraphQLEndpoint, _CallOptions):
    """Run a query per message and merge the answer's data into the message."""

    merge: str | None = Field(
        None,
        description="JSONata over `{\"body\": ..., \"response\": data}` giving the new body, "
        "e.g. `$merge([body, {'risk': response.customer.riskScore}])`.",
    )
    target: str | None = Field(None, description="Dotted path of the body where the data is set.")

    @model_validator(mode="after")
    def _one_way(self) -> GraphQLStepConfig:
        if self.merge is not None and self.target is not None:
            raise ValueError("give either 'merge' or 'target', not both")
        return self


class WatermarkConfig(ComponentConfig):
    """Incremental polling by a node field that grows with every change (e.g. `updatedAt`)."""

    field: str = Field(..., description="Dotted path of the watermark in a node, e.g. `updatedAt`.")
    variable: str = Field(..., description="Query variable that receives the watermark, e.g. `since`.")
    initial: Any = Field(None, description="Watermark of the very first poll (default: null, everything).")


class GraphQLSourceConfig(SourceConfig, GraphQLEndpoint):
    """Poll a Relay connection page by page; every node becomes a message."""

    connection: str = Field(
        ..., description="Dotted path of the connection in the answer's data, e.g. `customers` or `shop.orders`."
    )
    page_size: int = Field(100, ge=1, le=10_000, description="Nodes asked for per page.")
    page_size_variable: str = Field("first", description="Query variable that receives the page size.")
    cursor_variable: str = Field("after", description="Query variable that receives the cursor to continue after.")
    variables: dict[str, Any] = Field(default_factory=dict, description="Further (fixed) variables of the query.")
    watermark: WatermarkConfig | None = Field(
        None, description="Incremental by a node field instead of by cursor (see the connector docs)."
    )
    id_field: str = Field(
        "id",
        description="Dotted path of the node's id: the message id (with `@<watermark>` appended in watermark mode).",
    )
    mode: Literal["once", "continuous"] = Field(
        "continuous", description="`once`: one poll round, then the source ends; `continuous`: poll every interval."
    )
    interval: Duration = Field(60.0, description="Pause between poll rounds (mode: continuous).")
    state_key: str | None = Field(
        None, description="Name of the checkpoint in the store (default: the flow name and the connection)."
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig, description="Retries of a page that failed with a retryable error."
    )


# -- the client -----------------------------------------------------------------------------------


def _scrub(text: Any, limit: int = 500) -> str:
    s = scrub_text("" if text is None else str(text))
    return s if len(s) <= limit else s[:limit] + "..."


def _clean_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    """Errors of an answer, scrubbed and bounded, as JSON data."""
    out: list[dict[str, Any]] = []
    for e in list(errors)[:_MAX_ERRORS]:
        if not isinstance(e, Mapping):
            out.append({"message": _scrub(e)})
            continue
        item: dict[str, Any] = {"message": _scrub(e.get("message"))}
        path = e.get("path")
        if isinstance(path, list):
            item["path"] = [p if isinstance(p, int) else _scrub(p, 100) for p in path[:20]]
        ext = e.get("extensions")
        if isinstance(ext, Mapping) and ext.get("code") is not None:
            item["code"] = _scrub(ext.get("code"), 100)
        locations = e.get("locations")
        if isinstance(locations, list):
            item["locations"] = jsonable(locations[:5])
        out.append(item)
    return out


def load_document(cfg: GraphQLEndpoint, ctx: BuildContext) -> Any:
    """Read and parse the configured GraphQL document (a gql ``GraphQLRequest``)."""
    from gql import GraphQLRequest
    from graphql import GraphQLError

    text = cfg.query
    if text is None:
        path = ctx.resolve_path(cfg.query_file or "")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise FatalError(
                f"cannot read query_file {cfg.query_file}: {exc.strerror}", code="graphql.query.not_found"
            ) from None
    err: FatalError | None = None
    try:
        return GraphQLRequest(text)
    except GraphQLError as exc:
        err = FatalError(f"the GraphQL document is invalid: {exc.message}", code="graphql.query.invalid")
    raise err


class _Exchange:
    """Status and headers of one HTTP exchange, filled in by an aiohttp trace hook."""

    __slots__ = ("headers", "status")

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: Any = None


async def _on_request_end(session: Any, trace_ctx: Any, params: Any) -> None:
    exchange = getattr(trace_ctx, "trace_request_ctx", None)
    if isinstance(exchange, _Exchange):
        exchange.status = params.response.status
        exchange.headers = params.response.headers.copy()


class GraphQLClient:
    """One GraphQL document against one endpoint: ``await execute(variables)`` gives ``(data, accepted_errors)``."""

    def __init__(self, cfg: GraphQLEndpoint, ctx: BuildContext) -> None:
        require("gql", "graphql", "gql[aiohttp]")
        self.cfg = cfg
        self.request = load_document(cfg, ctx)
        self.url = cfg.url
        self.ctx = ctx
        self.policy = egress_policy(cfg.egress)
        self.policy.check_url(cfg.url)  # a host outside the allow list fails when the flow is built
        self.what = f"GraphQL {cfg.operation_name or 'request'} to {redact_url(cfg.url)}"
        self._client: Any = None
        self._session: Any = None

    async def open(self) -> None:
        import aiohttp
        from gql import Client
        from gql.transport.aiohttp import AIOHTTPTransport

        scrub_library_logs("gql.transport.aiohttp", "gql.client")
        headers = {k: (v.reveal() if isinstance(v, Secret) else v) for k, v in self.cfg.headers.items()}
        if self.cfg.bearer_token is not None:
            headers["Authorization"] = f"Bearer {self.cfg.bearer_token.reveal()}"
        trace = aiohttp.TraceConfig()
        trace.on_request_end.append(_on_request_end)
        ssl = ssl_option(self.cfg.tls, self.ctx)
        transport = AIOHTTPTransport(
            url=self.url,
            headers=headers,
            ssl=ssl,
            client_session_args={
                # the egress guard checks the resolved address and every redirect
                "connector": self.policy.connector(ssl=ssl),
                "trace_configs": [trace, self.policy.trace_config()],
                "timeout": aiohttp.ClientTimeout(total=self.cfg.timeout),
            },
        )
        self._client = Client(transport=transport, fetch_schema_from_transport=False,
                              execute_timeout=self.cfg.timeout + 1)
        self._session = await self._client.connect_async()

    async def close(self) -> None:
        if self._client is not None:
            client, self._client, self._session = self._client, None, None
            await client.close_async()

    async def execute(
        self, variables: Mapping[str, Any] | None, headers: Mapping[str, str] | None = None
    ) -> tuple[Any, list[dict[str, Any]]]:
        """Run the document; return ``(data, errors accepted as partial)`` or raise a classified error."""
        from gql import GraphQLRequest
        from gql.transport.exceptions import (
            TransportConnectionFailed,
            TransportError,
            TransportProtocolError,
            TransportQueryError,
            TransportServerError,
        )

        if self._session is None:
            raise RuntimeError("GraphQLClient.open() was not called")
        exchange = _Exchange()
        request = GraphQLRequest(
            self.request, variable_values=dict(variables) if variables else None,
            operation_name=self.cfg.operation_name,
        )
        extra: dict[str, Any] = {"trace_request_ctx": exchange}
        if headers:
            extra["headers"] = dict(headers)
        data: Any = None
        errors: list[Any] = []
        # errors are raised outside the except blocks so the library's exception, which may quote the
        # answer, is not chained (as __context__) into the DLQ's error chain
        err: SeamlineError | None = None
        try:
            result = await self._session.execute(request, get_execution_result=True, extra_args=extra)
            data = result.data
        except TransportQueryError as exc:
            data, errors = exc.data, list(exc.errors or [{"message": str(exc)}])
        except TransportServerError as exc:
            err = self._http_error(exc.code or exchange.status or 500, exchange)
        except TransportProtocolError as exc:
            if exchange.status is not None and exchange.status >= 400:
                err = self._http_error(exchange.status, exchange)
            else:
                err = FatalError(f"{self.what}: not a GraphQL answer: {_scrub(exc, 300)}",
                                 code="graphql.response.invalid")
        except TransportConnectionFailed as exc:
            cause = exc.__cause__
            if isinstance(cause, SeamlineError):  # the egress guard refused the address or a redirect
                err = cause
            else:
                err = transport_error(cause or exc, prefix="graphql", what=self.what) or RetryableError(
                    f"{self.what} failed: {_scrub(exc, 300)}", code="graphql.connection")
        except TimeoutError:
            err = RetryableError(f"{self.what} timed out", code="graphql.timeout")
        except TransportError as exc:
            err = RetryableError(f"{self.what} failed: {_scrub(exc, 300)}", code="graphql.connection")
        if err is not None:
            raise err
        status = exchange.status
        if status is not None and status >= 300 and (not errors or classify_status(status) == "retryable"):
            raise self._http_error(status, exchange)
        if not errors:
            return data, []
        return self._judge(data, errors, status)

    def _http_error(self, status: int, exchange: _Exchange) -> RetryableError | FatalError:
        return error_for_response(status, exchange.headers, None, self.url, method="POST")

    def _judge(self, data: Any, errors: list[Any], status: int | None) -> tuple[Any, list[dict[str, Any]]]:
        clean = _clean_errors(errors)
        codes = {e.get("code") for e in clean}
        summary = "; ".join(e["message"] for e in clean[:3]) or "no message"
        details = {"errors": clean, "count": len(errors), "status": status, "partial_data": data is not None,
                   "operation": self.cfg.operation_name, "url": redact_url(self.url)}
        if self.cfg.retryable_codes and codes & set(self.cfg.retryable_codes):
            raise RetryableError(f"{self.what} answered {len(errors)} error(s): {summary}",
                                 code="graphql.errors.retryable", details=details)
        if self.cfg.partial == "accept" and data is not None:
            return data, clean
        raise FatalError(f"{self.what} answered {len(errors)} error(s): {summary}", code="graphql.errors",
                         details=details)


def _errors_header(errors: list[dict[str, Any]]) -> str:
    text = orjson.dumps(errors).decode()
    return text if len(text) <= 4000 else orjson.dumps(errors[:1]).decode()[:4000]


# -- sink and step --------------------------------------------------------------------------------


def _truthy(value: Any) -> bool:
    if isinstance(value, list | dict | str):
        return len(value) > 0
    return bool(value)


class GraphQLSink(Sink):
    """Every message is one request; failures are reported per message (``BatchError``)."""

    def __init__(self, cfg: GraphQLSinkConfig, ctx: BuildContext) -> None:
        from seamline.mapping import compile as compile_expr

        self.cfg = cfg
        self.client = GraphQLClient(cfg, ctx)
        self.template = RequestTemplate(cfg.variables, prefix="graphql", what="variables")
        self.reject: Expression | None = compile_expr(cfg.reject_when) if cfg.reject_when else None

    async def open(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        await self.client.close()

    async def _one(self, m: Message) -> None:
        headers = {self.cfg.idempotency_header: m.id} if self.cfg.idempotency_header else None
        data, errors = await self.client.execute(self.template.render(m), headers)
        if errors:
            log.warning("message %s: %d GraphQL error(s) accepted as partial: %s", m.id, len(errors),
                        "; ".join(e["message"] for e in errors[:3]))
        if self.reject is not None:
            verdict = self.reject.evaluate(data, {"id": m.id, "headers": m.headers})
            if _truthy(verdict):
                shown = _scrub(orjson.dumps(jsonable(verdict)).decode(), 500)
                raise FatalError(f"{self.client.what} rejected the message: {shown}", code="graphql.rejected",
                                 details={"rejected": shown})

    async def write(self, batch: Sequence[Message]) -> None:
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def one(m: Message) -> None:
            async with sem:
                await self._one(m)

        await write_each(one(m) for m in batch)


class GraphQLCallStep(Step):
    """Run the query and merge the answer's data into the message."""

    is_async = True

    def __init__(self, cfg: GraphQLStepConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.client = GraphQLClient(cfg, ctx)
        self.template = RequestTemplate(cfg.variables, prefix="graphql", what="variables")
        self.merge = ResponseMerge(cfg.merge, cfg.target)

    async def open(self) -> None:
        await self.client.open()

    async def close(self) -> None:
        await self.client.close()

    def process(self, message: Message) -> Message:
        raise RuntimeError("the graphql step is asynchronous")

    async def process_async(self, message: Message) -> Message:
        headers = {self.cfg.idempotency_header: message.id} if self.cfg.idempotency_header else None
        data, errors = await self.client.execute(self.template.render(message), headers)
        return self.merge.apply(message, data, {ERRORS_HEADER: _errors_header(errors)} if errors else None)


# -- source ---------------------------------------------------------------------------------------


def _before(a: Any, b: Any) -> bool:
    try:
        return bool(a < b)
    except TypeError:
        return str(a) < str(b)


def _noop_nack(requeue: bool) -> None:
    """Nothing to do: a node that was not acknowledged is read again after a restart."""


class GraphQLSource(Source):
    """Poll a Relay connection; continuous (``mode: continuous``) or one round (:class:`GraphQLOnceSource`)."""

    finite = False

    def __init__(self, cfg: GraphQLSourceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.client = GraphQLClient(cfg, ctx)
        self.policy = cfg.retry.policy()
        self.scope = f"graphql:{ctx.flow}:{cfg.state_key or cfg.connection}"
        self._conn_path = cfg.connection.split(".")
        self._tracker: OffsetTracker | None = None
        self._read: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        cp = await self.ctx.store.get_checkpoint(self.scope)
        if not isinstance(cp, dict):
            wm = self.cfg.watermark
            cp = {"watermark": wm.initial, "ids": []} if wm is not None else {"cursor": None}
        self._read = dict(cp)
        self._tracker = OffsetTracker(dict(cp))
        await self.client.open()

    async def close(self) -> None:
        await self.commit_acks()
        await self.client.close()

    async def commit_acks(self) -> None:
        t = self._tracker
        if t is not None and t.dirty:
            async with self._lock:
                if t.dirty:
                    t.dirty = False
                    await self.ctx.store.put_checkpoint(self.scope, t.committed)

    async def run(self, emit: Emit) -> None:
        while True:
            try:
                await self._round(emit)
            except RetryableError as exc:
                if self.cfg.mode == "once":
                    raise
                log.error("flow %s: poll of %s failed, next try in %gs: %s", self.ctx.flow, self.client.what,
                          self.cfg.interval, _scrub(exc.message))
            if self.cfg.mode == "once":
                return
            await asyncio.sleep(self.cfg.interval)

    async def _page(self, after: Any, watermark: Any) -> tuple[Any, list[dict[str, Any]]]:
        cfg = self.cfg
        variables = {**cfg.variables, cfg.page_size_variable: cfg.page_size, cfg.cursor_variable: after}
        if cfg.watermark is not None:
            variables[cfg.watermark.variable] = watermark
        attempt = 0
        first = self.ctx.clock.now()
        while True:
            attempt += 1
            try:
                return await self.client.execute(variables)
            except RetryableError as exc:
                now = self.ctx.clock.now()
                delay = self.policy.delay(attempt, retry_after=exc.retry_after)
                if self.policy.gives_up(attempt, first_attempt_at=first, now=now, next_delay=delay):
                    raise
                log.warning("flow %s: page of %s failed (attempt %d), retrying in %.2fs: %s", self.ctx.flow,
                            self.client.what, attempt, delay, _scrub(exc.message))
                await asyncio.sleep(delay)

    def _connection(self, data: Any) -> tuple[list[tuple[Any, Any]], bool, Any]:
        conn = field_at(data, self.cfg.connection)
        if not isinstance(conn, Mapping):
            raise FatalError(
                f"the answer has no connection at '{self.cfg.connection}'", code="graphql.connection.missing"
            )
        edges, nodes = conn.get("edges"), conn.get("nodes")
        if isinstance(edges, list):
            items = [(e.get("node"), e.get("cursor")) for e in edges if isinstance(e, Mapping)]
        elif isinstance(nodes, list):
            items = [(n, None) for n in nodes]
        else:
            raise FatalError(
                f"the connection '{self.cfg.connection}' has neither edges nor nodes: select "
                "`edges { cursor node { ... } }` or `nodes { ... }`", code="graphql.connection.invalid",
            )
        info = conn.get("pageInfo")
        if not isinstance(info, Mapping) or "hasNextPage" not in info:
            raise FatalError(
                f"the connection '{self.cfg.connection}' lacks pageInfo: select `pageInfo {{ hasNextPage endCursor }}`",
                code="graphql.connection.invalid",
            )
        return items, bool(info.get("hasNextPage")), info.get("endCursor")

    def _node_errors(
        self, errors: list[dict[str, Any]], count: int
    ) -> tuple[list[dict[str, Any]], dict[int, list[dict[str, Any]]]]:
        """Split accepted errors into those of one node (by path) and those of the whole page."""
        everyone: list[dict[str, Any]] = []
        per_node: dict[int, list[dict[str, Any]]] = {}
        n = len(self._conn_path)
        for e in errors:
            path = e.get("path") or []
            if (len(path) > n + 1 and path[:n] == self._conn_path and path[n] in ("edges", "nodes")
                    and isinstance(path[n + 1], int) and 0 <= path[n + 1] < count):
                per_node.setdefault(path[n + 1], []).append(e)
            else:
                everyone.append(e)
        return everyone, per_node

    def _message(self, node: Any, cursor: Any, watermark: Any, errors: list[dict[str, Any]]) -> Message:
        node_id = field_at(node, self.cfg.id_field) if isinstance(node, Mapping) else None
        if node_id is None:
            mid = new_id()
        elif self.cfg.watermark is not None:
            mid = f"{node_id}@{watermark}"
        else:
            mid = str(node_id)
        headers: dict[str, str] = {}
        if cursor is not None:
            headers[CURSOR_HEADER] = str(cursor)
        if errors:
            headers[ERRORS_HEADER] = _errors_header(errors)
        return Message(node, id=mid, headers=headers)

    async def _round(self, emit: Emit) -> None:
        tracker = self._tracker
        assert tracker is not None, "open() was not called"
        wm_cfg = self.cfg.watermark
        if wm_cfg is None:
            after = self._read.get("cursor")
            start_wm: Any = None
            seen: set[str] = set()
        else:
            after = None
            start_wm = self._read.get("watermark")
            seen = {str(i) for i in self._read.get("ids") or []}
        max_wm, max_ids = start_wm, [str(i) for i in self._read.get("ids") or []]
        while True:
            data, errors = await self._page(after, start_wm)
            items, has_next, end_cursor = self._connection(data)
            everyone, per_node = self._node_errors(errors, len(items))
            batch: list[Delivery] = []
            for i, (node, edge_cursor) in enumerate(items):
                wm: Any = None
                if wm_cfg is not None:
                    wm = field_at(node, wm_cfg.field)
                    if wm is None:
                        raise FatalError(
                            f"a node of '{self.cfg.connection}' has no watermark field '{wm_cfg.field}'",
                            code="graphql.watermark.missing",
                        )
                    node_id = str(field_at(node, self.cfg.id_field))
                    if start_wm is not None and (_before(wm, start_wm) or (wm == start_wm and node_id in seen)):
                        continue  # delivered before
                    if max_wm is None or _before(max_wm, wm):
                        max_wm, max_ids = wm, [node_id]
                    elif wm == max_wm and node_id not in max_ids and len(max_ids) < _MAX_IDS_AT_WATERMARK:
                        max_ids.append(node_id)
                    position: dict[str, Any] = {"watermark": max_wm, "ids": list(max_ids)}
                elif edge_cursor is not None:
                    position = {"cursor": edge_cursor}
                elif i == len(items) - 1 and end_cursor is not None:
                    position = {"cursor": end_cursor}
                else:
                    position = {"cursor": after}  # mid-page without edge cursors: the page is read again
                msg = self._message(node, edge_cursor, wm, everyone + per_node.get(i, []))
                ticket = tracker.track(position)
                batch.append(Delivery(msg, functools.partial(tracker.ack, ticket), _noop_nack))
            size = max(1, self.ctx.batch_size)
            for start in range(0, len(batch), size):  # a page larger than the flow's batch goes in parts
                await emit(batch[start:start + size])
            if wm_cfg is None and end_cursor is not None:
                self._read = {"cursor": end_cursor}
            if not has_next:
                break
            if end_cursor is None or end_cursor == after:
                raise FatalError(
                    f"the connection '{self.cfg.connection}' says hasNextPage but gives no new endCursor",
                    code="graphql.pagination.stuck",
                )
            after = end_cursor
        if wm_cfg is not None:
            self._read = {"watermark": max_wm, "ids": max_ids}


class GraphQLOnceSource(GraphQLSource):
    """One poll round, then the source ends."""

    finite = True


# -- registration ---------------------------------------------------------------------------------


@register(
    "sink",
    "graphql",
    config=GraphQLSinkConfig,
    summary="Run a GraphQL mutation per message (gql, aiohttp); variables from mappings; errors[] handled.",
    examples=(
        "graphql: {url: 'https://api.example.com/graphql', bearer_token: '${env:API_TOKEN}', "
        "query: 'mutation($input: OrderInput!) { recordOrder(input: $input) { ok userErrors } }', "
        "variables: {input: \"{'id': order_id, 'total': total}\"}, reject_when: recordOrder.userErrors}",
    ),
)
def _graphql_sink(cfg: GraphQLSinkConfig, ctx: BuildContext) -> GraphQLSink:
    return GraphQLSink(cfg, ctx)


@register(
    "step",
    "graphql",
    config=GraphQLStepConfig,
    summary="Run a GraphQL query per message and merge the answer into the message (enrichment).",
    examples=(
        "graphql: {url: 'https://api.example.com/graphql', query_file: customer.graphql, "
        "variables: {id: customer_id}, target: customer}",
    ),
)
def _graphql_step(cfg: GraphQLStepConfig, ctx: BuildContext) -> GraphQLCallStep:
    return GraphQLCallStep(cfg, ctx)


@register(
    "source",
    "graphql",
    config=GraphQLSourceConfig,
    summary="Poll a Relay connection (cursor pagination); incremental by cursor or watermark, kept in the store.",
    examples=(
        "graphql: {url: 'https://api.example.com/graphql', connection: customers, mode: once, "
        "query: 'query($first: Int!, $after: String) { customers(first: $first, after: $after) "
        "{ edges { cursor node { id name } } pageInfo { hasNextPage endCursor } } }'}",
        "graphql: {url: 'https://api.example.com/graphql', connection: customers, interval: 5m, "
        "watermark: {field: updatedAt, variable: since}, query_file: customers.graphql}",
    ),
)
def _graphql_source(cfg: GraphQLSourceConfig, ctx: BuildContext) -> GraphQLSource:
    return GraphQLOnceSource(cfg, ctx) if cfg.mode == "once" else GraphQLSource(cfg, ctx)
