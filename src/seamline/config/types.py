"""Reusable config field types: durations, byte sizes, secrets."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

from seamline.security.secrets import Secret, resolve_refs

__all__ = ["ByteSize", "Duration", "MaybeSecret", "SecretStr", "parse_duration", "parse_size"]

_DUR = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DUR_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``250ms``, ``5s``, ``10m``, ``2h``, ``1d`` or a number of seconds → seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 5s, 10m or 2h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DUR.match(value)
        if m:
            return float(m.group(1)) * _DUR_UNITS[m.group(2)]
    raise ValueError(f"expected a duration such as 500ms, 5s, 10m or 2h, got {value!r}")


_SIZE = re.compile(r"^\s*(\d+)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.I)
_SIZE_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}


def parse_size(value: Any) -> int:
    """``512``, ``64KiB``, ``10MB`` → bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m:
            return int(m.group(1)) * _SIZE_UNITS[(m.group(2) or "b").lower()]
    raise ValueError(f"expected a size such as 512, 64KiB or 10MB, got {value!r}")


def _to_secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a string or a ${env:NAME} / ${file:PATH} reference")
    resolved = resolve_refs(value)
    return resolved if isinstance(resolved, Secret) else Secret(resolved)


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": _DUR.pattern}]}),
]
ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0}, {"type": "string", "pattern": _SIZE.pattern}]}),
]
SecretStr = Annotated[
    Secret,
    BeforeValidator(_to_secret),
    PlainSerializer(lambda s: str(s), return_type=str),
    WithJsonSchema({"type": "string", "description": "a value or a ${env:NAME} / ${file:PATH} reference"}),
]


def _maybe_secret(value: Any) -> Any:
    if isinstance(value, str):
        return resolve_refs(value)
    return value


#: a plain string, or a Secret when it holds ${env:...} / ${file:...} references
MaybeSecret = Annotated[
    Secret | str,
    BeforeValidator(_maybe_secret),
    PlainSerializer(lambda s: str(s), return_type=str),
    WithJsonSchema({"type": "string", "description": "a value, may contain ${env:NAME} / ${file:PATH} references"}),
]
