"""The ``soap`` connector: call WSDL operations as a sink or as a call step.

The WSDL is read once when the flow opens (a file relative to the flow file,
or an ``http(s)`` URL) and checked for the configured ``operation``. Each
message then becomes one SOAP call:

* **request** -- the operation's parameters are built from the message with
  a mapping (``request: "{'id': order_no, 'name': customer.name}"``, or one
  expression per parameter); without one, the body (an object) is used as it
  is. Expressions see the body; ``$id``, ``$correlation_id`` and ``$headers``
  are bound to the message's.
* **sink** -- the call is the delivery; several calls of a batch run at once
  (``concurrency``) and each failed message is reported on its own.
* **step** (``soap`` step) -- the response (plain JSON data) is merged into
  the message: ``merge:`` is a mapping over ``{"body": ..., "response": ...}``
  that gives the new body, ``target:`` sets the response at a dotted path of
  the body, and with neither the response becomes the body.

Security: a WS-Security UsernameToken (PasswordText, or PasswordDigest with
``digest: true``) is added to every call; its password is a secret that is
only revealed while the envelope is written. Fault strings, fault details and
HTTP error snippets are scrubbed of every known secret before they reach an
error message, the journal, the DLQ or a log -- servers that echo the request
into a fault cannot leak the password through seamline.

Errors are classified for the retry policy:

* a fault ``Client*`` (SOAP 1.1) or ``Sender`` (1.2): fatal, ``soap.fault.client``;
* a fault ``Server*`` or ``Receiver``: retryable, ``soap.fault.server``;
* any other fault code: fatal, ``soap.fault.other``;
* an HTTP error without a SOAP fault: by status, ``http.status.NNN``;
* a timeout or a connection failure: retryable, ``soap.timeout`` / ``soap.connection``;
* a request that does not fit the operation: fatal, ``soap.request.invalid``;
* a response that is not SOAP or too large: fatal, ``soap.response.invalid`` / ``soap.response.too_large``.

A fault's code, string, actor, SOAP 1.2 subcodes and ``detail`` (as JSON
data) are in the error's ``details``. ``fault_classes`` overrides the verdict
per fault code (``{"Server.Validation": fatal}``).

The WSDL, its imports and the endpoint pass the egress guard (``egress``,
the same settings as the http connector's: loopback and private addresses
need ``allow_loopback`` / ``allow_private``); DTDs and entities are refused.

zeep is imported when a flow opens, never at module import.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, model_validator

from seamline.config.models import CallStepConfig, ComponentConfig, SinkConfig
from seamline.config.types import ByteSize, Duration, MaybeSecret, SecretStr
from seamline.connectors.http import EgressSettings, TlsSettings
from seamline.core.component import BuildContext, Sink, Step, write_each
from seamline.core.errors import FatalError, RetryableError, SeamlineError
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.resilience.http_classify import error_for_response, parse_retry_after, redact_url
from seamline.security.redaction import scrub_text
from seamline.security.secrets import Secret

if TYPE_CHECKING:
    import ssl

    import aiohttp

    from seamline.mapping import Expression
    from seamline.security.egress import EgressPolicy

__all__ = [
    "RequestTemplate",
    "ResponseMerge",
    "SoapCallStep",
    "SoapCaller",
    "SoapOptions",
    "SoapSink",
    "SoapSinkConfig",
    "SoapStepConfig",
    "WsSecurityConfig",
    "egress_policy",
    "fault_error",
    "jsonable",
    "require",
    "scrub_library_logs",
    "ssl_option",
    "transport_error",
    "xml_to_data",
]

log = logging.getLogger("seamline.connectors.soap")

_MAX_TEXT = 500
_MAX_NODES = 200

# -- config ---------------------------------------------------------------------------------------


class WsSecurityConfig(ComponentConfig):
    """WS-Security UsernameToken added to the header of every call."""

    username: str = Field(..., min_length=1, description="The user name sent in the token.")
    password: SecretStr = Field(
        ..., description="The password, e.g. `${env:CRM_PASSWORD}`; never printed, logged or stored."
    )
    digest: bool = Field(
        False, description="Send a PasswordDigest (SHA-1 over nonce, created time and password) instead of the text."
    )


class SoapOptions(ComponentConfig):
    """Options shared by the soap sink and the soap step."""

    wsdl: str = Field(
        ...,
        description="The WSDL: a file path (relative to the flow file) or an http(s) URL; loaded once at open.",
    )
    operation: str = Field(..., min_length=1, description="The WSDL operation to call, e.g. `CreateCustomer`.")
    service: str | None = Field(None, description="Service of the WSDL to use (default: the first).")
    port: str | None = Field(None, description="Port of the service to use (default: the first).")
    address: str | None = Field(
        None, description="Endpoint URL to call instead of the WSDL's `soap:address` (e.g. per environment)."
    )
    request: str | dict[str, str] | None = Field(
        None,
        description="The operation's parameters from the message: one JSONata expression giving an object, or "
        "one expression per parameter. Expressions see the body and `$id`, `$correlation_id`, `$headers`. "
        "Default: the body itself.",
    )
    wsse: WsSecurityConfig | None = Field(None, description="WS-Security UsernameToken for every call.")
    headers: dict[str, MaybeSecret] = Field(
        default_factory=dict,
        description="Extra HTTP headers (also used to fetch a WSDL URL); values may use ${env:NAME}.",
    )
    timeout: Duration = Field(30.0, description="Time limit of one call (and of loading a WSDL URL).")
    max_response_size: ByteSize = Field(
        10 * 2**20, description="Larger responses are refused (`soap.response.too_large`)."
    )
    fault_classes: dict[str, Literal["retryable", "fatal"]] = Field(
        default_factory=dict,
        description="Verdict per fault code, overriding Client=fatal / Server=retryable: a key matches the code "
        "without prefix (`Server.Validation`), its dotted sub-codes, or a SOAP 1.2 subcode.",
    )
    idempotency_header: str | None = Field(
        "Idempotency-Key", description="HTTP header carrying the message id, or null for none."
    )
    tls: TlsSettings = Field(default_factory=TlsSettings, description="TLS verification settings.")
    egress: EgressSettings = Field(
        default_factory=EgressSettings,
        description="Which hosts may be called (the WSDL, its imports and the endpoint): loopback and private "
        "addresses need `allow_loopback` / `allow_private`.",
    )


class SoapSinkConfig(SinkConfig, SoapOptions):
    """Call a SOAP operation for every message; the call is the delivery."""

    concurrency: int = Field(4, ge=1, le=64, description="Calls of one batch in flight at once.")


class SoapStepConfig(CallStepConfig, SoapOptions):
    """Call a SOAP operation and merge the response into the message."""

    merge: str | None = Field(
        None,
        description="JSONata over `{\"body\": ..., \"response\": ...}` giving the new body, "
        "e.g. `$merge([body, {'customer': response}])`.",
    )
    target: str | None = Field(
        None, description="Dotted path of the body where the response is set, e.g. `crm.customer`."
    )

    @model_validator(mode="after")
    def _one_way(self) -> SoapStepConfig:
        if self.merge is not None and self.target is not None:
            raise ValueError("give either 'merge' or 'target', not both")
        return self


# -- helpers shared by the sink and the step ------------------------------------------------------


def _scrub(text: Any, limit: int = _MAX_TEXT) -> str:
    s = scrub_text("" if text is None else str(text))
    return s if len(s) <= limit else s[:limit] + "..."


def jsonable(value: Any) -> Any:
    """Zeep values as JSON data: dicts and lists kept, decimals, dates, bytes and XML turned into JSON types."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, decimal.Decimal):
        if value.is_finite():
            if value == value.to_integral_value():
                return int(value)
            as_float = float(value)
            if decimal.Decimal(repr(as_float)) == value:
                return as_float
        return str(value)  # keep precision rather than round silently
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    tag = getattr(value, "tag", None)
    if isinstance(tag, str):  # an lxml element (xsd:any content)
        return xml_to_data(value)
    return str(value)


