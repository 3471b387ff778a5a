"""The registry of connectors and steps, each with a pydantic config spec.

A spec is the single source of truth: it validates flow files, generates
the JSON Schema of flow files and the reference docs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

__all__ = [
    "BUILTIN_MODULES",
    "ComponentSpec",
    "FlowCheck",
    "Role",
    "all_specs",
    "flow_check",
    "flow_checks",
    "get_spec",
    "load_builtins",
    "register",
]

Role = Literal["source", "sink", "step"]

#: modules that register the built-in connectors and steps (imported on demand)
BUILTIN_MODULES: tuple[str, ...] = (
    "seamline.connectors.file",
    "seamline.connectors.sql",
    "seamline.connectors.kafka",
    "seamline.connectors.rabbitmq",
    "seamline.connectors.nats",
    "seamline.connectors.mqtt",
    "seamline.connectors.redis",
    "seamline.connectors.sqs",
    "seamline.connectors.s3",
    "seamline.connectors.http",
    "seamline.connectors.webhook",
    "seamline.connectors.soap",
    "seamline.connectors.graphql",
    "seamline.steps.map",
    "seamline.steps.filter",
    "seamline.steps.route",
    "seamline.steps.validate",
    "seamline.steps.python",
    "seamline.steps.dedupe",
    "seamline.steps.resequence",
    "seamline.steps.timing",
    "seamline.steps.codec",
    "seamline.testing.memory",
)


@dataclass(frozen=True)
class ComponentSpec:
    """A registered component: its name, role, config model and factory."""

    role: Role
    name: str
    config: type[BaseModel]
    factory: Callable[[Any, Any], Any]
    summary: str
    description: str = ""
    examples: tuple[str, ...] = ()


_REGISTRY: dict[tuple[Role, str], ComponentSpec] = {}
_loaded = False

#: ``check(source_ref, sink_refs, base_dir)`` yields ``(sink index, field, message, hint)`` for a
#: problem only the combination of a flow's parts shows (a sink writing what the source reads)
FlowCheck = Callable[[Any, list[Any], Path], Iterable[tuple[int, str, str, str | None]]]
_FLOW_CHECKS: list[FlowCheck] = []


def flow_check(fn: FlowCheck) -> FlowCheck:
    """Decorator: a connector's check of the whole flow, run when a flow file is loaded."""
    if fn not in _FLOW_CHECKS:
        _FLOW_CHECKS.append(fn)
    return fn


def flow_checks() -> list[FlowCheck]:
    load_builtins()
    return list(_FLOW_CHECKS)


def register(
    role: Role,
    name: str,
    *,
    config: type[BaseModel],
    summary: str,
    description: str = "",
    examples: tuple[str, ...] = (),
) -> Callable[[Callable[[Any, Any], Any]], Callable[[Any, Any], Any]]:
    """Decorator: register ``factory(config, ctx) -> component`` under ``role``/``name``."""

    def deco(factory: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        key = (role, name)
        existing = _REGISTRY.get(key)
        if existing is not None and existing.factory.__qualname__ != factory.__qualname__:
            raise ValueError(f"{role} {name!r} is already registered")
        _REGISTRY[key] = ComponentSpec(role, name, config, factory, summary, description, examples)
        return factory

    return deco


def load_builtins() -> None:
    """Import the built-in component modules so they register themselves."""
    global _loaded
    if _loaded:
        return
    for mod in BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as exc:
            # a connector that is not part of this build; any other missing module is a real error
            if exc.name != mod:
                raise
    _loaded = True


def get_spec(role: Role, name: str) -> ComponentSpec | None:
    spec = _REGISTRY.get((role, name))
    if spec is None and not _loaded:  # registered by a module not imported yet
        load_builtins()
        spec = _REGISTRY.get((role, name))
    return spec


def all_specs(role: Role | None = None) -> list[ComponentSpec]:
    load_builtins()
    return sorted(
        (s for s in _REGISTRY.values() if role is None or s.role == role),
        key=lambda s: (s.role, s.name),
    )
