"""Load flows from YAML files and report every problem with file:line:col.

File shape::

    flow: orders            # name
    description: ...
    source: {CONNECTOR: {...}}
    steps:  [{STEP: {..., label: ...}}, ...]
    sinks:  [{CONNECTOR: {..., label: ...}}, ...]
    on_error: {retry: {...}, dlq: store}
    settings: {batch_size: 500, concurrency: 2, ...}
    tests: [...]
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from seamline.config.envrefs import expand_refs
from seamline.config.models import FlowSettings, FlowTest, OnErrorConfig
from seamline.config.yamlpos import Located, YamlLoadError, load_with_positions
from seamline.core.errors import ConfigError, ConfigIssue
from seamline.core.flow import ComponentRef, Flow, part_labels
from seamline.core.registry import Role, all_specs, flow_checks, get_spec
from seamline.security.secrets import SecretRefError

__all__ = ["find_flow_files", "load_flow_file", "load_flows"]

TOP_KEYS = ("flow", "description", "source", "steps", "sinks", "on_error", "settings", "tests")


def find_flow_files(path: str | os.PathLike[str]) -> list[Path]:
    """A file, or every ``*.yaml``/``*.yml`` file under a folder (sorted)."""
    p = Path(path)
    if p.is_dir():
        return sorted(x for x in p.rglob("*") if x.suffix in (".yaml", ".yml") and x.is_file())
    return [p]


def load_flows(path: str | os.PathLike[str]) -> list[Flow]:
    """Load every flow under ``path``; raise one ConfigError listing all problems."""
    files = find_flow_files(path)
    if not files:
        raise ConfigError(ConfigIssue(f"no flow files (*.yaml) found in {path}", file=str(path)))
    flows: list[Flow] = []
    issues: list[ConfigIssue] = []
    for f in files:
        try:
            flows.extend(load_flow_file(f))
        except ConfigError as exc:
            issues.extend(exc.issues)
    first: dict[str, Flow] = {}
    for fl in flows:
        earlier = first.setdefault(fl.name, fl)
        if earlier is not fl:
            where = f" at {earlier.file}:{earlier.line}" if earlier.line else f" in {earlier.file}"
            issues.append(ConfigIssue(
                f"flow name {fl.name!r} is already used{where}", file=fl.file, line=fl.line, col=fl.col, flow=fl.name,
                hint="each flow needs its own name: it keys the flow's checkpoints, journal and dead letters",
                code="config.duplicate_flow",
            ))
    if issues:
        raise ConfigError(issues)
    return flows


def _suggest(word: str, options: list[str]) -> str | None:
    m = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"did you mean '{m[0]}'?" if m else None


class _FileLoader:
    def __init__(self, file: Path, doc: Located) -> None:
        self.file = file
        self.display = _display_path(file)
        self.doc = doc
        self.issues: list[ConfigIssue] = []
        self.flow_name: str | None = None

    def issue(self, message: str, path: tuple[Any, ...], *, key: bool = False, **kw: Any) -> None:
        pos = self.doc.where(path, key=key)
        self.issues.append(
            ConfigIssue(
                message,
                file=self.display,
                line=pos[0] if pos else None,
                col=pos[1] if pos else None,
                flow=self.flow_name,
                **kw,
            )
        )

    def load(self) -> Flow | None:
        data = self.doc.data
        if not isinstance(data, dict):
            self.issue("a flow file must be a mapping with 'flow', 'source' and 'sinks'", ())
            return None
        for k in data:
            if k not in TOP_KEYS:
                self.issue(f"unknown key {k!r}", (str(k),), key=True, hint=_suggest(str(k), list(TOP_KEYS)))
        name = data.get("flow")
        if not isinstance(name, str) or not name.strip():
            self.issue("'flow' must name the flow (a non-empty string)", ("flow",) if "flow" in data else ())
            name = self.file.stem
        self.flow_name = name
        src = self._component("source", data.get("source"), ("source",)) if "source" in data else None
        if "source" not in data:
            self.issue("missing 'source'", ())
        steps = self._list("step", data.get("steps"), "steps")
        sinks = self._list("sink", data.get("sinks"), "sinks")
        if "sinks" not in data:
            self.issue("missing 'sinks' (at least one)", ())
        if src is not None and not self.issues:
            self._check_whole(src, sinks)
        on_error = self._model(OnErrorConfig, data.get("on_error") or {}, ("on_error",), kind="on_error")
        dlq_sink = None
        if on_error is not None and isinstance(on_error.dlq, dict):
            dlq_sink = self._component("sink", on_error.dlq, ("on_error", "dlq"))
        settings = self._model(FlowSettings, data.get("settings") or {}, ("settings",), kind="settings")
        tests = self._tests(data.get("tests"), steps, sinks)
        if self.issues or src is None or not sinks:
            return None
        named = self.doc.where(("flow",))
        try:
            return Flow(
                name=name,
                source=src,
                steps=[s for s in steps if s is not None],
                sinks=[s for s in sinks if s is not None],
                on_error=on_error,
                settings=settings,
                description=str(data.get("description") or ""),
                file=self.display,
                line=named[0] if named else None,
                col=named[1] if named else None,
                base_dir=self.file.parent.resolve(),
                tests=tests,
                dlq_sink=dlq_sink,
            )
        except ConfigError as exc:
            for i in exc.issues:
                self.issue(i.message, ())
            return None

    def _check_whole(self, src: ComponentRef, sinks: list[ComponentRef | None]) -> None:
        for check in flow_checks():
            for i, fld, message, hint in check(src, sinks, self.file.parent.resolve()):
                ref = sinks[i]
                assert ref is not None
                self.issue(message, ("sinks", i, ref.name, fld), kind=f"sink '{ref.label}' ({ref.name})", hint=hint,
                           code="config.flow")

    def _list(self, role: Role, value: Any, key: str) -> list[ComponentRef | None]:
        if value is None:
            return []
        if not isinstance(value, list):
            self.issue(f"'{key}' must be a list", (key,))
            return []
        return [self._component(role, item, (key, i)) for i, item in enumerate(value)]

    def _component(self, role: Role, value: Any, path: tuple[Any, ...]) -> ComponentRef | None:
        names = [s.name for s in all_specs(role)]
        if not isinstance(value, dict) or len(value) != 1:
            self.issue(
                f"a {role} is a mapping with exactly one key, the {role} type (one of: {', '.join(names)})",
                path,
            )
            return None
        (kind, options), = value.items()
        kind = str(kind)
        spec = get_spec(role, kind)
        if spec is None:
            self.issue(
                f"unknown {role} type {kind!r}",
                (*path, kind),
                key=True,
                hint=_suggest(kind, names) or f"one of: {', '.join(names)}",
                code="config.unknown_component",
            )
            return None
        if options is None:
            options = {}
        label = options.get("label") if isinstance(options, dict) else None
        cfg = self._model(spec.config, options, (*path, kind), kind=kind, step=label or kind, role=role)
        if cfg is None:
            return None
        pos = self.doc.where((*path, kind), key=True)
        given = getattr(cfg, "label", None)
        return ComponentRef(
            role,
            kind,
            cfg,
            given or kind,
            file=self.display,
            line=pos[0] if pos else None,
            explicit_label=given is not None,
        )

    def _tests(self, raw: Any, steps: list[Any], sinks: list[Any]) -> list[FlowTest]:
        """The flow's ``tests``, validated (their data is taken as written: no ``${env:...}``)."""
        if raw is None:
            return []
        if not isinstance(raw, list):
            self.issue("'tests' must be a list", ("tests",), code="config.invalid_value")
            return []
        # the labels the flow will give its parts (an unlabelled second map is map-2)
        parts = [ref for ref in [*steps, *sinks] if ref is not None]
        labels: dict[str, set[str]] = {"step": set(), "sink": set()}
        for ref, label in zip(parts, part_labels(parts), strict=True):
            labels[ref.role].add(label)
        step_labels, sink_labels = labels["step"], labels["sink"]
        tables = {name for ref in steps if ref is not None and ref.name == "map"
                  for name in getattr(ref.config, "lookups", {}) or {}}
        # a part that did not validate has its own error already: its label is not checked against
        check_steps, check_sinks = None not in steps, None not in sinks
        out = []
        for i, case in enumerate(raw):
            test = self._model(FlowTest, case, ("tests", i), kind="tests", refs=False)
            if test is None:
                continue
            for label in test.mocks:
                if check_steps and label not in step_labels:
                    self.issue(f"test '{test.name}': no step is labelled '{label}'", ("tests", i, "mocks", label),
                               key=True, hint=_suggest(label, sorted(step_labels)), code="config.invalid_value")
            for name in test.lookups:
                if check_steps and name not in tables:
                    self.issue(f"test '{test.name}': no map step has a lookup table '{name}'",
                               ("tests", i, "lookups", name), key=True, hint=_suggest(name, sorted(tables)),
                               code="config.invalid_value")
            for label in test.expect.sinks or {}:
                if check_sinks and label not in sink_labels:
                    self.issue(f"test '{test.name}': no sink is labelled '{label}'",
                               ("tests", i, "expect", "sinks", label), key=True,
                               hint=_suggest(label, sorted(sink_labels)), code="config.invalid_value")
            out.append(test)
        return out

    def _model(
        self,
        model: type[BaseModel],
        value: Any,
        path: tuple[Any, ...],
        *,
        kind: str,
        step: str | None = None,
        role: Role | None = None,
        refs: bool = True,
    ) -> Any:
        ctx = {"base_dir": self.file.parent.resolve()}
        unresolved: list[Any] = []
        if refs:
            value, unresolved = expand_refs(model, value, ctx["base_dir"])
        if unresolved:
            for loc, message in unresolved:
                field = ".".join(str(x) for x in loc)
                self.issue(
                    f"field '{field}': {message}",
                    (*path, *loc),
                    kind=kind if role != "source" else f"source ({kind})",
                    step=step if role in ("step", "sink") else None,
                    part=role if role == "sink" else "step",
                    field=field,
                    code="config.secret_ref",
                )
            return None
        try:
            return model.model_validate(value, context=ctx)
        except ValidationError as exc:
            for e in exc.errors():
                loc = tuple(e["loc"])
                field = ".".join(str(x) for x in loc)
                who: dict[str, Any] = {"kind": kind, "field": field or None}
                if role in ("step", "sink"):
                    who["step"] = step
                    who["part"] = role
                elif role == "source":
                    who["kind"] = f"source ({kind})"
                if e["type"] == "extra_forbidden":
                    fields = list(_fields_at(model, loc[:-1]))
                    self.issue(
                        f"unknown field '{loc[-1]}'",
                        (*path, *[str(x) if isinstance(x, str) else x for x in loc]),
                        key=True,
                        hint=_suggest(str(loc[-1]), fields),
                        code="config.unknown_field",
                        **who,
                    )
                elif e["type"] == "union_tag_not_found":
                    key = str((e.get("ctx") or {}).get("discriminator", "'type'")).strip("'")
                    tags = _union_tags(model, loc, key)
                    given = e.get("input")
                    named = [k for k in given if k in tags] if isinstance(given, dict) else []
                    self.issue(
                        f"field '{field}' needs '{key}'" + (f": one of {', '.join(tags)}" if tags else ""),
                        (*path, *loc),
                        hint=f"write {{{key}: {named[0]}, ...}}, the settings beside it" if named else None,
                        code="config.invalid_value",
                        **who,
                    )
                elif e["type"] == "union_tag_invalid":
                    key = str((e.get("ctx") or {}).get("discriminator", "'type'")).strip("'")
                    tags = _union_tags(model, loc, key)
                    tag = str((e.get("ctx") or {}).get("tag", ""))
                    self.issue(
                        f"field '{field}': unknown {key} '{tag}'" + (f" (one of {', '.join(tags)})" if tags else ""),
                        (*path, *loc, key),
                        hint=_suggest(tag, tags),
                        code="config.invalid_value",
                        **who,
                    )
                elif e["type"] == "missing":
                    self.issue(f"missing required field '{field}'", path, key=True, code="config.missing_field", **who)
                else:
                    msg = e["msg"]
                    if e["type"] == "value_error":  # a check of ours: its own words, without pydantic's prefix
                        msg = msg.removeprefix("Value error, ")
                    cause = (e.get("ctx") or {}).get("error")
                    self.issue(
                        f"field '{field}': {msg}" if field else msg,
                        (*path, *loc),
                        code="config.secret_ref" if isinstance(cause, SecretRefError) else "config.invalid_value",
                        **who,
                    )
            return None
        except (SecretRefError, ValueError) as exc:
            code = "config.secret_ref" if isinstance(exc, SecretRefError) else "config.invalid_value"
            self.issue(str(exc), path, kind=kind, code=code)
            return None