def _local(tag: Any) -> str:
    text = str(tag)
    return text.rsplit("}", 1)[-1] if text.startswith("{") else text.rsplit(":", 1)[-1]


def xml_to_data(element: Any) -> Any:
    """An XML element as JSON data: local names as keys, repeated names as lists, leaves as (scrubbed) text."""
    budget = [_MAX_NODES]

    def conv(el: Any, depth: int) -> Any:
        budget[0] -= 1
        children = [c for c in el if isinstance(c.tag, str)]
        if not children or depth >= 8 or budget[0] <= 0:
            text = (el.text or "").strip()
            return _scrub(text) if text else None
        out: dict[str, Any] = {}
        for c in children:
            if budget[0] <= 0:
                out["..."] = "truncated"
                break
            key = _local(c.tag)
            value = conv(c, depth + 1)
            if key in out:
                prev = out[key]
                out[key] = [*prev, value] if isinstance(prev, list) else [prev, value]
            else:
                out[key] = value
        return out

    return conv(element, 0)


def _set_path(body: Any, path: str, value: Any) -> Any:
    if not isinstance(body, dict):
        raise FatalError(
            f"cannot set the response at '{path}': the body is not an object",
            code="soap.merge.invalid",
        )
    root = dict(body)
    cur = root
    parts = path.split(".")
    for part in parts[:-1]:
        nxt = cur.get(part)
        nxt = dict(nxt) if isinstance(nxt, dict) else {}
        cur[part] = nxt
        cur = nxt
    cur[parts[-1]] = value
    return root


