"""Integration functions available in every mapping, and user-registered Python functions.

Built in (see the reference docs for each):

* ``$xref(table, key[, default])`` -- value from a lookup table (:mod:`.lookups`)
* ``$translate(mapName, code[, default])`` -- value from a value map
* ``$toTimezone(timestamp, zone[, policy])`` and ``$parseDateTime(text, format[, zone])``
  (:mod:`.timezones`)
* ``$uuid()`` -- a random UUID (version 4) as text
* ``$hash(algorithm, text)`` -- hex digest; sha256, sha1, md5, sha512 or blake2b
* ``$random()`` and ``$clone(value)`` -- standard JSONata functions the embedded engine lacks

Your own: :func:`register_function` adds a Python function to every mapping
compiled afterwards; ``compile(..., functions={...})`` adds functions to one
expression. A function receives plain Python values (JSON ``null`` and
JSONata *undefined* both arrive as ``None``) and returns a JSON-compatible
value. It may raise :class:`~seamline.mapping.MappingError` (fatal) or
:class:`~seamline.core.errors.RetryableError` (for example a timed-out
lookup); any other exception becomes a ``mapping.function_error``.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import random
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from seamline.mapping.errors import MappingError
from seamline.mapping.lookups import MISSING, Lookups, key_variants
from seamline.mapping.timezones import parse_datetime, to_timezone, to_timezone_in

__all__ = [
    "INTEGRATION_FUNCTIONS",
    "JSONATA_BUILTINS",
    "STANDINS",
    "ValueMaps",
    "clone",
    "hash_text",
    "is_trusted",
    "new_uuid",
    "random_number",
    "register_function",
    "registered_functions",
    "specialise",
    "unregister_function",
]

#: the standard JSONata function library; user functions may not shadow these
JSONATA_BUILTINS = frozenset(
    [
        "sum",
        "count",
        "max",
        "min",
        "average",
        "string",
        "substring",
        "substringBefore",
        "substringAfter",
        "lowercase",
        "uppercase",
        "length",
        "trim",
        "pad",
        "contains",
        "split",
        "join",
        "match",
        "replace",
        "now",
        "fromMillis",
        "toMillis",
        "formatNumber",
        "formatBase",
        "formatInteger",
        "parseInteger",
        "number",
        "abs",
        "floor",
        "ceil",
        "round",
        "power",
        "sqrt",
        "random",
        "millis",
        "boolean",
        "not",
        "exists",
        "append",
        "sort",
        "reverse",
        "shuffle",
        "distinct",
        "zip",
        "keys",
        "lookup",
        "spread",
        "merge",
        "sift",
        "each",
        "error",
        "assert",
        "type",
        "map",
        "filter",
        "single",
        "reduce",
        "base64encode",
        "base64decode",
        "encodeUrlComponent",
        "encodeUrl",
        "decodeUrlComponent",
        "decodeUrl",
        "eval",
        "clone",
    ]
)

_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HASHES = {"sha256", "sha1", "md5", "sha512", "blake2b"}


def hash_text(algorithm: Any, text: Any) -> str | None:
    """``$hash(algorithm, text)``: hex digest of the UTF-8 text. ``null`` text gives ``null``."""
    if text is None:
        return None
    if algorithm not in _HASHES:
        raise MappingError(
            f"$hash: unsupported algorithm {algorithm!r}; use one of {', '.join(sorted(_HASHES))}",
            jsonata_code="hash",
            details={"algorithm": algorithm},
        )
    if not isinstance(text, str):
        raise MappingError("$hash: the text must be a string (use $string() first)", jsonata_code="hash")
    return hashlib.new(algorithm, text.encode("utf-8")).hexdigest()


def random_number() -> float:
    """``$random()``: a pseudo-random number at least 0 and less than 1 (JSONata's ``$random``)."""
    return random.random()


def clone(value: Any = None) -> Any:
    """``$clone(value)``: a deep copy of an object or array (JSONata's ``$clone``); other values as
    they are."""
    return copy.deepcopy(value) if isinstance(value, dict | list) else value


def new_uuid() -> str:
    """``$uuid()``: a random (version 4) UUID as lowercase text."""
    return str(uuid.uuid4())


class ValueMaps:
    """Named code tables for ``$translate`` (``{"status": {"A": "active"}}``)."""

    def __init__(self, maps: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self._maps = {name: dict(values) for name, values in (maps or {}).items()}

    def names(self) -> list[str]:
        return sorted(self._maps)

    def view(self, name: str) -> dict[str, Any] | None:
        """Value map ``name`` (never changed): a string code found in it is what ``translate`` returns."""
        table = self._maps.get(name)
        if table is None or any(value.__class__ is tuple for value in table.values()):
            return None
        return table

    def translate(self, name: Any, code: Any = None, *default: Any) -> Any:
        """``$translate(mapName, code[, default])``: the value for ``code`` in value map ``mapName``.

        A ``null`` code gives ``null``; an unknown code fails the message with
        ``mapping.translate_miss`` unless a default is passed.
        """
        table = self._maps.get(name) if isinstance(name, str) else None
        if table is None:
            known = ", ".join(self.names()) or "none configured"
            raise MappingError(
                f"$translate: no value map {name!r} (value maps: {known})",
                jsonata_code="translate_map",
                details={"value_map": name},
            )
        if code is None:
            return None
        for variant in key_variants(code):
            value = table.get(variant, MISSING)
            if value is not MISSING:
                return value
        if default:
            return default[0]
        raise MappingError(
            f"$translate: code {code!r} not found in value map {name!r}",
            jsonata_code="translate_miss",
            details={"value_map": name, "code": code},
        )


_EMPTY_MAPS = ValueMaps()


def _default_xref(table: Any, key: Any = None, *default: Any) -> Any:
    return Lookups().xref(table, key, *default)


#: the integration functions every expression sees unless overridden
INTEGRATION_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "xref": _default_xref,
    "translate": _EMPTY_MAPS.translate,
    "toTimezone": to_timezone,
    "parseDateTime": parse_datetime,
    "uuid": new_uuid,
    "hash": hash_text,
    # standard JSONata functions the embedded engine does not have (see ``STANDINS``)
    "random": random_number,
    "clone": clone,
}

#: standard JSONata functions that seamline supplies itself: the embedded engine knows their names
#: but has no implementation ("Attempted to invoke a non-function")
STANDINS = frozenset({"random", "clone"})

_registry: dict[str, Callable[..., Any]] = {}
_registry_lock = threading.Lock()


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"function name {name!r} must be an identifier (letters, digits, _), without '$'")
    if name in JSONATA_BUILTINS:
        raise ValueError(f"${name} is a JSONata built-in function and cannot be replaced")


