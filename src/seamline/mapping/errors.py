"""The one error type of the mapping language.

Every failure while compiling or evaluating a mapping is a
:class:`MappingError`. It keeps the JSONata error code (``T2001``, ``S0202``,
``D3137`` ...) so a user can look it up in the JSONata documentation, the
character position in the expression when it is known, and a stable seamline
``code`` of the form ``mapping.<jsonata code>``.

Errors raised by seamline's integration functions use a seamline-specific
code in place of the JSONata one (``xref_miss``, ``translate_miss``,
``timezone``, ...), so ``code`` is always ``"mapping." + jsonata_code``.
"""

from __future__ import annotations

import re
from typing import Any

from seamline.core.errors import FatalError

__all__ = ["MappingError", "error_from_engine_message"]

_CODE_RE = re.compile(r"\b([STDU]\d{4})\b")
_PREFIX_RE = re.compile(r"\b([STDU]\d{4}):\s*")

#: JSONata's reference implementation reports both evaluation guardrails
#: (stack depth and time limit) as ``U1001``; we do the same and say which
#: limit was hit in ``details["limit"]``.
LIMIT_CODE = "U1001"


class MappingError(FatalError):
    """A mapping expression failed to compile or evaluate.

    Attributes:
        jsonata_code: the JSONata error code (``T2001``) or, for seamline's
            integration functions, a seamline code (``xref_miss``).
        position: character index in the expression, or ``None`` if unknown.
        message: the human-readable text (without code or position).
        code: ``"mapping." + jsonata_code`` -- stable, for alerts and the DLQ.
        expression: the expression text, when known (used by :meth:`caret`).
    """

    code = "mapping.error"

    def __init__(
        self,
        message: str,
        *,
        jsonata_code: str = "D0000",
        position: int | None = None,
        expression: str | None = None,
        details: dict[str, Any] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(
            message,
            code=f"mapping.{jsonata_code}",
            details=details,
            retryable=retryable,
        )
        self.jsonata_code = jsonata_code
        self.position = position
        self.expression = expression

    def __str__(self) -> str:
        where = f" (at character {self.position})" if self.position is not None else ""
        return f"[{self.code}] {self.message}{where}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild,
            (self.message, self.jsonata_code, self.position, self.expression, self.details, self.retryable),
        )

    def caret(self, expr: str | None = None) -> str:
        """Render ``expr`` (default: the failing expression) with a caret under the error position.

        Multi-line expressions show only the offending line, prefixed with its
        line number. Without a known position the expression is returned as is.
        """
        text = expr if expr is not None else (self.expression or "")
        if self.position is None or not text:
            return text
        pos = max(0, min(self.position, len(text)))
        line_start = text.rfind("\n", 0, pos) + 1
        line_end = text.find("\n", pos)
        if line_end < 0:
            line_end = len(text)
        line = text[line_start:line_end]
        column = pos - line_start
        if "\n" in text:
            number = text.count("\n", 0, line_start) + 1
            prefix = f"{number} | "
            return f"{prefix}{line}\n{' ' * (len(prefix) + column)}^"
        return f"{line}\n{' ' * column}^"

    def with_details(self, **details: Any) -> MappingError:
        """Return this error with extra ``details`` merged in (for chaining context)."""
        self.details.update(details)
        return self


def _rebuild(
    message: str,
    jsonata_code: str,
    position: int | None,
    expression: str | None,
    details: dict[str, Any],
    retryable: bool,
) -> MappingError:
    return MappingError(
        message,
        jsonata_code=jsonata_code,
        position=position,
        expression=expression,
        details=details,
        retryable=retryable,
    )


def error_from_engine_message(
    text: str,
    *,
    expression: str | None = None,
    position: int | None = None,
) -> MappingError:
    """Turn an engine's error text (``"T2002: The right side ..."``) into a :class:`MappingError`."""
    match = _PREFIX_RE.search(text)
    if match:
        code = match.group(1)
        message = text[match.end() :]
    else:
        found = _CODE_RE.search(text)
        code = found.group(1) if found else "D0000"
        message = text.removeprefix("Parse error: ")
    details: dict[str, Any] = {}
    if code in ("D1011", "D1012"):
        details["limit"] = "depth" if code == "D1011" else "timeout"
        code = LIMIT_CODE
    elif code == "D2015":
        details["limit"] = "sequence"
    return MappingError(message, jsonata_code=code, position=position, expression=expression, details=details)
