"""Helpers shared by the CLI commands: exit codes, error printing, JSON output."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine
from typing import Any, NoReturn, TypeVar

import typer

__all__ = [
    "EXIT_CONFIG", "EXIT_FAILURE", "EXIT_OK", "console", "fail", "jsonable", "open_state", "print_json", "run_async",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

T = TypeVar("T")


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    try:
        from seamline.security.redaction import scrub_text
    except ImportError:  # pragma: no cover - redaction ships with the package

        def scrub_text(text: str) -> str:
            return text

    print(scrub_text(message), file=sys.stderr)
    raise typer.Exit(code)


def open_state(url: str) -> Any:
    """The store at ``url`` (``--state`` / ``SEAMLINE_STATE``); a URL no store speaks is a usage error."""
    from seamline.store import open_store

    try:
        return open_store(url)
    except ValueError as exc:
        fail(f"--state: {exc}", EXIT_CONFIG)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def jsonable(v: Any) -> Any:
    """Bytes become text (UTF-8) or base64; everything else stays."""
    import base64

    if isinstance(v, bytes):
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(v).decode()}
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [jsonable(x) for x in v]
    return v


def print_json(v: Any) -> None:
    import orjson

    sys.stdout.write(orjson.dumps(jsonable(v), option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode() + "\n")
