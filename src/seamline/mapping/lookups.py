"""Lookup tables behind ``$xref(table, key[, default])``.

A table maps a key to a value. Four sources exist (see
:class:`seamline.mapping.config.LookupConfig`):

* ``inline`` -- a mapping written in the flow file;
* ``csv`` -- two columns of a CSV file, loaded once;
* ``sql`` -- a query returning ``key, value`` rows; the whole table is loaded
  and reloaded after ``ttl`` seconds;
* ``http`` -- one GET per key (``{key}`` in the URL template), each answer
  cached for ``ttl`` seconds. A 404 is a miss; timeouts, connection errors,
  429 and 5xx raise :class:`~seamline.core.errors.RetryableError` so the
  message is retried rather than dead-lettered.

Keys are compared as given first and then as text (``42`` finds ``"42"``),
because CSV and HTTP keys are always text while JSON keys may be numbers.
"""

from __future__ import annotations

import csv
import json
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Protocol

from seamline.core.clock import SYSTEM_CLOCK, Clock
from seamline.core.errors import RetryableError
from seamline.mapping.errors import MappingError

__all__ = [
    "MISSING",
    "CsvTable",
    "HttpTable",
    "InlineTable",
    "LookupTable",
    "Lookups",
    "SqlTable",
    "key_variants",
]


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: returned by :meth:`LookupTable.get` when the key is not in the table
MISSING: Final = _Missing()


def key_variants(key: Any) -> tuple[Any, ...]:
    """The forms under which ``key`` is looked up: itself, then as text."""
    if isinstance(key, str):
        return (key,)
    if isinstance(key, bool):
        return (key, "true" if key else "false")
    if isinstance(key, float) and key.is_integer():
        return (key, str(int(key)))
    if isinstance(key, int | float):
        return (key, str(key))
    return (key,)


def _find(data: Mapping[Any, Any], key: Any) -> Any:
    for variant in key_variants(key):
        try:
            return data[variant]
        except (KeyError, TypeError):
            continue
    return MISSING


class LookupTable(Protocol):
    """One table: ``get(key)`` returns the value or :data:`MISSING`."""

    def get(self, key: Any) -> Any: ...

    def describe(self) -> str: ...


