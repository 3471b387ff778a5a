"""Message metadata on the wire: message id, correlation id and W3C ``traceparent``.

Every broker connector carries three envelope fields in the broker's own
metadata (Kafka record headers, AMQP properties and headers, NATS headers,
...) and reads them back on the way in, so one transaction can be followed
across systems:

=================  ====================  =====================================
envelope field     header written        also accepted when reading
=================  ====================  =====================================
``id``             ``message-id``        ``message_id``, ``x-message-id``
``correlation_id`` ``correlation-id``    ``correlation_id``, ``x-correlation-id``
traceparent        ``traceparent``       (W3C Trace Context, lower case)
``content_type``   ``content-type``      ``content_type``
=================  ====================  =====================================

Connectors with a native field use it instead of the header where one exists
(AMQP ``message_id``/``correlation_id``/``content_type`` properties, NATS
``Nats-Msg-Id``). Header names are matched case-insensitively on the way in.

A message that arrives without a valid ``traceparent`` gets a fresh one
(``00-<32 hex trace id>-<16 hex span id>-01``), kept in
``message.headers["traceparent"]`` so every later hop carries the same trace.

Headers whose names start with a transport prefix (``kafka.``, ``amqp.``,
``nats.``, ``file.``, ...) describe where a message was read from (offset,
delivery tag, stream sequence); they are not copied to the next broker.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from seamline.core.errors import FatalError
from seamline.core.message import Message
from seamline.formats.errors import JsonError
from seamline.formats.json import decode as strict_json

__all__ = [
    "CONTENT_TYPE_HEADER",
    "CORRELATION_HEADER",
    "JSON_CONTENT_TYPES",
    "MESSAGE_ID_HEADER",
    "NOT_DECODED",
    "PLACEHOLDER",
    "TRACEPARENT",
    "TRANSPORT_PREFIXES",
    "connect_again",
    "content_type_of",
    "decode_message",
    "ensure_traceparent",
    "field_at",
    "incoming",
    "incoming_pairs",
    "is_valid_traceparent",
    "new_traceparent",
    "outgoing_from",
    "outgoing_headers",
    "render_placeholders",
    "safe_url",
]

MESSAGE_ID_HEADER = "message-id"
CORRELATION_HEADER = "correlation-id"
TRACEPARENT = "traceparent"
CONTENT_TYPE_HEADER = "content-type"

_ID_ALIASES = frozenset({"message-id", "message_id", "x-message-id", "messageid"})
_CORR_ALIASES = frozenset({"correlation-id", "correlation_id", "x-correlation-id", "correlationid"})
_CT_ALIASES = frozenset({"content-type", "content_type"})

#: header prefixes that describe the transport a message was read from; never forwarded
TRANSPORT_PREFIXES: tuple[str, ...] = (
    "kafka.",
    "amqp.",
    "rabbitmq.",
    "nats.",
    "mqtt.",
    "redis.",
    "sqs.",
    "s3.",
    "file.",
    "sql.",
    "http.",
    "webhook.",
)

_TP = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")


# Trace ids need to be unique, not secret: a PRNG seeded from the OS avoids a system call per message
# (which, on a busy process, also means giving up and waiting for the GIL twice per message).
_rng = random.Random(os.urandom(32))
# whole trace contexts made ahead: one call of the generator and one pass serve many messages
_MADE: list[str] = []
_MADE_AHEAD = 256


def _reseed() -> None:
    """A forked process (the workers of ``settings.workers``) draws its own ids: without this it would
    repeat its parent's, and every other child's, trace contexts one for one."""
    _rng.seed(os.urandom(32))
    _MADE.clear()


if hasattr(os, "register_at_fork"):  # (not on Windows, which has no fork either)
    os.register_at_fork(after_in_child=_reseed)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16


# Trace contexts this process made or checked lately: ``ensure_traceparent`` on the way out finds
# the value ``incoming`` left on the way in without checking it again. Bounded; when full it starts
# over, and a value it no longer holds is simply checked again.
_CHECKED: set[str] = set()
_CHECKED_MAX = 16384


def _checked(value: str) -> str:
    if len(_CHECKED) >= _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED.add(value)
    return value


def new_traceparent() -> str:
    """A fresh W3C trace context: version 00, random trace and span ids, sampled."""
    while True:
        try:
            return _MADE.pop()
        except IndexError:  # (another thread may take the last ones between a refill and the pop)
            _make_ahead()


def _make_ahead() -> None:
    # 8 bytes a group, in hex: a trace id is two groups, a span id one
    groups = iter(_rng.randbytes(24 * _MADE_AHEAD).hex("-", 8).split("-"))
    made = [f"00-{a}{b}-{c}-01" for a, b, c in zip(groups, groups, groups, strict=True)]
    # all-zero ids are invalid (2^-64 odds at worst): such a one is left out
    made = [tp for tp in made if tp[3:35] != _ZERO_TRACE and tp[36:52] != _ZERO_SPAN]
    # they are known good: ``ensure_traceparent`` need not check them again
    if len(_CHECKED) + len(made) > _CHECKED_MAX:
        _CHECKED.clear()
    _CHECKED.update(made)
    _MADE.extend(made)


def is_valid_traceparent(value: str | None) -> bool:
    """True for a well-formed ``traceparent`` (not version ff, ids not all zero)."""
    if not value:
        return False
    if len(value) != 55:
        value = value.strip()
    if _TP.fullmatch(value) is None:
        return False
    return value[:2] != "ff" and value[3:35] != _ZERO_TRACE and value[36:52] != _ZERO_SPAN


def ensure_traceparent(message: Message) -> str:
    """The message's ``traceparent``; a new one is generated and stored when missing or invalid."""
    tp = message.headers.get(TRACEPARENT)
    if tp is not None and (tp in _CHECKED or is_valid_traceparent(tp)):
        return tp
    tp = new_traceparent()
    message.headers[TRACEPARENT] = tp
    return tp


