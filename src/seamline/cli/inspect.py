"""``seamline trace`` and ``seamline status``."""

from __future__ import annotations

import datetime as dt
from typing import Any

from seamline.cli.common import EXIT_FAILURE, console, fail, print_json, run_async
from seamline.cli.dlq import _with_store


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def trace_command(any_id: str, state: str | None, json_out: bool) -> None:
    entries = run_async(_with_store(state, lambda s: s.trace(any_id)))
    if not entries:
        fail(f"no journal records for {any_id!r} (message id or correlation id)", EXIT_FAILURE)
    rows = [
        {
            "seq": e.seq, "at": _iso(e.ts), "flow": e.flow, "msg_id": e.msg_id, "correlation_id": e.correlation_id,
            "step": e.step, "outcome": e.outcome, "duration_us": e.duration_us, "digest": e.digest,
            "detail": e.detail,
        }
        for e in entries
    ]
    if json_out:
        print_json(rows)
        return
    from rich.table import Table

    flows = sorted({r["flow"] for r in rows})
    msgs = sorted({r["msg_id"] for r in rows})
    days = sorted({r["at"][:10] for r in rows})
    # one day: the date goes in the title; hops over several days (a retry the next morning) show theirs
    on = f" on {days[0]}" if len(days) == 1 else f" from {days[0]} to {days[-1]}"
    t = Table(title=f"trace of {any_id}: {len(rows)} hop(s) in {', '.join(flows)}{on}")
    cols = ["at (UTC)", *(["message"] if len(msgs) > 1 else []), "step", "outcome", "µs", "detail"]
    for col in cols:
        t.add_column(col, overflow="fold", no_wrap=col in ("at (UTC)", "step", "outcome"))
    for r in rows:
        at = r["at"][11:23] if len(days) == 1 else f"{r['at'][:10]} {r['at'][11:23]}"
        cells = [at, *([r["msg_id"]] if len(msgs) > 1 else []), r["step"], r["outcome"],
                 str(r["duration_us"]), r["detail"] or ""]
        t.add_row(*cells)
    console().print(t)


def _breaker_row(scope: str, value: bytes, updated: float) -> dict[str, Any]:
    import msgspec

    snap = msgspec.msgpack.decode(value) if value else {}
    return {
        "endpoint": scope[len("breaker:") :],
        "state": snap.get("state"),
        "consecutive_failures": snap.get("consecutive_failures"),
        "last_error": snap.get("last_error"),
        "updated": _iso(updated),
    }


def status_command(state: str | None, json_out: bool) -> None:
    async def go(store: Any) -> dict[str, Any]:
        conn = store.conn

        def q() -> dict[str, Any]:
            dead = conn.execute("SELECT flow, status, COUNT(*) FROM dlq GROUP BY flow, status").fetchall()
            retries = conn.execute("SELECT flow, COUNT(*), MIN(due_at) FROM retries GROUP BY flow").fetchall()
            cps = conn.execute("SELECT scope, updated_at FROM checkpoints ORDER BY scope").fetchall()
            journal = store.journal_summary_sync()
            breakers = conn.execute(
                "SELECT scope, value, updated_at FROM checkpoints WHERE scope LIKE 'breaker:%'"
            ).fetchall()
            return {
                "dead_letters": [{"flow": f, "status": s, "count": n} for f, s, n in dead],
                "retries": [{"flow": f, "count": n, "next_due": _iso(d)} for f, n, d in retries],
                "checkpoints": [{"scope": s, "updated": _iso(u)} for s, u in cps if not s.startswith("breaker:")],
                "journal": [{"flow": f, "messages": n, "last": _iso(t)} for f, n, t in journal],
                "breakers": [_breaker_row(s, v, u) for s, v, u in breakers],
            }

        return await store._run(q)  # type: ignore[no-any-return]

    info = run_async(_with_store(state, go))
    if json_out:
        print_json(info)
        return
    from rich.table import Table

    c = console()
    for key, title in (("journal", "flows"), ("retries", "scheduled retries"), ("dead_letters", "dead letters"),
                       ("checkpoints", "checkpoints"), ("breakers", "circuit breakers")):
        rows = info[key]
        t = Table(title=f"{title} ({len(rows)})")
        if rows:
            for col in rows[0]:
                t.add_column(col)
            for r in rows:
                t.add_row(*(str(v) for v in r.values()))
        c.print(t)


def journal_prune_command(state: str | None, older_than: str, json_out: bool) -> None:
    import time

    from seamline.config.types import parse_duration

    try:
        age = parse_duration(older_than)
    except (TypeError, ValueError) as exc:
        fail(f"--older-than: {exc}", 2)
    cutoff = time.time() - age

    async def go(store: Any) -> int:
        await store.flush_journal()
        return await store._run(store.prune_journal_sync, cutoff)  # type: ignore[no-any-return]

    removed = run_async(_with_store(state, go))
    if json_out:
        print_json({"removed_batches": removed, "before": _iso(cutoff)})
        return
    console().print(f"removed {removed} journal batch(es) written before {_iso(cutoff)} UTC")
