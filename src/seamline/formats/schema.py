"""Schema validation: JSON Schema, XSD and Avro, with errors that say where.

* :class:`JsonSchema` compiles a JSON Schema once (jsonschema-rs) and
  reports issues with JSON Pointer paths (``/items/0/price``). ``$ref`` to
  anything but the schema itself and the ``resources`` you pass is refused
  (``format.schema.ref_forbidden``): nothing is fetched.
* :class:`XmlSchema` compiles an XSD (lxml) from a file or bytes.
  ``xs:include`` / ``xs:import`` / ``xs:redefine`` may only load files inside
  the schema's directory (``base_dir``); network and other paths are
  refused (``format.schema.ref_forbidden``). Instances are parsed with the
  hardened XML parser.
* :func:`avro_issues` / :func:`validate_avro` check a record against an Avro
  schema (fastavro).

``validate`` methods raise :class:`SchemaError` with code
``format.schema.invalid`` and the list of :class:`SchemaIssue`; ``issues``
methods return that list (empty when valid). A schema that cannot be
compiled raises ``format.schema.bad_schema``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlparse

import jsonschema_rs
from fastavro import validation as _avro_validation
from lxml import etree

from seamline.formats import _xmlsafe
from seamline.formats import avro as _avro
from seamline.formats import json as _json
from seamline.formats.errors import AvroError, JsonError, SchemaError, XmlError

__all__ = [
    "DEFAULT_MAX_ISSUES",
    "JsonSchema",
    "SchemaIssue",
    "XmlSchema",
    "avro_issues",
    "validate_avro",
]

#: How many issues are collected at most per validation.
DEFAULT_MAX_ISSUES = 100
_MAX_SCHEMA_BYTES = 16 * 1024 * 1024
_EMPTY_XSD = '<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema"/>'


@dataclass(frozen=True, slots=True)
class SchemaIssue:
    """One way an instance fails its schema.

    ``path`` is a JSON Pointer (JSON Schema), an element path such as
    ``/order/line[2]`` (XSD) or a dotted field name (Avro); ``""`` is the
    whole instance. ``schema_path`` points into the schema when known,
    ``line`` into an XML instance.
    """

    path: str
    message: str
    schema_path: str | None = None
    line: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly form (used in error details)."""
        out: dict[str, Any] = {"path": self.path, "message": self.message}
        if self.schema_path is not None:
            out["schema_path"] = self.schema_path
        if self.line is not None:
            out["line"] = self.line
        return out


def _raise_invalid(kind: str, issues: list[SchemaIssue]) -> None:
    if not issues:
        return
    first = issues[0]
    where = first.path or "(root)"
    more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
    raise SchemaError(
        f"{kind} validation failed at {where}: {first.message}{more}",
        code="format.schema.invalid",
        details={"schema_kind": kind, "issues": [issue.as_dict() for issue in issues]},
        issues=issues,
    )


def _pointer(parts: Iterable[str | int]) -> str:
    return "".join("/" + str(part).replace("~", "~0").replace("/", "~1") for part in parts)


# --------------------------------------------------------------------------- JSON Schema