# header name -> what it is, computed once per distinct name (a broker sees the same few names)
_KEEP, _TRANSPORT, _ID, _CORR, _CT, _TRACE = range(6)
_KINDS: dict[str, int] = {}


def _kind(name: str) -> int:
    kind = _KINDS.get(name)
    if kind is None:
        lk = name.lower()
        if lk in _ID_ALIASES:
            kind = _ID
        elif lk in _CORR_ALIASES:
            kind = _CORR
        elif lk in _CT_ALIASES:
            kind = _CT
        elif lk == TRACEPARENT:
            kind = _TRACE
        elif lk.startswith(TRANSPORT_PREFIXES):
            kind = _TRANSPORT
        else:
            kind = _KEEP
        if len(_KINDS) < 4096:  # bounded: header names are not under a sender's control everywhere
            _KINDS[name] = kind
    return kind


def outgoing_headers(
    message: Message,
    *,
    message_id: bool = True,
    correlation_id: bool = True,
    content_type: bool = True,
    exclude: Iterable[str] = (),
) -> dict[str, str]:
    """The headers to write for ``message``: its own headers (transport headers dropped),
    ``traceparent`` and, unless the connector carries them natively, id, correlation id
    and content type."""
    ensure_traceparent(message)
    return outgoing_from(message.headers, message.id, message.correlation_id, message.content_type,
                         message_id=message_id, correlation_id=correlation_id, content_type=content_type,
                         exclude=exclude)


def outgoing_from(
    headers: Mapping[str, str],
    mid: str,
    corr: str,
    ctype: str,
    *,
    message_id: bool = True,
    correlation_id: bool = True,
    content_type: bool = True,
    exclude: Iterable[str] = (),
) -> dict[str, str]:
    """:func:`outgoing_headers` from a message's parts: ``headers`` (holding a valid ``traceparent``),
    id, correlation id and content type (for a worker that has them without a message)."""
    skip = {e.lower() for e in exclude} if exclude else None
    out: dict[str, str] = {}
    kinds = _KINDS
    for k, v in headers.items():
        kind = kinds.get(k)
        if kind is None:
            kind = _kind(k)
        if kind in (_KEEP, _TRACE) and (skip is None or k.lower() not in skip):
            out[k] = v
        # transport headers and the id / correlation / content-type aliases are not passed on
    if message_id:
        out[MESSAGE_ID_HEADER] = mid
    if correlation_id:
        out[CORRELATION_HEADER] = corr
    if content_type:
        out[CONTENT_TYPE_HEADER] = ctype
    return out


