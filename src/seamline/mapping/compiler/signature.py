"""Function signatures (``<s-nn?:s>``) and argument validation, as in JSONata's ``signature.js``.

A signature lists one symbol per parameter: ``s`` string, ``n`` number,
``b`` boolean, ``l`` null, ``o`` object, ``a`` array (a single value is
wrapped into an array; ``a<n>`` requires numbers), ``f`` function, ``j``
any JSON value, ``x`` anything, ``(sn)`` a choice. ``?`` marks an optional
parameter, ``+`` a repeated one and ``-`` one that takes the context value
when not supplied. Validation results are planned once per combination of
argument types and cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from seamline.mapping.compiler.values import JError, type_symbol
from seamline.mapping.values import UNDEFINED

__all__ = ["Signature"]

_ARRAY_TYPES = {"a": "arrays", "b": "booleans", "f": "functions", "n": "numbers", "o": "objects", "s": "strings"}


@dataclass
class _Param:
    type: str = ""
    regex: str = ""
    array: bool = False
    subtype: str | None = None
    context: bool = False
    context_regex: re.Pattern[str] | None = None


def _closing(text: str, start: int, open_: str, close: str) -> int:
    depth = 1
    pos = start
    while pos < len(text) - 1:
        pos += 1
        ch = text[pos]
        if ch == close:
            depth -= 1
            if depth == 0:
                break
        elif ch == open_:
            depth += 1
    return pos


class Signature:
    """A parsed signature that validates (and fixes up) the arguments of one function."""

    def __init__(self, text: str, name: str) -> None:
        self.text = text
        self.name = name
        params: list[_Param] = []
        param = _Param()
        prev = param
        pos = 1
        while pos < len(text):
            symbol = text[pos]
            if symbol == ":":
                break
            if symbol in "snblo":
                param.regex, param.type = f"[{symbol}m]", symbol
                params.append(param)
                prev, param = param, _Param()
            elif symbol == "a":
                param.regex, param.type, param.array = "[asnblfom]", "a", True
                params.append(param)
                prev, param = param, _Param()
            elif symbol == "f":
                param.regex, param.type = "f", "f"
                params.append(param)
                prev, param = param, _Param()
            elif symbol == "j":
                param.regex, param.type = "[asnblom]", "j"
                params.append(param)
                prev, param = param, _Param()
            elif symbol == "x":
                param.regex, param.type = "[asnblfom]", "x"
                params.append(param)
                prev, param = param, _Param()
            elif symbol == "-":
                prev.context = True
                prev.context_regex = re.compile(prev.regex)
                prev.regex += "?"
            elif symbol in "?+":
                prev.regex += symbol
            elif symbol == "(":
                end = _closing(text, pos, "(", ")")
                choice = text[pos + 1 : end]
                param.regex, param.type = f"[{choice}m]", f"({choice})"
                pos = end
                params.append(param)
                prev, param = param, _Param()
            elif symbol == "<":
                end = _closing(text, pos, "<", ">")
                prev.subtype = text[pos + 1 : end]
                pos = end
            pos += 1
        self.params = params
        self.regex = re.compile("^" + "".join(f"({p.regex})" for p in params) + "$")
        self._plans: dict[str, Any] = {}

    def _bad(self, args: list[Any], supplied: str) -> JError:
        partial = "^"
        good = 0
        for param in self.params:
            partial += param.regex
            match = re.match(partial, supplied)
            if match is None:
                break
            good = len(match.group(0))
        return JError(
            "T0410",
            f"Argument {good + 1} of function {self.name} does not match function signature",
            index=good + 1,
        )

    def validate(self, args: list[Any], context: Any) -> list[Any]:
        """Return the arguments to call the implementation with, or raise T0410/T0411/T0412."""
        supplied = "".join(type_symbol(a) for a in args)
        plan = self._plans.get(supplied)
        if plan is None:
            match = self.regex.match(supplied)
            if match is None:
                raise self._bad(args, supplied)
            plan = [match.group(i + 1) for i in range(len(self.params))]
            if len(self._plans) < 256:
                self._plans[supplied] = plan
        out: list[Any] = []
        index = 0
        for param, matched in zip(self.params, plan, strict=True):
            if matched == "":
                if param.context and param.context_regex is not None:
                    if param.context_regex.match(type_symbol(context)):
                        out.append(context)
                    else:
                        raise JError(
                            "T0411",
                            f"Context value is not a compatible type with argument {index + 1} of function {self.name}",
                            index=index + 1,
                        )
                else:
                    out.append(args[index] if index < len(args) else UNDEFINED)
                    index += 1
                continue
            for single in matched:
                arg = args[index]
                if param.type == "a":
                    if single == "m":
                        arg = UNDEFINED
                    else:
                        ok = True
                        if param.subtype is not None:
                            if single != "a" and matched != param.subtype:
                                ok = False
                            elif single == "a" and len(arg) > 0:
                                first = type_symbol(arg[0])
                                ok = False if first != param.subtype[0] else all(type_symbol(v) == first for v in arg)
                        if not ok:
                            raise JError(
                                "T0412",
                                f"Argument {index + 1} of function {self.name} must be an array of "
                                f"{_ARRAY_TYPES.get(param.subtype or '', param.subtype)}",
                                index=index + 1,
                            )
                        if single != "a":
                            arg = [arg]
                out.append(arg)
                index += 1
        return out
