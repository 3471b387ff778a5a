"""XSLT 1.0 transformations (lxml/libxslt) with hostile stylesheets refused.

A stylesheet is parsed with the hardened XML parser (no DTD, entities or
external loads: ``format.xml.*``), then checked before compiling:

* extension elements (``extension-element-prefixes``, e.g. Xalan's
  ``redirect:write`` or EXSLT's ``exsl:document``) and calls to extension
  functions outside the harmless EXSLT sets (common, math, sets, strings,
  dates-and-times) -- e.g. Xalan's Java bridge -- give
  ``format.xslt.extension_forbidden``;
* ``xsl:include`` / ``xsl:import`` give ``format.xslt.include_forbidden``;
* ``document()`` and ``xsl:result-document`` give
  ``format.xslt.access_forbidden``.

It is then compiled with ``XSLTAccessControl.DENY_ALL`` (no file or network
reads or writes, no directory creation) and without lxml's regular
expression extension, so anything the checks missed still cannot touch
the outside world at run time (``format.xslt.access_forbidden``). Other
run-time failures, including ``xsl:message terminate="yes"``, give
``format.xslt.runtime``. Parameters are passed as string literals, never as
XPath, so they cannot inject expressions.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lxml import etree

from seamline.formats import _xmlsafe
from seamline.formats.errors import XsltError

__all__ = ["ALLOWED_FUNCTION_NAMESPACES", "DEFAULT_MAX_BYTES", "Stylesheet", "transform"]

#: Default size limit for a stylesheet and for a document to transform (16 MiB).
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: Namespaces whose (side-effect free) extension functions stylesheets may call.
ALLOWED_FUNCTION_NAMESPACES = frozenset(
    {
        "http://exslt.org/common",
        "http://exslt.org/math",
        "http://exslt.org/sets",
        "http://exslt.org/strings",
        "http://exslt.org/dates-and-times",
    }
)

_XSL = "http://www.w3.org/1999/XSL/Transform"
_EXPRESSION_ATTRIBUTES = frozenset({"select", "test", "match", "use", "count", "from", "value"})
_STRING_LITERAL = re.compile(r"\"[^\"]*\"|'[^']*'")
_PREFIXED_CALL = re.compile(r"(?<![\w.\-:$])([A-Za-z_][\w.\-]*):([A-Za-z_][\w.\-]*)\s*\(")
_DOCUMENT_CALL = re.compile(r"(?<![\w.\-:$])document\s*\(")
_AVT = re.compile(r"\{([^{}]*)\}")


def _forbidden(message: str, code: str, element: etree._Element | None = None) -> XsltError:
    details = {"line": element.sourceline} if element is not None else {}
    where = f" (line {element.sourceline})" if element is not None and element.sourceline else ""
    return XsltError(message + where, code=code, details=details)


def _expressions(element: etree._Element) -> list[str]:
    """The XPath expressions in an element's attributes (whole values or ``{...}`` parts)."""
    found: list[str] = []
    is_xsl = isinstance(element.tag, str) and element.tag.startswith(f"{{{_XSL}}}")
    for name, value in element.attrib.items():
        if is_xsl and name in _EXPRESSION_ATTRIBUTES:
            found.append(value)
        else:
            found.extend(_AVT.findall(value.replace("{{", "").replace("}}", "")))
    return found


def _check(stylesheet: etree._ElementTree) -> None:
    """Refuse extension elements/functions, includes and document access before compiling."""
    for element in stylesheet.getroot().iter():
        if not isinstance(element.tag, str):
            continue
        if element.tag in (f"{{{_XSL}}}include", f"{{{_XSL}}}import"):
            raise _forbidden(
                "the stylesheet uses xsl:include/xsl:import; inline the stylesheet instead",
                "format.xslt.include_forbidden",
                element,
            )
        if element.tag == f"{{{_XSL}}}result-document":
            raise _forbidden(
                "the stylesheet writes documents (xsl:result-document)", "format.xslt.access_forbidden", element
            )
        is_xsl = element.tag.startswith(f"{{{_XSL}}}")
        marker = "extension-element-prefixes" if is_xsl else f"{{{_XSL}}}extension-element-prefixes"
        if element.get(marker):
            raise _forbidden(
                f"the stylesheet declares extension elements ({element.get(marker)})",
                "format.xslt.extension_forbidden",
                element,
            )
        for expression in _expressions(element):
            _check_expression(expression, element)


