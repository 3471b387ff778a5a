"""Hostile expressions stop at the limits: no hang, no runaway memory.

Each case runs on whichever path the expression takes (compiled or full
engine) and must fail with a MappingError quickly, with peak memory growth
well below what the expression asks for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil
import pytest

from seamline.mapping import MappingError, compile

MB = 1024 * 1024


@contextmanager
def peak_memory() -> Iterator[Callable[[], int]]:
    """Track the peak resident-memory growth (bytes) while the block runs."""
    process = psutil.Process()
    baseline = process.memory_info().rss
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield lambda: peak - baseline
    finally:
        done.set()
        sampler.join()
        peak = max(peak, process.memory_info().rss)


def _fails(expr: str, data: Any = None, **limits: Any) -> tuple[MappingError, float, int]:
    expression = compile(expr, **limits)
    start = time.monotonic()
    with peak_memory() as growth, pytest.raises(MappingError) as info:
        expression.evaluate(data)
    return info.value, time.monotonic() - start, growth()


def test_infinite_recursion_stops_at_the_depth_limit() -> None:
    error, elapsed, _ = _fails("($f := function($n) { $n + $f($n + 1) }; $f(1))", max_depth=200)
    assert error.code == "mapping.U1001"
    assert error.details["limit"] == "depth"
    assert elapsed < 2


def test_infinite_tail_recursion_stops_at_the_time_limit() -> None:
    error, elapsed, _ = _fails("($f := function() { $f() }; $f())", timeout_ms=300)
    assert error.code == "mapping.U1001"
    assert error.details["limit"] == "timeout"
    assert elapsed < 2


def test_huge_range_is_refused_before_allocating() -> None:
    error, elapsed, growth = _fails("[1..100000000]")
    assert error.code == "mapping.D2014"
    assert elapsed < 1
    assert growth < 50 * MB


def test_range_beyond_the_sequence_limit() -> None:
    error, _, growth = _fails("$count([1..5000000])", max_sequence=1_000_000)
    assert error.code == "mapping.D2015"
    assert error.details["limit"] == "sequence"
    assert growth < 100 * MB


def test_nested_loops_stop_at_the_time_limit() -> None:
    error, elapsed, _ = _fails("[1..1000].($count([1..100000]))", timeout_ms=300)
    assert error.details["limit"] in ("timeout", "sequence", "memory")
    assert elapsed < 3


@pytest.mark.parametrize(
    "expr",
    [
        '($f := function($s, $n) { $n = 0 ? $s : $f($s & $s, $n - 1) }; $f("x", 60))',
        '$reduce([1..60], function($acc, $i) { $acc & $acc }, "x")',
        '($f := function($s, $n) { $n = 0 ? $s : $f($join([$s, $s]), $n - 1) }; $f("x", 60))',
        '($f := function($s, $n) { $n = 0 ? $s : $f($replace($s, "x", "xx"), $n - 1) }; $f("x", 60))',
    ],
)
def test_exponential_string_building_stops_at_the_size_limit(expr: str) -> None:
    error, elapsed, growth = _fails(expr, timeout_ms=5000)
    assert error.code == "mapping.D2015"
    assert error.details["limit"] == "string"
    assert elapsed < 3
    assert growth < 300 * MB


def test_exponential_array_building_stops() -> None:
    error, _, growth = _fails("($f := function($a, $n) { $n = 0 ? $a : $f($append($a, $a), $n - 1) }; $f([1], 60))")
    assert error.details["limit"] == "sequence"
    assert growth < 300 * MB


@pytest.mark.parametrize("expr", ['$pad("x", 2000000000)', '$pad("x", -2000000000)', "$pad('x', n)"])
def test_pad_width_is_limited(expr: str) -> None:
    for path in ("compiled", "engine"):
        expression = compile(expr)
        with pytest.raises(MappingError) as info:
            if path == "compiled":
                expression.evaluate({"n": 3_000_000_000})
            else:
                expression.evaluate_engine({"n": 3_000_000_000})
        assert info.value.code == "mapping.D2015"


def test_deeply_nested_expression_is_an_error_not_a_crash() -> None:
    with pytest.raises(MappingError) as info:
        compile("(" * 3000 + "1" + ")" * 3000)
    assert info.value.jsonata_code.startswith("U")


def test_deeply_nested_data_is_an_error_not_a_crash() -> None:
    data: Any = 1
    for _ in range(100_000):
        data = [data]
    expression = compile("$string($)")
    with pytest.raises(MappingError):
        expression.evaluate(data)
    with pytest.raises(MappingError):
        expression.evaluate_engine(data)


MANY_SMALL = [
    "$count([1..100000].([1..100000]))",  # each range is fine; together they are 10^10 items
    "$count([1..1000].([1..1000].([1..1000])))",
    '$count([1..100000].($pad("x", 10000)))',  # each string is fine; together they are 1 GB
    '$length($join([1..100000].($string([1..1000])), ","))',
]


@pytest.mark.parametrize("engine", [False, True], ids=["as-compiled", "full-engine"])
@pytest.mark.parametrize("expr", MANY_SMALL)
def test_many_allocations_each_below_the_limits_are_bounded_together(expr: str, engine: bool) -> None:
    """A path that repeats an allocation is bounded by a budget per evaluation, not only per value.

    The time limit is raised well above the time the budget takes to run out (0.02-0.6 s here), so
    that a loaded machine cannot make the timeout answer first: what is under test is the budget.
    """
    expression = compile(expr, timeout_ms=20_000)
    run = expression.evaluate_engine if engine else expression.evaluate
    start = time.monotonic()
    with peak_memory() as growth, pytest.raises(MappingError) as info:
        run(None)
    assert info.value.code == "mapping.D2015", info.value
    assert info.value.details["limit"] == "memory"
    assert time.monotonic() - start < 10
    assert growth() < 400 * MB, f"grew {growth() // MB} MB"


@pytest.mark.parametrize("engine", [False, True], ids=["as-compiled", "full-engine"])
def test_the_budget_is_per_evaluation(engine: bool) -> None:
    """Many evaluations of a mapping that allocates a little each time never add up to an error."""
    expression = compile('$count([1..1000]) & $pad("", 1000)')
    run = expression.evaluate_engine if engine else expression.evaluate
    for _ in range(50_000 if not engine else 2_000):
        assert run(None) == "1000" + " " * 1000
