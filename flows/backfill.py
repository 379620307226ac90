"""``backfill-manifest``: shard a huge manifest over every worker of the pool, then merge.

1. Expand and plan the manifest as a stream (the planner checks settings,
   duplicates and output collisions over the whole manifest) and write the
   items, a shard at a time, as JSONL listing files on the shared state store::

       {state_root}/shards/{run}/plan.json           what was dispatched
       {state_root}/shards/{run}/{n}.jsonl           the shard's items (url + overrides)
       {state_root}/shards/{run}/{n}.yaml            a normal manifest: videos: [{list: {n}.jsonl}]

   A shard manifest keeps the parent's settings, limits and ``state:`` (so caching
   and job handles are shared) and its output template with ``{name}``,
   ``{manifest}`` and ``{date}`` already filled in, so every item lands exactly
   where a single run of the parent would put it.
2. Create or update the per-provider global concurrency limits (vidbatch.gcl)
   and the heartbeat automation that marks dead runs Crashed.
3. Run each shard as a ``process-manifest/shard`` deployment run: any worker of
   the pool picks it up. A shard whose run crashed (its worker died) is run
   again; the new run re-attaches to the jobs the dead one submitted (handles
   on the state store), so nothing is submitted twice.
4. Merge the shard reports, in manifest order, into the manifest's own
   JSONL / Parquet / HTML report and publish the run's artifacts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import posixpath
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from vidbatch import prefect_env

prefect_env.apply()

import yaml  # noqa: E402
from prefect import flow, get_run_logger  # noqa: E402

from vidbatch import gcl, handoff, inputs, storage  # noqa: E402
from vidbatch.errors import ConfigError, ManifestError  # noqa: E402
from vidbatch.manifest import Manifest, load_manifest  # noqa: E402
from vidbatch.report import ReportRow  # noqa: E402

SHARD_DEPLOYMENT = os.environ.get("VIDBATCH_SHARD_DEPLOYMENT", "process-manifest/shard")
#: 200 items per shard: a crashed shard's rerun re-checks little, many workers get a share, and a
#: shard's run stays far below the ~1k task runs the server records without loss (one task run
#: per item; five with task_runs="stage"; notes/prefect.md §2)
DEFAULT_SHARD_SIZE = 200
DEFAULT_MAX_PARALLEL = 64
#: a dead worker's run is marked Crashed after this long without a heartbeat (runs beat every 30 s)
HEARTBEAT_GRACE_SECONDS = int(os.environ.get("VIDBATCH_HEARTBEAT_GRACE_SECONDS", "90"))
ZOMBIE_AUTOMATION = "vidbatch: crash flow runs without heartbeats"
STUCK_AUTOMATION = "vidbatch: crash flow runs stuck in Pending"


# --------------------------------------------------------------------------- planning into shards


@dataclass
class Shard:
    n: int
    manifest_url: str
    name: str
    report_url: str
    #: (listing URL, storage options of its items when they differ from the manifest's)
    listings: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    items: int = 0


@dataclass
class ShardPlan:
    run: str
    root: str
    date: str
    items: int
    shards: list[Shard]
    providers: set[str]


def _stem(url: str) -> str:
    return posixpath.splitext(posixpath.basename(url.split("?")[0]))[0]


def shard_name(m: Manifest, run: str, n: int) -> str:
    # handoff.is_shard() recognises the mark: shards leave the handoff files to the merge
    return f"{m.name[:80]}{handoff.SHARD_MARK}{run[-6:]}-{n:05d}"


def shard_output(m: Manifest, date: str) -> str:
    """The output template with the parent's name and planning date filled in."""
    return m.output.replace("{name}", m.name).replace("{manifest}", m.name).replace("{date}", date)


def shard_document(m: Manifest, shard: Shard, date: str, total_items: int) -> dict[str, Any]:
    """The shard's manifest: the parent's settings, its own name and videos, the parent's state."""
    rest = m.model_dump(mode="json", exclude_none=True, by_alias=True,
                        exclude={"version", "videos", "source", "positions", "name", "output", "state", "report",
                                 "budget"})
    doc: dict[str, Any] = {"version": 1, "name": shard.name, "output": shard_output(m, date),
                           "state": inputs.state_root(m)}
    doc.update({k: v for k, v in rest.items() if v not in ({}, [], None)})
    if m.budget is not None:
        # a shard may spend its share of the budget, never more: the shards together stay within it
        share = shard.items / max(1, total_items)
        budget: dict[str, Any] = {}
        if m.budget.max_usd is not None:
            budget["max_usd"] = round(m.budget.max_usd * share, 6)
        if m.budget.providers:
            budget["providers"] = {p: round(v * share, 6) for p, v in m.budget.providers.items()}
        doc["budget"] = budget
    doc["videos"] = [{"list": url, **({"storage_options": extra} if extra else {})} for url, extra in shard.listings]
    return doc


