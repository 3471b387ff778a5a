"""Speculative code for the happy path of object-shaped data.

Mappings mostly read fields that are there, from objects that are objects.
For such a subtree the generator emits one Python *expression* that indexes
the data directly (``C["customer"]["id"]``), builds object literals and list
comprehensions -- nearly what one would write by hand -- and wraps it in
``try``. A missing field (``KeyError``) or a value of another shape
(``TypeError``: a list where an object was expected, ...) abandons the
speculative expression, and the general code -- full JSONata semantics --
evaluates the subtree instead.

Only subtrees whose evaluation can safely be started again are speculated:
no variable bindings, no ranges, no functions other than the standard
library subset and seamline's integration functions (which are pure or, like
``$uuid``, harmless to repeat).

Static facts tracked per expression: whether it can be *undefined* and
whether it can be an *array* (arrays are spliced into sequences, so a loop
whose step can give an array is not speculated).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from seamline.mapping.compiler.builtins import FAST
from seamline.mapping.values import UNDEFINED

if TYPE_CHECKING:
    from seamline.mapping.compiler.codegen import _Gen
    from seamline.mapping.compiler.parser import Node

__all__ = ["Abandon", "NotSpeculative", "Speculator", "collapse_list", "drop_undefined", "round_inline", "spec_field"]


_FIELD_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\[('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\]")


class Abandon(TypeError):
    """Raised inside speculative code when the data does not have the expected shape."""


class NotSpeculative(Exception):
    """The subtree is outside the speculative subset."""


@dataclass(frozen=True)
class Code:
    """A Python expression and what is statically known about its value."""

    text: str
    array: bool = False  # may be an array (spliced into sequences)
    missing: bool = False  # may be undefined
    loop: str | None = None  # a list comprehension giving the sequence (before collapsing)
    reads: bool = False  # reads the data (worth speculating)
    number: bool = False  # always a number
    data: bool = False  # read from the input document as is (so a finite number if a number)


#: functions that never give undefined for defined arguments, and never an array
_SCALAR_FUNCTIONS = frozenset(
    {"count", "sum", "round", "lowercase", "uppercase", "trim", "length", "string", "number", "exists",
     "boolean", "join", "substring", "abs", "floor", "ceil"}
)  # fmt: skip
_INLINE = {
    ("count", 1): ("len({0})", "{0}.__class__ is list"),
    ("lowercase", 1): ("{0}.lower()", "{0}.__class__ is str"),
    ("uppercase", 1): ("{0}.upper()", "{0}.__class__ is str"),
    ("string", 1): ("{0}", "{0}.__class__ is str"),
}
_COMPARE = {"=": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge", "in": "in_"}


def _plain_node(node: Node) -> bool:
    return node.predicate is None and node.group is None and not node.keepArray and not node.stages


class Speculator:
    """Emits speculative code for a code generator (statements at its current indentation)."""

    def __init__(self, gen: _Gen) -> None:
        self.gen = gen

    def tmp(self) -> str:
        return self.gen.tmp("w")

    def bind(self, text: str) -> str:
        """Evaluate ``text`` now, into a temporary (unless it is already a name or constant)."""
        if text.isidentifier() or text[:1] in ("'", '"') or text[:1].isdigit() or text.startswith("-"):
            return text
        name = self.tmp()
        self.gen.line(f"{name} = {text}")
        field = _FIELD_RE.fullmatch(text)
        if field is not None:
            self.gen.remember(("spec", field.group(1), ast.literal_eval(field.group(2))), name)
        return name

    def expr(self, node: Node, ctx: str) -> Code:
        if not _plain_node(node):
            raise NotSpeculative("predicate")
        kind = node.type
        if kind in ("string", "number", "value"):
            return Code(repr(node.value))
        if kind == "path":
            return self.path(node, ctx)
        if kind == "unary":
            if node.value == "{":
                return self.object(node.lhs, ctx)
            if node.value == "[":
                return self.array(node, ctx)
            if node.value == "-":
                inner = self.value(node.expression, ctx)
                return Code(self.bind(f"neg({inner.text})"), reads=inner.reads)
            raise NotSpeculative(node.value)
        if kind == "binary":
            return self.binary(node, ctx)
        if kind == "block":
            if len(node.expressions) != 1:
                raise NotSpeculative("block")
            return self.expr(node.expressions[0], ctx)
        if kind == "function":
            return self.call(node, ctx)
        if kind == "variable" and node.value == "$":
            return Code("D")
        raise NotSpeculative(kind)

    def field(self, ctx: str, name: str) -> str:
        """``ctx[name]`` in a temporary, shared by the paths of the region that start with it."""
        key = ("spec", ctx, name)
        if key in self.gen.memo:
            return self.gen.memo[key][0]
        out = self.tmp()
        self.gen.line(f"{out} = {ctx}[{name!r}]")
        self.gen.remember(key, out)
        return out

    def reuse(self, text: str) -> str:
        """A field read ``ctx['name']`` replaced by the temporary it was bound to, if any."""
        field = _FIELD_RE.fullmatch(text)
        if field is not None:
            bound = self.gen.memo.get(("spec", field.group(1), ast.literal_eval(field.group(2))))
            if bound is not None:
                return bound[0]
        return text

    def list_of(self, source: str) -> str:
        """``source`` in a temporary that is known to be a list (else speculation is abandoned)."""
        name = self.bind(source)
        key = ("list", name)
        if key not in self.gen.memo:
            self.gen.line(f"if {name}.__class__ is not list: raise Abandon")
            self.gen.remember(key, name)
        return name

    def value(self, node: Node, ctx: str) -> Code:
        """An expression as a value (a loop's sequence collapsed)."""
        code = self.expr(node, ctx)
        if code.loop is not None:
            return Code(self.bind(f"collapse_list({code.loop})"), array=True, missing=True, reads=True)
        return code

    def path(self, node: Node, ctx: str) -> Code:
        steps = node.steps
        if any(not _plain_node(step) or step.tuple or step.consarray for step in steps):
            raise NotSpeculative("path step")
        if steps[0].type != "name":
            raise NotSpeculative("path start")
        names_only = all(step.type == "name" for step in steps)
        if not names_only and (
            any(step.type != "name" for step in steps[:-1]) or steps[-1].type in ("name", "function")
        ):
            raise NotSpeculative("path shape")
        names = [step.value for step in (steps if names_only else steps[:-1])]
        if names_only and len(names) == 1 and ("spec", ctx, names[0]) in self.gen.memo:
            return Code(self.gen.memo[("spec", ctx, names[0])][0], array=True, reads=True, data=True)
        if len(names) > 1 or not names_only:
            base, names = self.field(ctx, names[0]), names[1:]
            # later steps: an object is indexed; an array of objects is mapped (``lines.sku``)
            for name in names:
                key = ("spec", base, name)
                if key in self.gen.memo:
                    base = self.gen.memo[key][0]
                    continue
                out = self.tmp()
                self.gen.line(f"{out} = {base}[{name!r}] if {base}.__class__ is dict else spec_field({base}, {name!r})")
                self.gen.remember(key, out)
                base = out
            source = base
        else:
            source = ctx + "".join(f"[{name!r}]" for name in names)
        if names_only:
            return Code(source, array=True, reads=True, data=True)
        results, item = self.gen.tmp("r"), self.gen.tmp("i")
        gen = self.gen
        source = self.list_of(source)
        gen.line(f"{results} = []")
        gen.line(f"for {item} in {source}:")
        with gen.block():
            last = self.value(steps[-1], item)
            if last.array or last.missing:
                raise NotSpeculative("step may splice")
            gen.line(f"{results}.append({last.text})")
        return Code("", loop=results, reads=True)

    def sum_loop(self, node: Node, ctx: str) -> Code | None:
        """``$sum(a.b.(expr))`` with a numeric step: add up in the loop (no intermediate sequence)."""
        steps = node.steps if node.type == "path" and _plain_node(node) else None
        if not steps or len(steps) < 2 or any(not _plain_node(st) or st.tuple or st.consarray for st in steps):
            return None
        if any(st.type != "name" for st in steps[:-1]) or steps[-1].type in ("name", "function"):
            return None
        gen = self.gen
        names = [st.value for st in steps[:-1]]
        base = self.field(ctx, names[0])
        source = base + "".join(f"[{name!r}]" for name in names[1:])
        total, item = self.tmp(), gen.tmp("i")
        mark = len(gen.lines)
        source = self.list_of(source)
        gen.line(f"{total} = 0")
        gen.line(f"for {item} in {source}:")
        with gen.block():
            last = self.value(steps[-1], item)
            if not last.number:
                del gen.lines[mark:]
                return None
            gen.line(f"{total} += {last.text}")
        out = self.tmp()
        # every item adds a number: the sum is undefined only for an empty list
        gen.line(f"{out} = {total} if {source} else U")
        return Code(out, reads=True, missing=True)

    def object(self, pairs: list[tuple[Node, Node]], ctx: str) -> Code:
        keys = [key.value for key, _ in pairs if key.type == "string" and _plain_node(key)]
        if len(keys) != len(pairs) or len(set(keys)) != len(keys):
            raise NotSpeculative("object keys")
        items: list[tuple[str, str]] = []
        missing = []
        reads = False
        for key, value_node in pairs:
            value = self.value(value_node, ctx)
            if value.missing:
                value = Code(self.bind(value.text), missing=True, reads=value.reads)
                missing.append(value.text)
            items.append((key.value, value.text))
            reads = reads or value.reads
        # a field read again after a later value bound it: use the bound value (reads have no effects)
        text = ", ".join(f"{key!r}: {self.reuse(value)}" for key, value in items)
        out = self.tmp()
        self.gen.line(f"{out} = {{{text}}}")
        if missing:
            test = " or ".join(f"{code} is U" for code in missing)
            self.gen.line(f"if {test}: {out} = drop_undefined({out})")
        return Code(out, reads=reads)

    def array(self, node: Node, ctx: str) -> Code:
        if node.consarray:
            raise NotSpeculative("array step")
        if len(node.expressions) == 1 and not (
            node.expressions[0].type == "unary" and node.expressions[0].value == "["
        ):
            code = self.expr(node.expressions[0], ctx)
            if code.loop is not None:
                return Code(code.loop, reads=True)
            if code.array or code.missing:
                raise NotSpeculative("array item may splice")
            return Code(f"[{code.text}]", reads=code.reads)
        items = []
        reads = False
        for item in node.expressions:
            code = self.value(item, ctx)
            nested = item.type == "unary" and item.value == "["
            if (code.array and not nested) or code.missing:
                raise NotSpeculative("array item may splice")
            items.append(code.text)
            reads = reads or code.reads
        return Code(self.bind("[" + ", ".join(items) + "]"), reads=reads)

    def binary(self, node: Node, ctx: str) -> Code:
        op = node.value
        if op in ("and", "or"):
            raise NotSpeculative(op)
        left = self.value(node.lhs, ctx)
        right = self.value(node.rhs, ctx)
        reads = left.reads or right.reads
        if left.missing or right.missing:
            raise NotSpeculative("operand may be undefined")
        gen = self.gen
        if op in ("+", "-", "*"):
            a, b = self.bind(left.text), self.bind(right.text)
            out = self.tmp()
            helper = {"+": "add", "-": "sub", "*": "mul"}[op]
            checks = [f"{v}.__class__ in NUM" for v in (a, b) if not v[:1].isdigit()]
            if checks:
                gen.line(f"{out} = {a} {op} {b} if {' and '.join(checks)} else {helper}({a}, {b})")
                if not (left.data and right.data):
                    # a non-finite result: a non-finite operand (an error) or an overflow; the helper decides.
                    # Numbers read from a JSON document are finite, so two of them need no check.
                    gen.line(f"if {out} - {out} != 0: {out} = {helper}({a}, {b})")
            else:
                gen.line(f"{out} = {helper}({a}, {b})")
            return Code(out, reads=reads, number=True)
        if op in ("/", "%"):
            return Code(self.bind(f"{'div' if op == '/' else 'mod'}({left.text}, {right.text})"), reads=reads)
        if op == "&":
            return Code(self.bind(f"concat({left.text}, {right.text})"), reads=reads)
        if op in _COMPARE:
            return Code(self.bind(f"{_COMPARE[op]}({left.text}, {right.text})"), reads=reads)
        raise NotSpeculative(op)

    def call(self, node: Node, ctx: str) -> Code:
        proc = node.procedure
        if proc.type != "variable" or not _plain_node(proc):
            raise NotSpeculative("call")
        name = proc.value
        if any(arg.type in ("lambda", "regex") for arg in node.arguments):
            raise NotSpeculative("argument")
        if name == "sum" and len(node.arguments) == 1 and name not in self.gen.hosts:
            summed = self.sum_loop(node.arguments[0], ctx)
            if summed is not None:
                self.gen.called.add(name)
                return summed
        args = [self.value(arg, ctx) for arg in node.arguments]
        reads = any(arg.reads for arg in args)
        missing = any(arg.missing for arg in args)
        gen = self.gen
        host = gen.hosts.get(name)
        if host is not None:
            if not host.trusted:
                raise NotSpeculative("user function")
            fn = gen.const(host.fn, "H")
            passed = args if host.limit is None else args[: host.limit]
            special = gen.specialised(host, [arg.text for arg in passed])
            if special is not None and special.call is not None:
                fn = gen.const(special.call, "H")
                passed = [passed[i] for i in special.kept]
            texts = [f"(None if {arg.text} is U else {arg.text})" if arg.missing else arg.text for arg in passed]
            if special is not None and special.table is not None:
                # a literal table that never changes: a string key found there is the result
                key = self.bind(texts[special.key])
                texts[special.key] = key
                view = gen.const(special.table, "V")
                out = self.tmp()
                gen.line(f"{out} = {view}.get({key}, MISS) if ({key}).__class__ is str else MISS")
                gen.line(f"if {out} is MISS: {out} = {fn}({', '.join(texts)})")
                return Code(out, array=True, reads=reads)
            return Code(self.bind(f"{fn}({', '.join(texts)})"), array=True, reads=reads)
        if name not in _SCALAR_FUNCTIONS:
            raise NotSpeculative(f"${name}")
        fast = FAST.get((name, len(args)))
        if fast is None:
            raise NotSpeculative("arguments")
        gen.called.add(name)
        texts = [a.text for a in args]
        out = self.tmp()
        if name == "round" and len(args) == 2 and texts[1].isdigit() and 0 < int(texts[1]) < 16:
            v = self.bind(texts[0])
            digits = int(texts[1])
            gen.line(round_inline(out, v, digits, ctx))
            return Code(out, reads=reads, missing=missing)
        ref = gen.const(fast, "Q")
        inline = _INLINE.get((name, len(args)))
        if inline is not None:
            v = self.bind(texts[0])
            direct, test = inline
            gen.line(f"{out} = {direct.format(v)} if {test.format(v)} else {ref}(R, {ctx}, {v})")
            return Code(out, reads=reads, missing=missing)
        gen.line(f"{out} = {ref}(R, {ctx}, {', '.join(texts)})")
        return Code(out, reads=reads, missing=missing or name == "sum")


def round_inline(out: str, value: str, digits: int, ctx: str) -> str:
    """A statement: ``out = $round(value, digits)`` for a literal precision of 1-15 digits.

    Python's ``round()`` is JSONata's ``$round`` except at (near-)ties of the
    decimal form, which ``round_to`` settles exactly. ``value - round(value)``
    is exact (Sterbenz), so a value that is not within a 2e-6 band (in units
    of the last digit) of a tie takes the fast path -- below a magnitude where
    the representation error of the tie (an ulp of the value) stays ten times
    smaller than that band.
    """
    margin = repr(0.499998 / 10**digits)
    bound = repr(1e9 / 10**digits)
    slow = f"round_to({value}, {digits}, R, {ctx})"
    return (
        f"{out} = ({out} if -{margin} < ({value}) - ({out} := round({value}, {digits})) < {margin} else {slow}) "
        f"if ({value}).__class__ is float and -{bound} < {value} < {bound} else {slow}"
    )


def drop_undefined(obj: dict[str, Any]) -> dict[str, Any]:
    """An object without the fields whose value is undefined."""
    return {key: value for key, value in obj.items() if value is not UNDEFINED}


def spec_field(value: Any, name: str) -> Any:
    """A path step on an array in speculative code: the field of each object, as JSONata gives it.

    Only the plain case is taken: every item an object that has the field, no value an array
    (which JSONata would splice), at least one item. Anything else abandons the speculation and
    the general code decides.
    """
    if value.__class__ is not list or not value:
        raise Abandon
    out = []
    for item in value:
        found = item[name]  # TypeError (not an object) and KeyError abandon too
        if found.__class__ is list:
            raise Abandon
        out.append(found)
    return out[0] if len(out) == 1 else out


def collapse_list(items: list[Any]) -> Any:
    """A loop's sequence as a value: undefined if empty, the item if one."""
    if len(items) == 1:
        return items[0]
    return items if items else UNDEFINED
