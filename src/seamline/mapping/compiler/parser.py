"""A JSONata parser: tokenizer, Pratt parser and AST post-processing.

It follows the reference implementation (jsonata-js ``parser.js``) closely,
so the syntax tree has the same shape: paths are ``path`` nodes with
``steps``, predicates become ``stages``/``predicate`` lists, ``a{...}`` is a
``group`` on a step, and so on. The tree serves three purposes: the Python
code generator, the analysis of which fields and functions an expression
uses, and precise positions for syntax errors.

Every node's ``start`` is the index of the first character of its token
(used for carets); ``position`` is the index just after the token, as in
the reference implementation.
"""

from __future__ import annotations

import math
import re
from typing import Any

__all__ = ["Node", "ParseError", "parse"]


class ParseError(Exception):
    """A syntax error with its JSONata code and position."""

    def __init__(self, code: str, start: int, token: Any = None, message: str | None = None) -> None:
        self.code = code
        self.start = start
        self.token = token
        super().__init__(message or _MESSAGES.get(code, "syntax error").format(token=token))


_MESSAGES = {
    "S0101": "String literal must be terminated by a matching quote",
    "S0102": "Number out of range: {token}",
    "S0103": "Unsupported escape sequence: \\{token}",
    "S0104": "The escape sequence \\u must be followed by 4 hex digits",
    "S0105": "Quoted property name must be terminated with a backquote (`)",
    "S0106": "Comment has no closing tag",
    "S0201": "Syntax error: {token}",
    "S0202": "Expected {token}",
    "S0203": "Expected {token} before end of expression",
    "S0204": "Unknown operator: {token}",
    "S0205": "Unexpected token: {token}",
    "S0207": "Unexpected end of expression",
    "S0208": "Parameter {token} of function definition must be a variable name (start with $)",
    "S0209": "A predicate cannot follow a grouping expression in a step",
    "S0210": "Each step can only have one grouping expression",
    "S0211": "The symbol {token} cannot be used as a unary operator",
    "S0212": "The left side of := must be a variable name (start with $)",
    "S0213": "The literal value {token} cannot be used as a step within a path expression",
    "S0214": "The right side of {token} must be a variable name (start with $)",
    "S0215": "A context variable binding must precede any predicates on a step",
    "S0216": "A context variable binding must precede the 'order-by' clause on a step",
    "S0217": "The object representing the 'parent' cannot be derived from this expression",
    "S0301": "Empty regular expressions are not allowed",
    "S0302": "No terminating / in regular expression",
    "S0401": "Type parameters can only be applied to functions and arrays",
    "S0402": "Choice groups containing parameterized types are not supported",
}


class Node:
    """A syntax-tree node. Absent attributes read as ``None``."""

    def __init__(self, type: str, value: Any = None, start: int = 0, position: int = 0, **attrs: Any) -> None:
        self.type = type
        self.value = value
        self.start = start
        self.position = position
        self.__dict__.update(attrs)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return None

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        extra = {k: v for k, v in self.__dict__.items() if k not in ("type", "value", "start", "position")}
        attrs = "".join(f", {k}={v!r}" for k, v in extra.items())
        return f"Node({self.type!r}, {self.value!r}{attrs})"


OPERATORS: dict[str, int] = {
    ".": 75, "[": 80, "]": 0, "{": 70, "}": 0, "(": 80, ")": 0, ",": 0, "@": 80, "#": 80, ";": 80,
    ":": 80, "?": 20, "+": 50, "-": 50, "*": 60, "/": 60, "%": 60, "|": 20, "=": 40, "<": 40,
    ">": 40, "^": 40, "**": 60, "..": 20, ":=": 10, "!=": 40, "<=": 40, ">=": 40, "~>": 40,
    "?:": 40, "??": 40, "and": 30, "or": 25, "in": 40, "&": 50, "!": 0, "~": 0,
}  # fmt: skip