Expected = list[tuple[str, list[str]]]


def plan_shards(m: Manifest, run: str, shard_size: int, date: str) -> ShardPlan:
    """Plan the whole manifest as a stream and write the shard listings and manifests.

    Memory stays flat in the number of items apart from the planner's duplicate
    and collision maps (a few hundred bytes per item). Nothing is left behind
    when planning fails.
    """
    root = storage.join(inputs.state_root(m), "shards", run)
    try:
        return _plan_shards(m, run, shard_size, date)
    except BaseException:
        fs, path = storage.fs_for(root, m.storage_options)
        try:
            fs.rm(path, recursive=True)
        except (FileNotFoundError, OSError):
            pass
        raise


def _plan_shards(m: Manifest, run: str, shard_size: int, date: str) -> ShardPlan:
    root = storage.join(inputs.state_root(m), "shards", run)
    opts = dict(m.storage_options)
    planner = inputs.Planner(m, date=date)
    uses_rel = "{rel}" in m.output
    shards: list[Shard] = []
    providers: set[str] = set()
    groups: dict[str, tuple[dict[str, Any], list[str]]] = {}
    current: Expected = []  # the open shard's (key, outputs), kept to check what a worker will plan
    has_rel = False
    checks: dict[int, Expected] = {}
    total = 0

    def flush() -> None:
        nonlocal groups, current, has_rel
        if not current:
            return
        n = len(shards)
        name = shard_name(m, run, n)
        report = handoff.report_base(m.model_copy(update={"name": name, "output": shard_output(m, date)})) + ".jsonl"
        shard = Shard(n=n, manifest_url=storage.join(root, f"{n:05d}.yaml"), name=name, report_url=report,
                      items=len(current))
        for g, (extra, lines) in enumerate(groups.values()):
            listing = storage.join(root, f"{n:05d}.jsonl" if g == 0 else f"{n:05d}-{g}.jsonl")
            storage.write_bytes_atomic(listing, "".join(lines).encode(), opts)
            shard.listings.append((listing, extra))
        if n == 0 or (has_rel and not any(k > 0 for k in checks)):
            checks[n] = current
        shards.append(shard)
        groups, current, has_rel = {}, [], False

    for src in inputs.iter_sources(m):
        item = planner.plan(src)
        if item is None:
            continue  # the same input with the same settings twice: kept once, as in a run
        providers.add(item.spec.provider)
        row: dict[str, Any] = {"url": src.url, **dict(src.overrides)}
        if uses_rel and src.rel != _stem(src.url):
            row["rel"] = src.rel  # glob items keep their sub-folders in {rel}
            has_rel = True
        extra = {} if dict(src.storage_options) == opts else dict(src.storage_options)
        gkey = json.dumps(extra, sort_keys=True, default=str)
        groups.setdefault(gkey, (extra, []))[1].append(json.dumps(row, sort_keys=True, default=str) + "\n")
        current.append((item.key, item.outputs))
        total += 1
        if len(current) >= shard_size:
            flush()
    flush()
    if not total:
        raise ManifestError("the manifest lists no videos", file=m.source)

    for shard in shards:
        text = yaml.safe_dump(shard_document(m, shard, date, total), sort_keys=False, allow_unicode=True)
        storage.write_bytes_atomic(shard.manifest_url, text.encode(), opts)
    plan = ShardPlan(run=run, root=root, date=date, items=total, shards=shards, providers=providers)
    for n, expected in checks.items():
        _check_shard(plan.shards[n], expected)
    storage.write_bytes_atomic(storage.join(root, "plan.json"), json.dumps(plan_json(m, plan), indent=1).encode(), opts)
    return plan


def plan_json(m: Manifest, plan: ShardPlan) -> dict[str, Any]:
    return {
        "manifest": m.source, "name": m.name, "run": plan.run, "date": plan.date, "items": plan.items,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "shards": [{"n": s.n, "name": s.name, "manifest": s.manifest_url, "items": s.items, "report": s.report_url}
                   for s in plan.shards],
    }


def _shard_items(shard: Shard) -> list[Any]:
    return inputs.plan_items(load_manifest(shard.manifest_url))