def incoming(
    headers: Mapping[str, str],
    *,
    message_id: str | None = None,
    correlation_id: str | None = None,
    content_type: str | None = None,
) -> tuple[str | None, str | None, str | None, dict[str, str]]:
    """Split wire headers into ``(id, correlation_id, content_type, headers)``.

    Native values passed in win over headers. The id, correlation id and
    content type headers are removed from the returned headers; a missing or
    invalid ``traceparent`` is replaced by a fresh one.
    """
    return _incoming(headers.items(), False, message_id, correlation_id, content_type)


def incoming_pairs(
    pairs: Sequence[tuple[str, bytes | None]] | None,
) -> tuple[str | None, str | None, str | None, dict[str, str]]:
    """:func:`incoming` of headers as ``(name, value bytes)`` pairs (Kafka's), each value read as
    UTF-8 (a byte that is not is replaced, a missing value is empty). A name given more than once
    counts as in a mapping of the pairs: its last value, at its first place."""
    if not pairs:
        return _incoming((), True, None, None, None)
    if len(pairs) > 1 and len({k for k, _ in pairs}) < len(pairs):
        pairs = list({k: v for k, v in pairs}.items())
    return _incoming(pairs, True, None, None, None)


def _incoming(
    pairs: Iterable[tuple[str, Any]],
    raw: bool,
    message_id: str | None,
    correlation_id: str | None,
    content_type: str | None,
) -> tuple[str | None, str | None, str | None, dict[str, str]]:
    rest: dict[str, str] = {}
    kinds = _KINDS
    for k, v in pairs:
        if raw:
            v = "" if v is None else v.decode("utf-8", "replace")
        kind = kinds.get(k)
        if kind is None:
            kind = _kind(k)
        if kind <= _TRANSPORT:  # _KEEP or _TRANSPORT
            rest[k] = v
        elif kind == _ID:
            message_id = message_id or v
        elif kind == _CORR:
            correlation_id = correlation_id or v
        elif kind == _CT:
            content_type = content_type or v
        elif is_valid_traceparent(v):
            rest[TRACEPARENT] = _checked(v.strip())
    if TRACEPARENT not in rest:
        rest[TRACEPARENT] = new_traceparent()
    return message_id or None, correlation_id or None, content_type or None, rest


#: content types whose bodies are parsed as JSON on the way in
JSON_CONTENT_TYPES = ("application/json", "application/x-ndjson")
_JSON = "application/json"
#: ``decode_message``'s ``parsed`` when the source decoded nothing ahead
NOT_DECODED: Any = object()


def content_type_of(declared: str | None, default: str) -> str:
    """A record's content type: the one it declares (parameters dropped, lower case), else ``default``."""
    if declared is None:
        return default
    if declared in JSON_CONTENT_TYPES:
        return declared
    return declared.split(";")[0].strip().lower() or default