class RequestTemplate:
    """Build call arguments from a message with mapping expressions (compiled once)."""

    def __init__(self, spec: str | dict[str, str] | None, *, prefix: str, what: str) -> None:
        from seamline.mapping import compile as compile_expr

        self.what = what
        self.code = f"{prefix}.request.invalid"
        self.whole: Expression | None = None
        self.fields: dict[str, Expression] = {}
        if isinstance(spec, str):
            self.whole = compile_expr(spec)
        elif spec:
            self.fields = {name: compile_expr(expr) for name, expr in spec.items()}

    def render(self, message: Message) -> dict[str, Any]:
        from seamline.mapping import UNDEFINED

        body = message.body
        if self.whole is None and not self.fields:
            if not isinstance(body, dict):
                raise FatalError(
                    f"the body is not an object, so it cannot be the {self.what}; configure a mapping",
                    code=self.code,
                )
            return dict(body)
        bindings = {"id": message.id, "correlation_id": message.correlation_id, "headers": message.headers}
        if self.whole is not None:
            result = self.whole.evaluate(body, bindings)
            if result is None:
                return {}
            if not isinstance(result, dict):
                raise FatalError(
                    f"the {self.what} mapping gave {type(result).__name__}, expected an object",
                    code=self.code,
                )
            return result
        out: dict[str, Any] = {}
        for name, expr in self.fields.items():
            value = expr.evaluate(body, bindings, undefined=UNDEFINED)
            if value is not UNDEFINED:
                out[name] = value
        return out


class ResponseMerge:
    """Put a call's response into the message: a merge mapping, a target path, or the response as the body."""

    def __init__(self, merge: str | None, target: str | None) -> None:
        from seamline.mapping import compile as compile_expr

        self.expr = compile_expr(merge) if merge else None
        self.target = target

    def apply(self, message: Message, response: Any, headers: Mapping[str, str] | None = None) -> Message:
        if self.expr is not None:
            body = self.expr.evaluate({"body": message.body, "response": response})
        elif self.target:
            body = _set_path(message.body, self.target, response)
        else:
            body = response
        out = message.evolve(body)
        if headers:
            out.headers.update(headers)
        return out


class _ScrubFilter(logging.Filter):
    """Remove known secrets from a library's log records (gql and zeep log whole requests at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a broken record is the library's problem; never fail the caller
            return True
        clean = scrub_text(text)
        if clean != text:
            record.msg, record.args = clean, ()
        return True


_SCRUB = _ScrubFilter()


def scrub_library_logs(*names: str) -> None:
    """Install the secret scrubber on the named library loggers (once per logger)."""
    for name in names:
        logger = logging.getLogger(name)
        if _SCRUB not in logger.filters:
            logger.addFilter(_SCRUB)


def require(module: str, connector: str, package: str) -> None:
    """Fail when the flow is built, with what to install, if a connector's library is missing."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise FatalError(
            f"the {connector} connector needs the {package} package: pip install '{package}'",
            code=f"{connector}.dependency_missing",
        )