_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_NUMBER_RE = re.compile(r"(0|[1-9][0-9]*)(\.[0-9]+)?([Ee][-+]?[0-9]+)?")
_HEX4_RE = re.compile(r"[0-9a-fA-F]{4}")
_WHITESPACE = " \t\n\r\v"
_TWO_CHAR = ("..", ":=", "!=", ">=", "<=", "**", "~>", "?:", "??")


class Token:
    __slots__ = ("position", "start", "type", "value")

    def __init__(self, type: str, value: Any, start: int, position: int) -> None:
        self.type = type
        self.value = value
        self.start = start
        self.position = position


class Regex:
    """A regular-expression literal ``/pattern/flags``."""

    __slots__ = ("flags", "pattern")

    def __init__(self, pattern: str, flags: str) -> None:
        self.pattern = pattern
        self.flags = flags

    def __repr__(self) -> str:
        return f"/{self.pattern}/{self.flags}"


class Tokenizer:
    def __init__(self, source: str) -> None:
        self.src = source
        self.pos = 0
        self.length = len(source)

    def _scan_regex(self, start_slash: int) -> Regex:
        src, start, depth = self.src, self.pos, 0
        while self.pos < self.length:
            ch = src[self.pos]
            if ch == "/" and depth == 0:
                backslashes = 0
                while self.pos - backslashes - 1 >= 0 and src[self.pos - backslashes - 1] == "\\":
                    backslashes += 1
                if backslashes % 2 == 0:
                    pattern = src[start : self.pos]
                    if pattern == "":
                        raise ParseError("S0301", start_slash)
                    self.pos += 1
                    flag_start = self.pos
                    while self.pos < self.length and src[self.pos] in "im":
                        self.pos += 1
                    return Regex(pattern, src[flag_start : self.pos])
            prev = src[self.pos - 1] if self.pos > 0 else ""
            if ch in "([{" and prev != "\\":
                depth += 1
            if ch in ")]}" and prev != "\\":
                depth -= 1
            self.pos += 1
        raise ParseError("S0302", start_slash)

    def next(self, infix: bool) -> Token | None:
        src, length = self.src, self.length
        while True:
            while self.pos < length and src[self.pos] in _WHITESPACE:
                self.pos += 1
            if self.pos >= length:
                return None
            if src.startswith("/*", self.pos):
                comment_start = self.pos
                end = src.find("*/", self.pos + 2)
                if end < 0:
                    raise ParseError("S0106", comment_start)
                self.pos = end + 2
                continue
            break
        start = self.pos
        ch = src[start]
        if not infix and ch == "/":
            self.pos += 1
            return Token("regex", self._scan_regex(start), start, self.pos)
        pair = src[start : start + 2]
        if pair in _TWO_CHAR:
            self.pos += 2
            return Token("operator", pair, start, self.pos)
        if ch in OPERATORS:
            self.pos += 1
            return Token("operator", ch, start, self.pos)
        if ch in "\"'":
            return self._string(ch, start)
        match = _NUMBER_RE.match(src, start)
        if match:
            number = float(match.group(0))
            if math.isinf(number) or math.isnan(number):
                raise ParseError("S0102", start, match.group(0))
            self.pos = match.end()
            value: Any = int(number) if number.is_integer() and abs(number) < 2**53 else number
            return Token("number", value, start, self.pos)
        if ch == "`":
            end = src.find("`", start + 1)
            if end < 0:
                self.pos = length
                raise ParseError("S0105", start)
            self.pos = end + 1
            return Token("name", src[start + 1 : end], start, self.pos)
        i = start
        while i < length and src[i] not in _WHITESPACE and src[i] not in OPERATORS:
            i += 1
        self.pos = i
        if ch == "$":
            return Token("variable", src[start + 1 : i], start, i)
        name = src[start:i]
        if name in ("or", "in", "and"):
            return Token("operator", name, start, i)
        if name == "true":
            return Token("value", True, start, i)
        if name == "false":
            return Token("value", False, start, i)
        if name == "null":
            return Token("value", None, start, i)
        return Token("name", name, start, i)

    def _string(self, quote: str, start: int) -> Token:
        src, length = self.src, self.length
        self.pos += 1
        out: list[str] = []
        while self.pos < length:
            ch = src[self.pos]
            if ch == "\\":
                self.pos += 1
                ch = src[self.pos] if self.pos < length else ""
                if ch in _ESCAPES:
                    out.append(_ESCAPES[ch])
                elif ch == "u":
                    octets = src[self.pos + 1 : self.pos + 5]
                    if _HEX4_RE.fullmatch(octets):
                        out.append(chr(int(octets, 16)))
                        self.pos += 4
                    else:
                        raise ParseError("S0104", self.pos)
                else:
                    raise ParseError("S0103", self.pos, ch)
            elif ch == quote:
                self.pos += 1
                return Token("string", _join_surrogates("".join(out)), start, self.pos)
            else:
                out.append(ch)
            self.pos += 1
        raise ParseError("S0101", start)


