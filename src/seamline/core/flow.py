"""The flow model: one source, ordered steps, one or more sinks, an error policy.

Flows come from YAML files (``seamline.config.loader``) or are built in
Python with the same model::

    flow = Flow(
        "orders",
        source=source("file", path="in/orders.csv", format="csv"),
        steps=[step("map", expression="{'id': order_id}", label="to-canonical")],
        sinks=[sink("file", path="out/orders.ndjson")],
    )
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from seamline.core.errors import ConfigError, ConfigIssue
from seamline.core.registry import Role, get_spec

__all__ = ["ComponentRef", "Flow", "part_labels", "sink", "source", "step"]


@dataclass
class ComponentRef:
    """A configured component: role, registered name, validated config, where it was written."""

    role: Role
    name: str
    config: BaseModel
    label: str
    file: str | None = None
    line: int | None = None
    explicit_label: bool = True

    def describe(self) -> str:
        return f"{self.role} '{self.label}' ({self.name})"


@dataclass
class Flow:
    """A named integration."""

    name: str
    source: ComponentRef
    sinks: list[ComponentRef]
    steps: list[ComponentRef] = field(default_factory=list)
    on_error: Any = None  # OnErrorConfig; Any keeps core free of config imports
    settings: Any = None  # FlowSettings
    description: str = ""
    file: str | None = None
    #: line and column of the flow's name in ``file``
    line: int | None = None
    col: int | None = None
    base_dir: Path = field(default_factory=Path.cwd)
    #: offline tests (``config.models.FlowTest``), run by ``seamline test``
    tests: list[Any] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    #: a sink that dead letters are also published to (e.g. a Kafka topic), besides the store
    dlq_sink: ComponentRef | None = None

    def __post_init__(self) -> None:
        from seamline.config.models import FlowSettings, OnErrorConfig

        if self.on_error is None:
            self.on_error = OnErrorConfig()
        elif isinstance(self.on_error, dict):
            self.on_error = OnErrorConfig.model_validate(self.on_error)
        if self.tests:
            from seamline.config.models import FlowTest

            self.tests = [FlowTest.model_validate(t) if isinstance(t, dict) else t for t in self.tests]
        if self.settings is None:
            self.settings = FlowSettings()
        elif isinstance(self.settings, dict):
            self.settings = FlowSettings.model_validate(self.settings)
        if not self.sinks:
            raise ConfigError(ConfigIssue("a flow needs at least one sink", flow=self.name, field="sinks"))
        parts = [*self.steps, *self.sinks]
        for c, label in zip(parts, part_labels(parts), strict=True):
            c.label = label
        labels = [c.label for c in self.steps] + [c.label for c in self.sinks]
        dupes = {x for x in labels if labels.count(x) > 1}
        if dupes:
            raise ConfigError(
                ConfigIssue(f"labels must be unique within a flow: {sorted(dupes)}", file=self.file, flow=self.name)
            )

    def sink_labels(self) -> list[str]:
        return [s.label for s in self.sinks]


def part_labels(parts: Sequence[ComponentRef]) -> list[str]:
    """The label each of a flow's steps and sinks (in order) goes by: its own, else its type's name,
    numbered from the second unlabelled one of that type on (``map``, ``map-2``)."""
    seen: dict[str, int] = {}
    out = []
    for c in parts:
        label = c.label
        if not c.explicit_label:
            n = seen[c.name] = seen.get(c.name, 0) + 1
            label = c.name if n == 1 else f"{c.name}-{n}"
        out.append(label)
    return out


def _make(role: Role, name: str, label: str | None, options: dict[str, Any]) -> ComponentRef:
    spec = get_spec(role, name)
    if spec is None:
        raise ConfigError(ConfigIssue(f"unknown {role} {name!r}", kind=name, code="config.unknown_component"))
    if label is not None:
        options = {**options, "label": label}
    try:
        cfg = spec.config.model_validate(options)
    except ValidationError as exc:
        issues = [
            ConfigIssue(
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}",
                kind=name,
                step=label,
                field=".".join(str(p) for p in e["loc"]),
            )
            for e in exc.errors()
        ]
        raise ConfigError(issues) from None
    given = getattr(cfg, "label", None) or label
    return ComponentRef(role, name, cfg, given or name, explicit_label=given is not None)


def source(name: str, **options: Any) -> ComponentRef:
    """A source component, e.g. ``source("file", path="in.csv", format="csv")``."""
    return _make("source", name, None, options)


def step(name: str, *, label: str | None = None, **options: Any) -> ComponentRef:
    """A step component, e.g. ``step("filter", condition="total > 0")``."""
    return _make("step", name, label, options)


def sink(name: str, *, label: str | None = None, **options: Any) -> ComponentRef:
    """A sink component, e.g. ``sink("file", path="out.ndjson")``."""
    return _make("sink", name, label, options)