def egress_policy(settings: EgressSettings) -> EgressPolicy:
    """The egress guard of a component (the same settings as the http connector's)."""
    from seamline.security.egress import EgressPolicy

    return EgressPolicy(
        settings.allow_hosts, allow_loopback=settings.allow_loopback, allow_private=settings.allow_private,
        allow_networks=settings.allow_networks, schemes=("http", "https"),
    )


def ssl_option(tls: TlsSettings, ctx: BuildContext) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl`` argument for the TLS settings: verification on unless switched off."""
    import ssl

    if tls.verify and tls.ca_file is None:
        return True
    if tls.verify:
        return ssl.create_default_context(cafile=str(ctx.resolve_path(tls.ca_file or "")))
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def transport_error(exc: BaseException, *, prefix: str, what: str) -> RetryableError | None:
    """A retryable error for a timeout or a connection failure, or None for anything else."""
    import aiohttp

    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return RetryableError(f"{what} timed out", code=f"{prefix}.timeout")
    if isinstance(exc, aiohttp.ClientConnectionError | ConnectionError | OSError):
        return RetryableError(f"{what} failed: {_scrub(exc, 300) or type(exc).__name__}", code=f"{prefix}.connection")
    return None


# -- faults ---------------------------------------------------------------------------------------


def _fault_category(code: str) -> Literal["client", "server", "other"]:
    top = code.split(".", 1)[0]
    if top in ("Client", "Sender"):
        return "client"
    if top in ("Server", "Receiver"):
        return "server"
    return "other"


def _override(code: str, subcodes: Sequence[str], classes: Mapping[str, str]) -> str | None:
    best: tuple[int, str] | None = None
    for key, verdict in classes.items():
        k = key.rsplit(":", 1)[-1]
        if k == code or code.startswith(k + ".") or k in subcodes:
            rank = len(k)
            if best is None or rank > best[0]:
                best = (rank, verdict)
    return best[1] if best else None


def fault_error(
    fault: Any,
    *,
    operation: str,
    url: str | None = None,
    status: int | None = None,
    headers: Mapping[str, str] | None = None,
    classes: Mapping[str, str] | None = None,
) -> RetryableError | FatalError:
    """Turn a zeep ``Fault`` into a classified, scrubbed seamline error."""
    raw_code = getattr(fault, "code", None)
    code = _local(raw_code) if raw_code else ""
    subcodes = [_local(getattr(s, "localname", None) or s) for s in (getattr(fault, "subcodes", None) or [])]
    string = _scrub(getattr(fault, "message", None), 1000)
    actor = getattr(fault, "actor", None)
    detail_el = getattr(fault, "detail", None)
    detail = xml_to_data(detail_el) if detail_el is not None and hasattr(detail_el, "tag") else (
        _scrub(detail_el, 1000) if detail_el else None
    )
    category = _fault_category(code)
    verdict = _override(code, subcodes, classes or {})
    if verdict is None:
        verdict = "retryable" if category == "server" else "fatal"
    shown = code or "no code"
    message = f"SOAP fault from {operation} ({shown}): {string or 'no fault string'}"
    details: dict[str, Any] = {
        "fault_code": code or None,
        "fault_string": string or None,
        "fault_actor": _scrub(actor) if actor else None,
        "subcodes": subcodes,
        "detail": detail,
        "operation": operation,
        "url": redact_url(url) if url else None,
        "status": status,
    }
    err_code = f"soap.fault.{category}"
    if verdict == "retryable":
        retry_after = parse_retry_after(headers.get("Retry-After")) if headers else None
        return RetryableError(message, code=err_code, retry_after=retry_after, details=details)
    return FatalError(message, code=err_code, details=details)


# -- the caller -----------------------------------------------------------------------------------


class _UsernameToken:
    """zeep's UsernameToken, made per call so the password is revealed only while the envelope is written."""

    def __init__(self, username: str, password: Secret, digest: bool) -> None:
        self.username = username
        self.password = password
        self.digest = digest

    def __repr__(self) -> str:
        return f"UsernameToken({self.username!r}, password={self.password!r})"

    def apply(self, envelope: Any, headers: Any) -> Any:
        from zeep.wsse.username import UsernameToken

        token = UsernameToken(self.username, self.password.reveal(), use_digest=self.digest)  # type: ignore[no-untyped-call]
        return token.apply(envelope, headers)  # type: ignore[no-untyped-call]

    def verify(self, envelope: Any) -> Any:
        return envelope


