"""A native engine expression freed by a garbage collection on another thread does not raise."""

from __future__ import annotations

import gc
import threading

from seamline.mapping import engine


def test_expressions_collected_on_another_thread_are_freed_by_their_own() -> None:
    # a reference cycle, so only the cyclic collector can free it
    holder: dict[str, object] = {}
    expr = engine.EngineExpression("$sum([1, 2])", {}, timeout_ms=1000, max_depth=100, max_sequence=1000)
    holder["self"] = holder
    holder["expr"] = expr
    assert expr.evaluate(None) == 3
    del expr, holder
    errors: list[BaseException] = []

    def collect() -> None:
        try:
            gc.collect()
        except BaseException as exc:  # pragma: no cover - what the test guards against
            errors.append(exc)

    t = threading.Thread(target=collect)
    t.start()
    t.join()
    assert errors == []
    assert len(engine._GRAVEYARD) >= 1
    # the owner thread frees it the next time it builds an expression
    engine.EngineExpression("1", {}, timeout_ms=1000, max_depth=100, max_sequence=1000)
    assert all(owner != threading.get_ident() for owner, _ in engine._GRAVEYARD)
