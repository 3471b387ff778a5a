"""The ``route`` step: content-based routing to named sinks."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from seamline.config.models import ComponentConfig, StepConfig
from seamline.core.component import BuildContext, Step
from seamline.core.message import Message
from seamline.core.registry import register
from seamline.mapping import Expression, compile
from seamline.steps.filter import truthy

__all__ = ["RouteConfig", "RouteStep"]


class Route(ComponentConfig):
    """One rule: when the condition holds, send to these sinks."""

    when: str = Field(..., description="JSONata condition evaluated against the body.")
    to: list[str] = Field(..., min_length=1, description="Labels of the sinks to send to.")


class RouteConfig(StepConfig):
    """Send each message to the sinks of the first (or every) matching rule, else to `default`."""

    routes: list[Route] = Field(..., min_length=1, description="Rules, tried in order.")
    default: list[str] = Field(default_factory=list, description="Sinks for messages no rule matches ([] = drop).")
    mode: Literal["first", "all"] = Field("first", description="first: first matching rule; all: every match.")


class RouteStep(Step):
    def __init__(self, cfg: RouteConfig) -> None:
        self.rules: list[tuple[Expression, tuple[str, ...]]] = [(compile(r.when), tuple(r.to)) for r in cfg.routes]
        self.default = tuple(cfg.default)
        self.first = cfg.mode == "first"

    def targets(self) -> set[str]:
        out = set(self.default)
        for _e, to in self.rules:
            out.update(to)
        return out

    def process(self, message: Message) -> Message | None:
        body = message.body
        chosen: list[str] = []
        for expr, to in self.rules:
            if truthy(expr.evaluate(body)):
                chosen.extend(t for t in to if t not in chosen)
                if self.first:
                    break
        route = tuple(chosen) if chosen else self.default
        if not route:
            return None
        out = message.evolve()
        out.route = route
        return out


@register(
    "step",
    "route",
    config=RouteConfig,
    summary="Content-based routing: send each message to the sinks named by the first matching rule.",
    examples=("route: {routes: [{when: \"country = 'DE'\", to: [erp-de]}], default: [erp]}",),
)
def _route(cfg: RouteConfig, ctx: BuildContext) -> RouteStep:
    return RouteStep(cfg)
