"""The ``webhook`` source: signed HTTP deliveries, stored before they are answered.

A plain ASGI app on uvicorn, running on the engine's event loop. For every
request, in this order: route and method; no credentials in the query string
(``access_token`` and friends); no CR, LF or NUL in header values; API key or
JWT when the route asks for one; the body, within ``max_body`` (413) and,
when gzip/deflate encoded, within ``max_decompressed`` (413: no gzip bomb);
the signature (``seamline.security.webhooks.verify`` or a generic
``HmacScheme``; 401 with the verifier's stable code); UTF-8 and JSON (400).

Store-and-forward: the message goes into the store's inbox together with
its delivery id in the idempotency keys, and only then is the 2xx sent. A
delivery id seen before is answered 2xx again without a second message.
Concurrent requests are written in one transaction (group commit). The
source itself emits from the inbox (``inbox_take``); ack removes the row
(``inbox_done``, batched in ``commit_acks``), nack releases it. A crash
between the 2xx and processing loses nothing: the row is taken again after
the restart.

A webhook source never ends by itself: a flow with one runs until SIGTERM
(or SIGINT), also under ``seamline run --until-idle``; in-flight work is
drained and what is left stays in the inbox for the next start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hmac
import itertools
import logging
import re
import socket
import uuid
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from seamline.config.models import SourceConfig
from seamline.config.types import ByteSize, Duration, SecretStr
from seamline.core.component import BuildContext, Delivery, Emit, Source
from seamline.core.errors import FatalError
from seamline.core.registry import register
from seamline.formats.json import JsonError
from seamline.formats.json import decode as json_decode

__all__ = [
    "ApiKeyInbound",
    "JwtInbound",
    "RouteConfig",
    "SignatureSettings",
    "WebhookSource",
    "WebhookSourceConfig",
]

log = logging.getLogger("seamline.connectors.webhook")

#: query parameters that carry credentials: refused, so they never land in access logs
_QUERY_CREDENTIALS = frozenset({"access_token", "id_token", "refresh_token", "client_secret"})
_BAD_VALUE = re.compile(rb"[\r\n\x00]")
_DELIVERY_ID = re.compile(r"[\x21-\x7e]{1,256}", re.ASCII)
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "upgrade", "trailer",
     "proxy-connection", "host", "content-encoding"}
)
_MAX_KEPT_HEADERS = 64
_MAX_HEADER_VALUE = 2048
_GROUP_MAX = 512


# -- configuration -------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, arbitrary_types_allowed=True)


class SignatureSettings(_Model):
    """How deliveries on a route are signed."""

    scheme: Literal["standard-webhooks", "stripe", "github", "shopify", "hmac"] = Field(
        description="A known provider scheme, or `hmac` for a generic HMAC in a header (options below)."
    )
    secret: SecretStr | None = Field(
        None, description="The signing secret as the provider issues it (e.g. `whsec_...`); a `${env:NAME}` ref."
    )
    secrets: list[SecretStr] = Field(
        default_factory=list, description="Several secrets, any of which may match (for secret rotation)."
    )
    tolerance: Duration = Field(300.0, description="Allowed clock skew of signed timestamps, both directions.")
    header: str | None = Field(None, description="hmac: the signature header.")
    algorithm: Literal["sha1", "sha256", "sha384", "sha512"] = Field("sha256", description="hmac: digest.")
    encoding: Literal["hex", "base64", "base64url"] = Field("hex", description="hmac: signature encoding.")
    prefix: str = Field("", description="hmac: text before the signature in the header (e.g. `sha256=`).")
    signed_content: str = Field(
        "{body}", description="hmac: what is signed, over `{body}`, `{timestamp}` and `{id}`."
    )
    timestamp_header: str | None = Field(None, description="hmac: header with the signed Unix timestamp.")
    id_header: str | None = Field(None, description="hmac: header with the delivery id.")
    separator: str | None = Field(None, description="hmac: separator of several signatures in the header.")

    @model_validator(mode="after")
    def _check(self) -> SignatureSettings:
        if self.secret is None and not self.secrets:
            raise ValueError("give the signing secret (secret or secrets)")
        if self.scheme == "hmac" and not self.header:
            raise ValueError("scheme hmac needs header")
        return self

    def all_secrets(self) -> list[Any]:
        return ([self.secret] if self.secret is not None else []) + list(self.secrets)


class ApiKeyInbound(_Model):
    """Require an API key in a header."""

    header: str = Field("X-API-Key", description="Header carrying the key.")
    keys: list[SecretStr] = Field(min_length=1, description="Accepted keys (`${env:NAME}` references).")


class JwtInbound(_Model):
    """Require a bearer JWT (`Authorization: Bearer ...`)."""

    algorithms: list[str] = Field(min_length=1, description="Allowed algorithms, e.g. `[RS256]` (never `none`).")
    jwks_url: str | None = Field(None, description="JWKS URL (https), fetched and cached; `jku`/`x5u` are ignored.")
    keys_file: str | None = Field(None, description="PEM public key or JWKS JSON file (relative to the flow file).")
    public_keys: dict[str, str] | None = Field(None, description="`{kid: PEM public key}`.")
    hmac_secret: SecretStr | None = Field(None, description="HMAC secret (HS256/384/512), at least 32 bytes.")
    issuer: str | list[str] | None = Field(None, description="Accepted `iss` value(s) (recommended).")
    audience: str | list[str] | None = Field(None, description="Accepted `aud` value(s) (recommended).")
    scopes: list[str] = Field(default_factory=list, description="Scopes that must all be granted.")
    leeway: Duration = Field(30.0, description="Clock skew allowed for exp/nbf/iat.")
    jwks_allow_http: bool = Field(False, description="Allow an http:// JWKS URL (tests only).")
    jwks_allow_loopback: bool = Field(False, description="Allow a JWKS URL on loopback (tests only).")


class RouteConfig(_Model):
    """One webhook endpoint."""

    path: str = Field(description="URL path, e.g. `/hooks/shopify`.")
    methods: list[Literal["POST", "PUT", "PATCH"]] = Field(["POST"], description="Accepted methods.")
    signature: SignatureSettings | None = Field(None, description="Signature verification.")
    api_key: ApiKeyInbound | None = Field(None, description="Require an API key.")
    jwt: JwtInbound | None = Field(None, description="Require a bearer JWT.")
    public: bool = Field(
        False, description="Accept unauthenticated deliveries (only when no signature, api_key or jwt is set)."
    )
    id_header: str | None = Field(
        None, description="Header with the delivery id, when the signature scheme gives none."
    )
    id_path: str | None = Field(
        None, description="JSONata over the body giving the delivery id (e.g. `id` for Stripe events)."
    )
    dedupe_window: Duration = Field(
        7 * 86400.0, description="How long a delivery id is remembered; a repeat is answered 2xx without a message."
    )
    parse: Literal["json", "raw"] = Field(
        "json", description="`json`: the body must be UTF-8 JSON (400 otherwise); `raw`: kept as bytes."
    )
    status: int = Field(200, ge=200, le=299, description="Status of the answer once the delivery is stored.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in "?#{} "):
            raise ValueError("the path must start with / and hold no query, fragment, braces or spaces")
        return v

    @model_validator(mode="after")
    def _guarded(self) -> RouteConfig:
        guarded = self.signature is not None or self.api_key is not None or self.jwt is not None
        if not guarded and not self.public:
            raise ValueError(f"route {self.path}: set signature, api_key or jwt (or public: true to accept anyone)")
        if guarded and self.public:
            raise ValueError(f"route {self.path}: public cannot be combined with signature, api_key or jwt")
        return self


class WebhookSourceConfig(SourceConfig):
    """Receive webhooks over HTTP; each delivery is stored before it is answered."""

    host: str = Field("127.0.0.1", description="Address to listen on (`0.0.0.0` for every interface).")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0: any free port).")
    routes: list[RouteConfig] = Field(min_length=1, description="The endpoints.")
    max_body: ByteSize = Field(1 << 20, description="Largest request body on the wire (413 beyond).")
    max_decompressed: ByteSize = Field(10 << 20, description="Largest body after gzip/deflate decoding (413 beyond).")
    max_connections: int = Field(1000, ge=1, description="Concurrent connections; beyond, 503.")
    tls_cert_file: str | None = Field(None, description="PEM certificate to serve HTTPS (relative to the flow file).")
    tls_key_file: str | None = Field(None, description="PEM private key of the certificate.")
    inbox_lease: Duration = Field(600.0, description="A taken inbox row is given to nobody else for this long.")
    poll: Duration = Field(1.0, description="How often the inbox is checked when no delivery woke the source.")
    receivers: int = Field(
        0, ge=0, le=32, description="Receiver processes. 0: requests are served by the engine's own process. "
        "N >= 1: N child processes share the listening socket; each checks and stores deliveries in the inbox "
        "and answers, while the engine's process only runs the flow, so receiving and processing use separate "
        "cores. Needs a file store (not `:memory:`). A receiver that dies is started again; the engine's "
        "stop (or death) stops them."
    )
    linger: Duration = Field(
        0.02, description="After a batch smaller than the flow's batch size, let deliveries gather for up to this "
        "long (a full batch goes at once), so batches grow under load: fewer store transactions per message. "
        "Adds processing latency, not answer latency: the sender has its 2xx already."
    )

    @model_validator(mode="after")
    def _unique(self) -> WebhookSourceConfig:
        paths = [r.path for r in self.routes]
        if len(set(paths)) != len(paths):
            raise ValueError("route paths must be unique")
        return self


# -- request handling ----------------------------------------------------------------------------


class _Reject(Exception):
    """A request refused with a status and a stable code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class _Disconnected(Exception):
    """The client went away before its request body was complete: there is no one to answer."""


