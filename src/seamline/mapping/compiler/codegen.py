"""Generate one Python function from a JSONata syntax tree.

The generated function has the signature ``(D, B, R)``: the input document,
the variable bindings and the evaluation :class:`~.runtime.State`. Each
JSONata node becomes straight-line Python that assigns a temporary;
predicates, path steps and inline lambdas become nested functions. The
common case -- a path of field names over objects -- is inlined as dict
look-ups, with the general sequence semantics as the fallback branch.

Anything outside the supported subset raises :class:`NotCompilable` and the
expression is evaluated by the full engine instead.
"""

from __future__ import annotations

import ast
import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from seamline.mapping.compiler import runtime as rt
from seamline.mapping.compiler.builtins import BUILTINS, FAST, RETURNS_SEQUENCE, Builtin, round_to
from seamline.mapping.compiler.builtins import call as call_builtin
from seamline.mapping.compiler.parser import Node
from seamline.mapping.compiler.speculative import (
    Abandon,
    NotSpeculative,
    Speculator,
    collapse_list,
    drop_undefined,
    round_inline,
    spec_field,
)
from seamline.mapping.compiler.values import Cons, Lambda, Seq, collapse, plain
from seamline.mapping.functions import NOT_CONSTANT, Specialised, specialise
from seamline.mapping.lookups import MISSING
from seamline.mapping.values import UNDEFINED

__all__ = ["HostFunction", "NotCompilable", "generate"]

#: builtins whose function-typed parameters may receive an inline lambda (by argument index)
_LAMBDA_SLOTS = {"map": {1}, "filter": {1}, "each": {1}, "sift": {1}, "single": {1}, "sort": {1}}
_NAME_SAFE = re.compile(r"[^0-9A-Za-z_]")


#: calls inlined for their common argument types: (test, expression), else the checked fast path
_INLINE = {
    ("count", 1): ("{0}.__class__ is list", "len({0})"),
    ("lowercase", 1): ("{0}.__class__ is str", "{0}.lower()"),
    ("uppercase", 1): ("{0}.__class__ is str", "{0}.upper()"),
    ("string", 1): ("{0}.__class__ is str", "{0}"),
    ("exists", 1): ("True", "{0} is not U"),
}


class NotCompilable(Exception):
    """The expression uses something the compiler does not translate."""


class HostFunction:
    """A Python function callable from the expression (integration or user function).

    ``trusted`` functions (seamline's integration functions) return plain JSON
    values and may be called again without harm, so speculative code may use them.
    """

    __slots__ = ("fn", "limit", "name", "trusted")

    def __init__(self, name: str, fn: Callable[..., Any], limit: int | None, trusted: bool = False) -> None:
        self.name = name
        self.fn = fn
        self.limit = limit
        self.trusted = trusted


def _host_arg(value: Any) -> Any:
    """An argument for a Python function: undefined is None, sequences are plain lists."""
    if value is UNDEFINED:
        return None
    return plain(value)


def _host_failed(exc: Exception, name: str) -> None:
    """Re-raise what a Python function raised: seamline errors as they are, others as MappingError."""
    from seamline.core.errors import SeamlineError
    from seamline.mapping.errors import MappingError

    if isinstance(exc, SeamlineError | RecursionError):
        raise exc
    raise MappingError(
        f"function ${name} failed: {type(exc).__name__}: {exc}",
        jsonata_code="function_error",
        details={"function": name},
    ) from exc


def _array_of(value: Any) -> list[Any]:
    """The array ``[value]`` builds for one defined item that is not a plain list."""
    out: list[Any] = []
    rt.append_into(out, value)
    return out


def _host_result(value: Any) -> Any:
    if value is UNDEFINED:
        return None
    return list(value)


class _Scope:
    """A JSONata frame (root, block or lambda) and the Python def level it lives in."""

    def __init__(self, parent: _Scope | None, level: int) -> None:
        self.parent = parent
        self.level = level
        self.vars: dict[str, str] = {}

    def resolve(self, name: str) -> str | None:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.vars:
                return scope.vars[name]
            scope = scope.parent
        return None


def _binds(node: Any, out: list[str]) -> None:
    """Names bound with := in this frame (not inside nested blocks or lambdas)."""
    if isinstance(node, Node):
        if node.type in ("block", "lambda"):
            return
        if node.type == "bind" and node.lhs.value not in out:
            out.append(node.lhs.value)
        for value in node.__dict__.values():
            _binds(value, out)
    elif isinstance(node, list | tuple):
        for item in node:
            _binds(item, out)
    elif isinstance(node, dict):
        for item in node.values():
            _binds(item, out)


