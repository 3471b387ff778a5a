"""The HTTP client shared by the ``http`` source, sink and call step.

One aiohttp session per component, guarded by the egress policy (URL and
every redirect hop checked here; resolved addresses checked by the
connector's resolver), TLS verification on by default, outbound auth,
per-endpoint circuit breaker and adaptive rate limit, size limits on both
directions, and every failure turned into a classified seamline error.
"""

from __future__ import annotations

import re
import ssl
import zlib
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from seamline.connectors.auth import Auth, build_auth
from seamline.core.component import BuildContext
from seamline.core.errors import FatalError, RetryableError, SeamlineError
from seamline.resilience.breaker import CircuitBreaker, CircuitOpenError
from seamline.resilience.http_classify import classify_status, endpoint_key, error_for_response, redact_url
from seamline.resilience.ratelimit import TokenBucket
from seamline.security.egress import EgressPolicy
from seamline.security.errors import EgressError
from seamline.security.redaction import is_sensitive_header

__all__ = ["HttpClient", "HttpResponse", "Template", "encode_body", "render_value"]

_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]+)\}")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
def _bad_header(text: str) -> bool:
    """A header name or value with a line break or NUL (header injection)."""
    return "\n" in text or "\r" in text or "\x00" in text
_CHUNK = 65536


# -- templates -----------------------------------------------------------------------------------


