"""What an expression reads and calls, found from its syntax tree (for docs and validation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Analysis", "analyse", "syntax_error_position"]


@dataclass
class Analysis:
    """The facts about one expression that documentation and validation need."""

    ast: Any = None
    paths: list[str] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    value_maps: list[str] = field(default_factory=list)


def analyse(source: str) -> Analysis:
    return Analysis()


def syntax_error_position(source: str, code: str) -> int | None:
    return None


def object_fields(source: str) -> list[tuple[str, Any]]:
    return []