def register_function(name: str, fn: Callable[..., Any]) -> None:
    """Make ``fn`` callable as ``$name(...)`` in every mapping compiled afterwards.

    ``name`` is given without ``$``. Registering the same name again replaces
    the earlier function (including seamline's integration functions, which is
    how tests pin ``$uuid``). JSONata built-ins cannot be replaced.
    """
    _check_name(name)
    if not callable(fn):
        raise TypeError(f"register_function({name!r}, ...) needs a callable")
    with _registry_lock:
        _registry[name] = fn


def unregister_function(name: str) -> None:
    """Remove a function added with :func:`register_function` (no error if absent)."""
    with _registry_lock:
        _registry.pop(name, None)


def registered_functions(extra: Mapping[str, Callable[..., Any]] | None = None) -> dict[str, Callable[..., Any]]:
    """The function table for one expression: integration functions, then registered, then ``extra``."""
    with _registry_lock:
        table = {**INTEGRATION_FUNCTIONS, **_registry}
    if extra:
        for name, fn in extra.items():
            _check_name(name)
            if not callable(fn):
                raise TypeError(f"function ${name} is not callable")
            table[name] = fn
    return table


def is_trusted(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is one of seamline's integration functions.

    They return plain JSON values and calling them again has no effect beyond
    a fresh ``$uuid()``, which lets the compiler run them speculatively.
    """
    if any(fn is known for known in INTEGRATION_FUNCTIONS.values()):
        return True
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", "")
    return (isinstance(owner, Lookups) and name == "xref") or (isinstance(owner, ValueMaps) and name == "translate")


def max_positional(fn: Callable[..., Any]) -> int | None:
    """How many positional arguments ``fn`` accepts (``None``: any number)."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    count = 0
    for param in signature.parameters.values():
        if param.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if param.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            count += 1
    return count


class Specialised:
    """A faster form of one call of an integration function whose leading arguments are constants.

    Either ``table``: a dict such that for a *string* key (argument ``key``)
    found in it, the call returns that entry (anything else takes the full
    call); or ``call``: a function of the arguments at positions ``kept``
    that returns and raises exactly what the full call does.
    """

    __slots__ = ("call", "kept", "key", "table")

    def __init__(
        self,
        *,
        table: dict[Any, Any] | None = None,
        key: int = 1,
        call: Callable[..., Any] | None = None,
        kept: tuple[int, ...] = (),
    ) -> None:
        self.table = table
        self.key = key
        self.call = call
        self.kept = kept


#: marks an argument that is not a constant, for :func:`specialise`
NOT_CONSTANT: Any = object()


def specialise(fn: Callable[..., Any], args: list[Any]) -> Specialised | None:
    """A :class:`Specialised` form of ``fn(*args)``, where ``args`` holds constants or :data:`NOT_CONSTANT`.

    Covers ``$xref``/``$translate`` with a literal table over a table that
    never changes, and ``$toTimezone`` with a literal zone (resolved once).
    """
    owner: Any = getattr(fn, "__self__", None)
    method = getattr(fn, "__func__", None)
    table_function = (owner.__class__ is Lookups and method is Lookups.xref) or (
        owner.__class__ is ValueMaps and method is ValueMaps.translate
    )
    if table_function and len(args) >= 2 and args[0].__class__ is str:
        view = owner.view(args[0])
        return None if view is None else Specialised(table=view, key=1)
    if fn is to_timezone and 2 <= len(args) <= 3 and args[1].__class__ is str and NOT_CONSTANT not in args[1:]:
        try:
            convert = to_timezone_in(*args[1:])
        except MappingError:
            return None
        return Specialised(call=convert, kept=(0,))
    return None