def _literal(node: Node) -> bool:
    """A literal with nothing attached (no predicate, grouping or keep-array flag)."""
    return (
        node.type in ("string", "number", "value")
        and node.predicate is None
        and node.group is None
        and not node.keepArray
    )


def _constant(code: str) -> bool:
    """Whether generated code is a literal constant (never undefined)."""
    return code[:1] in ("'", '"', "-") or code[:1].isdigit() or code in ("True", "False", "None")


def _literal_value(code: str) -> Any:
    """The value of constant code (``NOT_CONSTANT`` if it is not a Python literal, e.g. ``-inf``)."""
    try:
        return ast.literal_eval(code)
    except (ValueError, SyntaxError):
        return NOT_CONSTANT


class _Gen:
    def __init__(self, hosts: Mapping[str, HostFunction]) -> None:
        self.hosts = hosts
        self.lines: list[str] = []
        self.indent = 1
        self.level = 0
        self.counter = itertools.count(1)
        self.consts: dict[str, Any] = {}
        self.called: set[str] = set()
        #: generated values known not to be sequences (no collapse or plain() needed)
        self.scalar: set[str] = set()
        #: generated values already collapsed (collapse again only for keep-array)
        self.collapsed: set[str] = set()
        #: generated values that may be an array built by a path's array constructor (Cons)
        self.cons: set[str] = set()
        #: generated values that are scalars but may be arrays (host function results)
        self.lists: set[str] = set()
        #: values already computed and still in scope: (kind, base, names) -> (code, indent)
        self.memo: dict[tuple[Any, ...], tuple[str, int]] = {}
        #: generated values that are never undefined (constructed objects and arrays)
        self.present: set[str] = set()
        #: emit speculative code for object-shaped subtrees (off inside their fallbacks)
        self.speculate = True
        #: context variables that must not be speculated on
        self.no_spec: set[str] = set()
        #: context variables known to hold a dict in the code being generated
        self.dicts: set[str] = set()

    # --- emission helpers -------------------------------------------------------------
    def line(self, text: str) -> None:
        self.lines.append("    " * self.indent + text)

    def defined(self, code: str) -> str:
        return "True" if _constant(code) or code in self.present else f"{code} is not U"

    def tmp(self, prefix: str = "t") -> str:
        return f"{prefix}{next(self.counter)}"

    def const(self, value: Any, prefix: str) -> str:
        for name, existing in self.consts.items():
            if existing is value and name.startswith(prefix):
                return name
        name = f"{prefix}{next(self.counter)}"
        self.consts[name] = value
        return name

    def push(self) -> None:
        self.indent += 1

    def pop(self) -> None:
        """Leave an indented block: values computed inside it are no longer available."""
        self.indent -= 1
        self.memo = {key: entry for key, entry in self.memo.items() if entry[1] <= self.indent}

    def remember(self, key: tuple[Any, ...], code: str) -> None:
        self.memo[key] = (code, self.indent)

    @contextmanager
    def block(self) -> Iterator[None]:
        self.push()
        try:
            yield
        finally:
            self.pop()

    @contextmanager
    def function(self, name: str, params: str) -> Iterator[None]:
        self.line(f"def {name}({params}):")
        self.push()
        self.level += 1
        try:
            yield
        finally:
            self.pop()
            self.level -= 1

    def frame(self, parent: _Scope, nodes: list[Any]) -> _Scope:
        """Open a frame: allocate its := variables, initialised from the enclosing frames."""
        scope = _Scope(parent, self.level)
        names: list[str] = []
        _binds(nodes, names)
        for name in names:
            py = f"v{next(self.counter)}_{_NAME_SAFE.sub('_', name)}"
            self.line(f"{py} = {self.var_ref(name, parent)}")
            scope.vars[name] = py
        return scope

    def var_ref(self, name: str, scope: _Scope) -> str:
        found = scope.resolve(name)
        if found is not None:
            return found
        return f"B.get({name!r}, U)"

    # --- nodes ------------------------------------------------------------------------
    def expr(self, node: Node, ctx: str, scope: _Scope) -> str:
        kind = node.type
        if self.speculate and kind == "unary" and node.value in ("{", "[") and ctx not in self.no_spec:
            speculated = self.speculative(node, ctx, scope)
            if speculated is not None:
                return speculated
        method = getattr(self, f"n_{kind}", None)
        if method is None:
            raise NotCompilable(kind)
        value: str = method(node, ctx, scope)
        return self.post(node, value, ctx, scope)

    def speculative(self, node: Node, ctx: str, scope: _Scope) -> str | None:
        """Try the subtree as speculative code, with the general code as the fallback."""
        mark = len(self.lines)
        out = self.tmp()
        self.line("try:")
        try:
            with self.block():
                code = Speculator(self).expr(node, ctx)
                if not code.reads:
                    raise NotSpeculative("reads no data")
                self.line(f"{out} = {code.loop if code.loop is not None else code.text}")
        except NotSpeculative:
            del self.lines[mark:]
            return None
        self.line("except (KeyError, TypeError):")
        with self.block():
            self.speculate = False
            try:
                method = getattr(self, f"n_{node.type}")
                general = self.post(node, method(node, ctx, scope), ctx, scope)
            finally:
                self.speculate = True
            self.line(f"{out} = {general}")
        self.scalar.add(out)
        self.present.add(out)
        return out

    def post(self, node: Node, value: str, ctx: str, scope: _Scope) -> str:
        """What the reference does on leaving ``evaluate``: predicates, grouping, collapse."""
        if node.predicate:
            value = self.filters(node.predicate, value, scope)
        if node.type != "path" and node.group is not None:
            value = self.group(node.group.lhs, value, scope)
        if node.keepArray:
            out = self.tmp()
            self.line(f"if {value}.__class__ is Seq: {value}.keep = True")
            self.line(f"{out} = collapse({value})")
            self.collapsed.add(out)
            if value in self.cons:
                self.cons.add(out)
            return out
        if _constant(value) or value in self.scalar or value in self.collapsed:
            return value
        out = self.tmp()
        self.line(f"{out} = collapse({value})")
        self.collapsed.add(out)
        self.cons.add(out)
        return out

    def host_arg(self, code: str) -> str:
        if _constant(code):
            return code
        if code in self.cons:
            return f"host_arg({code})"
        return f"(None if {code} is U else {code})"

    def is_scalar(self, code: str) -> bool:
        return _constant(code) or code in self.scalar

    def store(self, code: str) -> str:
        """A value as it goes into an object: sequences become plain lists."""
        return code if self.is_scalar(code) else f"plain({code})"

    def filters(self, stages: list[Node], value: str, scope: _Scope) -> str:
        for stage in stages:
            if stage.type != "filter":
                raise NotCompilable("index binding")
            predicate = stage.expr
            out = self.tmp()
            if predicate.type == "number":
                self.line(f"{out} = filter_index({value}, {predicate.value!r})")
            else:
                fn = self.tmp("p")
                param = self.tmp("c")
                with self.function(fn, param):
                    result = self.expr(predicate, param, scope)
                    self.line(f"return {result}")
                self.line(f"{out} = filter_pred(R, {value}, {fn})")
            value = out
        return value

    def n_string(self, node: Node, ctx: str, scope: _Scope) -> str:
        return repr(node.value)

    def n_number(self, node: Node, ctx: str, scope: _Scope) -> str:
        return repr(node.value)

    def n_value(self, node: Node, ctx: str, scope: _Scope) -> str:
        return repr(node.value)

    def n_variable(self, node: Node, ctx: str, scope: _Scope) -> str:
        name = node.value
        if name == "":
            if ctx == "C":
                return "D"
            out = self.tmp()
            self.line(f"{out} = unwrap({ctx})")
            self.collapsed.add(out)
            return out
        if name == "$":
            return "D"
        if (name in BUILTINS or name in self.hosts) and scope.resolve(name) is None:
            raise NotCompilable("function as a value")
        ref = self.var_ref(name, scope)
        if not ref.isidentifier():
            out = self.tmp()
            self.line(f"{out} = {ref}")
            ref = out
        self.collapsed.add(ref)
        return ref

    def n_bind(self, node: Node, ctx: str, scope: _Scope) -> str:
        name = node.lhs.value
        target = scope.vars.get(name)
        if target is None or scope.level != self.level:
            raise NotCompilable("binding outside its frame")
        if node.rhs.type == "lambda":
            raise NotCompilable("function bound to a variable")
        value = self.expr(node.rhs, ctx, scope)
        self.line(f"{target} = {value}")
        self.collapsed.add(target)
        return target

    def n_block(self, node: Node, ctx: str, scope: _Scope) -> str:
        inner = self.frame(scope, node.expressions)
        result = "U"
        for item in node.expressions:
            result = self.expr(item, ctx, inner)
        out = self.tmp()
        self.line(f"{out} = {result}")
        self.inherit(out, result)
        return out

    def inherit(self, out: str, *sources: str) -> None:
        if any(code in self.cons for code in sources):
            self.cons.add(out)
        if all(self.is_scalar(code) for code in sources):
            self.scalar.add(out)
        elif all(self.is_scalar(code) or code in self.collapsed for code in sources):
            self.collapsed.add(out)

    def n_condition(self, node: Node, ctx: str, scope: _Scope) -> str:
        out = self.tmp()
        if node.elvis or node.coalesce:
            left = self.expr(node.then, ctx, scope)
            test = f"truthy({left})" if node.elvis else ("True" if _constant(left) else f"{left} is not U")
            self.line(f"if {test}:")
            with self.block():
                self.line(f"{out} = {left}")
            self.line("else:")
            with self.block():
                right = self.expr(node.else_, ctx, scope)
                self.line(f"{out} = {right}")
            self.inherit(out, left, right)
            return out
        condition = self.expr(node.condition, ctx, scope)
        self.line(f"if truthy({condition}):")
        with self.block():
            then = self.expr(node.then, ctx, scope)
            self.line(f"{out} = {then}")
        self.line("else:")
        with self.block():
            other = self.expr(node.else_, ctx, scope) if node.else_ is not None else "None"
            self.line(f"{out} = {other if node.else_ is not None else 'U'}")
        self.inherit(out, then, other)
        return out

    _OPS = {
        "+": "add", "-": "sub", "*": "mul", "/": "div", "%": "mod", "=": "eq", "!=": "ne",
        "<": "lt", "<=": "le", ">": "gt", ">=": "ge", "&": "concat", "in": "in_",
    }  # fmt: skip

    def n_binary(self, node: Node, ctx: str, scope: _Scope) -> str:
        op = node.value
        if op in ("and", "or"):
            out = self.tmp()
            left = self.expr(node.lhs, ctx, scope)
            self.line(f"{out} = truthy({left})")
            self.line(f"if {'' if op == 'and' else 'not '}{out}:")
            with self.block():
                right = self.expr(node.rhs, ctx, scope)
                self.line(f"{out} = truthy({right})")
            self.scalar.add(out)
            return out
        left = self.expr(node.lhs, ctx, scope)
        right = self.expr(node.rhs, ctx, scope)
        out = self.tmp()
        if op == "..":
            self.line(f"{out} = range_(R, {left}, {right})")
        elif op in ("+", "-", "*"):
            checks = [
                f"{code}.__class__ in NUM"
                for code in (left, right)
                if not (
                    _constant(code)
                    and isinstance(ast.literal_eval(code), int | float)
                    and not isinstance(ast.literal_eval(code), bool)
                )
            ]
            slow = f"{self._OPS[op]}({left}, {right})"
            if checks:
                # a non-finite result means a non-finite operand (an error) or an overflow (inf):
                # the checked helper tells them apart
                fast = f"({slow} if ({out} := ({left}) {op} ({right})) - {out} != 0 else {out})"
                self.line(f"{out} = {fast} if {' and '.join(checks)} else {slow}")
            else:
                self.line(f"{out} = {slow}")
            self.scalar.add(out)
        elif op in self._OPS:
            self.line(f"{out} = {self._OPS[op]}({left}, {right})")
            self.scalar.add(out)
        else:
            raise NotCompilable(op)
        return out

    def n_unary(self, node: Node, ctx: str, scope: _Scope) -> str:
        out = self.tmp()
        if node.value == "-":
            value = self.expr(node.expression, ctx, scope)
            self.line(f"{out} = neg({value})")
            self.scalar.add(out)
        elif (
            node.value == "["
            and len(node.expressions) == 1
            and not node.consarray
            and not (node.expressions[0].type == "unary" and node.expressions[0].value == "[")
            and not _literal(node.expressions[0])
        ):
            # one item: the array is the item's sequence itself (a fresh list), or the single value
            value = self.expr(node.expressions[0], ctx, scope)
            self.line(f"{out} = {value} if {value}.__class__ is list else ([] if {value} is U else array_of({value}))")
            self.scalar.add(out)
            self.present.add(out)
        elif node.value == "[":
            self.line(f"{out} = []")
            for item in node.expressions:
                if _literal(item):
                    self.line(f"{out}.append({item.value!r})")
                    continue
                value = self.expr(item, ctx, scope)
                if item.type == "unary" and item.value == "[":
                    self.line(f"if {self.defined(value)}: {out}.append({value})")
                else:
                    self.line(f"if {self.defined(value)}: append_into({out}, {value})")
            if node.consarray:
                self.line(f"{out} = Cons({out})")
            else:
                self.scalar.add(out)
            self.present.add(out)
        elif node.value == "{":
            return self.object(node.lhs, ctx, scope)
        else:
            raise NotCompilable(node.value)
        return out

    def object(self, pairs: list[tuple[Node, Node]], ctx: str, scope: _Scope) -> str:
        out = self.tmp()
        keys = [key.value for key, _ in pairs if key.type == "string" and key.predicate is None]
        literal = len(keys) == len(pairs) and len(set(keys)) == len(keys)
        if literal:
            known = ctx in self.dicts
            if not known:
                self.line(f"if {ctx}.__class__ is not dict:")
                with self.block():
                    self.line(f"{out} = {self.group(pairs, ctx, scope)}")
                self.line("else:")
                self.push()
                self.dicts.add(ctx)
            items = []
            maybe_missing = []
            for key, value_node in pairs:
                if _literal(value_node):
                    items.append(f"{key.value!r}: {value_node.value!r}")
                    continue
                value = self.expr(value_node, ctx, scope)
                if value in self.cons:
                    fixed = self.tmp()
                    self.line(f"{fixed} = plain({value})")
                    value = fixed
                items.append(f"{key.value!r}: {value}")
                if not _constant(value) and value not in self.present:
                    maybe_missing.append(value)
            self.line(f"{out} = {{{', '.join(items)}}}")
            if maybe_missing:
                test = " or ".join(f"{code} is U" for code in maybe_missing)
                self.line(f"if {test}: {out} = {{k: v for k, v in {out}.items() if v is not U}}")
            if not known:
                self.pop()
                self.dicts.discard(ctx)
            self.scalar.add(out)
            self.present.add(out)
            return out
        self.line(f"{out} = {self.group(pairs, ctx, scope)}")
        self.scalar.add(out)
        self.present.add(out)
        return out

    def group(self, pairs: list[tuple[Node, Node]], ctx: str, scope: _Scope) -> str:
        """Code for the generic object constructor over ``ctx`` (which may be a sequence)."""
        parts = []
        for key, value in pairs:
            if key.type == "string" and key.predicate is None:
                key_code = repr(key.value)
            else:
                key_code = self.tmp("k")
                param = self.tmp("c")
                with self.function(key_code, param):
                    self.line(f"return {self.expr(key, param, scope)}")
            value_fn = self.tmp("g")
            param = self.tmp("c")
            with self.function(value_fn, param):
                self.line(f"return {self.expr(value, param, scope)}")
            parts.append(f"({key_code}, {value_fn})")
        out = self.tmp()
        pairs_code = f"({', '.join(parts)},)" if parts else "()"
        self.line(f"{out} = group(R, {ctx}, {pairs_code})")
        self.scalar.add(out)
        return out

    # --- paths ------------------------------------------------------------------------
    def n_path(self, node: Node, ctx: str, scope: _Scope) -> str:
        steps = node.steps
        for step in steps:
            if step.tuple or step.focus or step.index or step.type in ("sort", "parent", "wildcard", "descendant"):
                raise NotCompilable(f"path step {step.type}")
        names_only = all(s.type == "name" and not s.stages and not s.keepArray and s.group is None for s in steps[1:])
        first = steps[0]
        plain_first = (first.type == "name" and not first.stages and not first.keepArray and first.group is None) or (
            first.type == "variable" and not first.predicate and not first.stages and not first.keepArray
            and first.group is None and len(steps) > 1
        )  # fmt: skip
        if node.keepSingletonArray or node.group is not None:
            return self.general_path(node, ctx, scope)
        if names_only and plain_first:
            return self.fast_path(node, ctx, scope)
        loopable = (
            len(steps) >= 2
            and first.type == "name"
            and all(s.type == "name" and not s.stages and not s.keepArray and s.group is None for s in steps[:-1])
            and steps[-1].type != "name"
            and not steps[-1].consarray
            and not steps[-1].keepArray
        )
        if loopable:
            return self.loop_path(node, ctx, scope)
        return self.general_path(node, ctx, scope)

    def fast_path(self, node: Node, ctx: str, scope: _Scope) -> str:
        steps = node.steps
        first = steps[0]
        if first.type == "variable":
            base = self.tmp("b")
            self.line(f"{base} = {self.n_variable(first, ctx, scope)}")
            names = [s.value for s in steps[1:]]
            slow_input = f"single_step({base}, False)"
        else:
            base = ctx
            names = [s.value for s in steps]
            slow_input = f"to_seq({base})"
        key = ("path", base, tuple(names))
        if key in self.memo:
            return self.memo[key][0]
        out = self.tmp()
        tests: list[str] = []
        current = base
        rest = names
        if base in self.dicts:
            first_key = ("get", base, names[0])
            if first_key in self.memo:
                current = self.memo[first_key][0]
            else:
                current = self.tmp()
                self.line(f"{current} = {base}.get({names[0]!r}, U)")
                self.remember(first_key, current)
            rest = names[1:]
            if not rest:
                self.collapsed.add(current)
                self.remember(key, current)
                return current
            tests.append(f"{current}.__class__ is dict")
        else:
            tests.append(f"{base}.__class__ is dict")
        for name in rest[:-1]:
            tests.append(f"({out} := {current}.get({name!r}, U)).__class__ is dict")
            current = out
        names_const = self.const(tuple(names), "N")
        self.line(f"if {' and '.join(tests)}:")
        with self.block():
            self.line(f"{out} = {current}.get({rest[-1]!r}, U)")
        self.line("else:")
        with self.block():
            self.line(f"{out} = collapse(names_path({slow_input}, {names_const}, R))")
        self.collapsed.add(out)
        self.remember(key, out)
        return out

    def loop_path(self, node: Node, ctx: str, scope: _Scope) -> str:
        """``a.b.<step>``: field names over objects, then one step looped inline over the items."""
        steps = node.steps
        names = [s.value for s in steps[:-1]]
        last = steps[-1]
        out = self.tmp()
        value = self.tmp()
        tests = [] if ctx in self.dicts else [f"{ctx}.__class__ is dict"]
        current = ctx
        if ctx in self.dicts and len(names) == 1:
            key = ("path", ctx, (names[0],))
            if key in self.memo:
                value = self.memo[key][0]
            else:
                self.line(f"{value} = {ctx}.get({names[0]!r}, U)")
                self.remember(("get", ctx, names[0]), value)
            tests.append(f"{value}.__class__ is list")
        else:
            for name in names[:-1]:
                tests.append(f"({value} := {current}.get({name!r}, U)).__class__ is dict")
                current = value
            tests.append(f"({value} := {current}.get({names[-1]!r}, U)).__class__ is list")
        self.line(f"if {' and '.join(tests)}:")
        with self.block():
            results = self.tmp("r")
            item = self.tmp("c")
            self.line(f"{results} = []")
            self.line(f"if len({value}) > 1: R.check()")
            self.line(f"for {item} in {value}:")
            with self.block():
                self.line(f"if {item}.__class__ is dict:")
                with self.block():
                    self.dicts.add(item)
                    known = self.loop_body(last, item, results, scope)
                    self.dicts.discard(item)
                self.line("else:")
                with self.block():
                    generic = self.loop_body(last, item, results, scope)
            if known and generic:
                # no step value can be an array: finishing the sequence is just collapsing it
                self.line(f"{out} = {results}[0] if len({results}) == 1 else ({results} if {results} else U)")
            else:
                self.line(f"{out} = collapse(finish({results}, True, R))")
        self.line("else:")
        with self.block():
            general = self.general_path(node, ctx, scope)
            self.line(f"{out} = {general}")
            if general in self.cons:
                self.cons.add(out)
        self.collapsed.add(out)
        return out

    def loop_body(self, step: Node, item: str, results: str, scope: _Scope) -> bool:
        """One loop iteration of :meth:`loop_path`; True if the value is known not to be an array."""
        value = self.expr(step, item, scope)
        value = self.stages(step, value, scope)
        if _constant(value) or value in self.present:
            self.line(f"{results}.append({value})")
        else:
            self.line(f"if {value} is not U: {results}.append({value})")
        return not step.stages and (_constant(value) or value in self.scalar) and value not in self.lists

    def general_path(self, node: Node, ctx: str, scope: _Scope) -> str:
        steps = node.steps
        seq = self.tmp("s")
        first = steps[0]
        start = 0
        if first.type == "variable":
            value = self.expr(first, ctx, scope)
            value = self.stages(first, value, scope)
            self.line(f"{seq} = single_step({value}, {len(steps) == 1})")
            start = 1
        elif first.consarray:
            input_seq = self.tmp("i")
            self.line(f"{input_seq} = to_seq({ctx})")
            value = self.expr(first, input_seq, scope)
            self.line(f"{seq} = {value}")
            start = 1
        else:
            self.line(f"{seq} = to_seq({ctx})")
        opened = 0
        for index in range(start, len(steps)):
            step = steps[index]
            last = index == len(steps) - 1
            if index > 0:
                self.line(f"if {seq}:")
                self.push()
                opened += 1
            if step.type == "name" and not step.stages:
                self.line(f"{seq} = name_step({seq}, {step.value!r}, {last}, R)")
                continue
            fn = self.tmp("f")
            param = self.tmp("c")
            with self.function(fn, param):
                if step.type == "name":
                    value = self.tmp()
                    self.line(
                        f"{value} = {param}.get({step.value!r}, U) if {param}.__class__ is dict "
                        f"else collapse(lookup({param}, {step.value!r}))"
                    )
                else:
                    value = self.expr(step, param, scope)
                value = self.stages(step, value, scope)
                self.line(f"return {value}")
            self.line(f"{seq} = map_step(R, {seq}, {fn}, {last})")
        for _ in range(opened):
            self.pop()
        if node.keepSingletonArray:
            self.line(f"if {seq}.__class__ is Cons: {seq} = seq1({seq})")
            self.line(f"if {seq}.__class__ is Seq: {seq}.keep = True")
        if node.group is not None:
            return self.group(node.group.lhs, seq, scope)
        out = seq
        if not node.keepArray:
            out = self.tmp()
            self.line(f"{out} = collapse({seq})")
            self.collapsed.add(out)
        if any(step.consarray for step in steps):
            self.cons.add(out)
        return out

    def stages(self, step: Node, value: str, scope: _Scope) -> str:
        if not step.stages:
            return value
        return self.filters(step.stages, value, scope)

    # --- functions --------------------------------------------------------------------
    def n_function(self, node: Node, ctx: str, scope: _Scope) -> str:
        return self.call(node, ctx, scope, None)

    def n_apply(self, node: Node, ctx: str, scope: _Scope) -> str:
        if node.rhs.type != "function":
            raise NotCompilable("~> to a function value")
        left = self.expr(node.lhs, ctx, scope)
        return self.post(node.rhs, self.call(node.rhs, ctx, scope, left), ctx, scope)

    def call(self, node: Node, ctx: str, scope: _Scope, first: str | None) -> str:
        proc = node.procedure
        if proc.type != "variable" or proc.predicate or proc.stages:
            raise NotCompilable("call of an expression")
        name = proc.value
        if scope.resolve(name) is not None:
            raise NotCompilable("call of a variable")
        self.called.add(name)
        args: list[str] = [] if first is None else [first]
        offset = len(args)
        builtin: Builtin | None = BUILTINS.get(name) if name not in self.hosts else None
        for index, arg in enumerate(node.arguments):
            if arg.type == "lambda":
                if builtin is None or index + offset not in _LAMBDA_SLOTS.get(name, ()):
                    raise NotCompilable("lambda argument")
                args.append(self.lambda_(arg, ctx, scope))
            elif arg.type == "regex":
                raise NotCompilable("regex")
            else:
                args.append(self.expr(arg, ctx, scope))
        out = self.tmp()
        if name in self.hosts:
            host = self.hosts[name]
            fn = self.const(host.fn, "H")
            passed = args if host.limit is None else args[: host.limit]
            special = self.specialised(host, passed)
            if special is not None and special.table is not None:
                # a literal table that never changes: a string key found there is the result
                key = passed[special.key]
                view = self.const(special.table, "V")
                self.line(f"{out} = {view}.get({key}, MISS) if ({key}).__class__ is str else MISS")
                self.line(f"if {out} is MISS:")
                self.push()
            elif special is not None and special.call is not None:
                fn = self.const(special.call, "H")
                passed = [passed[i] for i in special.kept]
            host_args = ", ".join(self.host_arg(a) for a in passed)
            self.line("try:")
            with self.block():
                self.line(f"{out} = {fn}({host_args})")
            self.line("except Exception as exc:")
            with self.block():
                self.line(f"host_failed(exc, {name!r})")
            self.line(f"if {out} is U or {out}.__class__ is tuple: {out} = host_result({out})")
            if special is not None and special.table is not None:
                self.pop()
            self.scalar.add(out)
            self.lists.add(out)
            return out
        if builtin is None:
            raise NotCompilable(f"function ${name}")
        if not builtin.min_args <= len(args) <= builtin.max_args:
            raise NotCompilable("argument count")
        fast = FAST.get((name, len(args)))
        inline = _INLINE.get((name, len(args)))
        if name == "round" and len(args) == 2 and args[1].isdigit() and 0 < int(args[1]) < 16:
            # Python's round() is JSONata's $round except at (near-)ties of the decimal form
            value, digits = args[0], int(args[1])
            self.line(round_inline(out, value, digits, ctx))
        elif fast is not None:
            ref = self.const(fast, "Q")
            call = f"{ref}(R, {ctx}, {', '.join(args)})"
            if inline is not None and not any(_constant(a) for a in args):
                test, direct = inline
                self.line(f"{out} = {direct.format(*args)} if {test.format(*args)} else {call}")
            else:
                self.line(f"{out} = {call}")
        else:
            ref = self.const(builtin, "F")
            self.line(f"{out} = call_builtin({ref}, R, {ctx}, [{', '.join(args)}])")
        if name not in RETURNS_SEQUENCE:
            self.scalar.add(out)
        return out

    def specialised(self, host: HostFunction, args: list[str]) -> Specialised | None:
        """A faster form of a call of an integration function with literal leading arguments."""
        if not host.trusted or not any(_constant(code) for code in args):
            return None
        values = [_literal_value(code) if _constant(code) else NOT_CONSTANT for code in args]
        return specialise(host.fn, values)

    def lambda_(self, node: Node, ctx: str, scope: _Scope) -> str:
        if node.signature is not None:
            raise NotCompilable("lambda signature")
        fn = self.tmp("l")
        inner = _Scope(scope, self.level + 1)
        params = []
        for arg in node.arguments:
            py = f"a{next(self.counter)}_{_NAME_SAFE.sub('_', arg.value)}"
            inner.vars[arg.value] = py
            params.append(f"{py}=U")
        with self.function(fn, ", ".join(params)):
            frame = self.frame(inner, [node.body])
            frame.level = self.level
            result = self.expr(node.body, ctx, frame)
            self.line(f"return {result}")
        out = self.tmp()
        self.line(f"{out} = Lambda({fn}, {len(node.arguments)})")
        return out


