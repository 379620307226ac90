"""The ``vidbatch`` command.

Exit codes: 0 every item verified or cached; 1 some item failed; 2 the manifest,
settings or command line is invalid (nothing was run). Errors are one line on
stderr, never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from vidbatch import prefect_env
from vidbatch.errors import ConfigError, ManifestProblems, VidbatchError
from vidbatch.redact import redact

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Run hosted video AI models in bulk.")
out = Console(width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True)
DEBUG = {"on": False}


def fail(message: str, code: int) -> None:
    from vidbatch.redact import redact

    err.print(f"[bold red]error:[/] {redact(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _interrupted() -> None:
    err.show_cursor(True)  # a live progress bar hid it
    err.print("[bold red]error:[/] interrupted; in-flight jobs were cancelled where the provider can cancel, "
              "the others keep their handles: rerun to re-attach", highlight=False, soft_wrap=True)
    # the flow has already cancelled or kept every job and written its state; skip the
    # interpreter's exit hooks: Prefect's event worker would wait forever to drain into
    # the ephemeral server that the same Ctrl-C just stopped
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def _exit_if_ephemeral() -> None:
    """An interrupted run's jobs are cancelled or kept and its state written: exit now.

    In ephemeral mode the same Ctrl-C stopped Prefect's API server, and Prefect's
    crash handling would wait on it (its event worker retries every few seconds,
    for minutes). Against a real server Prefect records the Crashed state first.
    """
    from vidbatch.leases import server_mode

    if not server_mode():
        _interrupted()


def _was_interrupted() -> bool:
    """Whether a run in this process saw a Ctrl-C or a cancellation (``run.INTERRUPTED``)."""
    run = sys.modules.get("vidbatch.run")  # never imported: no run, no interruption
    return bool(run is not None and run.INTERRUPTED.is_set())


def guarded(fn: Callable[[], int | None]) -> None:
    """Run a command body, turning every error into one line and an exit code."""
    try:
        code = fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        _interrupted()
    except BaseException as exc:
        if _was_interrupted():
            _interrupted()  # Prefect may turn the Ctrl-C into its own exception on the way out
        if isinstance(exc, ManifestProblems):
            for problem in exc.problems:
                err.print(f"[bold red]error:[/] {redact(str(problem))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        if isinstance(exc, ConfigError):
            fail(str(exc), 2)
        if isinstance(exc, VidbatchError):
            fail(str(exc), 1)
        if not isinstance(exc, Exception) or DEBUG["on"]:
            raise
        # the last line of defence against tracebacks
        fail(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", 3)
    if _was_interrupted():
        _interrupted()
    raise typer.Exit(code or 0)


@app.callback()
def main_options(debug: bool = typer.Option(False, "--debug", help="Show tracebacks.")) -> None:
    DEBUG["on"] = debug


def _load(manifest: str):  # type: ignore[no-untyped-def]
    from vidbatch.manifest import load_manifest

    return load_manifest(manifest)


def _plan(manifest: str, emulator: str | None = None, credentials: bool = True):  # type: ignore[no-untyped-def]
    """The manifest and its items, after every check (``vidbatch.validation``): all
    problems are reported together, one line each."""
    from vidbatch.validation import validate as validate_manifest

    checked = validate_manifest(manifest, emulator=emulator, credentials=credentials)
    return checked.manifest, checked.items


@app.command()
def validate(manifest: str = typer.Argument(..., help="Manifest path or fsspec URL.")) -> None:
    """Check a manifest: schema, settings, inputs, output paths, credentials, budget prices.

    Every problem found is one line with its file:line:col."""

    def body() -> int:
        m, items = _plan(manifest)
        out.print(f"[green]ok[/] {manifest}: {len(items)} item(s)")
        return 0

    guarded(body)


@app.command()
def schema() -> None:
    """Print the manifest's JSON Schema (for editor completion)."""
    from vidbatch.manifest import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))


