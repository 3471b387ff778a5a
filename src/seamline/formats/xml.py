"""Safe XML parsing and a round-trippable XML <-> dict convention.

Parsing (:func:`parse_document`, :func:`decode`) never loads a DTD, never
expands or resolves an entity, never touches the network or the file
system, keeps libxml2's "no huge tree" limits and refuses input over
``max_bytes``. A document with a ``<!DOCTYPE`` is refused before libxml2
reads it:

* ``format.xml.external_forbidden`` -- it points at an external DTD or
  declares an external entity (XXE);
* ``format.xml.entity_forbidden`` -- it declares entities (billion laughs,
  quadratic blowup);
* ``format.xml.dtd_forbidden`` -- any other DOCTYPE.

The dict convention (see ``docs/adr/0003-xml-convention.md``):

* ``decode(b"<a x='1'><b>t</b><b/></a>") == {"a": {"@x": "1", "b": ["t", None]}}``
* attributes are ``@name``; text next to attributes or children is ``#text``;
* an element with neither attributes nor children is its text (or ``None``);
* repeated child elements become a list; ``force_list`` makes lists always;
* names keep the document's prefixes (``soap:Envelope``) and namespace
  declarations appear as ``@xmlns`` / ``@xmlns:soap``; pass ``namespaces``
  (``{uri: prefix}``) to name elements by URI instead, whatever prefixes
  the sender chose;
* every value is a string: no type guessing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any

from lxml import etree

from seamline.formats import _xmlsafe
from seamline.formats.errors import XmlError

__all__ = [
    "ATTR_PREFIX",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "TEXT_KEY",
    "decode",
    "encode",
    "parse_document",
]

#: Default size limit for one document (16 MiB).
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: Default element nesting limit for :func:`decode` (libxml2 stops at 256 anyway).
DEFAULT_MAX_DEPTH = 128
#: Prefix of attribute keys.
ATTR_PREFIX = "@"
#: Key of an element's text when it also has attributes or children.
TEXT_KEY = "#text"

_HARD_MAX_DEPTH = 256
_XML_NS = "http://www.w3.org/XML/1998/namespace"


# --------------------------------------------------------------------------- parsing


def parse_document(
    data: bytes | bytearray | memoryview | str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    base_url: str | None = None,
) -> etree._ElementTree:
    """Parse XML with every dangerous feature off; return the lxml tree.

    Comments and processing instructions are dropped, CDATA becomes text.
    Raises :class:`XmlError` (``format.xml.*``). ``base_url`` only names the
    document in error messages; nothing is ever loaded from it.
    """
    return _xmlsafe.parse(data, max_bytes=max_bytes, base_url=base_url)


# --------------------------------------------------------------------------- XML -> dict


class _Namer:
    """Turns lxml's ``{uri}local`` names into dict keys."""

    def __init__(self, namespaces: Mapping[str, str] | None) -> None:
        self.by_uri = dict(namespaces) if namespaces is not None else None

    def element(self, el: etree._Element) -> str:
        tag: str = el.tag
        if tag[0] != "{":
            return tag
        uri, local = tag[1:].split("}", 1)
        if self.by_uri is None:
            return f"{el.prefix}:{local}" if el.prefix else local
        prefix = self.by_uri.get(uri)
        if prefix is None:
            return tag
        return f"{prefix}:{local}" if prefix else local

    def attribute(self, key: str, nsmap: Mapping[str | None, str]) -> str:
        if key[0] != "{":
            return ATTR_PREFIX + key
        uri, local = key[1:].split("}", 1)
        if uri == _XML_NS:
            return f"{ATTR_PREFIX}xml:{local}"
        if self.by_uri is None:
            for prefix, bound in nsmap.items():
                if bound == uri and prefix:
                    return f"{ATTR_PREFIX}{prefix}:{local}"
            return ATTR_PREFIX + key
        prefix = self.by_uri.get(uri)
        return f"{ATTR_PREFIX}{prefix}:{local}" if prefix else ATTR_PREFIX + key


