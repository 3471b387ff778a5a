"""Build a runnable :class:`Mapping` from a :class:`~seamline.mapping.config.MapConfig`."""

from __future__ import annotations

import json
from collections.abc import Callable
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seamline.core.clock import SYSTEM_CLOCK, Clock
from seamline.mapping.api import Expression
from seamline.mapping.api import compile as compile_expression
from seamline.mapping.config import LookupConfig, MapConfig
from seamline.mapping.errors import MappingError
from seamline.mapping.functions import ValueMaps
from seamline.mapping.lookups import CsvTable, HttpTable, InlineTable, Lookups, LookupTable, SqlTable
from seamline.mapping.spec import SpecRow, rows_for_expression
from seamline.mapping.values import UNDEFINED

__all__ = ["Mapping", "build_lookups", "build_mapping"]


@dataclass(frozen=True)
class _Field:
    target: str
    parts: tuple[str, ...]
    expression: Expression


def _table(name: str, config: LookupConfig, base_dir: Path, clock: Clock) -> LookupTable:
    if config.inline is not None:
        return InlineTable(config.inline)
    if config.csv is not None:
        path = Path(config.csv.path)
        if not path.is_absolute():
            path = base_dir / path
        try:
            return CsvTable(path, config.csv.key, config.csv.value, config.csv.delimiter)
        except MappingError as exc:
            raise exc.with_details(table=name) from None
    if config.sql is not None:
        return SqlTable(_sqlite_relative(config.sql.url, base_dir), config.sql.query, config.sql.ttl, clock=clock)
    assert config.http is not None
    return HttpTable(config.http.url, config.http.value_path, config.http.ttl, config.http.timeout, clock=clock)