_Answer = tuple[int, bytes, "dict[str, str] | None"]


def _error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> _Answer:
    import orjson

    return status, orjson.dumps({"error": {"code": code, "message": message}}), headers


async def _send_answer(send: Any, answer: _Answer) -> None:
    status, body, extra = answer
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def decompress_capped(data: bytes, encoding: str, cap: int) -> bytes:
    """Decode a gzip/deflate body, never holding more than ``cap + 1`` decoded bytes."""
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return data
    if enc not in ("gzip", "x-gzip", "deflate"):
        raise _Reject(415, "webhook.encoding_unsupported", "only gzip and deflate bodies are accepted")
    for wbits in ((31,) if enc != "deflate" else (15, -15)):
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(data, cap + 1)
        except zlib.error:
            continue
        if len(out) > cap or d.unconsumed_tail:
            raise _Reject(413, "webhook.decompressed_too_large", f"the decoded body is larger than {cap} bytes")
        if not d.eof:
            raise _Reject(400, "webhook.encoding_invalid", f"the {enc} body is truncated")
        return out
    raise _Reject(400, "webhook.encoding_invalid", f"the body is not valid {enc}")


class _Route:
    """A configured route, ready to check requests."""

    def __init__(self, cfg: RouteConfig, ctx: BuildContext) -> None:
        from seamline.security.errors import SignatureError
        from seamline.security.webhooks import HeaderView, HmacScheme, verify

        self._signature_error = SignatureError
        self._verify = verify
        self._view = HeaderView.from_lists
        self._secrets = cfg.signature.all_secrets() if cfg.signature is not None else []
        self.cfg = cfg
        self.ctx = ctx
        self.clock = ctx.clock
        self.scope = f"webhook:{ctx.flow}:{cfg.path}"
        self.hmac: Any = None
        sig = cfg.signature
        if sig is not None and sig.scheme == "hmac":
            assert sig.header is not None
            self.hmac = HmacScheme(
                header=sig.header, algorithm=sig.algorithm, encoding=sig.encoding, prefix=sig.prefix,
                signed_content=sig.signed_content, timestamp_header=sig.timestamp_header, id_header=sig.id_header,
                separator=sig.separator,
            )
        self.id_expr: Any = None
        if cfg.id_path:
            from seamline.mapping import compile as compile_expr

            self.id_expr = compile_expr(cfg.id_path)
        self.jwt: Any = self._jwt_verifier(cfg.jwt) if cfg.jwt is not None else None
        self.api_keys = [k.reveal().encode() for k in cfg.api_key.keys] if cfg.api_key else []

    def _jwt_verifier(self, j: JwtInbound) -> Any:
        import orjson

        from seamline.security.egress import EgressPolicy
        from seamline.security.jwt import JwtVerifier

        given = [x for x in (j.keys_file, j.public_keys, j.hmac_secret) if x is not None]
        if len(given) > 1:
            raise FatalError("jwt: give one of keys_file, public_keys and hmac_secret", code="config.webhook.jwt")
        keys: Any = None
        if j.keys_file is not None:
            path: Path = self.ctx.resolve_path(j.keys_file)
            try:
                text = path.read_text(encoding="utf-8")
            except OSError:
                raise FatalError(f"jwt: cannot read {path.name}", code="config.webhook.jwt") from None
            keys = orjson.loads(text) if text.lstrip().startswith("{") else text
        elif j.public_keys is not None:
            keys = dict(j.public_keys)
        elif j.hmac_secret is not None:
            keys = j.hmac_secret
        egress = EgressPolicy(allow_loopback=j.jwks_allow_loopback) if j.jwks_url else None
        return JwtVerifier(
            algorithms=j.algorithms, keys=keys, jwks_url=j.jwks_url, issuer=j.issuer, audience=j.audience,
            required_scopes=j.scopes, leeway=j.leeway, require_https=not j.jwks_allow_http, egress=egress,
            clock=self.clock,
        )

    # -- checks -----------------------------------------------------------------------------------
    def check_api_key(self, headers: dict[str, str]) -> None:
        assert self.cfg.api_key is not None
        given = headers.get(self.cfg.api_key.header.lower())
        if not given:
            raise _Reject(401, "webhook.api_key_missing", f"header {self.cfg.api_key.header!r} is required")
        raw = given.encode("latin-1", errors="replace")
        ok = False
        for key in self.api_keys:
            ok |= hmac.compare_digest(raw, key)
        if not ok:
            raise _Reject(401, "webhook.api_key_invalid", "the API key is not valid")

    async def check_jwt(self, headers: dict[str, str]) -> dict[str, Any]:
        from seamline.security.errors import AuthError, AuthUnavailableError

        value = headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _Reject(401, "auth.jwt.missing", "an 'Authorization: Bearer <token>' header is required",
                          {"WWW-Authenticate": "Bearer"})
        try:
            claims: dict[str, Any] = await self.jwt.verify_async(token.strip(), now=self.clock.now())
        except AuthUnavailableError as exc:
            raise _Reject(503, exc.code, "the key server is unavailable; try again", {"Retry-After": "30"}) from None
        except AuthError as exc:
            raise _Reject(401, exc.code, exc.message, {"WWW-Authenticate": 'Bearer error="invalid_token"'}) from None
        return claims

    def check_signature(self, values: dict[str, list[str]], body: bytes) -> str | None:
        """Verify the signature over ``body``; ``values`` holds each (lower-case) header's values in order."""
        sig = self.cfg.signature
        assert sig is not None
        now = self.clock.now()
        headers = self._view(values)
        first: Any = None
        for secret in self._secrets:
            try:
                if self.hmac is not None:
                    return self.hmac.verify(secret, headers, body, now=now, tolerance=sig.tolerance)  # type: ignore[no-any-return]
                return self._verify(sig.scheme, secret, headers, body, now=now, tolerance=sig.tolerance)
            except self._signature_error as exc:
                if first is None:
                    first = exc
                if exc.code != "signature.mismatch":
                    break  # the request itself is malformed: another secret will not help
        assert first is not None
        raise _Reject(401, first.code, first.message)

    def delivery_id(self, signed_id: str | None, headers: dict[str, str], body: Any) -> str | None:
        if signed_id:
            return signed_id
        value: Any = None
        if self.cfg.id_header:
            value = headers.get(self.cfg.id_header.lower())
        elif self.id_expr is not None and body is not None:
            try:
                value = self.id_expr.evaluate(body)
            except Exception:
                value = None
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
        if value is None or value == "":
            return None
        if not isinstance(value, str) or not _DELIVERY_ID.fullmatch(value):
            raise _Reject(400, "webhook.id_malformed", "the delivery id must be 1-256 visible ASCII characters")
        return value