def decode(
    data: bytes | bytearray | memoryview | str,
    *,
    force_list: Collection[str] | bool = (),
    namespaces: Mapping[str, str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> dict[str, Any]:
    """Parse XML safely and convert it to a dict (see the module docstring).

    ``force_list`` names child elements (as dict keys) that are always lists,
    or ``True`` for all of them. ``namespaces`` maps namespace URIs to the
    prefixes to use in keys (``""`` for none); URIs not in it stay as
    ``{uri}local`` and no ``@xmlns`` keys are produced.
    """
    if not 1 <= max_depth <= _HARD_MAX_DEPTH:
        raise ValueError(f"max_depth must be between 1 and {_HARD_MAX_DEPTH}")
    tree = parse_document(data, max_bytes=max_bytes)
    root = tree.getroot()
    namer = _Namer(namespaces)
    if force_list is True:

        def always(_: str) -> bool:
            return True

        forced: Callable[[str], bool] = always
    elif force_list is False:
        forced = frozenset().__contains__
    else:
        forced = frozenset(force_list).__contains__
    track_ns = namespaces is None and bool(root.nsmap or _has_nested_ns(root))
    converter = _Converter(namer, forced, max_depth, track_ns)
    return {namer.element(root): converter.convert(root, {}, 1)}


def _has_nested_ns(root: etree._Element) -> bool:
    """True when any element declares a namespace (walked in C; Python sees only declarations)."""
    return next(iter(etree.iterwalk(root, events=("start-ns",))), None) is not None


class _Converter:
    def __init__(self, namer: _Namer, forced: Callable[[str], bool], max_depth: int, track_ns: bool) -> None:
        self.namer = namer
        self.forced = forced
        self.max_depth = max_depth
        self.track_ns = track_ns

    def convert(self, el: etree._Element, parent_nsmap: Mapping[str | None, str], depth: int) -> Any:
        if depth > self.max_depth:
            raise XmlError(
                f"XML is nested deeper than the limit of {self.max_depth} elements",
                code="format.xml.depth",
                details={"max_depth": self.max_depth, "line": el.sourceline},
            )
        attributes = el.items()
        if self.track_ns:
            nsmap: Mapping[str | None, str] = el.nsmap
            declared = [(p, u) for p, u in nsmap.items() if parent_nsmap.get(p) != u]
        else:
            nsmap, declared = parent_nsmap, []
        has_children = len(el) > 0
        if not has_children and not attributes and not declared:
            return el.text
        out: dict[str, Any] = {}
        for prefix, uri in declared:
            out[f"{ATTR_PREFIX}xmlns:{prefix}" if prefix else f"{ATTR_PREFIX}xmlns"] = uri
        attribute_name = self.namer.attribute
        for key, value in attributes:
            out[attribute_name(key, nsmap)] = value
        if not has_children:
            text = el.text
            if text is not None:
                out[TEXT_KEY] = text
            return out
        lists: set[str] = set()
        pieces = [el.text]
        element_name, convert, forced = self.namer.element, self.convert, self.forced
        for child in el:
            pieces.append(child.tail)
            name = element_name(child)
            value = convert(child, nsmap, depth + 1)
            if name in lists:
                out[name].append(value)
            elif name in out:
                out[name] = [out[name], value]
                lists.add(name)
            elif forced(name):
                out[name] = [value]
                lists.add(name)
            else:
                out[name] = value
        text = "".join(p for p in pieces if p and not p.isspace()).strip()
        if text:
            out[TEXT_KEY] = text
        return out


# --------------------------------------------------------------------------- dict -> XML


def _encode_error(message: str, path: str) -> XmlError:
    return XmlError(f"cannot encode as XML at {path}: {message}", code="format.xml.encode", details={"path": path})


def _text(value: Any, path: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    raise _encode_error(f"unsupported value of type {type(value).__name__}", path)


class _Builder:
    def __init__(self, namespaces: Mapping[str, str] | None, max_depth: int) -> None:
        self.namespaces = namespaces
        self.max_depth = max_depth

    def qname(self, name: str, scope: Mapping[str | None, str], attribute: bool, path: str) -> str:
        if name.startswith("{"):
            if "}" not in name:
                raise _encode_error(f"bad name {name!r}", path)
            return name
        if ":" in name:
            prefix, local = name.split(":", 1)
            if prefix == "xml":
                return f"{{{_XML_NS}}}{local}"
            uri = scope.get(prefix)
            if uri is None:
                raise _encode_error(f"namespace prefix {prefix!r} is not declared", path)
            return f"{{{uri}}}{local}"
        if attribute:
            return name
        uri = scope.get(None)
        return f"{{{uri}}}{name}" if uri else name

    def element(
        self,
        parent: etree._Element | None,
        name: str,
        value: Any,
        scope: Mapping[str | None, str],
        path: str,
        depth: int,
    ) -> etree._Element:
        if depth > self.max_depth:
            raise _encode_error(f"nested deeper than {self.max_depth} levels (or recursive)", path)
        declared: dict[str | None, str] = {}
        if parent is None and self.namespaces:
            declared = {prefix or None: uri for uri, prefix in self.namespaces.items()}
        if isinstance(value, Mapping):
            for key, item in value.items():
                if key == f"{ATTR_PREFIX}xmlns":
                    declared[None] = str(item)
                elif isinstance(key, str) and key.startswith(f"{ATTR_PREFIX}xmlns:"):
                    declared[key[len(ATTR_PREFIX) + 6 :]] = str(item)
        inner = {**scope, **declared} if declared else scope
        qname = self.qname(name, inner, False, path)
        try:
            if parent is None:
                el = etree.Element(qname, nsmap=declared or None)
            else:
                el = etree.SubElement(parent, qname, nsmap=declared or None)
        except ValueError as exc:
            raise _encode_error(str(exc), path) from None
        if isinstance(value, Mapping):
            self.fill(el, value, inner, path, depth)
        elif isinstance(value, list | tuple):
            raise _encode_error("a list must be the value of a repeated child element, not nested", path)
        else:
            self.set_text(el, _text(value, path), path)
        return el

    def set_text(self, el: etree._Element, text: str | None, path: str) -> None:
        try:
            el.text = text
        except ValueError as exc:
            raise _encode_error(str(exc), path) from None

    def fill(
        self, el: etree._Element, value: Mapping[Any, Any], scope: Mapping[str | None, str], path: str, depth: int
    ) -> None:
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise _encode_error(f"keys must be non-empty strings, got {key!r}", path)
            if key == TEXT_KEY:
                self.set_text(el, _text(item, f"{path}/{key}"), path)
            elif key.startswith(ATTR_PREFIX):
                if key == f"{ATTR_PREFIX}xmlns" or key.startswith(f"{ATTR_PREFIX}xmlns:"):
                    continue
                attr_path = f"{path}/{key}"
                text = _text(item, attr_path)
                if text is None:
                    continue
                qname = self.qname(key[len(ATTR_PREFIX) :], scope, True, attr_path)
                try:
                    el.set(qname, text)
                except ValueError as exc:
                    raise _encode_error(str(exc), attr_path) from None
            elif isinstance(item, list | tuple):
                for index, element in enumerate(item):
                    self.element(el, key, element, scope, f"{path}/{key}[{index}]", depth + 1)
            else:
                self.element(el, key, item, scope, f"{path}/{key}", depth + 1)


def encode(
    obj: Mapping[str, Any],
    *,
    namespaces: Mapping[str, str] | None = None,
    pretty: bool = False,
    xml_declaration: bool = True,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> bytes:
    """Encode a dict in the convention of :func:`decode` as UTF-8 XML.

    ``obj`` has exactly one key, the root element. Values may be dicts,
    lists (repeated elements), strings, numbers, booleans (``true``/``false``),
    dates (ISO 8601) or ``None`` (empty element). ``namespaces`` is the same
    ``{uri: prefix}`` map given to :func:`decode`. Raises
    ``format.xml.encode`` for anything that cannot be written.
    """
    if not isinstance(obj, Mapping) or len(obj) != 1:
        raise _encode_error("the dict must have exactly one key, the root element", "/")
    ((name, value),) = obj.items()
    if not isinstance(name, str) or name.startswith((ATTR_PREFIX, "#")):
        raise _encode_error(f"bad root element name {name!r}", "/")
    if isinstance(value, list | tuple):
        raise _encode_error("the root element cannot be a list", f"/{name}")
    builder = _Builder(namespaces, max_depth)
    root = builder.element(None, name, value, {}, f"/{name}", 1)
    out: bytes = etree.tostring(root, encoding="UTF-8", xml_declaration=xml_declaration, pretty_print=pretty)
    return out