class JsonSchema:
    """A compiled JSON Schema (draft detected from ``$schema``, default 2020-12).

    ``schema`` is a dict/bool or JSON text. ``resources`` maps URIs to
    schemas that ``$ref`` may use; any other remote reference is refused.
    ``source`` is the file the schema was read from: relative ``$ref`` resolve
    against it and may load schema files inside its directory (as an XSD's
    includes may). ``validate_formats`` turns on ``format`` assertions (off by
    default, as the specification says).
    """

    def __init__(
        self,
        schema: Mapping[str, Any] | bool | str | bytes,
        *,
        resources: Mapping[str, Any] | None = None,
        validate_formats: bool = False,
        source: Path | None = None,
    ) -> None:
        if isinstance(schema, str | bytes):
            try:
                schema = _json.decode(schema)
            except JsonError as exc:
                raise SchemaError(
                    f"JSON Schema is not valid JSON: {exc.message}", code="format.schema.bad_schema"
                ) from None
        self.schema: Any = cast(Any, schema)
        known = dict(resources or {})
        refused: list[str] = []

        folder = source.resolve().parent if source is not None else None

        def retrieve(uri: str) -> Any:
            if uri in known:
                return known[uri]
            parsed = urlparse(uri)
            if folder is not None and parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
                path = Path(unquote(parsed.path)).resolve()
                if path.is_relative_to(folder) and path.is_file():
                    return _json.decode(path.read_bytes())
            refused.append(uri)
            raise ValueError(f"fetching {uri} is not allowed")

        try:
            self._validator = jsonschema_rs.validator_for(
                self.schema, retriever=retrieve, validate_formats=validate_formats,
                base_uri=source.resolve().as_uri() if source is not None else None,
            )
        except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError, TypeError) as exc:
            if refused:
                raise SchemaError(
                    f"JSON Schema refers to {refused[0]}, which may not be fetched (nothing is fetched: pass it"
                    " in resources=, or keep it beside the schema file)",
                    code="format.schema.ref_forbidden",
                    details={"refs": refused},
                ) from None
            message = str(exc).split("\n", 1)[0]
            raise SchemaError(f"invalid JSON Schema: {message}", code="format.schema.bad_schema") from None

    def issues(self, instance: Any, *, limit: int = DEFAULT_MAX_ISSUES) -> list[SchemaIssue]:
        """Every way ``instance`` fails the schema (at most ``limit``), in document order."""
        found: list[SchemaIssue] = []
        for error in self._validator.iter_errors(instance):
            found.append(
                SchemaIssue(
                    path=_pointer(error.instance_path),
                    message=error.message,
                    schema_path=_pointer(error.schema_path),
                )
            )
            if len(found) >= limit:
                break
        return found

    def is_valid(self, instance: Any) -> bool:
        """True when ``instance`` conforms."""
        return bool(self._validator.is_valid(instance))

    def validate(self, instance: Any) -> None:
        """Raise :class:`SchemaError` (``format.schema.invalid``) listing the issues, if any."""
        if not self._validator.is_valid(instance):
            _raise_invalid("JSON Schema", self.issues(instance))


# --------------------------------------------------------------------------- XSD


class _LocalResolver(etree.Resolver):  # type: ignore[misc]
    """Loads schema documents only from inside ``base_dir``; records every refusal."""

    def __init__(self, base_dir: Path | None, max_bytes: int) -> None:
        super().__init__()
        self.base_dir = base_dir
        self.max_bytes = max_bytes
        self.refused: list[str] = []

    def _local_path(self, url: str) -> Path | None:
        parsed = urlparse(url)
        if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
            raw_path = unquote(parsed.path)
        elif parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
            raw_path = url
        else:
            return None
        if self.base_dir is None:
            return None
        path = Path(raw_path)
        if not path.is_absolute():
            path = self.base_dir / path
        resolved = path.resolve()
        if not resolved.is_relative_to(self.base_dir) or not resolved.is_file():
            return None
        return resolved

    def resolve(self, url: str | None, pubid: str | None, context: Any) -> Any:
        path = self._local_path(url or "")
        if path is None:
            self.refused.append(url or "")
            return self.resolve_string(_EMPTY_XSD, context)
        data = path.read_bytes()[: self.max_bytes + 1]
        try:
            _xmlsafe.as_bytes(data, self.max_bytes)
            _xmlsafe.reject_doctype(data)
        except XmlError:
            self.refused.append(url or "")
            return self.resolve_string(_EMPTY_XSD, context)
        return self.resolve_string(data, context, base_url=str(path))