def _check_shard(shard: Shard, expected: Expected) -> None:
    """Plan a shard as a worker will and compare with the parent's plan: same keys, same outputs."""
    got = _shard_items(shard)
    if len(got) != len(expected):
        raise ConfigError(f"shard {shard.n} plans {len(got)} items, the manifest {len(expected)}; not dispatched")
    for (key, outputs), item in zip(expected, got):
        if (key, outputs) != (item.key, item.outputs):
            raise ConfigError(
                f"shard {shard.n} would process {item.url} differently from the manifest "
                f"(key {item.key[:12]} vs {key[:12]}, outputs {item.outputs} vs {outputs}); not dispatched"
            )


# --------------------------------------------------------------------------- Prefect set-up


async def ensure_automations(grace_seconds: int = HEARTBEAT_GRACE_SECONDS) -> None:
    """Automations that turn dead vidbatch runs into Crashed ones (so a backfill reruns the shard).

    A worker that dies takes its flow runs with it, and nothing else would ever
    change their state: they would stay Running forever and the backfill would
    wait forever. Idempotent; scoped to runs tagged ``vidbatch``.
    """
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    terminal = {"prefect.flow-run.Completed", "prefect.flow-run.Failed", "prefect.flow-run.Cancelled",
                "prefect.flow-run.Crashed"}
    tagged = ResourceSpecification({"prefect.resource.role": "tag", "prefect.resource.id": "prefect.tag.vidbatch"})
    wanted = {
        ZOMBIE_AUTOMATION: (
            # armed by Running too: a worker killed before the run's first heartbeat (30 s in)
            # would otherwise leave the run Running forever
            {"prefect.flow-run.Running", "prefect.flow-run.heartbeat"}, {"prefect.flow-run.heartbeat", *terminal},
            grace_seconds,
            f"no heartbeat for {grace_seconds} s: the worker running it is gone",
        ),
        # a worker that died after claiming a run but before starting it leaves it Pending
        STUCK_AUTOMATION: (
            {"prefect.flow-run.Pending"}, {"prefect.flow-run.Running", *terminal}, 900,
            "Pending for 15 min: the worker that claimed it is gone",
        ),
    }
    async with get_client() as client:
        for name, (after, expect, within, message) in wanted.items():
            existing = await client.read_automations_by_name(name=name)
            if (existing and int(existing[0].trigger.within.total_seconds()) == within  # type: ignore[union-attr]
                    and set(existing[0].trigger.after) == after):  # type: ignore[union-attr]
                continue
            for old in existing:
                await client.delete_automation(old.id)
            await Automation(
                name=name,
                description="created by vidbatch (flows/backfill.py)",
                trigger=EventTrigger(
                    after=after, expect=expect,
                    match=ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"}),
                    match_related=tagged, for_each={"prefect.resource.id"},
                    posture=Posture.Proactive, threshold=1, within=timedelta(seconds=within),
                ),
                actions=[ChangeFlowRunState(state=StateType.CRASHED, message=message)],
            ).acreate()


# --------------------------------------------------------------------------- dispatch


@dataclass
class ShardOutcome:
    n: int
    state: str = "NOT_RUN"
    attempts: int = 0
    flow_runs: list[str] = field(default_factory=list)
    message: str = ""


