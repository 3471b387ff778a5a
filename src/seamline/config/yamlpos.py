"""YAML loading that remembers where every key and value was written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

try:
    from yaml import CSafeLoader as _Loader
except ImportError:  # pragma: no cover - the C loader ships with PyYAML wheels
    from yaml import SafeLoader as _Loader  # type: ignore[assignment]

__all__ = ["Located", "YamlLoadError", "load_with_positions"]

Path_ = tuple[str | int, ...]


@dataclass
class Located:
    """A parsed YAML document plus a map from each path to (line, col), 1-based."""

    data: Any
    positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_positions: dict[Path_, tuple[int, int]] = field(default_factory=dict)

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int] | None:
        """Position of ``path`` (its key when ``key``), or of the nearest ancestor."""
        p = tuple(path)
        while True:
            table = self.key_positions if key else self.positions
            if p in table:
                return table[p]
            if not key and p in self.key_positions:
                return self.key_positions[p]
            if not p:
                return None
            p = p[:-1]


class YamlLoadError(ValueError):
    def __init__(self, message: str, line: int | None, col: int | None) -> None:
        super().__init__(message)
        self.line = line
        self.col = col


def _construct(node: yaml.Node, path: Path_, out: Located, loader: Any) -> Any:
    out.positions[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)
        result: dict[Any, Any] = {}
        for knode, vnode in node.value:
            key = loader.construct_object(knode, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise YamlLoadError("mapping keys must be scalars", knode.start_mark.line + 1, None)
            if key in result:
                raise YamlLoadError(
                    f"duplicate key {key!r}", knode.start_mark.line + 1, knode.start_mark.column + 1
                )
            sub = (*path, str(key))
            out.key_positions[sub] = (knode.start_mark.line + 1, knode.start_mark.column + 1)
            result[key] = _construct(vnode, sub, out, loader)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(child, (*path, i), out, loader) for i, child in enumerate(node.value)]
    return loader.construct_object(node, deep=True)


def load_with_positions(text: str, *, name: str = "<string>") -> list[Located]:
    """Parse every document of a YAML stream, keeping positions."""
    docs: list[Located] = []
    loader = _Loader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            loc = Located(None)
            loc.data = _construct(node, (), loc, loader)
            docs.append(loc)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        raise YamlLoadError(f"invalid YAML: {exc.problem or exc.context}", line, col) from None
    finally:
        loader.dispose()
    return docs
