"""Human summaries printed by ``seamline run``."""

from __future__ import annotations

from typing import Any

from seamline.cli.common import console


def run_summary(result: Any, state_url: str) -> None:
    from rich.table import Table

    c = console()
    t = Table(title="seamline run")
    for col in ("flow", "received", "delivered", "filtered", "retries scheduled", "dead-lettered"):
        t.add_column(col, justify="right" if col != "flow" else "left")
    any_dead = False
    for name, s in result.stats.items():
        t.add_row(name, str(s.received), str(s.delivered), str(s.filtered), str(s.retried), str(s.dead))
        any_dead = any_dead or s.dead > 0
    c.print(t)
    for name, s in result.stats.items():
        for msg_id, step, reason in s.dead_reasons[:20]:
            c.print(f"  [red]dead[/red] {name} {msg_id} at '{step}': {reason}")
        if len(s.dead_reasons) > 20:
            c.print(f"  ... and {len(s.dead_reasons) - 20} more")
    for name, err in result.errors.items():
        c.print(f"[red]flow {name} failed:[/red] {err}")
    state = "" if state_url == ".seamline/state.db" else f" --state {state_url}"
    prog = _program()
    if any_dead:
        c.print("\nInspect and replay dead letters:")
        c.print(f"  {prog} dlq list{state}")
        c.print(f"  {prog} dlq show ID{state}")
        c.print(f"  {prog} dlq edit ID --set field=value{state}")
        c.print(f"  {prog} dlq replay ID{state}        (or --all)")
        c.print(f"  {prog} trace MESSAGE_ID{state}")


def _program() -> str:
    """How the user started us, so the printed commands can be pasted as they are."""
    import os
    import shutil
    import sys

    argv0 = sys.argv[0] if sys.argv else "seamline"
    if os.path.basename(argv0) == "seamline" and os.sep in argv0:
        found = shutil.which("seamline")
        if found and os.path.realpath(found) == os.path.realpath(argv0):
            return "seamline"
        rel = os.path.relpath(argv0)
        return rel if not rel.startswith("..") else argv0
    return "seamline"