def render_value(value: Any) -> str:
    """A JSONata result as text: strings as they are, null as empty, the rest as JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return orjson.dumps(value).decode()


class Template:
    """Text with ``{expression}`` placeholders, each a JSONata expression over a context."""

    __slots__ = ("_parts", "source", "static")

    def __init__(self, text: str, *, url_encode: bool = False) -> None:
        from seamline.mapping import compile as compile_expr

        self.source = text
        parts: list[str | Any] = []
        pos = 0
        literal: list[str] = []
        for m in _PLACEHOLDER.finditer(text):
            literal.append(text[pos : m.start()])
            token = m.group(0)
            if token in ("{{", "}}"):
                literal.append(token[0])
            else:
                if literal:
                    parts.append("".join(literal))
                    literal = []
                parts.append((compile_expr(m.group(1).strip()), url_encode))
            pos = m.end()
        literal.append(text[pos:])
        tail = "".join(literal)
        if tail:
            parts.append(tail)
        self._parts = tuple(parts)
        self.static = all(isinstance(p, str) for p in parts)

    def render(self, context: Any) -> str:
        if self.static:
            return "".join(self._parts)
        out: list[str] = []
        for part in self._parts:
            if isinstance(part, str):
                out.append(part)
            else:
                expr, encode = part
                text = render_value(expr.evaluate(context))
                out.append(quote(text, safe="") if encode else text)
        return "".join(out)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"


def encode_body(value: Any, fmt: str) -> tuple[bytes, str]:
    """A mapped body as bytes and its content type."""
    if fmt == "form":
        from urllib.parse import urlencode

        if not isinstance(value, Mapping):
            raise FatalError("a form body must map to an object of fields", code="http.body_invalid")
        return urlencode({k: render_value(v) for k, v in value.items()}).encode(), "application/x-www-form-urlencoded"
    if fmt == "text":
        return render_value(value).encode(), "text/plain; charset=utf-8"
    return orjson.dumps(value), "application/json"


# -- responses -----------------------------------------------------------------------------------


class HttpResponse:
    """A finished exchange: status, headers, the (decompressed, size-limited) body and the final URL."""

    __slots__ = ("body", "headers", "status", "truncated", "url")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes, url: str, truncated: bool) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.url = url
        self.truncated = truncated

    def header_dict(self) -> dict[str, str]:
        """Response headers, lower-cased, without credential-bearing ones (Set-Cookie...)."""
        out: dict[str, str] = {}
        for k, v in self.headers.items():
            key = k.lower()
            if is_sensitive_header(key):
                continue
            out[key] = v if key not in out else f"{out[key]}, {v}"
        return out

    def parsed(self, fmt: str = "auto") -> Any:
        """The body as JSON or text (``auto``: by content type, JSON when it parses)."""
        ctype = (self.headers.get("Content-Type") or "").lower()
        if fmt == "text" or (fmt == "auto" and ctype and "json" not in ctype):
            return self.body.decode("utf-8", errors="replace")
        if not self.body.strip():
            return None
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            if fmt == "json":
                raise FatalError(
                    f"{redact_url(self.url)} answered a body that is not JSON", code="http.response_not_json"
                ) from None
            return self.body.decode("utf-8", errors="replace")


def _too_large(url: str, limit: int) -> FatalError:
    return FatalError(f"the response of {redact_url(url)} is larger than {limit} bytes (max_response_bytes)",
                      code="http.response_too_large", details={"limit": limit})


def _decompress(data: bytes, encoding: str, limit: int, url: str, truncate: bool) -> tuple[bytes, bool]:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return data, False
    if enc not in ("gzip", "x-gzip", "deflate"):
        raise FatalError(f"{redact_url(url)} answered with an unsupported content encoding {enc[:20]!r}",
                         code="http.response_encoding")
    wbits = 31 if enc in ("gzip", "x-gzip") else 15
    try:
        d = zlib.decompressobj(wbits)
        out = d.decompress(data, limit + 1)
    except zlib.error:
        if enc != "deflate":
            raise FatalError(f"{redact_url(url)} answered a corrupt {enc} body",
                             code="http.response_encoding") from None
        try:  # raw deflate, as some servers send it
            d = zlib.decompressobj(-15)
            out = d.decompress(data, limit + 1)
        except zlib.error:
            raise FatalError(f"{redact_url(url)} answered a corrupt deflate body",
                             code="http.response_encoding") from None
    if len(out) > limit or d.unconsumed_tail:
        if truncate:
            return out[:limit], True
        raise _too_large(url, limit)
    return out, False


def _limits_said(headers: Mapping[str, str]) -> bool:
    """Whether a successful answer carries rate-limit headers worth reading."""
    h = headers  # spelled out: a generator per response costs more than the lookups
    return ("Retry-After" in h or "RateLimit" in h or "RateLimit-Remaining" in h or "X-RateLimit-Remaining" in h
            or "X-Rate-Limit-Remaining" in h)


# -- the client ----------------------------------------------------------------------------------


class HttpClient:
    """One component's HTTP machinery; ``open()`` on the running loop, ``close()`` at the end."""

    def __init__(self, cfg: Any, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.clock = ctx.clock
        eg = cfg.egress
        self.policy = EgressPolicy(
            eg.allow_hosts,
            allow_loopback=eg.allow_loopback,
            allow_private=eg.allow_private,
            allow_networks=eg.allow_networks,
            schemes=("http", "https"),
        )
        self.auth: Auth | None = build_auth(cfg.auth, resolve_path=ctx.resolve_path, clock=ctx.clock)
        if self.auth is not None and self.auth.token_url is not None:
            self.policy.check_url(self.auth.token_url)
        self.overrides: dict[int | str, str] = dict(cfg.status)
        self.timeout = aiohttp.ClientTimeout(total=cfg.request_timeout, sock_connect=cfg.connect_timeout)
        self.max_request = cfg.max_request_bytes
        self.max_response = cfg.max_response_bytes
        self._ok_hosts: set[tuple[str, str]] = set()
        self._guards: dict[str, tuple[CircuitBreaker | None, TokenBucket]] = {}
        self._by_url: dict[str, tuple[CircuitBreaker | None, TokenBucket]] = {}
        self._urls: dict[str, URL] = {}
        self._session: aiohttp.ClientSession | None = None
        #: requests sent (for metrics and tests)
        self.requests = 0

    # -- lifecycle --------------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext | bool:
        tls = self.cfg.tls
        cert = self.auth.client_cert() if self.auth is not None else None
        if tls.verify and tls.ca_file is None and cert is None:
            return True
        if tls.verify:
            ctx = ssl.create_default_context(cafile=str(self.ctx.resolve_path(tls.ca_file)) if tls.ca_file else None)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if cert is not None:
            certfile, keyfile, password = cert
            try:
                ctx.load_cert_chain(str(certfile), str(keyfile) if keyfile else None,
                                    password.reveal() if password is not None else None)
            except (ssl.SSLError, OSError):
                raise FatalError("mutual TLS: the client certificate or key cannot be loaded",
                                 code="auth.mtls.invalid") from None
        return ctx

    async def open(self) -> None:
        if self._session is not None:
            return
        connector = self.policy.connector(ssl=self._ssl(), limit=self.cfg.max_connections)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, trust_env=False, timeout=self.timeout,
        )
        if self.auth is not None:
            self.auth.bind(self._post_token)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the HTTP client is not open")
        return self._session

    # -- guards -----------------------------------------------------------------------------------
    def _parse(self, url: str) -> URL:
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = URL(url, encoded=False)
            if len(self._urls) < 1024:
                self._urls[url] = parsed
        return parsed

    def check_url(self, url: str | URL) -> URL:
        """Egress check of a URL (cached per scheme and host)."""
        parsed = url if isinstance(url, URL) else self._parse(url)
        key = (parsed.scheme, parsed.raw_host or "")
        if key not in self._ok_hosts:
            self.policy.check_url(parsed)
            if len(self._ok_hosts) < 4096:
                self._ok_hosts.add(key)
        return parsed

    def guards(self, url: str) -> tuple[CircuitBreaker | None, TokenBucket]:
        """The breaker (None when there is none) and rate limiter of ``url``'s endpoint."""
        cached = self._by_url.get(url)
        if cached is not None:
            return cached
        found = self._guards_of(endpoint_key(url))
        if len(self._by_url) < 1024:
            self._by_url[url] = found
        return found

    def _guards_of(self, key: str) -> tuple[CircuitBreaker | None, TokenBucket]:
        found = self._guards.get(key)
        if found is not None:
            return found
        cfg, ctx = self.cfg, self.ctx
        breaker: CircuitBreaker | None = None
        if ctx.breakers is not None:
            if cfg.breaker is not None:
                try:
                    ctx.breakers.configure(key, cfg.breaker.config())
                except ValueError:
                    pass  # another component created it first: share that one
            breaker = ctx.breakers.get(key)
        elif cfg.breaker is not None:
            breaker = CircuitBreaker(key, **asdict(cfg.breaker.config()), clock=ctx.clock)
        rl = cfg.rate_limit
        if ctx.limiters is not None:
            bucket = ctx.limiters.configure(key, rl.rate, burst=rl.burst) if rl else ctx.limiters.get(key)
        else:
            bucket = TokenBucket(rl.rate if rl else None, burst=rl.burst if rl else None, clock=ctx.clock, name=key)
        self._guards[key] = (breaker, bucket)
        return breaker, bucket

    @staticmethod
    async def _enter_breaker(breaker: CircuitBreaker) -> int:
        """Wait while the breaker is open (no attempt is spent), then take a call slot."""
        while True:
            await breaker.wait_until_closed_or_probe()
            try:
                return breaker.enter()
            except CircuitOpenError:
                continue  # another caller took the probe slot: wait again

    # -- requests ---------------------------------------------------------------------------------
    async def send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        params: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        read_limit: int | None = None,
        truncate: bool = False,
        follow_redirects: bool = False,
    ) -> HttpResponse:
        """Send one request with auth, breaker, rate limit and classification.

        Returns the response when its status is classified ``ok``; raises a
        :class:`RetryableError` or :class:`FatalError` otherwise. A 401 with a
        token-based auth drops the token and retries once; a second 401 is fatal.
        """
        self.check_url(url)
        if body is not None and len(body) > self.max_request:
            raise FatalError(f"the request body is {len(body)} bytes, more than max_request_bytes ({self.max_request})",
                             code="http.request_too_large")
        base_headers = headers or {}
        for name, value in base_headers.items():
            if _bad_header(name) or _bad_header(value):
                raise FatalError(f"header {name[:40]!r} holds a line break or NUL", code="http.header_invalid")
        limit = self.max_response if read_limit is None else read_limit
        breaker, bucket = self.guards(url)
        auth = self.auth
        refreshed = False
        while True:
            h = dict(base_headers)
            p = list(params or ())
            marker = await auth.apply(h, p) if auth is not None else None
            retry_auth = False
            # the breaker counts this call (plain enter/leave: no context-manager machinery per request)
            generation = None
            if breaker is not None:
                try:
                    generation = breaker.enter()  # closed: no waiting at all
                except CircuitOpenError:
                    generation = await self._enter_breaker(breaker)
            try:
                if not bucket.try_acquire():
                    await bucket.acquire()
                resp = await self._exchange(method, url, h, p, body, limit, truncate, follow_redirects,
                                            strip=(auth is not None))
                if resp.status >= 400 or _limits_said(resp.headers):
                    bucket.observe_headers(resp.headers, status=resp.status)
                verdict = classify_status(resp.status, resp.headers, self.overrides)
                if verdict != "ok":
                    if resp.status == 401 and auth is not None and auth.refreshable and not refreshed:
                        retry_auth = True
                    else:
                        raise error_for_response(
                            resp.status, resp.headers, resp.body[:1024], resp.url, method=method,
                            now=self.clock.now(), overrides=self.overrides,
                        )
            except BaseException as exc:
                if breaker is not None and generation is not None:
                    breaker.leave(generation, exc)
                raise
            if breaker is not None and generation is not None:
                breaker.leave(generation)
            if not retry_auth:
                return resp
            assert auth is not None
            auth.invalidate(marker)
            refreshed = True

    async def _exchange(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        params: list[tuple[str, str]],
        body: bytes | None,
        limit: int,
        truncate: bool,
        follow: bool,
        *,
        strip: bool,
    ) -> HttpResponse:
        session = self.session
        target = start = self._parse(url)
        hops = self.cfg.max_redirects if follow else 0
        for _hop in range(hops + 1):
            self.requests += 1
            try:
                async with session.request(
                    method, target, headers=headers, params=params or None, data=body,
                    allow_redirects=False, timeout=self.timeout,
                ) as resp:
                    location = resp.headers.get("Location")
                    if follow and resp.status in _REDIRECTS and location:
                        await resp.read()  # let the connection be reused
                        try:
                            nxt = target.join(URL(location))
                        except ValueError:
                            raise FatalError("a redirect points to an invalid URL", code="http.redirect_invalid") \
                                from None
                        self.check_url(nxt)
                        if resp.status == 303 or (resp.status in (301, 302) and method not in ("GET", "HEAD")):
                            method, body = "GET", None
                        if nxt.origin() != start.origin() and strip:
                            # never hand credentials to another origin
                            headers = {k: v for k, v in headers.items()
                                       if k.lower() not in ("authorization", "cookie") and not is_sensitive_header(k)}
                            params = []
                        elif nxt.query:
                            params = []
                        target = nxt
                        continue
                    where = str(target)
                    data, cut = await self._read(resp, limit, truncate, where)
                    return HttpResponse(resp.status, resp.headers, data, where, cut)
            except SeamlineError:
                raise
            except TimeoutError:
                raise RetryableError(
                    f"{method} {redact_url(str(target))} timed out after {self.cfg.request_timeout:g}s",
                    code="http.timeout",
                ) from None
            except (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError) as exc:
                raise FatalError(f"{method} {redact_url(str(target))}: TLS failed ({type(exc).__name__})",
                                 code="http.tls") from None
            except aiohttp.ClientConnectorError as exc:
                cause = exc.__cause__ or exc.__context__
                if isinstance(cause, EgressError):
                    raise cause from None
                raise RetryableError(f"{method} {redact_url(str(target))}: cannot connect ({type(exc).__name__})",
                                     code="http.connect") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientPayloadError, aiohttp.ClientOSError,
                    ConnectionError) as exc:
                raise RetryableError(
                    f"{method} {redact_url(str(target))}: the connection broke ({type(exc).__name__})",
                    code="http.disconnected",
                ) from None
            except aiohttp.ClientError as exc:
                raise RetryableError(f"{method} {redact_url(str(target))}: {type(exc).__name__}",
                                     code="http.client_error") from None
        raise FatalError(f"more than {hops} redirects from {redact_url(url)}", code="http.too_many_redirects")

    async def _read(self, resp: aiohttp.ClientResponse, limit: int, truncate: bool, url: str) -> tuple[bytes, bool]:
        length = resp.content_length
        if length is not None and length > limit and not truncate:
            raise _too_large(url, limit)
        encoding = resp.headers.get("Content-Encoding", "")
        # compressed bodies: allow a generous wire size, the decompressed size is what is limited
        wire_limit = limit if not encoding else max(limit, 1 << 20)
        if length is not None and length <= wire_limit:
            data = await resp.read()
            if encoding:
                return _decompress(data, encoding, limit, url, truncate)
            return data, False
        buf = bytearray()
        cut = False
        async for chunk in resp.content.iter_chunked(_CHUNK):
            buf += chunk
            if len(buf) > wire_limit:
                if not truncate:
                    raise _too_large(url, limit)
                cut = True
                del buf[wire_limit:]
                resp.close()
                break
        data = bytes(buf)
        if encoding and not cut:
            data, cut = _decompress(data, encoding, limit, url, truncate)
        return data, cut

    async def _post_token(self, url: str, form: dict[str, str], headers: dict[str, str]) -> tuple[
            int, Mapping[str, str], bytes]:
        """POST a token request (no breaker, no redirects, small body limit)."""
        from urllib.parse import urlencode

        self.check_url(url)
        h = {"Content-Type": "application/x-www-form-urlencoded", **headers}
        seconds = getattr(self.auth, "timeout", None) or self.cfg.request_timeout
        try:
            async with self.session.post(url, data=urlencode(form).encode(), headers=h, allow_redirects=False,
                                         timeout=aiohttp.ClientTimeout(total=seconds)) as resp:
                data, _ = await self._read(resp, 256 * 1024, False, url)
                return resp.status, CIMultiDictProxy(CIMultiDict(resp.headers)), data
        except SeamlineError:
            raise
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RetryableError(f"the token endpoint {redact_url(url)} cannot be reached ({type(exc).__name__})",
                                 code="auth.oauth2.unavailable") from None

    def __repr__(self) -> str:
        return f"HttpClient(auth={self.auth!r})"

