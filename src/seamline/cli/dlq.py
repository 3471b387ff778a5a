"""``seamline dlq``: list, show, replay, edit and purge dead letters."""

from __future__ import annotations

import datetime as dt
import getpass
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from seamline.cli.common import EXIT_CONFIG, EXIT_FAILURE, console, fail, open_state, print_json, run_async

dlq_app = typer.Typer(help="Inspect, replay, edit and purge dead letters.", no_args_is_help=True)

StateOpt = Annotated[
    str | None,
    typer.Option("--state", envvar="SEAMLINE_STATE", help="State store URL or path (default .seamline/state.db)."),
]
FlowOpt = Annotated[str | None, typer.Option("--flow", help="Only this flow.")]
StepOpt = Annotated[str | None, typer.Option("--step", help="Only this failing step or sink.")]
ClassOpt = Annotated[str | None, typer.Option("--error-class", help="fatal or retryable.")]
CodeOpt = Annotated[str | None, typer.Option("--error-code", help="Only this error code.")]
SinceOpt = Annotated[str | None, typer.Option("--since", help="ISO time or age (e.g. 2h) lower bound.")]
UntilOpt = Annotated[str | None, typer.Option("--until", help="ISO time or age upper bound.")]


def _actor() -> str:
    try:
        return os.environ.get("SEAMLINE_ACTOR") or getpass.getuser()
    except Exception:
        return "unknown"


def _time(value: str | None) -> float | None:
    if value is None:
        return None
    from seamline.config.types import parse_duration

    try:
        return dt.datetime.now(dt.UTC).timestamp() - parse_duration(value)
    except ValueError:
        pass
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        fail(f"not a time or age: {value!r} (use e.g. 2026-01-31T12:00:00Z or 2h)", EXIT_CONFIG)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.timestamp()


def _store(state: str | None) -> Any:
    from seamline.store import state_url

    url = state_url(state)
    path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else url
    if "://" not in url and not Path(path).exists():
        fail(f"no state store at {url} (run a flow first, or pass --state)", EXIT_FAILURE)
    return open_state(url)


async def _with_store(state: str | None, fn: Any) -> Any:
    store = _store(state)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def _filter(
    flow: str | None = None,
    step: str | None = None,
    error_class: str | None = None,
    error_code: str | None = None,
    since: str | None = None,
    until: str | None = None,
    status: str | None = "dead",
    ids: list[str] | None = None,
) -> Any:
    from seamline.store import DlqFilter

    return DlqFilter(
        flow=flow, step=step, error_class=error_class, error_code=error_code,
        since=_time(since), until=_time(until), status=status, ids=ids,
    )


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _summary(d: Any) -> dict[str, Any]:
    return {
        "dlq_id": d.dlq_id, "flow": d.flow, "msg_id": d.msg_id, "correlation_id": d.correlation_id,
        "step": d.step, "error_code": d.error_code, "error_class": d.error_class, "reason": d.error_message,
        "attempts": d.attempts, "dead_at": _iso(d.dead_at), "status": d.status, "replays": d.replays,
    }


def _full(d: Any) -> dict[str, Any]:
    from seamline.core.message import Message

    out = _summary(d)
    orig = Message.from_record(d.original)
    cur = Message.from_record(d.current)
    out.update(
        {
            "first_failed_at": _iso(d.first_failed_at),
            "headers": orig.headers,
            "original": _payload(orig),
            "current": _payload(cur),
            "resume_at": d.resume,
            "pending_sinks": d.pending_sinks,
            "error_chain": d.error_chain,
            "history": d.history,
        }
    )
    return out


def _payload(m: Any) -> Any:
    import hashlib

    raw = m.raw
    try:
        body = m.body
    except Exception:
        body = raw
    return {"body": body, "content_type": m.content_type, "sha256": hashlib.sha256(raw).hexdigest(),
            "bytes": len(raw)}