_GLOBALS: dict[str, Any] = {
    "U": UNDEFINED,
    "Seq": Seq,
    "Cons": Cons,
    "Lambda": Lambda,
    "collapse": collapse,
    "plain": plain,
    "call_builtin": call_builtin,
    **{name: getattr(rt, name) for name in rt.__all__},
}
_GLOBALS["NUM"] = frozenset({int, float})
_GLOBALS["SEQS"] = frozenset({Seq, Cons})
_GLOBALS["finish"] = rt._finish
_GLOBALS["collapse_list"] = collapse_list
_GLOBALS["Abandon"] = Abandon
_GLOBALS["drop_undefined"] = drop_undefined
_GLOBALS["spec_field"] = spec_field
_GLOBALS["array_of"] = _array_of
_GLOBALS["round_to"] = round_to
_GLOBALS["MISS"] = MISSING
_GLOBALS["host_arg"] = _host_arg
_GLOBALS["host_failed"] = _host_failed
_GLOBALS["host_result"] = _host_result
_GLOBALS["range_"] = rt.range_
_GLOBALS["in_"] = rt.in_


def generate(tree: Node, hosts: Mapping[str, HostFunction]) -> tuple[Callable[..., Any], str, set[str]]:
    """Translate ``tree``; returns (function, its Python source, names of the functions it calls).

    Raises:
        NotCompilable: the tree uses something outside the supported subset.
    """
    if tree.uses_parent:
        raise NotCompilable("parent operator")
    gen = _Gen(hosts)
    root = _Scope(None, 0)
    gen.line("C = D if D.__class__ is not list else wrap(D)")
    scope = gen.frame(root, [tree])
    scope.level = 0
    result = gen.expr(tree, "C", scope)
    if gen.is_scalar(result):
        gen.line(f"return {result}")
    else:
        # a sequence returned becomes a plain list
        gen.line(f"return plain({result})")
    source = "def __jsonata(D, B, R):\n" + "\n".join(gen.lines) + "\n"
    namespace: dict[str, Any] = dict(_GLOBALS)
    namespace.update(gen.consts)
    namespace["wrap"] = _wrap
    try:
        code = compile(source, "<jsonata>", "exec")
    except (SyntaxError, RecursionError, MemoryError) as exc:
        raise NotCompilable(f"generated code does not compile: {exc}") from None
    exec(code, namespace)
    return namespace["__jsonata"], source, gen.called


def _wrap(data: Any) -> Any:
    if data.__class__ is list:
        wrapper = Seq()
        wrapper.append(data)
        wrapper.outer = True
        return wrapper
    return data
