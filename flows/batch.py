"""``process-manifest``: load -> expand -> plan -> fan out -> report.

Items stream from the planner into a bounded pool of workers; each worker runs
one item through the five stage tasks while holding its provider's slot from
submit to download. Nothing here does HTTP or media work.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from vidbatch import prefect_env

prefect_env.apply()

from prefect import flow, get_run_logger  # noqa: E402

from vidbatch import inputs, run  # noqa: E402
from vidbatch.manifest import load_manifest  # noqa: E402
from vidbatch.report import ReportRow, summarize, write_jsonl  # noqa: E402
from vidbatch.spec import Item  # noqa: E402
from vidbatch.tasks import download, poll, stage, submit, verify  # noqa: E402

STAGES = run.Stages(stage=stage, submit=submit, poll=poll, download=download, verify=verify)

#: callbacks for the CLI's live progress (called in the flow's process)
ROW_HOOKS: list[Callable[[Item, ReportRow], None]] = []


def report_url(m: Any) -> str:
    from vidbatch import storage

    return storage.join(inputs.output_root(m), f"{m.name}.report.jsonl")


def static_provider_names(m: Any) -> set[str]:
    names = {m.defaults.provider or "local"}
    for entry in m.videos:
        if not isinstance(entry, str) and entry.provider:
            names.add(entry.provider)
    return names


@flow(name="process-manifest", log_prints=False, persist_result=False, validate_parameters=True)
async def process_manifest(
    manifest: str,
    emulator: str | None = None,
    report: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Process every video of a manifest (an fsspec URL); returns the summary."""
    logger = get_run_logger()
    m = load_manifest(manifest)
    ctx = run.new_context(m, None, emulator=emulator, force=force, names=static_provider_names(m))
    started = time.time()
    try:
        await run.start_global_limits(ctx, m)
        items = inputs.iter_items(m)

        async def one(item: Item) -> ReportRow:
            if item.spec.provider not in ctx.providers:
                _add_provider(ctx, m, item.spec.provider, emulator)
            return await run.process_item(ctx, m, item, STAGES)

        def on_row(item: Item, row: ReportRow) -> None:
            if row.status == "failed":
                logger.warning("failed %s: %s", row.input, row.error)
            for hook in ROW_HOOKS:
                hook(item, row)

        try:
            rows = await run.drive(items, run.worker_count(ctx), one, on_row)
        except BaseException:  # Ctrl-C, Prefect cancellation, a crash of the driver
            await run.cancel_in_flight(ctx)
            raise
    finally:
        await run.close_context(ctx)
    summary = summarize(rows)
    summary["seconds"] = round(time.time() - started, 2)
    summary["report"] = report_url(m)
    write_jsonl(summary["report"], rows, dict(m.storage_options))
    if report:
        write_jsonl(report, rows)
        summary["report_copy"] = report
    await _artifacts(m.name, rows, summary)
    logger.info("%s: %s", m.name, {k: v for k, v in summary.items() if k != "rows"})
    summary["rows"] = [r.safe() for r in rows]
    return summary


def _add_provider(ctx: run.RunContext, m: Any, name: str, emulator: str | None) -> None:
    providers = dict(ctx.providers)
    providers.update(run.make_providers(m, [name], emulator))
    limiters = dict(ctx.limiters)
    limiters.update(run.make_limiters(m, [name]))
    ctx.providers, ctx.limiters = providers, limiters


async def _artifacts(name: str, rows: list[ReportRow], summary: dict[str, Any]) -> None:
    """A table and a markdown summary artifact per run (secrets already redacted)."""
    from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact

    table = [
        {k: r.safe()[k] for k in ("input", "status", "cached", "provider", "operation", "model", "error", "cost_usd")}
        for r in rows[:1000]
    ]
    key = "".join(c if c.isalnum() else "-" for c in name.lower())[:60]
    await acreate_table_artifact(table=table, key=f"{key}-items", description=f"vidbatch items of {name}")
    md = [f"# vidbatch: {name}", "", "| items | verified | failed | skipped | cached | cost (USD) |",
          "|---|---|---|---|---|---|",
          f"| {summary['items']} | {summary['verified']} | {summary['failed']} | {summary['skipped']} | "
          f"{summary['cached']} | {summary['cost_usd']} |", "", f"Report: `{summary['report']}`"]
    failed = [r for r in rows if r.status == "failed"][:50]
    if failed:
        md += ["", "## Failures", ""] + [f"- `{r.safe()['input']}`: {r.safe()['error']}" for r in failed]
    await acreate_markdown_artifact(markdown="\n".join(md), key=f"{key}-summary", description=f"vidbatch run of {name}")
