"""The official JSONata test suite (v2.2.2, 1,686 cases) through ``seamline.mapping``.

* ``test_case`` -- one item per case, ``compile(...).evaluate(...)`` as a flow
  would use it. Cases listed in ``jsonata_known_failures.txt`` are
  ``xfail(strict=True)``: when one starts passing the run fails until the list
  is updated.
* ``test_pass_rate`` -- the whole suite must pass at >= 99 %; it reuses the
  outcomes of ``test_case`` (or runs the cases itself when they were
  deselected).
* ``test_compiled_path_agrees_with_engine`` -- for every case the Python
  compiler accepts, the compiled result equals the full engine's.

The pass count is printed at the end of every run that touched this module
(``JSONata conformance: N/1686 passed (P %)``): a fixture registers a small
terminal-summary plugin, so no ``conftest.py`` is needed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conformance.jsonata_suite import (
    REFERENCE_SEQUENCE_LIMIT,
    Case,
    Outcome,
    json_equal,
    load_cases,
    load_known_failures,
    run_case,
    suite_dir,
)

from seamline.mapping import UNDEFINED, MappingError, compile

SUITE = suite_dir()
CASES: list[Case] = load_cases(SUITE) if SUITE.is_dir() else []
KNOWN = load_known_failures()
EXPECTED_CASES = 1686
REQUIRED_RATE = 0.99
#: the compiler must keep handling at least this many cases (guards against silent regressions)
MIN_COMPILED = 900

_results: dict[str, Outcome] = {}


class _Summary:
    """Prints the conformance figure in pytest's terminal summary."""

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not _results:
            return
        total = len(_results)
        passed = sum(outcome.passed for outcome in _results.values())
        compiled = sum(outcome.compiled for outcome in _results.values())
        terminalreporter.write_sep("-", "JSONata conformance")
        terminalreporter.write_line(
            f"JSONata conformance: {passed}/{total} passed ({100.0 * passed / total:.1f} %), "
            f"{compiled} evaluated by the Python compiler, {len(KNOWN)} known failures"
        )


@pytest.fixture(scope="module", autouse=True)
def _conformance_report(request: pytest.FixtureRequest, conformance_dir: Path) -> Iterator[None]:
    assert suite_dir(conformance_dir).resolve() == SUITE.resolve(), "suite location disagrees with conftest"
    manager = request.config.pluginmanager
    if not manager.has_plugin("seamline-jsonata-conformance"):
        manager.register(_Summary(), "seamline-jsonata-conformance")
    yield


def _outcome(case: Case) -> Outcome:
    outcome = _results.get(case.id)
    if outcome is None:
        outcome = _results[case.id] = run_case(case)
    return outcome


def _params() -> list[Any]:
    params = []
    for case in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN[case.id])] if case.id in KNOWN else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def test_suite_is_complete() -> None:
    assert len(CASES) == EXPECTED_CASES
    unknown = sorted(set(KNOWN) - {case.id for case in CASES})
    assert not unknown, f"known failures that are not suite cases: {unknown}"


@pytest.mark.parametrize("case", _params())
def test_case(case: Case) -> None:
    outcome = _outcome(case)
    assert outcome.passed, f"{case.expr!r}: {outcome.detail}"


def test_pass_rate() -> None:
    outcomes = [_outcome(case) for case in CASES]
    passed = sum(outcome.passed for outcome in outcomes)
    failing = sorted(case.id for case, outcome in zip(CASES, outcomes, strict=True) if not outcome.passed)
    unlisted = [case_id for case_id in failing if case_id not in KNOWN]
    assert passed / EXPECTED_CASES >= REQUIRED_RATE, f"{passed}/{EXPECTED_CASES} passed; failing: {failing}"
    assert not unlisted, f"failing cases missing from jsonata_known_failures.txt: {unlisted}"


def _result(evaluate: Any, data: Any, bindings: Any, **kwargs: Any) -> tuple[str, Any]:
    try:
        return "value", evaluate(data, bindings, **kwargs)
    except MappingError as exc:
        return "error", exc.jsonata_code


def _same(left: tuple[str, Any], right: tuple[str, Any]) -> bool:
    if left[0] != right[0]:
        return False
    if left[0] == "error" or UNDEFINED in (left[1], right[1]):
        return left[1] is right[1] or left[1] == right[1]
    return json_equal(left[1], right[1])


def test_compiled_path_agrees_with_engine() -> None:
    disagreements = []
    compiled = 0
    for case in CASES:
        try:
            expression = compile(
                case.expr, timeout_ms=case.timeout_ms, max_depth=case.depth, max_sequence=REFERENCE_SEQUENCE_LIMIT
            )
        except MappingError:
            continue
        if not expression.is_compiled or expression._engine is None:
            continue
        compiled += 1
        bindings = case.spec.get("bindings") or None
        fast = _result(expression.evaluate, case.data, bindings, undefined=UNDEFINED)
        full = _result(expression.evaluate_engine, case.data, bindings)
        if not _same(fast, full):
            disagreements.append(f"{case.id}: {case.expr!r}: compiled {fast!r} vs engine {full!r}")
    assert not disagreements, "\n".join(disagreements)
    assert compiled >= MIN_COMPILED
