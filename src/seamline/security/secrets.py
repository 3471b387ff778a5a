"""A string type for credentials that never prints.

``Secret`` wraps a value so that ``str()``, ``repr()``, f-strings, logging,
pickling and JSON encoding never reveal it. Read it only through
``reveal()`` at the moment it is sent to the remote system.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

__all__ = ["Secret", "SecretRefError", "known_secret_values", "resolve_refs"]

_MASK = "**********"
# every revealed-once value, so redaction can scrub it from any text
_REGISTRY: set[str] = set()


class Secret:
    """An opaque credential. ``reveal()`` returns the value; nothing else does."""

    __slots__ = ("_source", "_value")

    def __init__(self, value: str, *, source: str = "inline") -> None:
        object.__setattr__(self, "_value", value)
        object.__setattr__(self, "_source", source)
        if value and len(value) >= 4:
            _REGISTRY.add(value)

    def reveal(self) -> str:
        return self._value  # type: ignore[no-any-return]

    @property
    def source(self) -> str:
        """Where the value came from (``env:NAME``, ``file:PATH``, ``inline``), safe to print."""
        return self._source  # type: ignore[no-any-return]

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Secret is immutable")

    def __repr__(self) -> str:
        return f"Secret({self._source!s}={_MASK})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self) -> Any:
        raise TypeError("Secret cannot be pickled")

    def __len__(self) -> int:
        return len(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        from pydantic_core import core_schema

        return core_schema.is_instance_schema(cls)


def known_secret_values() -> frozenset[str]:
    """Every secret value created in this process (for output scrubbing)."""
    return frozenset(_REGISTRY)


class SecretRefError(ValueError):
    code = "config.secret_ref"


_REF = re.compile(r"\$\{(env|file):([^}]+)\}")


def resolve_refs(value: str, *, base_dir: Path | None = None) -> str | Secret:
    """Resolve ``${env:NAME}`` and ``${file:PATH}`` references in ``value``.

    A string without references is returned unchanged. A string with any
    reference becomes a :class:`Secret` (the whole resolved string, so
    ``Bearer ${env:TOKEN}`` is secret too).
    """
    if "${" not in value:
        return value
    sources: list[str] = []

    def sub(m: re.Match[str]) -> str:
        kind, ref = m.group(1), m.group(2).strip()
        sources.append(f"{kind}:{ref}")
        if kind == "env":
            if ref not in os.environ:
                raise SecretRefError(f"environment variable {ref!r} is not set")
            return os.environ[ref]
        path = Path(ref)
        if base_dir is not None and not path.is_absolute():
            path = base_dir / path
        try:
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SecretRefError(f"cannot read secret file {ref!r}: {exc.strerror}") from None

    resolved = _REF.sub(sub, value)
    if not sources:
        return value
    return Secret(resolved, source=",".join(sources))