@dlq_app.command("list")
def dlq_list(
    state: StateOpt = None, flow: FlowOpt = None, step: StepOpt = None, error_class: ClassOpt = None,
    error_code: CodeOpt = None, since: SinceOpt = None, until: UntilOpt = None,
    all_status: Annotated[bool, typer.Option("--all", help="Also replayed entries.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """List dead letters (newest last)."""
    flt = _filter(flow, step, error_class, error_code, since, until, None if all_status else "dead")
    items = run_async(_with_store(state, lambda s: s.list_dead(flt)))
    if json_out:
        print_json([_summary(d) for d in items])
        return
    from rich.table import Table

    t = Table(title=f"{len(items)} dead letter(s)")
    rows = [
        (d.dlq_id[:12], d.flow, d.msg_id, d.step, d.error_code, d.error_message[:200], str(d.attempts),
         _iso(d.dead_at), d.status)
        for d in items
    ]
    # one line per dead letter: the short columns keep their width (up to a cap), the reason
    # takes what is left and is cut with an ellipsis (``dlq show`` has it in full)
    caps = (12, 24, 28, 24, 28, None, 5, 20, 10)
    names = ("id", "flow", "message", "step", "code", "reason", "tries", "dead at", "status")
    widths = [min(cap, max([len(col), *(len(r[i]) for r in rows)])) if cap else 0
              for i, (col, cap) in enumerate(zip(names, caps, strict=True))]
    out = console()
    shown = list(range(len(names)))
    for optional in (8, 7, 1, 6):  # a narrow terminal drops status, time, flow, tries first
        if out.width - sum(widths[i] + 3 for i in shown) - 4 >= 30:
            break
        shown.remove(optional)
    reason_width = max(12, out.width - sum(widths[i] + 3 for i in shown) - 4)
    for i in shown:
        t.add_column(names[i], no_wrap=True, overflow="ellipsis", width=widths[i] or reason_width)
    rows = [tuple(r[i] for i in shown) for r in rows]
    for r in rows:
        t.add_row(*r)
    out.print(t)


@dlq_app.command("show")
def dlq_show(
    dlq_id: Annotated[str, typer.Argument(metavar="ID", help="Dead-letter id (or prefix) or message id.")],
    state: StateOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Payload, headers, full error chain and attempt history of one dead letter."""
    d = run_async(_with_store(state, lambda s: s.get_dead(dlq_id)))
    if d is None:
        fail(f"no dead letter {dlq_id!r}", EXIT_FAILURE)
    full = _full(d)
    if json_out:
        print_json(full)
        return
    import orjson
    from rich.panel import Panel

    from seamline.cli.common import jsonable

    c = console()
    c.print(Panel.fit(
        "\n".join(f"[bold]{k}[/bold]: {full[k]}" for k in (
            "dlq_id", "flow", "msg_id", "correlation_id", "step", "error_code", "error_class", "reason",
            "attempts", "first_failed_at", "dead_at", "status", "replays")),
        title="dead letter"))
    c.print("[bold]headers[/bold]", full["headers"])
    c.print("[bold]original payload[/bold] (sha256 " + full["original"]["sha256"] + ")")
    c.print(orjson.dumps(jsonable(full["original"]["body"]), option=orjson.OPT_INDENT_2).decode())
    if full["current"]["sha256"] != full["original"]["sha256"]:
        c.print(f"[bold]payload at step '{d.step}'[/bold]")
        c.print(orjson.dumps(jsonable(full["current"]["body"]), option=orjson.OPT_INDENT_2).decode())
    c.print("[bold]error chain[/bold]")
    for e in full["error_chain"]:
        c.print(f"  {e['type']} [{e.get('code')}]: {e['message']}")
    c.print("[bold]attempts[/bold]")
    for h in full["history"]:
        c.print(f"  {_iso(h['at'])} {h.get('event', 'attempt ' + str(h.get('attempt')))} "
                f"{h.get('step', '')} {h.get('code', '')} {h.get('error', '')}")


def _select(store: Any, ids: list[str], flt: Any) -> Any:
    async def go() -> list[str]:
        if ids:
            found = []
            for i in ids:
                d = await store.get_dead(i)
                if d is None:
                    raise KeyError(i)
                found.append(d.dlq_id)
            return found
        return [d.dlq_id for d in await store.list_dead(flt)]

    return go()


@dlq_app.command("replay")
def dlq_replay(
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...", help="Dead letters to replay.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Replay every matching dead letter.")] = False,
    state: StateOpt = None, flow: FlowOpt = None, step: StepOpt = None, error_class: ClassOpt = None,
    error_code: CodeOpt = None, since: SinceOpt = None, until: UntilOpt = None,
    from_step: Annotated[
        bool, typer.Option("--from-step", help="Resume at the failing step (default: from the start).")
    ] = False,
) -> None:
    """Queue dead letters for another try; the running engine (or the next `seamline run`) processes them."""
    ids = ids or []
    filtered = any(x is not None for x in (flow, step, error_class, error_code, since, until))
    if not ids and not all_ and not filtered:
        fail("name dead-letter ids, or use --all / a filter such as --flow", EXIT_CONFIG)
    flt = _filter(flow, step, error_class, error_code, since, until)

    async def go(store: Any) -> int:
        try:
            chosen = await _select(store, ids, flt)
        except KeyError as exc:
            fail(f"no dead letter {exc.args[0]!r}", EXIT_FAILURE)
        import time

        return int(await store.replay_dead(chosen, now=time.time(), from_step=from_step, actor=_actor()))

    n = run_async(_with_store(state, go))
    console().print(
        f"queued {n} message(s) for replay {'from the failing step' if from_step else 'from the start'}; "
        "they run with the next `seamline run` (or now, in a running engine)"
    )


@dlq_app.command("purge")
def dlq_purge(
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...", help="Dead letters to delete.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Purge every matching dead letter.")] = False,
    state: StateOpt = None, flow: FlowOpt = None, step: StepOpt = None, error_class: ClassOpt = None,
    error_code: CodeOpt = None, since: SinceOpt = None, until: UntilOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    include_replayed: Annotated[
        bool, typer.Option("--include-replayed", help="Also delete the records of replayed entries.")
    ] = False,
) -> None:
    """Delete dead letters for good (asks first; written to the audit log)."""
    ids = ids or []
    filtered = any(x is not None for x in (flow, step, error_class, error_code, since, until))
    if not ids and not all_ and not filtered:
        fail("name dead-letter ids, or use --all / a filter such as --flow", EXIT_CONFIG)
    flt = _filter(flow, step, error_class, error_code, since, until, status=None if include_replayed else "dead")

    async def pick(store: Any) -> list[str]:
        try:
            return list(await _select(store, ids, flt))
        except KeyError as exc:
            fail(f"no dead letter {exc.args[0]!r}", EXIT_FAILURE)

    chosen = run_async(_with_store(state, pick))
    if not chosen:
        console().print("nothing to purge")
        return
    if not yes and not typer.confirm(f"Delete {len(chosen)} dead letter(s) for good?", default=False):
        fail("aborted", EXIT_FAILURE)
    n = run_async(_with_store(state, lambda s: s.purge_dead(chosen, actor=_actor())))
    console().print(f"purged {n} dead letter(s)")


def _set_path(obj: Any, path: str, value: Any) -> Any:
    parts = path.split(".")
    cur = obj
    for p in parts[:-1]:
        cur = cur[int(p)] if isinstance(cur, list) else cur.setdefault(p, {})
    last = parts[-1]
    if isinstance(cur, list):
        cur[int(last)] = value
    else:
        cur[last] = value
    return obj


def _parse_value(text: str) -> Any:
    import orjson

    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


@dlq_app.command("edit")
def dlq_edit(
    dlq_id: Annotated[str, typer.Argument(metavar="ID", help="Dead-letter id (or prefix) or message id.")],
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="path=value (JSON value, else a string); repeatable.")
    ] = None,
    state: StateOpt = None,
    replay: Annotated[bool, typer.Option("--replay/--no-replay", help="Queue it for replay after editing.")] = True,
) -> None:
    """Edit the payload of a dead letter (--set path=value, or $EDITOR) and queue it for replay."""
    import time

    import orjson

    from seamline.core.message import Message

    d = run_async(_with_store(state, lambda s: s.get_dead(dlq_id)))
    if d is None:
        fail(f"no dead letter {dlq_id!r}", EXIT_FAILURE)
    msg = Message.from_record(d.original)
    body = msg.body
    if sets:
        for item in sets:
            path, sep, value = item.partition("=")
            if not sep or not path:
                fail(f"--set expects path=value, got {item!r}", EXIT_CONFIG)
            try:
                body = _set_path(body, path.strip(), _parse_value(value))
            except (KeyError, IndexError, ValueError, TypeError) as exc:
                fail(f"cannot set {path!r}: {exc}", EXIT_CONFIG)
    else:
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
        if not editor:
            fail("give --set path=value, or set $EDITOR", EXIT_CONFIG)
        with tempfile.NamedTemporaryFile("wb", suffix=".json", delete=False) as f:
            f.write(orjson.dumps(body, option=orjson.OPT_INDENT_2))
            tmp = f.name
        try:
            subprocess.run([*editor.split(), tmp], check=True)
            body = orjson.loads(Path(tmp).read_bytes())
        except (subprocess.CalledProcessError, orjson.JSONDecodeError) as exc:
            fail(f"edit aborted: {exc}", EXIT_FAILURE)
        finally:
            os.unlink(tmp)
    edited = msg.evolve(body).to_record()

    async def go(store: Any) -> int:
        await store.update_dead_message(d.dlq_id, edited, edited, actor=_actor())
        if not replay:
            return 0
        return int(await store.replay_dead([d.dlq_id], now=time.time(), from_step=False, actor=_actor()))

    n = run_async(_with_store(state, go))
    console().print(f"edited {d.dlq_id[:12]}" + (f"; queued {n} for replay from the start" if replay else ""))