class InlineTable:
    """A table written inline in the flow file."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        self._data = dict(data)

    def get(self, key: Any) -> Any:
        return _find(self._data, key)

    def describe(self) -> str:
        return f"inline ({len(self._data)} entries)"


class CsvTable:
    """Two columns of a CSV file with a header row, loaded once."""

    def __init__(self, path: Path, key: str, value: str, delimiter: str = ",") -> None:
        self.path = path
        try:
            with path.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh, delimiter=delimiter)
                columns = reader.fieldnames or []
                for column in (key, value):
                    if column not in columns:
                        raise MappingError(
                            f"CSV lookup {path.name}: no column {column!r} (columns: {', '.join(columns)})",
                            jsonata_code="lookup_config",
                        )
                self._data = {row[key]: row[value] for row in reader}
        except OSError as exc:
            raise MappingError(
                f"CSV lookup file cannot be read: {path} ({exc.strerror})", jsonata_code="lookup_config"
            ) from exc

    def get(self, key: Any) -> Any:
        return _find(self._data, key)

    def describe(self) -> str:
        return f"CSV file {self.path.name}"


class SqlTable:
    """A SQL query returning ``key, value`` rows; the whole result is cached for ``ttl`` seconds."""

    def __init__(self, url: str, query: str, ttl: float, clock: Clock = SYSTEM_CLOCK) -> None:
        self.url = url
        self.query = query
        self.ttl = ttl
        self._clock = clock
        self._data: dict[Any, Any] | None = None
        self._loaded_at = 0.0
        self._lock = threading.Lock()
        self._engine: Any = None

    def _load(self) -> dict[Any, Any]:
        import sqlalchemy  # heavy: imported only when a SQL lookup is used

        if self._engine is None:
            self._engine = sqlalchemy.create_engine(self.url)
        try:
            conn = self._engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise RetryableError(f"SQL lookup unavailable: {exc}", code="mapping.lookup_unavailable") from exc
        try:
            with conn:
                rows = conn.execute(sqlalchemy.text(self.query)).all()
        except sqlalchemy.exc.DBAPIError as exc:
            if exc.connection_invalidated:
                raise RetryableError(
                    f"SQL lookup connection lost: {exc.orig}", code="mapping.lookup_unavailable"
                ) from exc
            raise MappingError(f"SQL lookup query failed: {exc.orig}", jsonata_code="lookup_config") from exc
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise MappingError(f"SQL lookup query failed: {exc}", jsonata_code="lookup_config") from exc
        data: dict[Any, Any] = {}
        for row in rows:
            if len(row) < 2:
                raise MappingError("SQL lookup query must return two columns: key, value", jsonata_code="lookup_config")
            data[row[0]] = row[1]
            if not isinstance(row[0], str):
                data.setdefault(str(row[0]), row[1])
        return data

    def get(self, key: Any) -> Any:
        now = self._clock.monotonic()
        with self._lock:
            if self._data is None or now - self._loaded_at >= self.ttl:
                self._data = self._load()
                self._loaded_at = now
            data = self._data
        return _find(data, key)

    def describe(self) -> str:
        return "SQL query"

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


Fetcher = Callable[[str, float], tuple[int, bytes]]


def _urllib_fetch(url: str, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read() if exc.fp else b""


def _dig(document: Any, path: str) -> Any:
    value = document
    for part in path.split(".") if path else []:
        if isinstance(value, dict):
            value = value.get(part, MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


class HttpTable:
    """One GET per key against a URL template; answers (and 404 misses) cached for ``ttl`` seconds."""

    def __init__(
        self,
        url: str,
        value_path: str = "",
        ttl: float = 300.0,
        timeout: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
        fetch: Fetcher | None = None,
    ) -> None:
        self.url = url
        self.value_path = value_path
        self.ttl = ttl
        self.timeout = timeout
        self._clock = clock
        self._fetch = fetch or _urllib_fetch
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        text = key_variants(key)[-1]
        if not isinstance(text, str):
            text = json.dumps(text)
        now = self._clock.monotonic()
        with self._lock:
            hit = self._cache.get(text)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        url = self.url.replace("{key}", urllib.parse.quote(text, safe=""))
        try:
            status, body = self._fetch(url, self.timeout)
        except (OSError, TimeoutError) as exc:
            raise RetryableError(f"HTTP lookup {url} failed: {exc}", code="mapping.lookup_unavailable") from exc
        if status == 404:
            value: Any = MISSING
        elif status == 429 or status == 408 or status >= 500:
            raise RetryableError(f"HTTP lookup {url} answered {status}", code="mapping.lookup_unavailable")
        elif status >= 400:
            raise MappingError(f"HTTP lookup {url} answered {status}", jsonata_code="lookup_config")
        else:
            try:
                value = _dig(json.loads(body), self.value_path)
            except ValueError as exc:
                raise MappingError(f"HTTP lookup {url} did not answer JSON", jsonata_code="lookup_config") from exc
        with self._lock:
            self._cache[text] = (now, value)
        return value

    def describe(self) -> str:
        return f"HTTP {self.url}"


class _Policy:
    __slots__ = ("default", "on_miss")

    def __init__(self, on_miss: str, default: Any) -> None:
        self.on_miss = on_miss
        self.default = default


class Lookups:
    """The named tables of one mapping, and the ``$xref`` function over them."""

    def __init__(self) -> None:
        self._tables: dict[str, LookupTable] = {}
        self._policies: dict[str, _Policy] = {}
        self._views: dict[str, dict[Any, Any]] = {}

    def add(self, name: str, table: LookupTable, *, on_miss: str = "fail", default: Any = None) -> None:
        view = self._views.pop(name, None)
        if view is not None:
            # Code compiled against the replaced table holds its view: empty it, so every key
            # misses there and takes the full $xref (which sees the new table).
            old = self._tables[name]
            if isinstance(old, InlineTable | CsvTable) and old._data is view:
                old._data = dict(view)
            view.clear()
        self._tables[name] = table
        self._policies[name] = _Policy(on_miss, default)

    def view(self, name: str) -> dict[Any, Any] | None:
        """The data of table ``name`` if it never changes (inline and CSV tables), else ``None``.

        For a *string* key the compiled code reads the view directly: a key
        found there is exactly what ``xref(name, key, ...)`` returns; any other
        key (or a miss) takes the full ``xref``. Replacing the table with
        :meth:`add` empties the view, so such code falls back to ``xref``.
        """
        view = self._views.get(name)
        if view is None:
            table = self._tables.get(name)
            if table.__class__ is not InlineTable and table.__class__ is not CsvTable:
                return None
            data: dict[Any, Any] = table._data
            if any(value.__class__ is tuple for value in data.values()):
                return None
            view = self._views[name] = data
        return view

    def names(self) -> list[str]:
        return sorted(self._tables)

    def table(self, name: str) -> LookupTable:
        return self._tables[name]

    def xref(self, table: Any, key: Any = None, *default: Any) -> Any:
        """``$xref(table, key[, default])``: the value for ``key`` in lookup table ``table``.

        A ``null`` key gives ``null``. A missing key fails the message with
        ``mapping.xref_miss`` unless a default is passed or the table is
        configured with ``on_miss: default``.
        """
        source = self._tables.get(table) if isinstance(table, str) else None
        if source is None:
            known = ", ".join(self.names()) or "none configured"
            raise MappingError(
                f"$xref: no lookup table {table!r} (tables: {known})",
                jsonata_code="xref_table",
                details={"table": table},
            )
        if key is None:
            return None
        value = source.get(key)
        if value is not MISSING:
            return value
        if default:
            return default[0]
        policy = self._policies[table]
        if policy.on_miss == "default":
            return policy.default
        raise MappingError(
            f"$xref: key {key!r} not found in lookup table {table!r}",
            jsonata_code="xref_miss",
            details={"table": table, "key": key},
        )
