"""``${env:NAME}`` and ``${file:PATH}`` in any string setting of a connector or a step.

One flow file serves several environments: the file path, the topic, the queue or the endpoint
comes from the environment it runs in. Settings typed as secrets resolve their references
themselves, into a :class:`~seamline.security.secrets.Secret` that never prints; every other
string setting gets the referenced value as plain text before it is validated. A reference that
cannot be resolved (a variable that is not set, a file that cannot be read) is a config error
at the setting's position.
"""

from __future__ import annotations

import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from seamline.security.secrets import Secret, SecretRefError, resolve_refs

__all__ = ["expand_refs"]

#: a setting's location inside the value handed to the model, and what is wrong there
RefIssue = tuple[tuple[Any, ...], str]


def expand_refs(model: type[BaseModel], value: Any, base_dir: Path) -> tuple[Any, list[RefIssue]]:
    """``value`` with the references of its plain string settings resolved (a copy where changed),
    and the references that could not be resolved."""
    issues: list[RefIssue] = []
    return _walk(model, value, (), base_dir, issues), issues


def _members(ann: Any) -> list[Any]:
    """The alternatives of an annotation: unions and ``Annotated`` unwrapped."""
    origin = get_origin(ann)
    if origin is Annotated:
        return _members(get_args(ann)[0])
    if origin is Union or origin is types.UnionType:
        return [m for a in get_args(ann) for m in _members(a)]
    return [ann]


def _is_secret(ann: Any) -> bool:
    return any(m is Secret for m in _members(ann))


def _model_for(models: list[type[BaseModel]], value: dict[Any, Any]) -> type[BaseModel]:
    """The variant a mapping is meant for: the one its ``type`` names, else the one that knows most keys."""
    tag = value.get("type")
    for m in models:
        f = m.model_fields.get("type")
        if f is not None and get_origin(f.annotation) is Literal and tag in get_args(f.annotation):
            return m
    return max(models, key=lambda m: sum(1 for k in value if _field(m, k) is not None))


def _field(model: type[BaseModel], key: Any) -> Any:
    f = model.model_fields.get(key) if isinstance(key, str) else None
    if f is None:
        f = next((x for x in model.model_fields.values() if x.alias == key), None)
    return f


def _walk(ann: Any, value: Any, loc: tuple[Any, ...], base_dir: Path, issues: list[RefIssue]) -> Any:
    if ann is None or _is_secret(ann):
        return value  # unknown (validation names it) or a secret: its own validator resolves it
    if isinstance(value, str):
        if "${" not in value:
            return value
        try:
            resolved = resolve_refs(value, base_dir=base_dir)
        except SecretRefError as exc:
            issues.append((loc, str(exc)))
            return value
        return resolved.reveal() if isinstance(resolved, Secret) else resolved
    members = _members(ann)
    if isinstance(value, dict):
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        if models:
            model = _model_for(models, value)
            out: dict[Any, Any] = {}
            for k, v in value.items():
                f = _field(model, k)
                out[k] = _walk(f.annotation if f is not None else None, v, (*loc, k), base_dir, issues)
            return out
        item = next((get_args(m)[1] for m in members if get_origin(m) is dict and len(get_args(m)) == 2), None)
        return {k: _walk(item, v, (*loc, k), base_dir, issues) for k, v in value.items()}
    if isinstance(value, list):
        item = next((get_args(m)[0] for m in members if get_origin(m) in (list, tuple, set) and get_args(m)), None)
        return [_walk(item, v, (*loc, i), base_dir, issues) for i, v in enumerate(value)]
    return value
