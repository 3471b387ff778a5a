"""The ``undefined`` value of JSONata, distinct from JSON ``null`` (Python ``None``)."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["UNDEFINED", "Undefined", "is_undefined"]


class Undefined:
    """JSONata's *undefined*: "no value", as opposed to JSON ``null``.

    There is exactly one instance, :data:`UNDEFINED`. It is falsy. Pass it as
    the input document to evaluate an expression with no input, or as the
    ``undefined=`` argument of :meth:`Expression.evaluate` to tell an
    undefined result apart from ``null``.
    """

    _instance: Undefined | None = None

    def __new__(cls) -> Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __bool__(self) -> bool:
        return False

    def __reduce__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = Undefined()


def is_undefined(value: Any) -> bool:
    """True if ``value`` is JSONata's undefined."""
    return value is UNDEFINED