class XmlSchema:
    """A compiled XSD.

    ``source`` is the ``.xsd`` file as a :class:`~pathlib.Path`, or the
    schema itself as bytes/str. Included and imported schema documents may
    only come from ``base_dir`` (default: the directory of the file; for
    bytes/str without ``base_dir``, no includes at all).
    """

    def __init__(
        self,
        source: os.PathLike[str] | bytes | str,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        max_bytes: int = _MAX_SCHEMA_BYTES,
    ) -> None:
        if isinstance(source, bytes | str):
            data = source.encode("utf-8") if isinstance(source, str) else source
            base = Path(base_dir).resolve() if base_dir is not None else None
            url = str(base / "schema.xsd") if base is not None else None
        else:
            path = Path(source).resolve()
            base = Path(base_dir).resolve() if base_dir is not None else path.parent
            data = path.read_bytes()
            url = str(path)
        resolver = _LocalResolver(base, max_bytes)
        parser = _xmlsafe.make_parser(resolver)
        try:
            document = _xmlsafe.parse(data, max_bytes=max_bytes, base_url=url, parser=parser)
        except XmlError as exc:
            raise SchemaError(
                f"XSD is not acceptable XML: {exc.message}",
                code="format.schema.bad_schema",
                details={"cause": exc.code},
            ) from None
        try:
            self._schema = etree.XMLSchema(document)
        except etree.XMLSchemaParseError as exc:
            if resolver.refused:
                raise _xsd_refused(resolver.refused) from None
            raise SchemaError(f"invalid XSD: {exc}", code="format.schema.bad_schema") from None
        if resolver.refused:
            raise _xsd_refused(resolver.refused)
        self._lock = threading.Lock()

    def issues(
        self, document: bytes | str | etree._ElementTree | etree._Element, *, limit: int = DEFAULT_MAX_ISSUES
    ) -> list[SchemaIssue]:
        """Every way ``document`` fails the XSD (at most ``limit``).

        ``document`` is XML text/bytes (parsed with the hardened parser,
        raising ``format.xml.*`` when it is not acceptable XML) or an lxml tree.
        """
        tree = _xmlsafe.parse(document, max_bytes=_MAX_SCHEMA_BYTES) if isinstance(document, bytes | str) else document
        with self._lock:
            if self._schema.validate(tree):
                return []
            log = list(self._schema.error_log)
        return [SchemaIssue(path=e.path or "", message=e.message, line=e.line or None) for e in log[:limit]]

    def is_valid(self, document: bytes | str | etree._ElementTree | etree._Element) -> bool:
        """True when ``document`` conforms."""
        return not self.issues(document, limit=1)

    def validate(self, document: bytes | str | etree._ElementTree | etree._Element) -> None:
        """Raise :class:`SchemaError` (``format.schema.invalid``) listing the issues, if any."""
        _raise_invalid("XSD", self.issues(document))


def _xsd_refused(refused: list[str]) -> SchemaError:
    return SchemaError(
        f"XSD includes or imports {refused[0]!r}, which is remote, outside the schema directory or not acceptable XML",
        code="format.schema.ref_forbidden",
        details={"refs": refused},
    )


# --------------------------------------------------------------------------- Avro


def avro_issues(record: Any, schema: _avro.AvroSchema | Mapping[str, Any] | Sequence[Any] | str) -> list[SchemaIssue]:
    """How ``record`` fails the Avro schema (fastavro stops at the first bad field)."""
    try:
        checked = _avro.parse_schema(schema)
    except AvroError as exc:
        raise SchemaError(exc.message, code="format.schema.bad_schema") from None
    try:
        _avro_validation.validate(record, checked.parsed, raise_errors=True)
    except _avro_validation.ValidationError as exc:
        by_field: dict[str, list[str]] = {}
        values: dict[str, Any] = {}
        for problem in exc.errors:
            by_field.setdefault(problem.field, []).append(_type_name(problem.schema))
            values[problem.field] = problem.datum
        return [
            SchemaIssue(path=name, message=f"{_short(values[name])} is not {' | '.join(types)}")
            for name, types in by_field.items()
        ]
    return []


def validate_avro(record: Any, schema: _avro.AvroSchema | Mapping[str, Any] | Sequence[Any] | str) -> None:
    """Raise :class:`SchemaError` (``format.schema.invalid``) when ``record`` fails the Avro schema."""
    _raise_invalid("Avro", avro_issues(record, schema))


def _type_name(schema: Any) -> str:
    if isinstance(schema, dict):
        return str(schema.get("name") or schema.get("type"))
    if isinstance(schema, list):
        return " | ".join(_type_name(s) for s in schema)
    return str(schema)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "..."
