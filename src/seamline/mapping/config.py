"""The ``map:`` block of a flow file, as a pydantic model (also the source of its reference docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "CsvLookup",
    "HttpLookup",
    "LimitsConfig",
    "LookupConfig",
    "MapConfig",
    "SqlLookup",
]

_STRICT = ConfigDict(extra="forbid", frozen=True)


class CsvLookup(BaseModel):
    """Two columns of a CSV file with a header row, loaded once when the flow starts."""

    model_config = _STRICT

    path: str = Field(description="CSV file, relative to the flow file's directory.")
    key: str = Field(description="Header of the column holding the keys.")
    value: str = Field(description="Header of the column holding the values.")
    delimiter: str = Field(",", min_length=1, max_length=1, description="Field separator.")


class SqlLookup(BaseModel):
    """A SQL query returning ``key, value`` rows. The whole result is loaded and reloaded after ``ttl``."""

    model_config = _STRICT

    url: str = Field(
        description="SQLAlchemy database URL for a synchronous driver, e.g. "
        "`postgresql+psycopg://user@host/db` or `sqlite:///codes.db`."
    )
    query: str = Field(
        description="Query whose first two columns are key and value, e.g. `SELECT code, name FROM countries`."
    )
    ttl: float = Field(300.0, gt=0, description="Seconds before the table is loaded again.")


class HttpLookup(BaseModel):
    """One HTTP GET per key; each answer is cached for ``ttl`` seconds. A 404 is a miss."""

    model_config = _STRICT

    url: str = Field(
        description="URL template; `{key}` is replaced by the URL-encoded key, "
        "e.g. `https://crm.example.com/customers/{key}`."
    )
    value_path: str = Field(
        "", description="Dotted path to the value inside the JSON answer (`data.name`); empty for the whole answer."
    )
    ttl: float = Field(300.0, gt=0, description="Seconds an answer (or a 404 miss) is cached.")
    timeout: float = Field(5.0, gt=0, description="Seconds to wait for an answer; a timeout retries the message.")

    @field_validator("url")
    @classmethod
    def _has_key(cls, url: str) -> str:
        if "{key}" not in url:
            raise ValueError("the URL template must contain {key}")
        if not url.startswith(("http://", "https://")):
            raise ValueError("the URL must start with http:// or https://")
        return url


class LookupConfig(BaseModel):
    """A lookup table for `$xref(table, key[, default])`; exactly one source."""

    model_config = _STRICT

    inline: dict[str, Any] | None = Field(None, description="The table itself: `{key: value}`.")
    csv: CsvLookup | None = Field(None, description="Load the table from a CSV file.")
    sql: SqlLookup | None = Field(None, description="Load the table from a SQL query.")
    http: HttpLookup | None = Field(None, description="Look each key up with an HTTP GET.")
    on_miss: Literal["fail", "default"] = Field(
        "fail",
        description="What a key that is not in the table does: `fail` the message "
        "(error `mapping.xref_miss`, to the dead-letter queue) or give `default`.",
    )
    default: Any = Field(None, description="The value for a missing key when `on_miss: default`.")

    @model_validator(mode="after")
    def _one_source(self) -> LookupConfig:
        given = [name for name in ("inline", "csv", "sql", "http") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(
                "a lookup needs exactly one source: inline, csv, sql or http"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    @property
    def source_kind(self) -> str:
        """``inline``, ``csv``, ``sql`` or ``http``."""
        for name in ("inline", "csv", "sql", "http"):
            if getattr(self, name) is not None:
                return name
        raise AssertionError("validated: one source")


class LimitsConfig(BaseModel):
    """Guardrails for one evaluation, so a hostile or buggy expression cannot hang a flow."""

    model_config = _STRICT

    timeout_ms: int = Field(1000, gt=0, description="Wall-time limit of one evaluation, in milliseconds.")
    max_depth: int = Field(500, gt=0, description="Maximum nesting of function calls (stops runaway recursion).")
    max_sequence: int = Field(1_000_000, gt=0, description="Maximum length of any sequence or range.")


class MapConfig(BaseModel):
    """Transform the message body with JSONata: one `expression` for the whole document,
    or `fields`, one expression per target field."""

    model_config = _STRICT

    expression: str | None = Field(
        None,
        description="A JSONata expression evaluated against the body; its result is the new body.",
    )
    fields: dict[str, str] | None = Field(
        None,
        description="Target field (dotted path, e.g. `customer.id`) to JSONata expression, each "
        "evaluated against the input body. The output is built as nested objects; a field "
        "whose expression gives no value is left out (its parent objects are still there).",
    )
    lookups: dict[str, LookupConfig] = Field(
        default_factory=dict,
        description="Lookup tables for `$xref(table, key[, default])`, by name.",
    )
    value_maps: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Code tables for `$translate(map, code[, default])`, by name: `{status: {A: active}}`.",
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Evaluation guardrails.")

    @model_validator(mode="after")
    def _one_form(self) -> MapConfig:
        if (self.expression is None) == (self.fields is None):
            raise ValueError("give exactly one of 'expression' (whole document) or 'fields' (per target field)")
        if self.fields is not None:
            if not self.fields:
                raise ValueError("'fields' must name at least one target field")
            _check_targets(list(self.fields))
        return self

    @field_validator("expression")
    @classmethod
    def _expression_compiles(cls, expr: str | None) -> str | None:
        if expr is not None:
            _check_syntax(expr, None)
        return expr

    @field_validator("fields")
    @classmethod
    def _fields_compile(cls, fields: dict[str, str] | None) -> dict[str, str] | None:
        for target, expr in (fields or {}).items():
            _check_syntax(expr, target)
        return fields


def _check_targets(targets: list[str]) -> None:
    seen: set[tuple[str, ...]] = set()
    for target in targets:
        parts = tuple(target.split("."))
        if any(not part for part in parts):
            raise ValueError(f"target field {target!r} is not a dotted path (empty segment)")
        seen.add(parts)
    for parts in seen:
        for i in range(1, len(parts)):
            if parts[:i] in seen:
                raise ValueError(
                    f"target field {'.'.join(parts)!r} is inside target field "
                    f"{'.'.join(parts[:i])!r}; a field cannot be both a value and an object"
                )


def _check_syntax(expr: str, target: str | None) -> None:
    from seamline.mapping.api import compile as compile_expression
    from seamline.mapping.errors import MappingError

    try:
        compile_expression(expr)
    except MappingError as exc:
        where = f"field {target!r}: " if target is not None else ""
        pointer = exc.caret(expr)
        raise ValueError(f"{where}{exc}\n{pointer}") from None