@app.command()
def plan(
    manifest: str = typer.Argument(...),
    emulator: Optional[str] = typer.Option(None, help="Price and check against an emulator base URL."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Items, cache hits, estimated cost and what would run. No side effects."""

    def body() -> int:
        from vidbatch.planview import build_plan

        m, items = _plan(manifest, emulator, credentials=False)
        rows, totals = build_plan(m, items, emulator=emulator)
        if as_json:
            typer.echo(json.dumps({"items": rows, "totals": totals}, indent=2))
            return 0
        table = Table(title=f"plan: {m.name}")
        for col in ("input", "provider", "operation", "model", "format", "cached", "est. USD", "output"):
            table.add_column(col, overflow="fold")
        for r in rows:
            usd = "-" if r["estimate_usd"] is None else f"{r['estimate_usd']:.4f}"
            table.add_row(r["input"], r["provider"], r["operation"], r["model"], r["format"],
                          "yes" if r["cached"] else "", usd, r["output"])
        out.print(table)
        tot = Table(title="estimated cost per provider")
        for col in ("provider", "items", "to run", "cached", "est. USD", "note"):
            tot.add_column(col)
        for name, t in totals.items():
            usd = "-" if t["estimate_usd"] is None else f"{t['estimate_usd']:.4f}"
            tot.add_row(name, str(t["items"]), str(t["to_run"]), str(t["cached"]), usd, t.get("note", ""))
        out.print(tot)
        return 0

    guarded(body)


def _progress_hook(total: int):  # type: ignore[no-untyped-def]
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"), TimeElapsedColumn(), console=err, transient=False,
    )
    task = progress.add_task("items", total=total, counts="")
    counts = {"verified": 0, "cached": 0, "failed": 0, "skipped": 0}

    def hook(item, row) -> None:  # type: ignore[no-untyped-def]
        counts["cached" if row.cached else row.status] += 1
        progress.update(task, advance=1, counts=" ".join(f"{k} {v}" for k, v in counts.items() if v))

    return progress, hook


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"vidbatch run ({summary['seconds']} s)")
    for col in ("input", "operation", "provider", "status", "output / error"):
        table.add_column(col, overflow="fold")
    for r in summary["rows"]:
        colour = {"verified": "green", "failed": "red", "skipped": "yellow"}[r["status"]]
        status = f"[{colour}]{r['status']}[/]" + (" (cached)" if r["cached"] else "")
        detail = r["error"] if r["status"] != "verified" else "\n".join(os.path.basename(o) for o in r["outputs"])
        if r.get("warnings"):
            detail += "\n[yellow]" + "; ".join(r["warnings"]) + "[/]"
        table.add_row(os.path.basename(r["input"]) or r["input"], r["operation"], r["provider"], status, detail)
    return table


@app.command("run")
def run_cmd(
    manifest: str = typer.Argument(..., help="Manifest path or fsspec URL."),
    report: Optional[str] = typer.Option(None, help="Also write the JSONL report here."),
    emulator: Optional[str] = typer.Option(None, help="Send every hosted provider to this emulator base URL."),
    force: bool = typer.Option(False, help="Reprocess cached items and resubmit uncertain jobs (may pay again)."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Run the batch: live progress, a summary table, the report next to the outputs."""

    def body() -> int:
        prefect_env.apply(quiet=not verbose)
        from vidbatch.run import check_writable

        m, items = _plan(manifest, emulator)  # every problem, credentials included, before anything runs
        check_writable(m)  # an unwritable output location is exit 2, before anything is paid for
        # SIGTERM: exit cleanly so Prefect's ephemeral server shuts down (notes/prefect.md §1)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
        from vidbatch.flows import batch

        progress, hook = _progress_hook(len(items))
        batch.ROW_HOOKS.append(hook)
        batch.run.INTERRUPT_HOOKS.append(_exit_if_ephemeral)
        t0 = time.time()
        with progress:
            summary = asyncio.run(batch.process_manifest(manifest=manifest, emulator=emulator, report=report, force=force))
        batch.ROW_HOOKS.remove(hook)
        summary["seconds"] = round(time.time() - t0, 1)
        if as_json:
            typer.echo(json.dumps({k: v for k, v in summary.items()}, indent=2, default=str))
        else:
            out.print(_summary_table(summary))
            out.print(
                f"{summary['items']} item(s): [green]{summary['verified']} verified[/] "
                f"({summary['cached']} cached), [red]{summary['failed']} failed[/], {summary['skipped']} skipped; "
                f"cost ${summary['cost_usd']:.4f}"
            )
            out.print(f"outputs under: {_root(m)}")
            out.print(f"report: {summary['report']}" + (f" and {report}" if report else ""))
        return 1 if summary["failed"] else 0

    guarded(body)


def _root(m) -> str:  # type: ignore[no-untyped-def]
    from vidbatch.inputs import output_root

    return output_root(m)


@app.command()
def accept(
    manifest: str = typer.Argument(..., help="Manifest path or fsspec URL."),
    key: Optional[list[str]] = typer.Option(None, "--key", help="An item's key (8+ characters); repeatable."),
    every: bool = typer.Option(False, "--all", help="Every quarantined item of this manifest."),
) -> None:
    """Promote quarantined results to their final paths as they are (no provider call)."""

    def body() -> int:
        from vidbatch.quarantine import select

        q, keys = select(_load(manifest), key, every)
        for k in keys:
            record = q.accept(k)
            out.print(f"accepted {k[:12]}: {', '.join(record['outputs'])}", highlight=False, soft_wrap=True)
        if not keys:
            out.print("nothing quarantined for this manifest")
        return 0

    guarded(body)


@app.command()
def reject(
    manifest: str = typer.Argument(..., help="Manifest path or fsspec URL."),
    key: Optional[list[str]] = typer.Option(None, "--key", help="An item's key (8+ characters); repeatable."),
    every: bool = typer.Option(False, "--all", help="Every quarantined item of this manifest."),
) -> None:
    """Delete quarantined results; the next run submits those items again (and pays again)."""

    def body() -> int:
        from vidbatch.quarantine import select

        q, keys = select(_load(manifest), key, every)
        for k in keys:
            doc = q.reject(k)
            out.print(f"rejected {k[:12]}: deleted {len(doc['files'])} file(s); the next run submits it again",
                      highlight=False)
        if not keys:
            out.print("nothing quarantined for this manifest")
        return 0

    guarded(body)


@app.command()
def inspect(path: str = typer.Argument(..., help="A video file (local path or fsspec URL).")) -> None:
    """Probe a video and print its facts as JSON."""

    def body() -> int:
        from vidbatch.inspect import inspect_file

        typer.echo(json.dumps(inspect_file(path), indent=2, default=str))
        return 0

    guarded(body)


@app.command()
def compare(
    manifests: list[str] = typer.Argument(..., help="A manifest with a compare: section, or two or more manifests."),
    emulator: Optional[str] = typer.Option(None, help="Send hosted providers to this emulator base URL."),
    force: bool = typer.Option(False, help="Reprocess cached items."),
    verbose: bool = typer.Option(False, "--verbose", "-v"),
) -> None:
    """Run one clip set through several variants; table + side-by-side HTML."""

    def body() -> int:
        prefect_env.apply(quiet=not verbose)
        from vidbatch.compare import SHOWN, compare as run_compare
        from vidbatch.run import INTERRUPT_HOOKS

        INTERRUPT_HOOKS.append(_exit_if_ephemeral)

        result = asyncio.run(run_compare(manifests, emulator=emulator, force=force))
        table = Table(title="compare")
        cols = ["variant", "provider", "model", "verified", "failed", "cost_usd", "seconds_per_item"]
        cols += [c for c in SHOWN if any(r.get(c) is not None for r in result["table"])]
        for c in cols:
            table.add_column(c, overflow="fold")
        for r in result["table"]:
            table.add_row(*("-" if r.get(c) is None else str(r.get(c)) for c in cols))
        out.print(table)
        out.print(f"side by side: {result['html']}")
        return 1 if result["failed"] else 0

    guarded(body)


@app.command()
def emulator(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8787),
    job_seconds: float = typer.Option(0.0, help="Minimum job duration."),
    queue_seconds: float = typer.Option(0.0, help="Time a job waits in the queue."),
    api_key: Optional[str] = typer.Option(None, help="Accept only this key (Scenario: key:secret)."),
    seed: int = typer.Option(0, help="Seed for fault injection."),
    rate_429: float = typer.Option(0.0, "--429", help="Probability of a 429 per request."),
    rate_5xx: float = typer.Option(0.0, "--5xx", help="Probability of a 5xx per request."),
    drop: float = typer.Option(0.0, help="Probability of a dropped connection."),
    fail_jobs: float = typer.Option(0.0, help="Probability that a job fails."),
    expire: float = typer.Option(0.0, help="Probability that a result URL has expired."),
    truncate: float = typer.Option(0.0, help="Probability of a truncated download."),
    bad_output: float = typer.Option(0.0, help="Probability that a job's result fails verification."),
    legit_deviation: float = typer.Option(0.0, help="Probability that a job's result deviates as real "
                                          "providers' do (and passes verification)."),
) -> None:
    """Serve the fal, Scenario and removebgvideo protocols on loopback (a sandbox)."""
    from vidbatch.emulator.server import main as serve

    serve(host=host, port=port, job_seconds=job_seconds, queue_seconds=queue_seconds, api_key=api_key, seed=seed,
          p_429=rate_429, p_5xx=rate_5xx, p_drop=drop, p_fail=fail_jobs, p_expire=expire, p_truncate=truncate,
          bad_output=bad_output, legit_deviation=legit_deviation)


def main() -> None:
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
import vidbatch.cli_status  # noqa: E402,F401  (status, deploy: issue 6)
