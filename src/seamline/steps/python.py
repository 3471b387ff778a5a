"""The ``python`` step: call a Python function on each message."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field, field_validator

from seamline.config.models import StepConfig
from seamline.core.component import BuildContext, Step
from seamline.core.message import Message
from seamline.core.registry import register

__all__ = ["PythonConfig", "PythonStep"]


class PythonConfig(StepConfig):
    """Call `function(body)` (or `function(message)` with `pass: message`); its result is the new body.
    Returning None drops the message; a list splits it when `split: true`."""

    function: str | Callable[..., Any] = Field(
        ..., description="`package.module:function`, importable from the flow's directory or the path."
    )
    pass_: str = Field("body", alias="pass", pattern="^(body|message)$", description="What the function receives.")
    split: bool = Field(False, description="A list result becomes one message per element.")

    @field_validator("function")
    @classmethod
    def _ref(cls, v: Any) -> Any:
        if isinstance(v, str) and ":" not in v:
            raise ValueError("expected 'module:function'")
        return v


def _resolve(ref: str | Callable[..., Any], ctx: BuildContext) -> Callable[..., Any]:
    if callable(ref):
        return ref
    import sys

    mod_name, _, attr = ref.partition(":")
    base = str(ctx.base_dir)
    if base not in sys.path:
        sys.path.insert(0, base)
    mod = importlib.import_module(mod_name)
    fn = mod
    for part in attr.split("."):
        fn = getattr(fn, part)
    if not callable(fn):
        raise TypeError(f"{ref} is not callable")
    return fn  # type: ignore[return-value]


class PythonStep(Step):
    def __init__(self, fn: Callable[..., Any], pass_message: bool, split: bool) -> None:
        self.fn = fn
        self.pass_message = pass_message
        self.split = split
        self.is_async = inspect.iscoroutinefunction(fn)  # type: ignore[misc]

    def _wrap(self, message: Message, result: Any) -> Message | Sequence[Message] | None:
        if result is None:
            return None
        if isinstance(result, Message):
            return result
        if self.split and isinstance(result, list):
            return [message.evolve(r, id=f"{message.id}#{i}") for i, r in enumerate(result)]
        return message.evolve(result)

    def process(self, message: Message) -> Message | Sequence[Message] | None:
        arg = message if self.pass_message else message.body
        return self._wrap(message, self.fn(arg))

    async def process_async(self, message: Message) -> Message | Sequence[Message] | None:
        arg = message if self.pass_message else message.body
        r = self.fn(arg)
        if inspect.isawaitable(r):
            r = await r
        return self._wrap(message, r)


@register(
    "step",
    "python",
    config=PythonConfig,
    summary="Call a Python function on each message (sync or async).",
    examples=("python: {function: 'hooks:enrich'}",),
)
def _python(cfg: PythonConfig, ctx: BuildContext) -> PythonStep:
    return PythonStep(_resolve(cfg.function, ctx), cfg.pass_ == "message", cfg.split)
