"""The ``seamline`` command line. Heavy modules are imported inside commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from seamline.cli.common import EXIT_CONFIG, EXIT_FAILURE, console, fail, open_state, print_json, run_async

app = typer.Typer(
    name="seamline",
    help="Integration flows in YAML or Python: run, validate, inspect dead letters, trace messages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StateOpt = Annotated[
    str | None,
    typer.Option("--state", envvar="SEAMLINE_STATE", help="State store URL or path (default .seamline/state.db)."),
]


def _load(path: Path) -> list:  # type: ignore[type-arg]
    from seamline.config.loader import load_flows
    from seamline.core.errors import ConfigError

    try:
        return load_flows(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


@app.command()
def run(
    path: Annotated[Path, typer.Argument(help="A flow file or a folder of flow files.")],
    until_idle: Annotated[
        bool, typer.Option("--until-idle", help="Exit once finite sources are drained and no retry is due soon.")
    ] = False,
    state: StateOpt = None,
    idle_horizon: Annotated[
        str, typer.Option(help="With --until-idle: wait for retries due within this time (e.g. 30s).")
    ] = "30s",
    drain_timeout: Annotated[
        str | None, typer.Option(help="On shutdown, how long in-flight work may finish (default: per flow).")
    ] = None,
    flow: Annotated[list[str] | None, typer.Option("--flow", help="Run only these flows (by name).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No summary.")] = False,
) -> None:
    """Run flows until stopped (SIGTERM/SIGINT drain gracefully) or, with --until-idle, until done."""
    from seamline.cli.logs import setup_logging
    from seamline.config.types import parse_duration
    from seamline.core.engine import Engine
    from seamline.core.errors import SeamlineError
    from seamline.store import state_url

    setup_logging()
    flows = _load(path)
    if flow:
        unknown = set(flow) - {f.name for f in flows}
        if unknown:
            fail(f"unknown flow(s): {', '.join(sorted(unknown))}", EXIT_CONFIG)
        flows = [f for f in flows if f.name in flow]
    url = state_url(state)
    engine = Engine(flows, open_state(url))
    try:
        result = run_async(
            engine.run(
                until_idle=until_idle,
                idle_horizon=parse_duration(idle_horizon),
                drain_timeout=parse_duration(drain_timeout) if drain_timeout else None,
            )
        )
    except SeamlineError as exc:
        fail(f"error: {exc}", EXIT_FAILURE)
    except Exception as exc:
        fail(f"error: {type(exc).__name__}: {exc}", EXIT_FAILURE)
    if json_out:
        print_json(
            {
                "state": url,
                "flows": {n: s.as_dict() for n, s in result.stats.items()},
                "errors": result.errors,
                "interrupted": result.interrupted,
            }
        )
    elif not quiet:
        from seamline.cli.render import run_summary

        run_summary(result, url)
    if result.errors:
        raise typer.Exit(EXIT_FAILURE)


@app.command()
def validate(path: Annotated[Path, typer.Argument(help="A flow file or a folder of flow files.")]) -> None:
    """Check flow files; exit 0 when valid, 2 with file:line:col, step and field when not."""
    from seamline.core.errors import SeamlineError

    flows = _load(path)
    # build every component once, so bad lookups, schemas and expressions fail here too
    problems = run_async(_dry_build(flows))
    if problems:
        fail("\n".join(problems), EXIT_CONFIG)
    _ = SeamlineError
    console().print(f"[green]ok[/green]: {len(flows)} flow(s) valid: {', '.join(f.name for f in flows)}")


async def _dry_build(flows: list) -> list[str]:  # type: ignore[type-arg]
    from seamline.core.runtime import FlowRunner
    from seamline.store import open_store

    problems: list[str] = []
    store = open_store(":memory:")
    await store.open()
    try:
        for fl in flows:
            runner = FlowRunner(fl, store)
            for ref in [*fl.steps]:
                try:
                    runner._build(ref)
                except Exception as exc:
                    where = f"{ref.file}:{ref.line}: " if ref.file else ""
                    problems.append(f"{where}step '{ref.label}' ({ref.name}): {exc}")
    finally:
        await store.close()
    return problems


@app.command("test")
def test_cmd(
    path: Annotated[Path, typer.Argument(help="A flow file or a folder of flow files.")],
    name: Annotated[str | None, typer.Option("--name", "-k", help="Only tests whose name contains this.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
) -> None:
    """Run the flows' tests offline (`tests:` in a flow file); exit 0 when all pass, 1 when one fails."""
    from seamline.config.loader import load_flows
    from seamline.core.errors import ConfigError
    from seamline.testing.flowtests import run_flow_tests

    try:
        flows = load_flows(path)
    except ConfigError as exc:
        hint = ""
        if any(i.code == "config.secret_ref" for i in exc.issues):
            hint = ("\nThe tests replace sources and sinks, but the flow files must load: set the variables they "
                    "name (any value will do for a source's or a sink's connection).")
        fail(str(exc) + hint, EXIT_CONFIG)
    results = run_async(run_flow_tests(flows, only=(lambda _f, t: name in t.name) if name else None))
    if as_json:
        print_json([{"flow": r.flow, "test": r.name, "passed": r.passed, "problems": r.problems,
                     "seconds": round(r.seconds, 3)} for r in results])
    else:
        _print_test_results(results)
    if any(not r.passed for r in results):
        raise typer.Exit(EXIT_FAILURE)


