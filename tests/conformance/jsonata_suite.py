"""Load and run the official JSONata test suite (v2.2.2) against ``seamline.mapping``.

The suite is read from the shared conformance directory, never copied into
the repository. Format: ``jsonata/TESTSUITE.md`` there. A case passes when
the expression gives the expected ``result`` (deep-equal; numbers compared
as JSON numbers, so ``2`` equals ``2.0``), is undefined for
``undefinedResult``, or fails with the expected error ``code``.

Limits: a case's ``timelimit`` and ``depth`` become the expression's
``timeout_ms`` and ``max_depth``; every case runs with ``max_sequence`` at
the reference implementation's range limit (10,000,000), because the suite
itself allocates ranges of that size.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seamline.mapping import UNDEFINED, MappingError, compile

__all__ = [
    "Case",
    "Outcome",
    "expected_text",
    "load_cases",
    "load_known_failures",
    "run_case",
    "suite_dir",
]

REFERENCE_SEQUENCE_LIMIT = 10_000_000
DEFAULT_TIMEOUT_MS = 5_000
KNOWN_FAILURES = Path(__file__).with_name("jsonata_known_failures.txt")


def suite_dir(conformance: Path | None = None) -> Path:
    """The suite folder: ``<conformance>/jsonata`` (``SEAMLINE_CONFORMANCE`` or ``../shared/conformance``)."""
    if conformance is None:
        root = Path(__file__).resolve().parents[2]
        conformance = Path(os.environ.get("SEAMLINE_CONFORMANCE", root.parent / "shared" / "conformance"))
    return conformance / "jsonata"


@dataclass
class Case:
    """One test case of the suite."""

    id: str
    expr: str
    spec: dict[str, Any]
    data: Any = field(repr=False, default=None)

    @property
    def timeout_ms(self) -> int:
        return int(self.spec.get("timelimit") or DEFAULT_TIMEOUT_MS)

    @property
    def depth(self) -> int:
        return int(self.spec.get("depth") or 500)

    @property
    def expected_code(self) -> str | None:
        if "code" in self.spec:
            return str(self.spec["code"])
        error = self.spec.get("error")
        if isinstance(error, dict) and "code" in error:
            return str(error["code"])
        return None


def load_cases(directory: Path) -> list[Case]:
    """All cases, in a stable order, ids like ``array-constructor/case000`` or ``joins/employee-map-reduce[3]``."""
    datasets: dict[str, Any] = {}
    cases: list[Case] = []
    groups = directory / "groups"
    for path in sorted(groups.glob("*/*.json")):
        content = json.loads(path.read_text(encoding="utf-8"))
        items = content if isinstance(content, list) else [content]
        stem = f"{path.parent.name}/{path.stem}"
        for index, spec in enumerate(items):
            case_id = f"{stem}[{index}]" if isinstance(content, list) else stem
            expr = spec["expr"] if "expr" in spec else (path.parent / spec["expr-file"]).read_text(encoding="utf-8")
            if "data" in spec:
                data = spec["data"]
            elif spec.get("dataset"):
                name = spec["dataset"]
                if name not in datasets:
                    datasets[name] = json.loads((directory / "datasets" / f"{name}.json").read_text(encoding="utf-8"))
                data = datasets[name]
            else:
                data = UNDEFINED
            cases.append(Case(case_id, expr, spec, data))
    return cases


def load_known_failures(path: Path = KNOWN_FAILURES) -> dict[str, str]:
    """``case-id  reason`` lines (``#`` comments and blank lines ignored)."""
    known: dict[str, str] = {}
    if not path.exists():
        return known
    for raw in path.read_text(encoding="utf-8").splitlines():
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        case_id, _, reason = text.partition(" ")
        known[case_id] = reason.strip()
    return known


def json_equal(actual: Any, expected: Any) -> bool:
    """Deep equality of JSON values: numbers by value (exact), booleans never equal numbers."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return actual is expected
    if isinstance(expected, int | float) and isinstance(actual, int | float):
        if actual == expected:
            return True
        return isinstance(expected, float) and math.isclose(actual, expected, rel_tol=1e-15, abs_tol=0.0)
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(actual) == len(expected)
            and all(json_equal(a, e) for a, e in zip(actual, expected, strict=True))
        )
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and actual.keys() == expected.keys()
            and all(json_equal(actual[k], expected[k]) for k in expected)
        )
    return type(actual) is type(expected) and actual == expected


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@dataclass
class Outcome:
    """What happened when a case ran."""

    passed: bool
    detail: str
    compiled: bool = False
    value: Any = None
    error: str | None = None


def expected_text(case: Case) -> str:
    if case.expected_code is not None:
        return f"error {case.expected_code}"
    if case.spec.get("undefinedResult"):
        return "undefined"
    return _canonical(case.spec.get("result"))


def evaluate_case(case: Case, *, engine_only: bool = False) -> tuple[bool, Any, str | None]:
    """Run one case; returns (compiled?, value or UNDEFINED, error code or None)."""
    try:
        expression = compile(
            case.expr,
            timeout_ms=case.timeout_ms,
            max_depth=case.depth,
            max_sequence=REFERENCE_SEQUENCE_LIMIT,
        )
    except MappingError as exc:
        return False, UNDEFINED, exc.jsonata_code
    bindings = case.spec.get("bindings") or None
    try:
        if engine_only:
            value = expression.evaluate_engine(case.data, bindings)
        else:
            value = expression.evaluate(case.data, bindings, undefined=UNDEFINED)
    except MappingError as exc:
        return expression.is_compiled, UNDEFINED, exc.jsonata_code
    return expression.is_compiled, value, None


def judge(case: Case, value: Any, error: str | None) -> tuple[bool, str]:
    code = case.expected_code
    if code is not None:
        if error == code:
            return True, "ok"
        got = f"error {error}" if error else ("undefined" if value is UNDEFINED else _canonical(value))
        return False, f"expected error {code}, got {got}"
    if error is not None:
        return False, f"expected {expected_text(case)}, got error {error}"
    if case.spec.get("undefinedResult"):
        return (value is UNDEFINED), ("ok" if value is UNDEFINED else f"expected undefined, got {_canonical(value)}")
    if value is UNDEFINED:
        return False, f"expected {expected_text(case)}, got undefined"
    expected = case.spec.get("result")
    if case.spec.get("unordered") and isinstance(expected, list) and isinstance(value, list):
        ok = sorted(map(_canonical, value)) == sorted(map(_canonical, expected))
    else:
        ok = json_equal(value, expected)
    try:
        shown = _canonical(value)
    except (TypeError, ValueError):
        shown = repr(value)
    return ok, ("ok" if ok else f"expected {expected_text(case)}, got {shown}")


def run_case(case: Case) -> Outcome:
    """Run a case through ``seamline.mapping.compile(...).evaluate(...)`` and judge it."""
    compiled, value, error = evaluate_case(case)
    passed, detail = judge(case, value, error)
    return Outcome(passed, detail, compiled, value, error)