class _Reply:
    """The part of a response zeep's ``process_reply`` reads."""

    def __init__(self, status: int, headers: Any, content: bytes, encoding: str | None) -> None:
        self.status_code = status
        self.headers = headers
        self.content = content
        self.encoding = encoding


def _is_url(location: str) -> bool:
    return location.lower().startswith(("http://", "https://"))


def _guarded_transport(policy: EgressPolicy, timeout: float) -> Any:
    """zeep's (sync) transport for loading the WSDL and its imports, each URL checked by the egress guard."""
    import socket
    from urllib.parse import urlsplit

    import zeep
    from zeep.exceptions import TransportError

    from seamline.security.errors import EgressError

    class GuardedTransport(zeep.Transport):
        def _load_remote_data(self, url: str) -> bytes:
            policy.check_url(url)
            parts = urlsplit(url)
            host = parts.hostname or ""
            port = parts.port or (443 if parts.scheme == "https" else 80)
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError:
                infos = []  # let the request itself report the failure
            if infos and not any(policy.is_ip_allowed(str(info[4][0])) for info in infos):
                raise EgressError(f"{host} resolves only to blocked addresses", code="egress.blocked",
                                  details={"host": host})
            response = self.session.get(url, timeout=self.load_timeout, allow_redirects=False)
            if response.status_code != 200:
                raise TransportError(status_code=response.status_code)  # type: ignore[no-untyped-call]
            return response.content

    return GuardedTransport(timeout=timeout, operation_timeout=timeout)  # type: ignore[no-untyped-call]