def _check_expression(expression: str, element: etree._Element) -> None:
    code = _STRING_LITERAL.sub("''", expression)
    if _DOCUMENT_CALL.search(code):
        raise _forbidden("the stylesheet reads documents with document()", "format.xslt.access_forbidden", element)
    for prefix, local in _PREFIXED_CALL.findall(code):
        uri = element.nsmap.get(prefix)
        if uri not in ALLOWED_FUNCTION_NAMESPACES:
            raise _forbidden(
                f"the stylesheet calls extension function {prefix}:{local}() in namespace {uri or 'unknown'}",
                "format.xslt.extension_forbidden",
                element,
            )


class Stylesheet:
    """A checked, compiled stylesheet; :meth:`transform` applies it.

    ``source`` is the stylesheet as bytes/str, or a :class:`~pathlib.Path`. Compiling
    raises :class:`XsltError` (or ``format.xml.*`` errors for XML that is
    not acceptable). Instances can be shared between threads.
    """

    def __init__(self, source: bytes | str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        data = Path(source).read_bytes() if isinstance(source, os.PathLike) else source
        self.max_bytes = max_bytes
        tree = _xmlsafe.parse(data, max_bytes=max_bytes)
        _check(tree)
        try:
            self._xslt = etree.XSLT(
                tree, access_control=etree.XSLTAccessControl.DENY_ALL, regexp=False, extensions=None
            )
        except etree.XSLTParseError as exc:
            raise XsltError(
                f"cannot compile the stylesheet: {_first_line(exc)}", code="format.xslt.bad_stylesheet"
            ) from None
        self._local = threading.local()

    def _compiled(self) -> etree.XSLT:
        # an XSLT object must not be applied from two threads at once; copies share the compiled form
        xslt: etree.XSLT | None = getattr(self._local, "xslt", None)
        if xslt is None:
            xslt = self._local.xslt = self._xslt.__copy__()
        return xslt

    def transform(
        self,
        document: bytes | str | etree._ElementTree | etree._Element,
        *,
        params: Mapping[str, Any] | None = None,
    ) -> bytes:
        """Transform ``document`` and return the serialised result (as ``xsl:output`` says).

        ``document`` is parsed with the hardened parser when given as
        bytes/str. ``params`` values are passed as string literals.
        """
        tree = _xmlsafe.parse(document, max_bytes=self.max_bytes) if isinstance(document, bytes | str) else document
        quoted = {name: etree.XSLT.strparam(str(value)) for name, value in (params or {}).items()}
        xslt = self._compiled()
        try:
            result = xslt(tree, **quoted)
        except etree.XSLTApplyError as exc:
            raise _apply_error(exc, xslt.error_log) from None
        return bytes(result)


def _apply_error(exc: etree.XSLTApplyError, log: Any) -> XsltError:
    messages: list[str] = []
    for text in [str(exc), *(entry.message for entry in log)]:
        line = text.split("\n", 1)[0].strip()
        if line and line != "unknown error" and line not in messages:
            messages.append(line)
    detail = "; ".join(messages[:3]) or "unknown error"
    if "denied" in detail:
        return XsltError(
            f"the stylesheet tried to access files or the network: {detail}", code="format.xslt.access_forbidden"
        )
    return XsltError(f"transformation failed: {detail}", code="format.xslt.runtime")


def _first_line(exc: BaseException) -> str:
    return str(exc).split("\n", 1)[0] or type(exc).__name__


def transform(
    stylesheet: bytes | str | os.PathLike[str],
    document: bytes | str | etree._ElementTree | etree._Element,
    *,
    params: Mapping[str, Any] | None = None,
) -> bytes:
    """Compile ``stylesheet`` and apply it once (prefer :class:`Stylesheet` to reuse it)."""
    return Stylesheet(stylesheet).transform(document, params=params)
