"""``compile()`` and :class:`Expression`: the entry point of the mapping language.

An expression is compiled once. Two engines stand behind it:

* the **compiled path** -- the common subset of JSONata translated into one
  Python function (:mod:`seamline.mapping.compiler`), fast for the kind of
  expression mappings are made of;
* the **engine path** -- the complete JSONata engine, used transparently for
  everything the compiler does not handle.

Both enforce the same limits: ``timeout_ms`` (wall time per evaluation),
``max_depth`` (nesting of function calls, so runaway recursion stops) and
``max_sequence`` (length of any sequence or range, so ``[1..100000000]``
fails fast instead of exhausting memory).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from seamline.mapping import analysis
from seamline.mapping.compiler import CompiledExpression, try_compile
from seamline.mapping.engine import EngineExpression
from seamline.mapping.errors import MappingError
from seamline.mapping.functions import registered_functions
from seamline.mapping.values import UNDEFINED as _UNDEFINED

__all__ = ["Expression", "compile"]


class Expression:
    """A compiled JSONata expression. Create it with :func:`compile`.

    Thread-safe: one ``Expression`` may be evaluated from many threads.
    """

    __slots__ = ("_analysis", "_compiled", "_engine", "_functions", "limits", "source")

    def __init__(
        self,
        source: str,
        *,
        timeout_ms: int,
        max_depth: int,
        max_sequence: int,
        functions: Mapping[str, Callable[..., Any]],
        use_compiler: bool = True,
    ) -> None:
        #: the expression text
        self.source = source
        #: ``(timeout_ms, max_depth, max_sequence)``
        self.limits = (timeout_ms, max_depth, max_sequence)
        self._functions = dict(functions)
        self._analysis = analysis.analyse(source)
        self._compiled: CompiledExpression | None = None
        self._engine: EngineExpression | None = None
        try:
            self._engine = EngineExpression(
                source,
                self._functions,
                timeout_ms=timeout_ms,
                max_depth=max_depth,
                max_sequence=max_sequence,
                tree=self._analysis.ast,
            )
        except MappingError as exc:
            # The Rust engine cannot hold a string with an unpaired UTF-16 surrogate; Python can,
            # so such an expression is still valid when the compiler handles it.
            if not ("unpaired surrogate" in exc.message and self._analysis.ast is not None):
                _locate(exc, self._analysis)
                raise
            self._compiled = self._compile(use_compiler=True)
            if self._compiled is None:
                raise
            return
        self._compiled = self._compile(use_compiler)

    def _compile(self, use_compiler: bool) -> CompiledExpression | None:
        if not use_compiler or self._analysis.ast is None:
            return None
        timeout_ms, max_depth, max_sequence = self.limits
        return try_compile(
            self._analysis.ast,
            self.source,
            self._functions,
            timeout_ms=timeout_ms,
            max_depth=max_depth,
            max_sequence=max_sequence,
        )

    def __repr__(self) -> str:
        return f"Expression({self.source!r})"

    @property
    def is_compiled(self) -> bool:
        """True when evaluation runs as generated Python rather than on the full engine."""
        return self._compiled is not None

    def evaluate(self, data: Any, bindings: Mapping[str, Any] | None = None, *, undefined: Any = None) -> Any:
        """Evaluate against ``data`` (JSON-like Python data; :data:`UNDEFINED` for no input).

        ``bindings`` provides variables (``{"rate": 1.2}`` is ``$rate``); a
        callable binding is a function. A result that is JSONata *undefined*
        (no match) is returned as ``undefined`` -- ``None`` by default, which
        also stands for JSON ``null``; pass :data:`UNDEFINED` to tell them apart.

        Raises:
            MappingError: the expression failed (type error, ``$error()``,
                failed lookup, limit exceeded ...).
        """
        compiled = self._compiled
        if compiled is not None and not bindings:
            result = compiled.run(data)
        elif compiled is not None and bindings is not None and not compiled.needs_engine_for(bindings):
            result = compiled.evaluate(data, bindings)
        else:
            result = self._engine_for().evaluate(data, bindings)
        return undefined if result is _UNDEFINED else result

    @property
    def runner(self) -> Callable[[Any], Any] | None:
        """The compiled evaluation without bindings as one function (returns :data:`UNDEFINED` for
        undefined), or ``None`` when the expression runs on the full engine; for hot loops."""
        return None if self._compiled is None else self._compiled.run

    def _engine_for(self) -> EngineExpression:
        if self._engine is None:
            raise MappingError(
                "this expression contains text the full engine cannot represent (an unpaired surrogate), "
                "so function bindings cannot be used with it",
                jsonata_code="D3140",
                expression=self.source,
            )
        return self._engine

    def evaluate_engine(self, data: Any, bindings: Mapping[str, Any] | None = None) -> Any:
        """Evaluate on the full engine only (returns :data:`UNDEFINED` for undefined); for tests."""
        return self._engine_for().evaluate(data, bindings)

    def referenced_paths(self) -> list[str]:
        """Source field paths the expression reads, e.g. ``["order.customer.id", "order.lines.qty"]``."""
        return list(self._analysis.paths)

    def referenced_functions(self) -> list[str]:
        """Functions the expression calls, without ``$`` (``["sum", "xref"]``)."""
        return list(self._analysis.functions)

    def referenced_tables(self) -> list[str]:
        """Lookup tables named literally in ``$xref('table', ...)`` calls."""
        return list(self._analysis.tables)

    def referenced_value_maps(self) -> list[str]:
        """Value maps named literally in ``$translate('map', ...)`` calls."""
        return list(self._analysis.value_maps)


def compile(
    expr: str,
    *,
    timeout_ms: int = 1000,
    max_depth: int = 500,
    max_sequence: int = 1_000_000,
    functions: Mapping[str, Callable[..., Any]] | None = None,
) -> Expression:
    """Compile a JSONata expression.

    Args:
        expr: the expression text.
        timeout_ms: wall-time limit of one evaluation.
        max_depth: maximum nesting of function calls (stops runaway recursion).
        max_sequence: maximum length of any sequence or range.
        functions: extra Python functions for this expression, by name without ``$``.

    Raises:
        MappingError: the expression is not valid JSONata (``.position`` says where).
    """
    if not isinstance(expr, str):
        raise MappingError("a mapping expression must be a string", jsonata_code="S0100")
    for value, name in ((timeout_ms, "timeout_ms"), (max_depth, "max_depth"), (max_sequence, "max_sequence")):
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive integer")
    table = registered_functions(functions)
    try:
        return Expression(
            expr,
            timeout_ms=timeout_ms,
            max_depth=max_depth,
            max_sequence=max_sequence,
            functions=table,
        )
    except MappingError as exc:
        if exc.expression is None:
            exc.expression = expr
        raise


def _locate(exc: MappingError, facts: analysis.Analysis) -> None:
    """Add our parser's position (and code, when the engine gave none) to a syntax error."""
    found = facts.error
    if found is None:
        return
    if exc.jsonata_code == "D0000":
        exc.jsonata_code = found.code
        exc.code = f"mapping.{found.code}"
        exc.message = str(found)
        exc.args = (exc.message,)
    if exc.jsonata_code == found.code:
        exc.position = found.start
