"""Hardened lxml parsing shared by the XML, XSD and XSLT modules.

A ``<!DOCTYPE`` is refused by scanning the prolog before libxml2 sees the
document, so no DTD, entity declaration or external reference is ever
processed. The parser itself also has every loading feature off and a
resolver that answers any external load with nothing.
"""

from __future__ import annotations

import re
import threading
from typing import Any, NoReturn

from lxml import etree

from seamline.formats.errors import XmlError

__all__ = ["DenyResolver", "as_bytes", "make_parser", "parse", "reject_doctype", "syntax_error"]

_WS = re.compile(rb"[ \t\r\n]*")
_EXTERNAL_DOCTYPE = re.compile(rb"<!DOCTYPE\s+[^\s\[>]+\s+(?:SYSTEM|PUBLIC)\b")
_EXTERNAL_ENTITY = re.compile(rb"<!ENTITY\s+(?:%\s+)?[^\s>]+\s+(?:SYSTEM|PUBLIC)\b")
_UTF16_32 = (
    (b"\x00\x00\xfe\xff", "utf-32-be"),
    (b"\xff\xfe\x00\x00", "utf-32-le"),
    (b"\x00\x00\x00<", "utf-32-be"),
    (b"<\x00\x00\x00", "utf-32-le"),
    (b"\xfe\xff", "utf-16-be"),
    (b"\xff\xfe", "utf-16-le"),
    (b"\x00<\x00", "utf-16-be"),
    (b"<\x00?\x00", "utf-16-le"),
    (b"<\x00!\x00", "utf-16-le"),
)


# --------------------------------------------------------------------------- parsing


class DenyResolver(etree.Resolver):  # type: ignore[misc]
    """Answers every external load with an empty document (defence in depth)."""

    def resolve(self, url: str | None, pubid: str | None, context: Any) -> Any:
        return self.resolve_string("", context)


_local = threading.local()


def make_parser(resolver: etree.Resolver | None = None, *, override_utf8: bool = False) -> etree.XMLParser:
    """A new hardened parser whose external loads go to ``resolver`` (default: deny all)."""
    parser = etree.XMLParser(
        encoding="utf-8" if override_utf8 else None,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        attribute_defaults=False,
        huge_tree=False,
        remove_comments=True,
        remove_pis=True,
        collect_ids=False,
        strip_cdata=True,
    )
    parser.resolvers.add(resolver if resolver is not None else DenyResolver())
    return parser


def _default_parser(override_utf8: bool) -> etree.XMLParser:
    """The deny-all parser of this thread (lxml parsers are not thread-safe)."""
    key = "utf8" if override_utf8 else "auto"
    parser: etree.XMLParser | None = getattr(_local, key, None)
    if parser is None:
        parser = make_parser(override_utf8=override_utf8)
        setattr(_local, key, parser)
    return parser


def as_bytes(data: bytes | bytearray | memoryview | str, max_bytes: int) -> tuple[bytes, bool]:
    if isinstance(data, str):
        if len(data) > max_bytes:
            _too_large(len(data), max_bytes)
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise XmlError(
                f"invalid Unicode at character {exc.start}", code="format.xml.syntax", details={"offset": exc.start}
            ) from None
        is_text = True
    elif isinstance(data, bytes | bytearray | memoryview):
        raw, is_text = bytes(data), False
    else:
        raise TypeError(f"expected bytes or str, got {type(data).__name__}")
    if len(raw) > max_bytes:
        _too_large(len(raw), max_bytes)
    return raw, is_text


def _too_large(size: int, max_bytes: int) -> NoReturn:
    raise XmlError(
        f"XML document of {size} bytes is larger than the limit of {max_bytes} bytes",
        code="format.xml.too_large",
        details={"size": size, "max_bytes": max_bytes},
    )


def _ascii_view(raw: bytes) -> bytes:
    """The document in an ASCII-compatible encoding, for scanning its prolog."""
    for marker, codec in _UTF16_32:
        if raw.startswith(marker):
            return raw.decode(codec, errors="replace").encode("utf-8")
    return raw


def _doctype_at(raw: bytes) -> int:
    """Offset of a ``<!DOCTYPE`` in the prolog (before the root element), or -1."""
    pos = 3 if raw.startswith(b"\xef\xbb\xbf") else 0
    while True:
        match = _WS.match(raw, pos)
        pos = match.end() if match else pos
        if raw.startswith(b"<?", pos):
            end = raw.find(b"?>", pos + 2)
        elif raw.startswith(b"<!--", pos):
            end = raw.find(b"-->", pos + 4)
        elif raw.startswith(b"<!DOCTYPE", pos):
            return pos
        else:
            return -1
        if end < 0:
            return -1
        pos = end + 2 if raw[end] == ord("?") else end + 3


def reject_doctype(raw: bytes) -> None:
    view = _ascii_view(raw)
    at = _doctype_at(view)
    if at < 0:
        return
    decl = view[at:]
    if _EXTERNAL_DOCTYPE.match(decl) or _EXTERNAL_ENTITY.search(decl):
        raise XmlError(
            "XML refers to an external DTD or entity; external references are forbidden",
            code="format.xml.external_forbidden",
            details={"offset": at},
        )
    if b"<!ENTITY" in decl:
        raise XmlError(
            "XML declares entities; entity declarations are forbidden",
            code="format.xml.entity_forbidden",
            details={"offset": at},
        )
    raise XmlError(
        "XML has a DOCTYPE declaration; DTDs are forbidden", code="format.xml.dtd_forbidden", details={"offset": at}
    )


_LOCATION_SUFFIX = re.compile(r"(?:,? line \d+)?(?:, line \d+, column \d+)?(?: \(.*\))?$")


def syntax_error(exc: etree.XMLSyntaxError) -> XmlError:
    message = _LOCATION_SUFFIX.sub("", str(exc.msg or exc)) or "not well-formed"
    line, column = exc.position if exc.position else (exc.lineno, None)
    code = "format.xml.syntax"
    if "depth" in message.lower():
        code = "format.xml.depth"
        message = "elements are nested deeper than the parser allows (256)"
    elif "huge" in message.lower():
        code = "format.xml.too_large"
    where = f" at line {line}, column {column}" if line else ""
    return XmlError(f"invalid XML{where}: {message}", code=code, details={"line": line, "column": column})


def parse(
    data: bytes | bytearray | memoryview | str,
    *,
    max_bytes: int,
    base_url: str | None = None,
    parser: etree.XMLParser | None = None,
) -> etree._ElementTree:
    """Check size and prolog, then parse with a hardened parser."""
    raw, is_text = as_bytes(data, max_bytes)
    reject_doctype(raw)
    if parser is None:
        parser = _default_parser(is_text)
    try:
        root = etree.fromstring(raw, parser, base_url=base_url)
    except etree.XMLSyntaxError as exc:
        raise syntax_error(exc) from None
    tree: etree._ElementTree = root.getroottree()
    if tree.docinfo.doctype:  # unreachable unless the prolog scan was fooled
        raise XmlError("XML has a DOCTYPE declaration; DTDs are forbidden", code="format.xml.dtd_forbidden")
    return tree
