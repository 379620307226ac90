"""``process-manifest``: load -> expand -> plan -> fan out -> report.

Items stream from the planner into a bounded pool of workers; each worker runs
one item through the five stages while holding its provider's slot from
submit until the job is terminal. Nothing here does HTTP or media work.

Task runs: one per item (``process-item``, the default), the stages inside it
with their own retry policies; or one per stage (``task_runs="stage"``, five
per item, for a per-stage view in the UI). Measured (``python -m bench``,
issue 8): a Prefect task run costs several ms of CPU here plus more in the API
server, so one per item cuts orchestration CPU severalfold and keeps big runs'
history complete. Cached items make no task run at all.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Literal

from vidbatch import prefect_env

prefect_env.apply()

from prefect import flow, get_run_logger  # noqa: E402

from vidbatch import inputs, run  # noqa: E402
from vidbatch.manifest import load_manifest  # noqa: E402
from vidbatch.report import ReportRow, summarize, write_jsonl  # noqa: E402
from vidbatch.spec import Item  # noqa: E402
from vidbatch.tasks import download, poll, process_item, stage, submit, verify  # noqa: E402
from vidbatch.tasks.inline import inline  # noqa: E402

#: the stages inside the one task run of an item (read at call time: tests and benches swap it)
STAGES = run.Stages(stage=inline(stage), submit=inline(submit), poll=inline(poll), download=inline(download),
                    verify=inline(verify))
#: one task run per stage (``task_runs="stage"``)
STAGE_TASKS = run.Stages(stage=stage, submit=submit, poll=poll, download=download, verify=verify)

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
    task_runs: Literal["item", "stage"] = "item",
) -> dict[str, Any]:
    """Process every video of a manifest (an fsspec URL); returns the summary.

    ``task_runs``: one Prefect task run per item (default) or one per stage.
    """
    logger = get_run_logger()
    m = load_manifest(manifest)
    # -- storage (issue 5): abort S3 multipart uploads killed runs left under the outputs (no full listing)
    from vidbatch.storage import acleanup_temp
    await acleanup_temp(inputs.output_root(m), dict(m.storage_options), temp_keys=False)
    ctx = run.new_context(m, None, emulator=emulator, force=force, names=static_provider_names(m))
    await asyncio.to_thread(ctx.state.sweep_done_handles)  # a kill between record and handle delete
    thumbs = _Thumbnails(m)
    started = time.time()
    try:
        await run.start_global_limits(ctx, m)
        items = inputs.iter_items(m)

        async def one(item: Item) -> ReportRow:
            if item.spec.provider not in ctx.providers:
                _add_provider(ctx, m, item.spec.provider, emulator)
            if task_runs == "stage":
                return await run.process_item(ctx, m, item, STAGE_TASKS)
            hit = await asyncio.to_thread(run.cached_row, ctx, m, item)
            if hit is not None:
                return hit  # cached: no task run
            return await process_item(ctx.run_id, item, STAGES)

        def on_row(item: Item, row: ReportRow) -> None:
            if row.status == "failed":
                logger.warning("failed %s: %s", row.input, row.error)
            thumbs.add(item, row)
            for hook in ROW_HOOKS:
                hook(item, row)

        try:
            rows = await run.drive(items, run.worker_count(ctx), one, on_row)
        except BaseException as exc:  # Ctrl-C, Prefect cancellation, a crash of the driver
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt)):
                run.INTERRUPTED.set()
            await run.cancel_in_flight(ctx)
            raise
    except BaseException:
        thumbs.close()
        raise
    finally:
        await run.close_context(ctx)
        if run.INTERRUPTED.is_set():
            for on_interrupt in run.INTERRUPT_HOOKS:
                on_interrupt()
    summary = summarize(rows)
    summary["seconds"] = round(time.time() - started, 2)
    summary["report"] = report_url(m)
    write_jsonl(summary["report"], rows, dict(m.storage_options))
    # -- handoff (issue 6): Parquet + HTML next to the JSONL; adds report_parquet / report_html to the summary
    from vidbatch.handoff import awrite_handoff
    if report:
        write_jsonl(report, rows)
        summary["report_copy"] = report
    # the artifacts are Prefect API calls, the handoff is file work in a thread: side by side
    await asyncio.gather(awrite_handoff(m, rows, summary, thumbs=await thumbs.collect()),
                         _artifacts(m.name, rows, summary))
    logger.info("%s: %s", m.name, {k: v for k, v in summary.items() if k != "rows"})
    summary["rows"] = [r.safe() for r in rows]
    return summary


class _Thumbnails:
    """The HTML report's thumbnails, made while the batch runs (issue 8).

    Made after the last item, they were a tail of ~10 ms per item (3-5 s for the
    300 items that get one: 10-18 % of a 30 s batch, measured). One background
    thread, the items the page shows (``handoff.MAX_THUMB_ITEMS`` first), by row key.
    """

    def __init__(self, m: Any) -> None:
        from vidbatch import handoff

        self.limit = handoff.MAX_THUMB_ITEMS if not handoff.is_shard(m.name) else 0
        self.opts = dict(m.storage_options)
        self.pool: ThreadPoolExecutor | None = None
        self.workdir = ""
        self.futures: dict[str, Future[dict[str, str]]] = {}

    def add(self, item: Item, row: ReportRow) -> None:
        if item.index >= self.limit:
            return
        from vidbatch.handoff import item_thumbnails

        if self.pool is None:
            self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidbatch-thumbs")
            self.workdir = tempfile.mkdtemp(prefix="vidbatch-thumbs-")
        self.futures[row.key] = self.pool.submit(item_thumbnails, row, self.opts, self.workdir)

    async def collect(self) -> dict[str, dict[str, str]]:
        """The thumbnails made (waits for the last few); the page makes any missing one."""

        def wait() -> dict[str, dict[str, str]]:
            out = {}
            for key, fut in self.futures.items():
                try:
                    out[key] = fut.result()
                except Exception:  # noqa: BLE001 - never worth failing the report
                    pass
            return out

        try:
            return await asyncio.to_thread(wait)
        finally:
            self.close()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = None
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


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