class SoapCaller:
    """One WSDL operation: load the WSDL at open, then ``await call(message)`` per message."""

    def __init__(self, cfg: SoapOptions, ctx: BuildContext) -> None:
        require("zeep", "soap", "zeep")
        self.cfg = cfg
        self.ctx = ctx
        self.template = RequestTemplate(cfg.request, prefix="soap", what="operation's parameters")
        self.wsdl = cfg.wsdl if _is_url(cfg.wsdl) else str(ctx.resolve_path(cfg.wsdl))
        self._client: Any = None
        self._binding: Any = None
        self._operation: Any = None
        self.address: str = cfg.address or ""
        self._session: aiohttp.ClientSession | None = None
        self._headers = {k: (v.reveal() if isinstance(v, Secret) else v) for k, v in cfg.headers.items()}
        self.policy = egress_policy(cfg.egress)
        for url in (cfg.address, cfg.wsdl):
            if url and _is_url(url):
                self.policy.check_url(url)  # a host outside the allow list fails when the flow is built

    # -- lifecycle --

    async def open(self) -> None:
        import aiohttp

        await asyncio.to_thread(self._load_wsdl)
        self.policy.check_url(self.address)
        self._session = self.policy.client_session(
            timeout=aiohttp.ClientTimeout(total=self.cfg.timeout),
            connector_options={"ssl": ssl_option(self.cfg.tls, self.ctx), "limit": 64},
        )

    def _load_wsdl(self) -> None:
        import requests
        import zeep
        import zeep.exceptions

        scrub_library_logs("zeep.transports", "zeep.wsdl.bindings.soap", "urllib3.connectionpool")
        where = redact_url(self.wsdl) if _is_url(self.wsdl) else self.cfg.wsdl
        # imports of the WSDL (xsd:import, wsdl:import) are fetched, but only through the egress-guarded
        # transport; DTDs and entities are refused outright
        settings = zeep.Settings(strict=True, forbid_dtd=True, forbid_entities=True, forbid_external=False)
        transport = _guarded_transport(self.policy, self.cfg.timeout)
        transport.session.headers.update(self._headers)
        tls = self.cfg.tls
        transport.session.verify = str(self.ctx.resolve_path(tls.ca_file)) if tls.verify and tls.ca_file else tls.verify
        # errors are raised outside the except blocks: the library's exception (which may quote a
        # response or a URL with credentials) must not ride along as __context__ into the DLQ
        err: SeamlineError | None = None
        try:
            client = zeep.Client(  # type: ignore[no-untyped-call]
                self.wsdl, transport=transport, settings=settings,
                service_name=self.cfg.service, port_name=self.cfg.port,
            )
            service = client.service
        except SeamlineError as exc:  # the egress guard refused the WSDL or one of its imports
            err = exc
        except FileNotFoundError:
            err = FatalError(f"WSDL file not found: {where}", code="soap.wsdl.not_found")
        except requests.RequestException as exc:
            err = RetryableError(f"cannot load the WSDL from {where}: {_scrub(exc, 300)}", code="soap.wsdl.unavailable")
        except zeep.exceptions.TransportError as exc:
            err = RetryableError(
                f"cannot load the WSDL from {where}: HTTP {exc.status_code}", code="soap.wsdl.unavailable"
            )
        except (zeep.exceptions.Error, ValueError, KeyError, OSError) as exc:
            err = FatalError(f"invalid WSDL {where}: {_scrub(exc, 300)}", code="soap.wsdl.invalid")
        finally:
            transport.session.close()  # the WSDL is loaded; calls go through aiohttp
        if err is not None:
            raise err
        binding = service._binding
        operations = sorted(binding._operations)
        if self.cfg.operation not in binding._operations:
            raise FatalError(
                f"the WSDL {where} has no operation {self.cfg.operation!r} (it has: {', '.join(operations)})",
                code="soap.wsdl.operation",
            )
        if self.cfg.wsse is not None:
            client.wsse = _UsernameToken(self.cfg.wsse.username, self.cfg.wsse.password, self.cfg.wsse.digest)
        self._client = client
        self._binding = binding
        self._operation = binding.get(self.cfg.operation)
        self.address = self.cfg.address or service._binding_options.get("address") or ""
        if not self.address:
            raise FatalError(f"the WSDL {where} gives no soap:address: set 'address'", code="soap.wsdl.address")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- calls --
    # Library exceptions are turned into seamline errors that are raised *outside* the except
    # blocks, so the original (which may quote the request, security header included) is not
    # chained as __context__ and never reaches the DLQ's error chain.

    def _envelope(self, message: Message) -> tuple[bytes, dict[str, str]]:
        import zeep.exceptions
        from zeep.wsdl.utils import etree_to_string

        args = self.template.render(message)
        err: FatalError | None = None
        try:
            envelope, http_headers = self._binding._create(self.cfg.operation, (), args, client=self._client)
        except (TypeError, ValueError, zeep.exceptions.Error) as exc:
            err = FatalError(
                f"the request does not fit operation {self.cfg.operation}: {_scrub(exc, 400)}",
                code="soap.request.invalid",
            )
        if err is not None:
            raise err
        headers = {**self._headers, **{str(k): str(v) for k, v in http_headers.items()}}
        if self.cfg.idempotency_header:
            headers[self.cfg.idempotency_header] = message.id
        return etree_to_string(envelope), headers  # type: ignore[no-untyped-call]

    async def call(self, message: Message) -> Any:
        """Call the operation for ``message``; return the response as JSON data, or raise a classified error."""
        import aiohttp

        if self._session is None:
            raise RuntimeError("SoapCaller.open() was not called")
        data, headers = self._envelope(message)
        op = self.cfg.operation
        err: SeamlineError | None = None
        try:
            async with self._session.post(self.address, data=data, headers=headers, allow_redirects=False) as resp:
                content = await self._read(resp)
                reply = _Reply(resp.status, resp.headers.copy(), content, resp.charset)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            err = transport_error(exc, prefix="soap", what=f"SOAP call {op} to {redact_url(self.address)}") or (
                FatalError(f"SOAP call {op} failed: {_scrub(exc, 300)}", code="soap.call.failed")
            )
        if err is not None:
            raise err
        return self._interpret(reply)

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        limit = self.cfg.max_response_size
        if resp.content_length is not None and resp.content_length > limit:
            raise FatalError(
                f"the response of {self.cfg.operation} is {resp.content_length} bytes (limit {limit})",
                code="soap.response.too_large",
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > limit:
                raise FatalError(
                    f"the response of {self.cfg.operation} exceeds {limit} bytes", code="soap.response.too_large"
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _http_error(self, reply: _Reply) -> RetryableError | FatalError:
        return error_for_response(reply.status_code, reply.headers, reply.content[:2000], self.address, method="POST")

    def _interpret(self, reply: _Reply) -> Any:
        import zeep.exceptions
        from zeep.helpers import serialize_object

        status = reply.status_code
        ok = 200 <= status <= 299
        if not ok and not reply.content:
            raise self._http_error(reply)
        op = self.cfg.operation
        err: SeamlineError | None = None
        try:
            result = self._binding.process_reply(self._client, self._operation, reply)
        except zeep.exceptions.Fault as fault:
            if fault.code is None and not ok:  # an XML answer with an error status but no Fault element
                err = self._http_error(reply)
            else:
                err = fault_error(fault, operation=op, url=self.address, status=status, headers=reply.headers,
                                  classes=self.cfg.fault_classes)
        except (zeep.exceptions.TransportError, zeep.exceptions.XMLSyntaxError, zeep.exceptions.XMLParseError) as exc:
            err = self._http_error(reply) if not ok else FatalError(
                f"the response of {op} is not a SOAP message: {_scrub(exc, 300)}", code="soap.response.invalid"
            )
        except (zeep.exceptions.Error, ValueError, TypeError) as exc:
            err = FatalError(f"cannot read the response of {op}: {_scrub(exc, 300)}", code="soap.response.invalid")
        if err is not None:
            raise err
        if not ok:
            raise self._http_error(reply)
        return jsonable(serialize_object(result, dict))  # type: ignore[no-untyped-call]


# -- sink and step --------------------------------------------------------------------------------


class SoapSink(Sink):
    """Every message is one call; failures are reported per message (``BatchError``)."""

    def __init__(self, cfg: SoapSinkConfig, ctx: BuildContext) -> None:
        self.cfg = cfg
        self.caller = SoapCaller(cfg, ctx)

    async def open(self) -> None:
        await self.caller.open()

    async def close(self) -> None:
        await self.caller.close()

    async def write(self, batch: Sequence[Message]) -> None:
        sem = asyncio.Semaphore(self.cfg.concurrency)

        async def one(m: Message) -> None:
            async with sem:
                await self.caller.call(m)

        await write_each(one(m) for m in batch)


class SoapCallStep(Step):
    """Call the operation and merge the response into the message."""

    is_async = True

    def __init__(self, cfg: SoapStepConfig, ctx: BuildContext) -> None:
        self.caller = SoapCaller(cfg, ctx)
        self.merge = ResponseMerge(cfg.merge, cfg.target)

    async def open(self) -> None:
        await self.caller.open()

    async def close(self) -> None:
        await self.caller.close()

    def process(self, message: Message) -> Message:
        raise RuntimeError("the soap step is asynchronous")

    async def process_async(self, message: Message) -> Message:
        response = await self.caller.call(message)
        return self.merge.apply(message, response)


@register(
    "sink",
    "soap",
    config=SoapSinkConfig,
    summary="Call a WSDL operation per message (zeep); WS-Security UsernameToken; faults classified.",
    examples=(
        "soap: {wsdl: crm.wsdl, operation: CreateCustomer, "
        "request: \"{'id': id, 'name': name}\", wsse: {username: crm, password: '${env:CRM_PASSWORD}'}}",
    ),
)
def _soap_sink(cfg: SoapSinkConfig, ctx: BuildContext) -> SoapSink:
    return SoapSink(cfg, ctx)


@register(
    "step",
    "soap",
    config=SoapStepConfig,
    summary="Call a WSDL operation and merge the response into the message (enrichment).",
    examples=(
        "soap: {wsdl: 'https://crm.example.com/ws?wsdl', operation: GetCustomer, "
        "request: \"{'id': customer_id}\", target: customer}",
        "soap: {wsdl: crm.wsdl, operation: GetCustomer, merge: \"$merge([body, {'tier': response.tier}])\"}",
    ),
)
def _soap_step(cfg: SoapStepConfig, ctx: BuildContext) -> SoapCallStep:
    return SoapCallStep(cfg, ctx)