_SURROGATE_PAIR_RE = re.compile("[\ud800-\udbff][\udc00-\udfff]")


def _join_surrogates(text: str) -> str:
    """Combine UTF-16 surrogate pairs written as two ``\\u`` escapes into one character."""
    if not any("\ud800" <= c <= "\udfff" for c in text):
        return text
    return _SURROGATE_PAIR_RE.sub(
        lambda m: chr(0x10000 + ((ord(m.group(0)[0]) - 0xD800) << 10) + (ord(m.group(0)[1]) - 0xDC00)), text
    )


# --- Pratt parser -----------------------------------------------------------------------------

_INFIX = {
    ".", "+", "-", "*", "/", "%", "=", "<", ">", "!=", "<=", ">=", "&", "and", "or", "in", "~>",
}  # fmt: skip
_TERMINAL_OPS = {"and", "or", "in"}
_LBP: dict[str, int] = {}
for _op in _INFIX | {"(", "[", "^", "{", ":=", "@", "#", "?", "?:", "??"}:
    _LBP[_op] = OPERATORS[_op]
_PREFIX = {"-", "*", "**", "%", "(", "[", "{", "|"}
_KNOWN = set(_LBP) | _PREFIX | {":", ";", ",", ")", "]", "}", "..", "(end)"}


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.lexer = Tokenizer(source)
        self.node: Node = Node("(end)")
        self.id = "(end)"
        self.prev_end = 0

    # token stream
    def advance(self, expected: str | None = None, infix: bool = False) -> Node:
        if expected is not None and self.id != expected:
            code = "S0203" if self.id == "(end)" else "S0202"
            found = "end of expression" if self.id == "(end)" else repr(self.node.value)
            message = (
                f"Expected {expected!r} before end of expression"
                if code == "S0203"
                else f"Expected {expected!r}, got {found}"
            )
            raise ParseError(code, self.node.start, self.node.value, message)
        self.prev_end = self.node.position
        token = self.lexer.next(infix)
        if token is None:
            end = len(self.source)
            self.node = Node("(end)", "(end)", end, end)
            self.id = "(end)"
            return self.node
        if token.type in ("name", "variable"):
            self.id = "(name)"
        elif token.type == "operator":
            if token.value not in _KNOWN:
                raise ParseError("S0204", token.start, token.value)
            self.id = token.value
        elif token.type in ("string", "number", "value"):
            self.id = "(literal)"
        elif token.type == "regex":
            self.id = "(regex)"
        else:  # pragma: no cover - the tokenizer makes no other types
            raise ParseError("S0205", token.start, token.value)
        self.node = Node(token.type, token.value, token.start, token.position)
        return self.node

    def lbp(self) -> int:
        return _LBP.get(self.id, 0)

    def expression(self, rbp: int) -> Node:
        t, tid = self.node, self.id
        begin = t.start
        self.advance(None, True)
        left = self.nud(t, tid)
        while rbp < self.lbp():
            t, tid = self.node, self.id
            self.advance()
            left = self.led(t, tid, left)
        left.span = (begin, self.prev_end)
        return left

    # prefix position
    def nud(self, t: Node, tid: str) -> Node:
        if tid in ("(name)", "(literal)", "(regex)"):
            return t
        if tid in _TERMINAL_OPS:
            return t
        if tid == "(end)":
            raise ParseError("S0207", t.start)
        if tid == "-":
            t.expression = self.expression(70)
            t.type = "unary"
            return t
        if tid == "*":
            t.type = "wildcard"
            return t
        if tid == "**":
            t.type = "descendant"
            return t
        if tid == "%":
            t.type = "parent"
            return t
        if tid == "(":
            expressions = []
            while self.id != ")":
                expressions.append(self.expression(0))
                if self.id != ";":
                    break
                self.advance(";")
            self.advance(")", True)
            t.type = "block"
            t.expressions = expressions
            return t
        if tid == "[":
            items = []
            if self.id != "]":
                while True:
                    item = self.expression(0)
                    if self.id == "..":
                        dots = self.node
                        self.advance("..")
                        item = Node("binary", "..", dots.start, dots.position, lhs=item, rhs=self.expression(0))
                    items.append(item)
                    if self.id != ",":
                        break
                    self.advance(",")
            self.advance("]", True)
            t.expressions = items
            t.type = "unary"
            return t
        if tid == "{":
            return self.object(t, None)
        if tid == "|":
            t.type = "transform"
            t.pattern = self.expression(0)
            self.advance("|")
            t.update = self.expression(0)
            if self.id == ",":
                self.advance(",")
                t.delete = self.expression(0)
            self.advance("|")
            return t
        raise ParseError("S0211", t.start, t.value)

    def object(self, t: Node, left: Node | None) -> Node:
        pairs = []
        if self.id != "}":
            while True:
                key = self.expression(0)
                self.advance(":")
                value = self.expression(0)
                pairs.append((key, value))
                if self.id != ",":
                    break
                self.advance(",")
        self.advance("}", True)
        if left is None:
            t.lhs = pairs
            t.type = "unary"
        else:
            t.lhs = left
            t.rhs = pairs
            t.type = "binary"
        return t

    # infix position
    def led(self, t: Node, tid: str, left: Node) -> Node:
        if tid in _INFIX:
            t.lhs = left
            t.rhs = self.expression(_LBP[tid])
            t.type = "binary"
            return t
        if tid == "(":
            return self.call(t, left)
        if tid == "[":
            if self.id == "]":
                step = left
                while step is not None and step.type == "binary" and step.value == "[":
                    step = step.lhs
                step.keepArray = True
                self.advance("]")
                return left
            t.lhs = left
            t.rhs = self.expression(OPERATORS["]"])
            t.type = "binary"
            self.advance("]", True)
            return t
        if tid == "^":
            self.advance("(")
            terms = []
            while True:
                descending = False
                if self.id == "<":
                    self.advance("<")
                elif self.id == ">":
                    descending = True
                    self.advance(">")
                terms.append({"descending": descending, "expression": self.expression(0)})
                if self.id != ",":
                    break
                self.advance(",")
            self.advance(")")
            t.lhs = left
            t.rhs = terms
            t.type = "binary"
            return t
        if tid == "{":
            return self.object(t, left)
        if tid == ":=":
            if left.type != "variable":
                raise ParseError("S0212", left.start, left.value)
            t.lhs = left
            t.rhs = self.expression(OPERATORS[":="] - 1)
            t.type = "binary"
            return t
        if tid in ("@", "#"):
            t.lhs = left
            t.rhs = self.expression(OPERATORS[tid])
            if t.rhs.type != "variable":
                raise ParseError("S0214", t.rhs.start, tid)
            t.type = "binary"
            return t
        if tid == "?":
            t.type = "condition"
            t.condition = left
            t.then = self.expression(0)
            if self.id == ":":
                self.advance(":")
                t.else_ = self.expression(0)
            return t
        if tid == "?:":
            t.type = "condition"
            t.condition = left
            t.then = left
            t.else_ = self.expression(0)
            t.elvis = True
            return t
        if tid == "??":
            t.type = "condition"
            t.condition = Node(
                "function", "(", t.start, t.position,
                procedure=Node("variable", "exists", t.start, t.position), arguments=[left],
            )  # fmt: skip
            t.then = left
            t.else_ = self.expression(0)
            t.coalesce = True
            return t
        raise ParseError("S0204", t.start, t.value)  # pragma: no cover

    def call(self, t: Node, left: Node) -> Node:
        t.procedure = left
        t.type = "function"
        t.arguments = []
        if self.id != ")":
            while True:
                if self.node.type == "operator" and self.id == "?":
                    t.type = "partial"
                    t.arguments.append(self.node)
                    self.advance("?")
                else:
                    t.arguments.append(self.expression(0))
                if self.id != ",":
                    break
                self.advance(",")
        self.advance(")", True)
        if left.type == "name" and left.value in ("function", "\u03bb"):
            for arg in t.arguments:
                if arg.type != "variable":
                    raise ParseError("S0208", arg.start, arg.value)
            t.type = "lambda"
            if self.id == "<":
                sig_start = self.node.start
                depth = 1
                sig = "<"
                while depth > 0 and self.id not in ("{", "(end)"):
                    tok = self.advance()
                    if self.id == ">":
                        depth -= 1
                    elif self.id == "<":
                        depth += 1
                    sig += str(tok.value) if tok.type != "value" else _value_text(tok.value)
                self.advance(">")
                t.signature = sig
                t.signature_start = sig_start
            self.advance("{")
            t.body = self.expression(0)
            self.advance("}")
        return t