def _sqlite_relative(url: str, base_dir: Path) -> str:
    """``sqlite:///crm.db`` names a file relative to the flow file, as every other path in a flow does."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/"):
        rest = url[len(prefix) :]
        if rest and not rest.startswith(":memory:"):
            return prefix + str(base_dir / rest)
    return url


def build_lookups(lookups: MappingABC[str, LookupConfig], *, base_dir: Path, clock: Clock = SYSTEM_CLOCK) -> Lookups:
    """Open the lookup tables of a ``map`` step (CSV files are read now; SQL and HTTP on first use)."""
    result = Lookups()
    for name, config in lookups.items():
        result.add(name, _table(name, config, base_dir, clock), on_miss=config.on_miss, default=config.default)
    return result


class Mapping:
    """A ready-to-run ``map`` step body transformation. Build it with :func:`build_mapping`."""

    def __init__(
        self,
        config: MapConfig,
        lookups: Lookups,
        value_maps: ValueMaps,
        expression: Expression | None,
        fields: list[_Field],
        combined: Expression | None = None,
    ) -> None:
        self.config = config
        self.lookups = lookups
        self.value_maps = value_maps
        self._expression = expression
        #: the compiled whole-document expression as one function (see :attr:`Expression.runner`)
        self._run = expression.runner if expression is not None else None
        self._fields = fields
        #: all fields as one compiled object constructor (used when every field compiles)
        self._combined = combined

    @property
    def expressions(self) -> dict[str, Expression]:
        """The compiled expressions, by target field (``"$"`` for a whole-document expression)."""
        if self._expression is not None:
            return {"$": self._expression}
        return {f.target: f.expression for f in self._fields}

    def apply(self, body: Any, bindings: MappingABC[str, Any] | None = None) -> Any:
        """Transform ``body``; returns the new body.

        With ``expression`` an undefined result gives ``None``. With
        ``fields`` the result is a new object with the structure of the target
        paths (as a JSONata object constructor builds it): a field whose
        expression gives no value is left out, its parent objects are always there.

        Raises:
            MappingError: an expression failed; for ``fields`` the target field
                is in ``details["field"]`` and in the message.
            RetryableError: a SQL or HTTP lookup was unavailable.
        """
        run = self._run
        if run is not None and not bindings:
            result = run(body)
            return None if result is UNDEFINED else result
        if self._expression is not None:
            return self._expression.evaluate(body, bindings) if bindings else self._expression.evaluate(body)
        combined = self._combined
        if combined is not None:
            try:
                result = combined.evaluate(body, bindings)
            except MappingError:
                # name the failing field: evaluate field by field, which raises the same error
                return self._apply_fields(body, bindings)
            return result
        return self._apply_fields(body, bindings)

    def _apply_fields(self, body: Any, bindings: MappingABC[str, Any] | None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field in self._fields:
            try:
                value = field.expression.evaluate(body, bindings, undefined=UNDEFINED)
            except MappingError as exc:
                exc.message = f"field {field.target!r}: {exc.message}"
                exc.args = (exc.message,)
                raise exc.with_details(field=field.target) from None
            node = out
            for part in field.parts[:-1]:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            if value is not UNDEFINED:
                node[field.parts[-1]] = value
        return out

    def spec_rows(self) -> list[SpecRow]:
        """Rows of the data-mapping specification (one per target field)."""
        if self._expression is not None:
            return rows_for_expression(self._expression)
        rows: list[SpecRow] = []
        for field in self._fields:
            expr = field.expression
            rows.append(
                SpecRow(
                    target=field.target,
                    expression=expr.source,
                    sources=expr.referenced_paths(),
                    lookups=expr.referenced_tables(),
                    value_maps=expr.referenced_value_maps(),
                    functions=expr.referenced_functions(),
                )
            )
        return rows


def _combined_source(fields: list[_Field]) -> str:
    """One object constructor holding every field, nested by the target paths."""
    tree: dict[str, Any] = {}
    for field in fields:
        node = tree
        for part in field.parts[:-1]:
            node = node.setdefault(part, {})
        node[field.parts[-1]] = field.expression.source

    def render(node: dict[str, Any]) -> str:
        items = []
        for key, value in node.items():
            text = render(value) if isinstance(value, dict) else f"(\n{value}\n)"
            items.append(f"{json.dumps(key)}: {text}")
        return "{" + ", ".join(items) + "}"

    return render(tree)


def build_mapping(
    config: MapConfig,
    *,
    base_dir: Path,
    clock: Clock = SYSTEM_CLOCK,
    functions: MappingABC[str, Callable[..., Any]] | None = None,
) -> Mapping:
    """Compile the expressions and open the lookup tables of a ``map`` step.

    ``base_dir`` is the directory of the flow file (CSV paths are relative to
    it). Tables and value maps named in ``$xref``/``$translate`` calls are
    checked here, so a typo fails when the flow is loaded, not per message.

    Raises:
        MappingError: an expression does not compile, a lookup cannot be
            opened or a named table/value map does not exist.
    """
    lookups = build_lookups(config.lookups, base_dir=base_dir, clock=clock)
    value_maps = ValueMaps(config.value_maps)
    table = {**(functions or {}), "xref": lookups.xref, "translate": value_maps.translate}
    limits = config.limits

    def make(expr: str, target: str | None) -> Expression:
        try:
            compiled = compile_expression(
                expr,
                timeout_ms=limits.timeout_ms,
                max_depth=limits.max_depth,
                max_sequence=limits.max_sequence,
                functions=table,
            )
        except MappingError as exc:
            if target is not None:
                exc.message = f"field {target!r}: {exc.message}"
                exc.args = (exc.message,)
                exc.with_details(field=target)
            raise
        for name in compiled.referenced_tables():
            if name not in config.lookups:
                known = ", ".join(sorted(config.lookups)) or "none configured"
                raise MappingError(
                    f"$xref uses lookup table {name!r}, which is not defined (lookups: {known})",
                    jsonata_code="xref_table",
                    expression=expr,
                    details={"table": name, **({"field": target} if target else {})},
                )
        for name in compiled.referenced_value_maps():
            if name not in config.value_maps:
                known = ", ".join(sorted(config.value_maps)) or "none configured"
                raise MappingError(
                    f"$translate uses value map {name!r}, which is not defined (value maps: {known})",
                    jsonata_code="translate_map",
                    expression=expr,
                    details={"value_map": name, **({"field": target} if target else {})},
                )
        return compiled

    if config.expression is not None:
        return Mapping(config, lookups, value_maps, make(config.expression, None), [])
    assert config.fields is not None
    fields = [_Field(target, tuple(target.split(".")), make(expr, target)) for target, expr in config.fields.items()]
    combined: Expression | None = None
    if all(field.expression.is_compiled for field in fields):
        try:
            combined = compile_expression(
                _combined_source(fields),
                timeout_ms=limits.timeout_ms,
                max_depth=limits.max_depth,
                max_sequence=limits.max_sequence,
                functions=table,
            )
        except MappingError:
            combined = None
        if combined is not None and not combined.is_compiled:
            combined = None
    return Mapping(config, lookups, value_maps, None, fields, combined)