def decode_message(
    raw: bytes,
    wire_headers: Mapping[str, str],
    *,
    default_id: str,
    default_content_type: str,
    transport: Mapping[str, str],
    message_id: str | None = None,
    correlation_id: str | None = None,
    content_type: str | None = None,
    max_bytes: int | None = None,
    connector: str = "broker",
    now: float | None = None,
    parsed: Any = NOT_DECODED,
) -> tuple[Message, BaseException | None]:
    """Build the message for one received record; the error is set when it cannot be decoded.

    ``now`` (Unix seconds, default: the current time) stamps the message; a source that
    decodes a batch of records passes one time for all of them.

    JSON bodies are decoded here, strictly (``formats.json.decode``: duplicate keys, integers
    too big for a float and the rest are refused, as the ``file`` source refuses them), so a
    record that is not such JSON goes to the dead-letter queue at once with its
    ``format.json.*`` code (its text kept in ``{"$raw": ...}``) instead of failing later in a
    step or passing on a changed value. ``parsed`` is the body a source already decoded with
    the batch it came in (``formats.json.decode_each``: the value, or its ``JsonError``).
    """
    mid, corr, ctype, headers = incoming(
        wire_headers, message_id=message_id, correlation_id=correlation_id, content_type=content_type
    )
    headers.update(transport)
    ctype = content_type_of(ctype, default_content_type)
    mid = mid or default_id
    if now is None:
        now = time.time()
    if max_bytes is not None and len(raw) > max_bytes:
        err = FatalError(
            f"message {mid} is {len(raw)} bytes (limit {max_bytes})", code=f"{connector}.message_too_large"
        )
        return Message.adopt({"$size": len(raw)}, None, mid, corr, headers, _JSON, now), err
    if ctype in JSON_CONTENT_TYPES:
        body = parsed
        if body is NOT_DECODED:
            try:
                body = strict_json(raw, max_bytes=max_bytes if max_bytes is not None else max(len(raw), 1))
            except JsonError as exc:
                body = exc
        if isinstance(body, JsonError):
            err = FatalError(f"message {mid}: invalid JSON: {body}", code=body.code, details=dict(body.details))
            text = raw[:4096].decode("utf-8", "replace")
            return Message.adopt({"$raw": text}, None, mid, corr, headers, _JSON, now), err
        return Message.adopt(body, raw, mid, corr, headers, ctype, now), None
    return Message.adopt(raw, raw, mid, corr, headers, ctype, now), None


_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@/\s]*@")


def safe_url(url: str) -> str:
    """``amqp://user:secret@host/`` → ``amqp://user:***@host/`` (for logs and errors)."""
    return _URL_PASSWORD.sub(r"\1***@", url)


async def connect_again(
    connect: Callable[[], Awaitable[None]],
    disconnect: Callable[[], Awaitable[None]],
    error: Callable[[BaseException], BaseException],
) -> None:
    """Drop what is left of a broken connection and open a new one; a failure becomes ``error(exc)``.

    Sinks call this (under their own lock) when their connection is gone, so a batch after a broker
    restart reconnects instead of failing for good.
    """
    await disconnect()
    try:
        await connect()
    except Exception as exc:  # CancelledError is a BaseException: it passes through untouched
        await disconnect()
        raise error(exc) from exc


def field_at(body: Any, path: str) -> Any:
    """The value at a dotted path in a JSON body (``customer.id``); None when any step is missing."""
    cur = body
    for part in path.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


#: ``{id}``, ``{correlation_id}``, ``{headers.NAME}``, ``{body.PATH}`` in a destination template
PLACEHOLDER = re.compile(r"\{([a-z_]+(?:\.[^{}]+)?)\}")


def render_placeholders(
    template: str, m: Message, *, code: str, what: str = "placeholder", clean: Callable[[str], str] = str
) -> str:
    """Fill a destination template from a message; an unknown or empty placeholder is a
    :class:`FatalError` with ``code`` (the message goes to the DLQ, naming the placeholder)."""

    def sub(mt: re.Match[str]) -> str:
        ref = mt.group(1)
        if ref == "id":
            return m.id
        if ref == "correlation_id":
            return m.correlation_id
        if ref.startswith("headers."):
            v = m.headers.get(ref[8:])
        elif ref.startswith("body."):
            v = field_at(m.body, ref[5:])
        else:
            raise FatalError(f"unknown {what} {{{ref}}}", code=code)
        if v is None or v == "":
            raise FatalError(f"{what} {{{ref}}} has no value", code=code)
        return clean(str(v))

    return PLACEHOLDER.sub(sub, template)