def _api_trouble(exc: BaseException) -> bool:
    """An overloaded or briefly unreachable API (SQLite's 'database is locked' surfaces as 503)."""
    import httpx
    from prefect.exceptions import PrefectHTTPStatusError

    if isinstance(exc, PrefectHTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code in (408, 429)
    return isinstance(exc, (httpx.TransportError, httpx.TimeoutException))


async def run_shard(shard: Shard, total: int, params: Mapping[str, Any], retries: int, poll_interval: float,
                    run: str) -> ShardOutcome:
    """Run one shard as a deployment run and wait; run it again if it crashed or failed.

    Rerunning a shard is always safe: verified items are cache hits and submitted
    jobs are re-attached from their handles, so a rerun pays for nothing twice.
    """
    from prefect.deployments import run_deployment

    log = get_run_logger()
    out = ShardOutcome(shard.n)
    while True:
        out.attempts += 1
        key = f"vidbatch-{run}-{shard.n}-{out.attempts}"
        for api_try in range(12):
            try:
                # the idempotency key makes a repeated call find the same flow run, not start another
                fr = await run_deployment(
                    name=SHARD_DEPLOYMENT,
                    parameters={**params, "manifest": shard.manifest_url},
                    flow_run_name=f"{shard.name} ({shard.n + 1}/{total})"
                    + (f" try {out.attempts}" if out.attempts > 1 else ""),
                    timeout=None, poll_interval=poll_interval, as_subflow=True, idempotency_key=key,
                    tags=["vidbatch", "shard"],
                )
                break
            except Exception as exc:  # noqa: BLE001 - only API trouble is retried
                if not _api_trouble(exc) or api_try == 11:
                    raise
                log.warning("shard %d: API trouble (%s); retrying", shard.n, exc)
                await asyncio.sleep(min(60.0, 2.0 * 2**api_try))
        if str(fr.id) not in out.flow_runs:
            out.flow_runs.append(str(fr.id))
        state = fr.state
        out.state = state.type.value if state else "UNKNOWN"
        out.message = (state.message or "") if state else ""
        if out.state == "COMPLETED":
            return out
        # Crashed: the worker died with the run (or it never started); Failed: the flow raised,
        # e.g. the API was unreachable for too long. Cancelled: an operator said stop.
        if out.state in ("CRASHED", "FAILED") and out.attempts <= retries:
            log.warning("shard %d (%s) ended %s (%s); running it again", shard.n, fr.name, out.state, out.message)
            continue
        log.error("shard %d (%s) ended %s: %s", shard.n, fr.name, out.state, out.message)
        return out


# --------------------------------------------------------------------------- merging


def _iter_jsonl(path: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line)


def _missing_rows(shard: Shard, have: set[str], why: str) -> Iterator[dict[str, Any]]:
    """Rows for items of a shard that has no report row: failed, with the shard's fate as reason."""
    try:
        items = _shard_items(shard)
    except Exception as exc:  # noqa: BLE001 - the reason is reported, the merge goes on
        yield ReportRow(input=shard.manifest_url, key=f"shard-{shard.n}", status="failed", provider="", operation="",
                        model="", error=f"{why}; its items could not be listed: {exc}", reason="shard").safe()
        return
    for item in items:
        if item.key in have:
            continue
        spec = item.spec
        yield ReportRow(input=item.url, key=item.key, status="failed", provider=spec.provider,
                        operation=spec.operation, model=spec.model, error=why, reason="shard").safe()


def merge_reports(m: Manifest, plan: ShardPlan, outcomes: Mapping[int, ShardOutcome]) -> dict[str, Any]:
    """Shard reports -> the manifest's JSONL, Parquet and HTML reports (streamed through a temp file)."""
    opts = dict(m.storage_options)
    counts = {"items": 0, "verified": 0, "failed": 0, "skipped": 0, "cached": 0}
    cost = 0.0
    fd, tmp = tempfile.mkstemp(prefix="vidbatch-merge-", suffix=".jsonl")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            for shard in plan.shards:
                outcome = outcomes.get(shard.n)
                data = storage.read_bytes(shard.report_url, opts) if outcome and outcome.state == "COMPLETED" else None
                rows = [json.loads(x) for x in (data or b"").splitlines() if x.strip()]
                if len(rows) < shard.items:
                    why = (f"shard {shard.n} ended {outcome.state if outcome else 'NOT_RUN'}"
                           + (f": {outcome.message}" if outcome and outcome.message else ""))
                    rows.extend(_missing_rows(shard, {r.get("key") for r in rows}, why))
                for r in rows:
                    out.write(json.dumps(r, sort_keys=True) + "\n")
                    counts["items"] += 1
                    counts[r.get("status", "failed")] = counts.get(r.get("status", "failed"), 0) + 1
                    counts["cached"] += bool(r.get("cached"))
                    cost += float(r.get("cost_usd") or 0.0)
        summary: dict[str, Any] = {**counts, "cost_usd": round(cost, 4)}
        base = handoff.report_base(m)
        summary["report"] = base + ".jsonl"
        # one multipart upload straight to the final key (bounded memory, atomic)
        storage.copy_atomic(tmp, summary["report"], opts, src_options={})
        summary["report_parquet"] = base + ".parquet"
        handoff.write_parquet(summary["report_parquet"], _iter_jsonl(tmp), m.name, opts)
        summary["report_html"] = base + ".html"
        handoff.write_html(summary["report_html"], m.name, _iter_jsonl(tmp), summary, opts)
        table = [{k: r.get(k) for k in ("input", "status", "cached", "provider", "operation", "model", "error", "cost_usd")}
                 for _, r in zip(range(1000), _iter_jsonl(tmp))]
        failed = list(itertools.islice((r for r in _iter_jsonl(tmp) if r.get("status") == "failed"), 50))
    finally:
        os.unlink(tmp)
    for shard in plan.shards:  # their rows now live in the merged report
        storage.delete(shard.report_url, opts)
    summary["_table"], summary["_failed"] = table, failed
    return summary


def _artifacts(m: Manifest, plan: ShardPlan, summary: dict[str, Any], outcomes: Mapping[int, ShardOutcome]) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = "".join(c if c.isalnum() else "-" for c in m.name.lower())[:50]
    create_table_artifact(table=summary["_table"], key=f"{key}-backfill-items",
                          description=f"vidbatch backfill of {m.name} (first 1000 items)")
    md = [f"# vidbatch backfill: {m.name}", "",
          "| items | verified | failed | skipped | cached | cost (USD) | shards | reruns |",
          "|---|---|---|---|---|---|---|---|",
          f"| {summary['items']} | {summary['verified']} | {summary['failed']} | {summary['skipped']} | "
          f"{summary['cached']} | {summary['cost_usd']} | {len(plan.shards)} | {summary['shard_reruns']} |", "",
          f"Reports: `{summary['report']}`, `{summary['report_parquet']}`, `{summary['report_html']}`", ""]
    bad = [o for o in outcomes.values() if o.state != "COMPLETED"]
    if bad:
        md += ["## Shards that did not complete", ""] + [f"- shard {o.n}: {o.state} {o.message}" for o in bad] + [""]
    if summary["_failed"]:
        md += ["## Failures", ""] + [f"- `{r.get('input')}`: {r.get('error')}" for r in summary["_failed"]]
    create_markdown_artifact(markdown="\n".join(md), key=f"{key}-backfill-summary",
                             description=f"vidbatch backfill of {m.name}")


# --------------------------------------------------------------------------- the flow


def _run_id() -> str:
    try:
        from prefect.runtime import flow_run

        fid = str(flow_run.id or "")
    except Exception:  # noqa: BLE001 - outside a flow run
        fid = ""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{(fid.replace('-', '') or uuid.uuid4().hex)[:8]}"


@flow(name="backfill-manifest", log_prints=False, persist_result=False, validate_parameters=True)
async def backfill_manifest(
    manifest: str,
    emulator: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    force: bool = False,
    max_parallel: int = DEFAULT_MAX_PARALLEL,
    shard_retries: int = 2,
) -> dict[str, Any]:
    """Process a huge manifest as shards on every worker of the pool; returns the merged summary."""
    log = get_run_logger()
    if shard_size < 1:
        raise ConfigError(f"shard_size must be at least 1 (got {shard_size})")
    started = time.time()
    m = load_manifest(manifest)
    run = _run_id()
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    plan = await asyncio.to_thread(plan_shards, m, run, shard_size, date)
    log.info("%s: %d items in %d shards of up to %d (planned in %.1f s); shard files under %s",
             m.name, plan.items, len(plan.shards), shard_size, time.time() - started, plan.root)

    done = await gcl.aensure_limits(m, plan.providers)
    if done:
        log.info("global concurrency limits: %s", ", ".join(f"{k} {v}" for k, v in sorted(done.items())))
    if os.environ.get("VIDBATCH_CRASH_AUTOMATIONS", "1").lower() not in ("0", "false", "no", "off"):
        await ensure_automations()

    params = {"emulator": emulator, "force": force}
    gate = asyncio.Semaphore(max(1, max_parallel))
    poll = 5.0 if len(plan.shards) <= 20 else 15.0  # hundreds of waiting shards: go easy on the API

    async def one(shard: Shard) -> ShardOutcome:
        async with gate:
            return await run_shard(shard, len(plan.shards), params, shard_retries, poll, run)

    outcomes = {o.n: o for o in await asyncio.gather(*(one(s) for s in plan.shards))}
    summary = await asyncio.to_thread(merge_reports, m, plan, outcomes)
    summary["seconds"] = round(time.time() - started, 2)
    summary["shards"] = len(plan.shards)
    summary["shard_reruns"] = sum(o.attempts - 1 for o in outcomes.values())
    summary["shard_root"] = plan.root
    _artifacts(m, plan, summary, outcomes)
    summary.pop("_table", None)
    summary.pop("_failed", None)
    log.info("%s: %s", m.name, summary)
    bad = sorted(o.n for o in outcomes.values() if o.state != "COMPLETED")
    if bad:
        raise RuntimeError(f"{len(bad)} shard(s) did not complete ({bad[:10]}); their items are failed in {summary['report']}")
    return summary