def _print_test_results(results: list) -> None:  # type: ignore[type-arg]
    out = console()
    if not results:
        out.print("no tests: a flow file carries them under [bold]tests:[/bold] (see docs/reference/flow.md)")
        return
    for r in results:
        mark = "[green]pass[/green]" if r.passed else "[red]FAIL[/red]"
        out.print(f"{mark}  {r.flow}: {r.name}  [dim]({r.seconds:.2f}s)[/dim]", highlight=False)
        for p in r.problems:
            out.print(f"      {p}", highlight=False, markup=False)
    failed = sum(not r.passed for r in results)
    summary = f"{len(results) - failed} passed, {failed} failed"
    out.print(f"[red]{summary}[/red]" if failed else f"[green]{summary}[/green]")


@app.command()
def schema(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file.")] = None,
) -> None:
    """Print the JSON Schema of flow files (for editor autocompletion)."""
    from seamline.config.jsonschema import flow_schema_text

    text = flow_schema_text()
    if output:
        output.write_text(text, encoding="utf-8")
    else:
        typer.echo(text, nl=False)


docs_app = typer.Typer(help="Generate documentation.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")


@docs_app.command("reference")
def docs_reference(
    out: Annotated[Path, typer.Option("--out", help="Folder to write into.")] = Path("docs/reference"),
) -> None:
    """Write the reference docs of every connector and step (from their specs)."""
    from seamline.config.refdocs import write_reference

    written = write_reference(out)
    console().print(f"wrote {len(written)} file(s) to {out}")


@docs_app.command("mapping")
def docs_mapping(
    path: Annotated[Path, typer.Argument(help="A flow file or folder.")],
    flow: Annotated[str | None, typer.Option("--flow", help="Only this flow.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Folder for FLOW-mapping.md and .html.")] = None,
) -> None:
    """Render the data-mapping specification of each map step (Markdown and HTML)."""
    from seamline.cli.mapping_docs import mapping_docs

    flows = _load(path)
    if flow:
        flows = [f for f in flows if f.name == flow]
        if not flows:
            fail(f"no flow named {flow!r}", EXIT_CONFIG)
    mapping_docs(flows, out)


@app.command("map")
def map_cmd(
    input: Annotated[Path, typer.Option("--input", "-i", help="Input document.")],
    expr: Annotated[str | None, typer.Option("--expr", "-e", help="A JSONata expression.")] = None,
    mapping: Annotated[Path | None, typer.Option("--mapping", "-m", help="A file holding the expression.")] = None,
    fmt: Annotated[str, typer.Option("--format", "-f", help="Input format: json, xml or csv.")] = "json",
) -> None:
    """Evaluate a mapping against a document and print the result."""
    from seamline.cli.mapcmd import map_command

    map_command(input, expr, mapping, fmt)


@app.command()
def trace(
    any_id: Annotated[str, typer.Argument(metavar="ID", help="A message id or correlation id.")],
    state: StateOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Every hop of a message, in order, with outcome and timing."""
    from seamline.cli.inspect import trace_command

    trace_command(any_id, state, json_out)


@app.command()
def status(
    state: StateOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Pending retries, dead letters and checkpoints in the state store."""
    from seamline.cli.inspect import status_command

    status_command(state, json_out)


journal_app = typer.Typer(help="The journal of every hop: housekeeping.", no_args_is_help=True)
app.add_typer(journal_app, name="journal")


@journal_app.command("prune")
def journal_prune(
    older_than: Annotated[str, typer.Option("--older-than", help="Age, e.g. 7d, 12h, 30m.")],
    state: StateOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Delete journal records older than the given age (the journal is otherwise kept for ever)."""
    from seamline.cli.inspect import journal_prune_command

    journal_prune_command(state, older_than, json_out)


def _register_dlq() -> None:
    from seamline.cli.dlq import dlq_app

    app.add_typer(dlq_app, name="dlq")


_register_dlq()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(EXIT_FAILURE) from None
