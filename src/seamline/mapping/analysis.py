"""What an expression reads and calls, found from its syntax tree (for docs and validation).

Paths are reported relative to the input document, joined with dots
(``order.customer.id``). A path is reported where its value is used, so
``order.lines.{"sku": sku}`` reports ``order.lines.sku`` but not
``order.lines`` itself. Variables bound to a path (``$o := order``) and the
parameters of functions passed to ``$map``/``$filter``/... are followed.
Paths whose origin cannot be known statically are left out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from seamline.mapping.compiler.parser import Node, ParseError, parse

__all__ = ["Analysis", "FieldPart", "analyse", "object_fields", "syntax_error_position"]

Prefix = tuple[str, ...] | None

#: higher-order functions whose function argument receives elements of the first argument
_ELEMENT_HOFS = {"map": 0, "filter": 0, "single": 0, "sort": 0, "reduce": 1, "each": None}


@dataclass
class Analysis:
    """The facts about one expression that documentation and validation need."""

    ast: Node | None = None
    paths: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    value_maps: list[str] = field(default_factory=list)
    error: ParseError | None = None


def _add(items: list[str], item: str) -> None:
    if item and item not in items:
        items.append(item)


class _Walker:
    def __init__(self, result: Analysis) -> None:
        self.result = result

    def static_path(self, node: Node, ctx: Prefix, scope: dict[str, Prefix]) -> Prefix:
        """The input path a node denotes, if it is a plain path (``a.b``, ``$x.c``)."""
        if node.type == "variable":
            return self._variable(node.value, ctx, scope)
        if node.type != "path":
            return None
        cur = self._base(node.steps[0], ctx, scope)
        for step in node.steps[0 if node.steps[0].type == "name" else 1 :]:
            if cur is None or step.type != "name":
                return None
            cur = (*cur, step.value)
        return cur

    @staticmethod
    def _variable(name: str, ctx: Prefix, scope: dict[str, Prefix]) -> Prefix:
        if name == "":
            return ctx
        if name == "$":
            return ()
        return scope.get(name)

    def _base(self, first: Node, ctx: Prefix, scope: dict[str, Prefix]) -> Prefix:
        if first.type == "variable":
            return self._variable(first.value, ctx, scope)
        return ctx

    def walk(self, node: Any, ctx: Prefix, scope: dict[str, Prefix]) -> None:
        if not isinstance(node, Node):
            return
        kind = node.type
        if kind == "path":
            self.path(node, ctx, scope)
        elif kind == "function" or kind == "partial":
            self.call(node, ctx, scope, None)
        elif kind == "apply":
            self.walk(node.lhs, ctx, scope)
            if node.rhs.type == "function":
                self.call(node.rhs, ctx, scope, self.static_path(node.lhs, ctx, scope))
            else:
                self.walk(node.rhs, ctx, scope)
        elif kind == "bind":
            self.walk(node.rhs, ctx, scope)
            scope[node.lhs.value] = self.static_path(node.rhs, ctx, scope)
        elif kind == "block":
            inner = dict(scope)
            for expr in node.expressions:
                self.walk(expr, ctx, inner)
        elif kind == "lambda":
            inner = dict(scope)
            for arg in node.arguments:
                inner[arg.value] = None
            self.walk(node.body, None, inner)
        elif kind == "condition":
            self.walk(node.condition, ctx, scope)
            if not node.elvis and not node.coalesce:
                self.walk(node.then, ctx, scope)
            self.walk(node.else_, ctx, scope)
        elif kind == "unary":
            if node.value == "[":
                for item in node.expressions:
                    self.walk(item, ctx, scope)
            elif node.value == "{":
                for key, value in node.lhs:
                    self.walk(key, ctx, scope)
                    self.walk(value, ctx, scope)
            else:
                self.walk(node.expression, ctx, scope)
        elif kind == "binary":
            self.walk(node.lhs, ctx, scope)
            self.walk(node.rhs, ctx, scope)
        elif kind == "transform":
            self.walk(node.pattern, ctx, scope)
            self.walk(node.update, None, scope)
            self.walk(node.delete, None, scope)
        self.stages(node, ctx, scope, node.predicate)
        if kind != "path" and node.group is not None:
            self.group(node.group, None, scope)

    def stages(self, node: Node, ctx: Prefix, scope: dict[str, Prefix], stages: list[Node] | None) -> None:
        for stage in stages or []:
            if stage.type == "filter":
                self.walk(stage.expr, ctx, scope)

    def group(self, group: Node, ctx: Prefix, scope: dict[str, Prefix]) -> None:
        for key, value in group.lhs:
            self.walk(key, ctx, scope)
            self.walk(value, ctx, scope)

    def path(self, node: Node, ctx: Prefix, scope: dict[str, Prefix]) -> None:
        steps = node.steps
        first = steps[0]
        if first.type == "variable":
            cur = self._variable(first.value, ctx, scope)
            rest = steps[1:]
            self.stages(first, cur, scope, first.stages or first.predicate)
        elif first.type == "name":
            cur, rest = ctx, steps
        else:
            cur, rest = None, steps
        last_is_name = first.type == "variable" and first.value not in ("", "$") and len(steps) > 1
        for index, step in enumerate(rest):
            if step.type == "name":
                cur = None if cur is None else (*cur, step.value)
                last_is_name = True
            elif step.type == "wildcard":
                cur = None if cur is None else (*cur, "*")
                last_is_name = True
            elif step.type == "descendant":
                cur = None if cur is None else (*cur, "**")
                last_is_name = True
            elif step.type == "parent":
                cur = None if not cur else cur[:-1]
                last_is_name = False
            elif step.type == "sort":
                for term in step.terms:
                    self.walk(term["expression"], cur, scope)
            else:
                self.walk(step, ctx if index == 0 else cur, scope)
                cur = None
                last_is_name = False
            self.stages(step, cur, scope, step.stages)
            if step.group is not None and index < len(rest) - 1:
                self.group(step.group, cur, scope)
        if last_is_name and cur:
            _add(self.result.paths, ".".join(cur))
        if node.group is not None:
            self.group(node.group, cur, scope)

    def call(self, node: Node, ctx: Prefix, scope: dict[str, Prefix], applied: Prefix) -> None:
        proc = node.procedure
        name = proc.value if proc.type == "variable" else None
        if name is not None and name not in scope:
            _add(self.result.functions, name)
            args = node.arguments
            if name in ("xref", "translate") and args and args[0].type == "string":
                _add(self.result.tables if name == "xref" else self.result.value_maps, args[0].value)
        else:
            self.walk(proc, ctx, scope)
        element = applied
        if name in _ELEMENT_HOFS and applied is None and node.arguments:
            element = self.static_path(node.arguments[0], ctx, scope)
        for arg in node.arguments:
            if arg.type == "lambda" and name in _ELEMENT_HOFS:
                position = _ELEMENT_HOFS[name]
                inner = dict(scope)
                for i, param in enumerate(arg.arguments):
                    inner[param.value] = element if i == position else None
                self.walk(arg.body, None, inner)
            else:
                self.walk(arg, ctx, scope)


def analyse(source: str) -> Analysis:
    """Parse ``source`` and collect its paths, functions, lookup tables and value maps."""
    try:
        tree = parse(source)
    except ParseError as exc:
        return Analysis(error=exc)
    except RecursionError:
        return Analysis()
    result = Analysis(ast=tree)
    try:
        _Walker(result).walk(tree, (), {})
    except RecursionError:
        pass
    return result


def syntax_error_position(source: str, code: str) -> int | None:
    """Where the syntax error ``code`` is in ``source``, if our parser finds the same error."""
    try:
        parse(source)
    except ParseError as exc:
        return exc.start if exc.code == code else None
    except RecursionError:
        return None
    return None


@dataclass
class FieldPart:
    """One target field of a whole-document object expression (for the mapping spec)."""

    source: str
    paths: list[str]
    functions: list[str]
    tables: list[str]
    value_maps: list[str]


def object_fields(source: str) -> list[tuple[str, FieldPart]]:
    """Split ``{"a": expr, "b": {"c": expr}}`` into ``[("a", ...), ("b.c", ...)]``.

    Returns an empty list when the expression is not an object constructor
    with literal keys.
    """
    try:
        tree = parse(source)
    except (ParseError, RecursionError):
        return []
    if not _is_literal_object(tree):
        return []
    rows: list[tuple[str, FieldPart]] = []
    _collect(tree, (), source, rows)
    return rows


def _is_literal_object(node: Node) -> bool:
    return (
        node.type == "unary"
        and node.value == "{"
        and node.predicate is None
        and node.group is None
        and all(key.type == "string" for key, _ in node.lhs)
    )


def _collect(node: Node, prefix: tuple[str, ...], source: str, rows: list[tuple[str, FieldPart]]) -> None:
    for key, value in node.lhs:
        target = (*prefix, key.value)
        if _is_literal_object(value) and value.lhs:
            _collect(value, target, source, rows)
            continue
        part = Analysis(ast=value)
        _Walker(part).walk(value, (), {})
        start, end = value.span or (value.start, value.position)
        rows.append(
            (
                ".".join(target),
                FieldPart(source[start:end].strip(), part.paths, part.functions, part.tables, part.value_maps),
            )
        )