def _value_text(value: Any) -> str:
    return {True: "true", False: "false", None: "null"}[value]


# --- post-processing (reference: parser.js processAST) ---------------------------------------


class _Processor:
    def __init__(self) -> None:
        self.parents = 0

    def process(self, expr: Node) -> Node:
        result: Node
        kind = expr.type
        if kind == "binary":
            op = expr.value
            if op == ".":
                lstep = self.process(expr.lhs)
                result = (
                    lstep if lstep.type == "path" else Node("path", None, lstep.start, lstep.position, steps=[lstep])
                )
                rest = self.process(expr.rhs)
                if rest.type == "path":
                    result.steps.extend(rest.steps)
                else:
                    if rest.predicate is not None:
                        rest.stages = rest.predicate
                        rest.predicate = None
                    result.steps.append(rest)
                for step in result.steps:
                    if step.type in ("number", "value"):
                        raise ParseError("S0213", step.start, step.value)
                    if step.type == "string":
                        step.type = "name"
                if any(step.keepArray for step in result.steps):
                    result.keepSingletonArray = True
                first, last = result.steps[0], result.steps[-1]
                if first.type == "unary" and first.value == "[":
                    first.consarray = True
                if last.type == "unary" and last.value == "[":
                    last.consarray = True
            elif op == "[":
                result = self.process(expr.lhs)
                step, attr = result, "predicate"
                if result.type == "path":
                    step, attr = result.steps[-1], "stages"
                if step.group is not None:
                    raise ParseError("S0209", expr.start)
                if getattr(step, attr) is None:
                    setattr(step, attr, [])
                predicate = self.process(expr.rhs)
                getattr(step, attr).append(Node("filter", None, expr.start, expr.position, expr=predicate))
            elif op == "{":
                result = self.process(expr.lhs)
                if result.group is not None:
                    raise ParseError("S0210", expr.start)
                result.group = Node(
                    "group", None, expr.start, expr.position,
                    lhs=[(self.process(k), self.process(v)) for k, v in expr.rhs],
                )  # fmt: skip
            elif op == "^":
                result = self.process(expr.lhs)
                if result.type != "path":
                    result = Node("path", None, result.start, result.position, steps=[result])
                terms = [
                    {"descending": term["descending"], "expression": self.process(term["expression"])}
                    for term in expr.rhs
                ]
                result.steps.append(Node("sort", None, expr.start, expr.position, terms=terms))
            elif op == ":=":
                result = Node("bind", ":=", expr.start, expr.position, lhs=self.process(expr.lhs))
                result.rhs = self.process(expr.rhs)
            elif op == "@":
                result = self.process(expr.lhs)
                step = result.steps[-1] if result.type == "path" else result
                if step.stages is not None or step.predicate is not None:
                    raise ParseError("S0215", expr.start)
                if step.type == "sort":
                    raise ParseError("S0216", expr.start)
                if expr.keepArray:
                    step.keepArray = True
                step.focus = expr.rhs.value
                step.tuple = True
            elif op == "#":
                result = self.process(expr.lhs)
                step = result
                if result.type == "path":
                    step = result.steps[-1]
                else:
                    result = Node("path", None, result.start, result.position, steps=[result])
                    if step.predicate is not None:
                        step.stages = step.predicate
                        step.predicate = None
                if step.stages is None:
                    step.index = expr.rhs.value
                else:
                    step.stages.append(Node("index", expr.rhs.value, expr.start, expr.position))
                step.tuple = True
            elif op == "~>":
                result = Node("apply", "~>", expr.start, expr.position)
                result.lhs = self.process(expr.lhs)
                result.rhs = self.process(expr.rhs)
                result.keepArray = bool(result.lhs.keepArray or result.rhs.keepArray)
            else:
                result = Node("binary", op, expr.start, expr.position)
                result.lhs = self.process(expr.lhs)
                result.rhs = self.process(expr.rhs)
        elif kind == "unary":
            result = Node("unary", expr.value, expr.start, expr.position)
            if expr.value == "[":
                result.expressions = [self.process(item) for item in expr.expressions]
            elif expr.value == "{":
                result.lhs = [(self.process(k), self.process(v)) for k, v in expr.lhs]
            else:
                result.expression = self.process(expr.expression)
                if expr.value == "-" and result.expression.type == "number":
                    result = result.expression
                    result.value = -result.value
        elif kind in ("function", "partial"):
            result = Node(kind, expr.value, expr.start, expr.position)
            result.arguments = [self.process(arg) for arg in expr.arguments]
            result.procedure = self.process(expr.procedure)
        elif kind == "lambda":
            result = Node(
                "lambda", None, expr.start, expr.position,
                arguments=expr.arguments, signature=expr.signature, body=self.process(expr.body),
            )  # fmt: skip
        elif kind == "condition":
            result = Node("condition", None, expr.start, expr.position, elvis=expr.elvis, coalesce=expr.coalesce)
            result.condition = self.process(expr.condition)
            result.then = result.condition if expr.elvis else self.process(expr.then)
            if expr.coalesce:
                result.then = result.condition.arguments[0]
            if expr.else_ is not None:
                result.else_ = self.process(expr.else_)
        elif kind == "transform":
            result = Node("transform", None, expr.start, expr.position)
            result.pattern = self.process(expr.pattern)
            result.update = self.process(expr.update)
            if expr.delete is not None:
                result.delete = self.process(expr.delete)
        elif kind == "block":
            result = Node("block", None, expr.start, expr.position)
            result.expressions = [self.process(item) for item in expr.expressions]
        elif kind == "name":
            result = Node("path", None, expr.start, expr.position, steps=[expr])
            if expr.keepArray:
                result.keepSingletonArray = True
        elif kind == "parent":
            self.parents += 1
            result = expr
        elif kind in ("string", "number", "value", "wildcard", "descendant", "variable", "regex"):
            result = expr
        elif kind == "operator":
            if expr.value in ("and", "or", "in"):
                expr.type = "name"
                result = self.process(expr)
            elif expr.value == "?":
                result = expr
            else:
                raise ParseError("S0201", expr.start, expr.value)
        else:
            raise ParseError("S0207" if kind == "(end)" else "S0206", expr.start, expr.value)
        if expr.keepArray:
            result.keepArray = True
        if expr.span is not None:
            result.span = expr.span
        return result


def parse(source: str) -> Node:
    """Parse ``source`` into a processed syntax tree.

    Raises:
        ParseError: the expression is not valid JSONata (with code and position).
    """
    parser = _Parser(source)
    parser.advance()
    tree = parser.expression(0)
    if parser.id != "(end)":
        raise ParseError("S0201", parser.node.start, parser.node.value)
    processor = _Processor()
    result = processor.process(tree)
    result.uses_parent = processor.parents > 0
    return result