def _annotation_at(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[bool, Any]:
    """The annotation of the (nested) field at ``loc`` (the model itself for an empty ``loc``);
    ``(False, None)`` when the path leaves the models."""
    current: Any = model
    ann: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        try:
            ann = current.model_fields[part].annotation
        except (AttributeError, KeyError):
            return False, None
        current = _model_in(ann)
    return True, ann


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (nested) model at ``loc``, for spelling hints."""
    found, ann = _annotation_at(model, loc)
    current = _model_in(ann) if found else None
    if current is None:
        return []
    fields = list(current.model_fields)
    aliases = [f.alias for f in current.model_fields.values() if f.alias]
    return fields + aliases


def _union_tags(model: type[BaseModel], loc: tuple[Any, ...], key: str) -> list[str]:
    """The values ``key`` may take in the variants of the union at ``loc`` (``type: bearer``, ...)."""
    found, ann = _annotation_at(model, loc)
    if not found:
        return []
    tags: list[str] = []

    def collect(a: Any) -> None:
        if isinstance(a, type) and issubclass(a, BaseModel):
            f = a.model_fields.get(key)
            if f is not None:
                tags.extend(t for t in getattr(f.annotation, "__args__", ()) if isinstance(t, str))
            return
        for arg in getattr(a, "__args__", ()) or ():
            collect(arg)

    collect(ann)
    return tags


def _model_in(ann: Any) -> Any:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    for arg in getattr(ann, "__args__", ()) or ():
        m = _model_in(arg)
        if m is not None:
            return m
    return None


def _display_path(file: Path) -> str:
    try:
        return str(file.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(file)


def load_flow_file(file: str | os.PathLike[str]) -> list[Flow]:
    """Load the flows of one YAML file (several documents allowed)."""
    path = Path(file)
    display = _display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(ConfigIssue(f"cannot read: {exc.strerror}", file=display, code="config.unreadable")) from None
    try:
        docs = load_with_positions(text, name=display)
    except YamlLoadError as exc:
        raise ConfigError(ConfigIssue(str(exc), file=display, line=exc.line, col=exc.col, code="config.yaml")) from None
    flows: list[Flow] = []
    issues: list[ConfigIssue] = []
    for doc in docs:
        fl = _FileLoader(path, doc)
        flow = fl.load()
        issues.extend(fl.issues)
        if flow is not None:
            flows.append(flow)
    if issues:
        raise ConfigError(issues)
    if not flows:
        raise ConfigError(ConfigIssue("the file holds no flow", file=display))
    return flows