@functools.lru_cache(maxsize=1024)
def _keep_header(name: str) -> bool:
    """Whether a (lower-case) request header is kept on the message: not hop-by-hop, carries no credential."""
    from seamline.security.redaction import is_sensitive_header

    return name not in _HOP_BY_HOP and not is_sensitive_header(name)


# -- the group-committing inbox writer -----------------------------------------------------------


class _InboxWriter:
    """Writes concurrent deliveries to the inbox in one go; resolves each with stored/duplicate."""

    def __init__(self, src: WebhookSource) -> None:
        self.src = src
        self._queue: list[tuple[dict[str, Any], str | None, str | None, float, asyncio.Future[str]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=f"{self.src.ctx.flow}:webhook-inbox")

    async def submit(self, record: dict[str, Any], scope: str, key: str | None, expires: float) -> str:
        if self._closed:
            raise _Reject(503, "webhook.stopping", "the receiver is stopping; try again", {"Retry-After": "5"})
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((record, scope, key, expires, fut))
        self._wake.set()
        return await fut

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                items, self._queue = self._queue[:_GROUP_MAX], self._queue[_GROUP_MAX:]
                try:
                    outcomes = await self._write(items)
                except asyncio.CancelledError:
                    for *_, fut in items:
                        if not fut.done():
                            fut.set_exception(_Reject(503, "webhook.stopping", "the receiver is stopping"))
                    raise
                except Exception as exc:
                    log.error("flow %s: storing %d webhook deliveries failed: %s", self.src.ctx.flow, len(items), exc)
                    for *_, fut in items:
                        if not fut.done():
                            fut.set_exception(_Reject(503, "webhook.store_unavailable",
                                                      "the delivery could not be stored; try again",
                                                      {"Retry-After": "5"}))
                    continue
                for (*_, fut), outcome in zip(items, outcomes, strict=True):
                    if not fut.done():
                        fut.set_result(outcome)
                self.src.wake()

    async def _write(self, items: Sequence[tuple[dict[str, Any], str | None, str | None, float, Any]]) -> list[str]:
        # the check for a known delivery id, the messages and the new delivery ids in one transaction:
        # a redelivery after a crash is recognised exactly when the first copy was stored. The rows
        # are stored already leased to this process and handed to the flow from memory (no second
        # read); a restart releases the leases, so nothing stored is ever stranded.
        # In a receiver process (``on_stored`` set) the rows are stored unleased: the engine's process
        # takes them from the inbox once told how many arrived.
        src = self.src
        now = src.clock.now()
        remote = src.on_stored
        seqs = await src.ctx.store.inbox_accept(
            src.ctx.flow, [(rec, scope, key, expires) for rec, scope, key, expires, _ in items], now,
            lease_until=None if remote is not None else now + src.cfg.inbox_lease)
        outcomes: list[str] = []
        for (record, *_), seq in zip(items, seqs, strict=True):
            if seq is None:
                outcomes.append("duplicate")
            else:
                if remote is None:
                    src.fresh.append((seq, record))
                outcomes.append("stored")
        if remote is not None:
            remote(len(items) - seqs.count(None))
        return outcomes

    async def close(self) -> None:
        self._closed = True
        # let what is queued be written, then stop
        for _ in range(200):
            if not self._queue:
                break
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


# -- the source ----------------------------------------------------------------------------------


class WebhookSource(Source):
    """Serves the routes, stores deliveries in the inbox, emits from the inbox."""

    finite = False

    def __init__(self, cfg: WebhookSourceConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.clock = ctx.clock
        self.routes = {r.path: _Route(r, ctx) for r in cfg.routes}
        self.batch_size = ctx.batch_size
        self._writer = _InboxWriter(self)
        self._has_new = asyncio.Event()
        self._inflight: set[int] = set()
        #: rows stored (and leased) by this process, waiting to be emitted: no need to read them back
        self.fresh: collections.deque[tuple[int, dict[str, Any]]] = collections.deque()
        self._done: list[int] = []
        #: in a receiver process: told how many rows were stored (the engine's process takes them)
        self.on_stored: Callable[[int], None] | None = None
        #: in the engine's process with receivers: rows the receivers said they stored, not yet taken
        self.announced = 0
        self._receivers: Any = None
        self._server: Any = None
        self._main: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self.port: int | None = None
        #: counters for tests and metrics
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0

    @property
    def url(self) -> str:
        scheme = "https" if self.cfg.tls_cert_file else "http"
        host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
        return f"{scheme}://{host}:{self.port}"

    def wake(self) -> None:
        self._has_new.set()

    # -- lifecycle --------------------------------------------------------------------------------
    def app(self) -> Any:
        """The ASGI app serving the routes.

        Plain ASGI rather than a framework: a webhook route needs the method, the path, the raw
        headers and the body, and a framework's request, routing and middleware layers cost
        about a tenth of the CPU per request here (ADR 0012).
        """
        routes = self.routes

        async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                return
            path = scope["path"]
            route = routes.get(path)
            if route is None and len(path) > 1 and path.endswith("/"):
                route = routes.get(path.rstrip("/"))
            if route is None:
                answer = await self._not_found()
            else:
                try:
                    answer = await self._handle(route, scope, receive)
                except _Disconnected:
                    return
            await _send_answer(send, answer)

        return asgi

    async def open(self) -> None:
        cfg = self.cfg
        sock = self._bind()
        if cfg.receivers > 0:
            from seamline.connectors.webhook_receiver import ReceiverPool

            self._sock = sock
            self.port = sock.getsockname()[1]
            pool = ReceiverPool(self, sock)
            await pool.start()
            self._receivers = pool
            log.info("flow %s: webhook listening on %s (%d receiver processes)", self.ctx.flow, self.url,
                     cfg.receivers)
            return
        await self.serve(sock)
        log.info("flow %s: webhook listening on %s", self.ctx.flow, self.url)

    def _bind(self) -> socket.socket:
        cfg = self.cfg
        family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
        # proto given explicitly: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto
        # says TCP; with proto 0 every answer waited for the client's delayed ACK (about 40 ms)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.bind((cfg.host, cfg.port))
        except OSError as exc:
            sock.close()
            raise FatalError(f"webhook: cannot listen on {cfg.host}:{cfg.port}: {exc.strerror}",
                             code="webhook.bind") from None
        return sock

    async def serve(self, sock: socket.socket) -> None:
        """Serve the routes on a bound socket, in this process (the default, and a receiver process)."""
        import uvicorn

        cfg = self.cfg
        self._sock = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(),
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            limit_concurrency=cfg.max_connections,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=5,
            ssl_certfile=str(self.ctx.resolve_path(cfg.tls_cert_file)) if cfg.tls_cert_file else None,
            ssl_keyfile=str(self.ctx.resolve_path(cfg.tls_key_file)) if cfg.tls_key_file else None,
        )
        config.load()
        server = uvicorn.Server(config)
        # not server.serve(): it would take over the process's signal handlers from the engine
        server.lifespan = config.lifespan_class(config)
        self._writer.start()
        await server.startup(sockets=[sock])
        self._server = server
        self._main = asyncio.create_task(server.main_loop(), name=f"{self.ctx.flow}:webhook-server")

    async def close(self) -> None:
        pool, self._receivers = self._receivers, None
        if pool is not None:
            await pool.stop()  # intake stops first: what they stored stays in the inbox
        server, self._server = self._server, None
        if server is not None:
            server.should_exit = True
            if self._main is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._main
            with contextlib.suppress(Exception):
                await server.shutdown(sockets=[self._sock] if self._sock else None)
        elif self._sock is not None:
            self._sock.close()
        self._sock = None
        await self._writer.close()
        with contextlib.suppress(Exception):
            await self.commit_acks()
        # compiled expressions must be freed here, on the loop's thread, not by a cyclic GC pass elsewhere
        for route in self.routes.values():
            route.id_expr = None
            route.jwt = None

    # -- emitting from the inbox ------------------------------------------------------------------
    async def run(self, emit: Emit) -> None:
        from seamline.core.message import Message

        store, flow = self.ctx.store, self.ctx.flow
        fresh = self.fresh
        while True:
            self._has_new.clear()
            if fresh:
                n = min(len(fresh), self.batch_size)
                rows = [fresh.popleft() for _ in range(n)]
            else:  # stored by a receiver process, released by a nack, left by an earlier run, or a lease that ran out
                self.announced = 0
                rows = await store.inbox_take(flow, self.batch_size, self.clock.now(), self.cfg.inbox_lease)
            new = [(seq, rec) for seq, rec in rows if seq not in self._inflight]
            if new:
                batch: list[Delivery] = []
                for seq, rec in new:
                    self._inflight.add(seq)
                    try:
                        msg = Message.from_record(rec)
                    except Exception as exc:  # a row this version cannot read: dead-letter it, never drop it
                        rid = rec.get("id") if isinstance(rec, dict) else None
                        msg = Message({"$inbox_seq": seq}, id=str(rid or seq))
                        batch.append(Delivery(msg, functools.partial(self._ack, seq),
                                              functools.partial(self._nack, seq),
                                              FatalError(f"unreadable inbox record: {exc}", code="webhook.inbox")))
                        continue
                    batch.append(Delivery(msg, functools.partial(self._ack, seq), functools.partial(self._nack, seq)))
                await emit(batch)
                if len(rows) < self.batch_size and self.cfg.linger > 0:
                    await self._linger(fresh)
                continue
            if fresh:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._has_new.wait(), self.cfg.poll)

    async def _linger(self, fresh: collections.deque[tuple[int, dict[str, Any]]]) -> None:
        """After a small batch, let deliveries gather for up to ``linger``; a full batch goes at once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.linger
        while len(fresh) + self.announced < self.batch_size:
            left = deadline - loop.time()
            if left <= 0:
                return
            self._has_new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._has_new.wait(), left)

    def _ack(self, seq: int) -> None:
        self._done.append(seq)

    async def _nack(self, seq: int, requeue: bool = True) -> None:
        self._inflight.discard(seq)
        await self.ctx.store.inbox_release([seq])
        self._has_new.set()

    async def commit_acks(self) -> None:
        if not self._done:
            return
        done, self._done = self._done, []
        await self.ctx.store.inbox_done(done)
        self._inflight.difference_update(done)

    # -- HTTP -------------------------------------------------------------------------------------
    async def _not_found(self) -> _Answer:
        self.rejected += 1
        return _error_response(404, "webhook.route_unknown", "no webhook route at this path")

    async def _handle(self, route: _Route, scope: dict[str, Any], receive: Any) -> _Answer:
        try:
            return await self._accept(route, scope, receive)
        except _Disconnected:
            raise
        except _Reject as r:
            self.rejected += 1
            return _error_response(r.status, r.code, r.message, r.headers)
        except Exception:
            log.exception("flow %s: webhook %s failed unexpectedly", self.ctx.flow, route.cfg.path)
            self.rejected += 1
            return _error_response(500, "webhook.internal", "internal error; the delivery was not accepted")

    async def _accept(self, route: _Route, scope: dict[str, Any], receive: Any) -> _Answer:
        cfg = route.cfg
        if scope["method"] not in cfg.methods:
            raise _Reject(405, "webhook.method_not_allowed", f"use {', '.join(cfg.methods)}",
                          {"Allow": ", ".join(cfg.methods)})
        qs = scope.get("query_string", b"")
        if qs:
            names = {k.lower() for k, _ in parse_qsl(qs.decode("latin-1"), keep_blank_values=True)}
            bad = names & _QUERY_CREDENTIALS
            if bad:
                raise _Reject(400, "webhook.credential_in_query",
                              f"credentials are not accepted in the query string ({sorted(bad)[0]})")
        raw_headers: list[tuple[bytes, bytes]] = scope["headers"]
        # one search over all names and values (joined by a byte that is neither CR, LF nor NUL)
        if raw_headers and _BAD_VALUE.search(b"\x01".join(itertools.chain.from_iterable(raw_headers))):
            raise _Reject(400, "webhook.header_invalid", "a header holds CR, LF or NUL")
        # one pass: each header's values in order (for the signature check) and joined (for the rest)
        headers: dict[str, str] = {}
        values: dict[str, list[str]] = {}
        for name, raw_value in raw_headers:
            key = name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            got = headers.get(key)
            if got is None:
                headers[key] = value
                values[key] = [value]
            else:
                headers[key] = f"{got}, {value}"
                values[key].append(value)
        if cfg.api_key is not None:
            route.check_api_key(headers)
        if route.jwt is not None:
            await route.check_jwt(headers)
        body = await self._read_body(receive, headers)
        signed_id = route.check_signature(values, body) if cfg.signature is not None else None
        parsed: Any = None
        if cfg.parse == "json":
            try:
                # strictly, as every source decodes JSON: a duplicate key, NaN, deep nesting or a huge
                # number is refused here, before the delivery is accepted
                parsed = json_decode(body, max_bytes=max(len(body), 1))
            except JsonError as exc:
                if exc.code == "format.json.utf8":
                    raise _Reject(400, "webhook.body_not_utf8", "the body is not valid UTF-8") from None
                if exc.code == "format.json.syntax":
                    raise _Reject(400, "webhook.body_not_json", "the body is not valid JSON") from None
                raise _Reject(400, exc.code, f"the body is refused: {exc.message}") from None
            content_type = "application/json"
        else:
            content_type = headers.get("content-type", "application/octet-stream").split(";")[0].strip().lower()
        delivery = route.delivery_id(signed_id, headers, parsed)
        record = self._record(route, body, parsed, content_type, headers, delivery)
        expires = self.clock.now() + cfg.dedupe_window
        dedupe_key = delivery if cfg.dedupe_window > 0 else None
        outcome = await self._writer.submit(record, route.scope, dedupe_key, expires)
        if outcome == "duplicate":
            self.duplicates += 1
        else:
            self.accepted += 1
        return cfg.status, orjson.dumps({"status": "accepted" if outcome == "stored" else "duplicate",
                                         "id": record["id"]}), None

    async def _read_body(self, receive: Any, headers: dict[str, str]) -> bytes:
        limit = self.cfg.max_body
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit() or len(length) > 18:
                raise _Reject(400, "webhook.length_invalid", "Content-Length is not a number")
            if int(length) > limit:
                raise _Reject(413, "webhook.body_too_large", f"the body is larger than {limit} bytes")
        buf = bytearray()
        while True:
            event = await receive()
            kind = event["type"]
            if kind == "http.disconnect":
                raise _Disconnected
            if kind != "http.request":
                continue
            buf += event.get("body", b"")
            if len(buf) > limit:
                raise _Reject(413, "webhook.body_too_large", f"the body is larger than {limit} bytes")
            if not event.get("more_body", False):
                break
        encoding = headers.get("content-encoding", "")
        if encoding:
            return decompress_capped(bytes(buf), encoding, self.cfg.max_decompressed)
        return bytes(buf)

    def _record(self, route: _Route, body: bytes, parsed: Any, content_type: str, headers: dict[str, str],
                delivery: str | None) -> dict[str, Any]:
        kept: dict[str, str] = {}
        for name, value in headers.items():
            if len(kept) >= _MAX_KEPT_HEADERS:
                break
            if not _keep_header(name):
                continue
            kept[name] = value[:_MAX_HEADER_VALUE]
        kept["webhook.route"] = route.cfg.path
        if delivery is not None:
            kept["webhook.delivery_id"] = delivery
        now = self.clock.now()
        mid = delivery or uuid.uuid4().hex
        return {
            "id": mid,
            "correlation_id": mid,
            "headers": kept,
            "content_type": content_type,
            "schema": None,
            "attempt": 0,
            "created_at": now,
            "received_at": now,
            "route": None,
            "raw": body,
            "body": None,
        }

    def __repr__(self) -> str:
        return f"WebhookSource({self.cfg.host}:{self.cfg.port}, routes={list(self.routes)})"


@register(
    "source",
    "webhook",
    config=WebhookSourceConfig,
    summary="Receive signed webhooks over HTTP; every delivery is stored before the 2xx (store-and-forward).",
    examples=(
        "webhook: {port: 8080, routes: [{path: /hooks/shopify, "
        "signature: {scheme: shopify, secret: '${env:SHOPIFY_SECRET}'}}]}",
        "webhook: {routes: [{path: /hooks/stripe, id_path: id, "
        "signature: {scheme: stripe, secret: '${env:STRIPE_WHSEC}'}}]}",
    ),
)
def _webhook_source(cfg: WebhookSourceConfig, ctx: BuildContext) -> WebhookSource:
    return WebhookSource(cfg, ctx)
