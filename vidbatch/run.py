"""One run of a manifest: build the context, drive items through the stages.

``process_item`` sequences the five stages for one item and turns every outcome
into a ``ReportRow``; it takes the stages as callables so that the flow passes
Prefect tasks and unit tests pass the plain functions. ``drive`` pulls items from
the streaming planner with a bounded number of workers, so planning, caching and
submission overlap and nothing holds a 100k-item list of task runs.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping

from vidbatch import inputs, pipeline, storage
from vidbatch.errors import (
    AuthError,
    ConfigError,
    InputError,
    JobGoneError,
    QuotaError,
    VerifyError,
    VidbatchError,
)
from vidbatch.limits import ProviderLimiter
from vidbatch.manifest import Manifest
from vidbatch.pipeline import RunContext, UnknownSubmitError
from vidbatch.providers import registry
from vidbatch.providers.base import Provider, ProviderSettings
from vidbatch.redact import redact, register_secret
from vidbatch.report import ReportRow
from vidbatch.spec import Item, JobState
from vidbatch.state import StateStore

log = logging.getLogger("vidbatch")

#: run contexts of this process by run id (tasks receive the id, not the object)
CONTEXTS: dict[str, RunContext] = {}
#: their manifests (the item task takes ids only: Prefect walks every task parameter)
MANIFESTS: dict[str, Manifest] = {}
#: set when a run of this process was interrupted (Ctrl-C, cancellation): whatever
#: exception the orchestration turns that into on the way out, the CLI exits 130
INTERRUPTED = threading.Event()
#: called by the flow once an interrupted run has cancelled or kept its jobs and
#: closed its context (the CLI exits there: see ``cli._exit_if_ephemeral``)
INTERRUPT_HOOKS: list[Callable[[], None]] = []
DEFAULT_HOSTED_CONCURRENCY = 4
EMULATOR_CREDENTIALS = {
    "FAL_KEY": "emulator-key:emulator-secret",
    "SCENARIO_SDK_API_KEY": "emulator-key",
    "SCENARIO_SDK_API_SECRET": "emulator-secret",
    "REMOVEBGVIDEO_API_KEY": "emulator-key",
}

Event = Callable[[Item, str, ReportRow | None], None]


def providers_used(items: Iterable[Item]) -> list[str]:
    return sorted({i.spec.provider for i in items})


def _secret_block(name: str) -> dict[str, str]:
    """Credentials from a Prefect Secret block (a string, or a JSON mapping of names)."""
    from prefect.blocks.system import Secret

    try:
        value = Secret.load(name).get()
    except Exception as exc:  # Prefect raises ValueError / ObjectNotFound variants
        raise ConfigError(f"cannot load Prefect Secret block {name!r}: {exc}") from None
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return {"__single__": str(value)}


def provider_settings(m: Manifest, name: str, emulator: str | None) -> ProviderSettings:
    cfg = m.providers.get(name)
    creds: dict[str, str] = {}
    cls = registry.get_class(name)
    if cfg and cfg.secret_block:
        block = _secret_block(cfg.secret_block)
        if "__single__" in block:
            if len(cls.credential_names) != 1:
                raise ConfigError(
                    f"Secret block {cfg.secret_block!r} holds one value but {name} needs "
                    f"{' and '.join(cls.credential_names)}; store a JSON object with those keys"
                )
            creds[cls.credential_names[0]] = block["__single__"]
        else:
            creds.update(block)
    if emulator:
        for cred in cls.credential_names:
            if not creds.get(cred) and not os.environ.get(cred):
                creds[cred] = EMULATOR_CREDENTIALS.get(cred, "emulator")
    for value in creds.values():
        register_secret(value)
    for cred in cls.credential_names:
        register_secret(os.environ.get(cred))
    return ProviderSettings(
        base_url=emulator or (cfg.base_url if cfg else None),
        credentials=creds,
        queue_wait_seconds=(cfg.queue_wait_seconds if cfg and cfg.queue_wait_seconds else 6 * 3600),
        options=dict(cfg.options) if cfg else {},
    )


def make_providers(m: Manifest, names: Iterable[str], emulator: str | None) -> dict[str, Provider]:
    providers: dict[str, Provider] = {}
    for name in names:
        provider = registry.create(name, provider_settings(m, name, emulator))
        provider.check_credentials()
        providers[name] = provider
    return providers


def make_limiters(m: Manifest, names: Iterable[str]) -> dict[str, ProviderLimiter]:
    out: dict[str, ProviderLimiter] = {}
    for name in names:
        limit = m.limits.get(name)
        default = (os.cpu_count() or 2) if name == "local" else DEFAULT_HOSTED_CONCURRENCY
        out[name] = ProviderLimiter(
            name,
            concurrency=(limit.concurrency if limit and limit.concurrency else default),
            requests_per_second=limit.requests_per_second if limit else None,
        )
    return out


def check_writable(m: Manifest) -> None:
    """Refuse a run whose state store (under the outputs) cannot be written, before anything is paid for.

    One small write and delete of a probe key: a read-only bucket, a missing
    permission or a file where the output folder should be is a ``ConfigError``
    (exit 2), not one failure per item after the jobs ran.
    """
    root = inputs.state_root(m)
    probe = storage.join(root, f".write-check-{uuid.uuid4().hex[:8]}")
    try:
        storage.write_bytes_atomic(probe, b"ok", dict(m.storage_options))
        storage.delete(probe, dict(m.storage_options))
    except (VidbatchError, OSError) as exc:
        detail = str(exc).split(": ", 1)[-1] if isinstance(exc, VidbatchError) else str(exc)
        raise ConfigError(f"cannot write to the output location {root}: {detail}; "
                          "fix the output path (or state:) or its permissions") from None


def new_context(m: Manifest, items: list[Item] | None, *, emulator: str | None = None, force: bool = False,
                names: Iterable[str] | None = None) -> RunContext:
    from vidbatch.redact import install_log_redaction

    install_log_redaction()  # httpx logs request URLs (signed CDN / presigned) at INFO
    check_writable(m)
    names = sorted(set(names or []) | set(providers_used(items or [])))
    root = inputs.state_root(m)
    ctx = RunContext(
        budget=BudgetGuard(m.budget.max_usd, dict(m.budget.providers)) if m.budget else None,
        run_id=uuid.uuid4().hex[:12],
        state=StateStore(root, dict(m.storage_options)),
        providers=make_providers(m, names, emulator),
        limiters=make_limiters(m, names),
        output_options=dict(m.storage_options),
        force=force,
    )
    try:  # job times learned by earlier runs: the first jobs of this run poll economically
        ctx.seed_pace(ctx.state.read_pace())
    except Exception:  # noqa: BLE001 - a hint; an unreadable one is no reason to stop
        log.debug("reading the learned pace failed", exc_info=True)
    CONTEXTS[ctx.run_id] = ctx
    MANIFESTS[ctx.run_id] = m
    return ctx


async def start_global_limits(ctx: RunContext, m: Manifest) -> bool:
    """Against a Prefect server, back each provider's limits by global limits."""
    from vidbatch import leases

    if not leases.server_mode():
        return False
    from vidbatch import gcl

    # the local engine is bound by each machine's own CPUs: no global limit for it
    hosted = [name for name in ctx.limiters if name not in gcl.LOCAL_PROVIDERS]
    if not hosted:
        return False
    await gcl.aensure_limits(m, hosted)
    def live(key: str) -> bool:  # the item still has a remote job: its slot must stay held
        handle = ctx.state.read_handle(key)
        return bool(handle and handle.get("state") in ("submitted", "submitting"))

    orphans = await leases.reclaim_dead_holders(ctx.state.root, dict(ctx.state.storage_options), live)
    registry = leases.LeaseRegistry(ctx.state.root, dict(ctx.state.storage_options))
    ctx.lease_registry = registry
    for name in hosted:
        lim = ctx.limiters[name]
        limit = leases.limit_name(name)
        lim.global_slots = leases.GlobalSlots(limit, registry, orphans=orphans.get(limit))
        if lim.requests_per_second:
            lim.global_rate = leases.GlobalRate(leases.rate_name(name), lim.requests_per_second)
    return True


async def close_context(ctx: RunContext) -> None:
    CONTEXTS.pop(ctx.run_id, None)
    MANIFESTS.pop(ctx.run_id, None)
    if ctx.pace:
        try:
            await asyncio.to_thread(ctx.state.write_pace, ctx.pace_doc())
        except Exception:  # noqa: BLE001 - best effort, like the leases below
            log.debug("saving the learned pace failed", exc_info=True)
    for lim in ctx.limiters.values():
        try:
            await lim.close()
        except Exception:  # releasing is best effort; leases expire on their own
            log.debug("releasing %s limits failed", lim.name, exc_info=True)
    if ctx.lease_registry is not None:
        await asyncio.to_thread(ctx.lease_registry.close)
    for provider in ctx.providers.values():
        try:
            await provider.aclose()
        except Exception:  # closing must not mask the run's outcome
            log.debug("closing %s failed", provider.name, exc_info=True)


@dataclass
class BudgetGuard:
    """``budget:``: stop submitting before spent + in flight would cross a cap.

    Checked right before each submit, with no await between check and commit,
    so concurrent items cannot overshoot together. Once a cap refuses an item,
    submission stops for that scope and the rest are skipped with reason budget.
    """

    max_usd: float | None = None
    providers: Mapping[str, float] = field(default_factory=dict)
    spent: dict[str, float] = field(default_factory=dict)
    committed: dict[str, float] = field(default_factory=dict)
    stopped: set[str] = field(default_factory=set)

    @property
    def active(self) -> bool:
        return self.max_usd is not None or bool(self.providers)

    def _total(self, table: Mapping[str, float], provider: str | None = None) -> float:
        return sum(v for k, v in table.items() if provider is None or k == provider)

    def commit(self, provider: str, estimate: float | None, paid: bool) -> str | None:
        """Reserve ``estimate``; returns the refusal reason, or None when allowed."""
        if not self.active or not paid:
            return None
        scopes = [s for s in ("*", provider) if s in self.stopped]
        if scopes:
            return "budget: submission stopped earlier in this run because the budget was reached"
        if estimate is None:
            return (f"budget: {provider} has no price estimate for this item, so a budget cannot be enforced; "
                    "remove budget: or choose a provider/model with a published price")
        checks = []
        if self.max_usd is not None:
            checks.append(("*", self.max_usd, self._total(self.spent) + self._total(self.committed)))
        if provider in self.providers:
            checks.append((provider, self.providers[provider],
                           self._total(self.spent, provider) + self._total(self.committed, provider)))
        for scope, cap, used in checks:
            if used + estimate > cap + 1e-9:
                self.stopped.add(scope)
                where = "max_usd" if scope == "*" else f"providers.{provider}"
                return (f"budget: this item's estimate ${estimate:.4f} on top of ${used:.4f} spent or in flight "
                        f"would cross {where} ${cap:.2f}")
        self.committed[provider] = self.committed.get(provider, 0.0) + estimate
        return None

    def settle(self, provider: str, estimate: float | None, actual: float | None) -> None:
        if not self.active:
            return
        self.committed[provider] = self.committed.get(provider, 0.0) - (estimate or 0.0)
        self.spent[provider] = self.spent.get(provider, 0.0) + (actual if actual is not None else (estimate or 0.0))


async def cancel_in_flight(ctx: RunContext) -> None:
    """Ctrl-C / Prefect cancellation: cancel remote jobs where the provider can.

    A cancelled job's handle is dropped; where cancel is unsupported (or refused)
    the handle stays, so a rerun re-attaches instead of paying again.
    """
    for key, handle in list(ctx.in_flight.items()):
        provider = ctx.providers.get(handle.provider)
        if provider is None:
            continue
        try:
            accepted = await asyncio.wait_for(provider.cancel(handle), timeout=10)
        except (VidbatchError, asyncio.TimeoutError):
            accepted = False
        if accepted:
            ctx.state.delete_handle(key)
        log.warning("%s job %s: %s", provider.name, handle.request_id,
                    "cancelled" if accepted else "cannot be cancelled; handle kept for re-attach")


@dataclass(frozen=True)
class Stages:
    """The five stage callables (Prefect tasks in the flow, plain functions in tests)."""

    stage: Callable[..., Awaitable[Any]]
    submit: Callable[..., Awaitable[Any]]
    poll: Callable[..., Awaitable[Any]]
    download: Callable[..., Awaitable[Any]]
    verify: Callable[..., Awaitable[Any]]


def _row(ctx: RunContext, m: Manifest, item: Item, **kw: Any) -> ReportRow:
    spec = item.spec
    params: dict[str, Any] = {"format": spec.format, **dict(spec.params)}
    if spec.operation == "remove-background":
        params.update(background=spec.background, mask=spec.mask)
    else:
        params.update(factor=spec.factor, target=spec.target)
    return ReportRow(
        run_id=ctx.run_id, manifest=m.name, input=item.url, key=item.key, provider=spec.provider,
        operation=spec.operation, model=spec.model, params=params, **kw,
    )


def cached_row(ctx: RunContext, m: Manifest, item: Item) -> ReportRow | None:
    """A verified record from an earlier run whose outputs still exist, else None."""
    if ctx.force:
        return None
    try:
        rec = ctx.state.read_record(item.key)
    except VidbatchError:
        return None  # unreadable state is no cache hit; the item's own run reports the error
    if not rec or rec.get("status") != "verified":
        return None
    recorded = list(rec.get("outputs") or [])
    if not recorded or not all(storage.exists(o, ctx.output_options) for o in recorded):
        return None
    outputs = recorded
    if recorded != item.outputs and len(recorded) == len(item.outputs):
        # same content asked at a new path (e.g. a new {date}): copy, don't reprocess
        for src, dst in zip(recorded, item.outputs):
            if not storage.exists(dst, ctx.output_options):
                storage.copy_atomic(src, dst, ctx.output_options)
        outputs = item.outputs
    return _row(
        ctx, m, item, status="verified", cached=True, outputs=outputs, request_id=rec.get("request_id"),
        cost_usd=0.0, verify=rec.get("verify") or {}, metrics=rec.get("metrics") or {},
        warnings=list(rec.get("warnings") or []), timings={"total": 0.0},
    )


def _reason(exc: BaseException) -> str:
    if isinstance(exc, AuthError):
        return "auth"
    if isinstance(exc, QuotaError):
        return "quota"
    if isinstance(exc, UnknownSubmitError):
        return "unknown-submit"
    if isinstance(exc, InputError):
        return "input"
    from vidbatch.errors import VerifyError

    if isinstance(exc, VerifyError):
        return "verify"
    return type(exc).__name__.removesuffix("Error").lower() or "error"


async def process_item(ctx: RunContext, m: Manifest, item: Item, stages: Stages,
                       *, check_cache: bool = True) -> ReportRow:
    """Run one item through the stages; every outcome becomes a report row.

    ``check_cache=False``: the caller already looked (the flow does, so a cached
    item never costs a task run).
    """
    if check_cache:
        hit = await asyncio.to_thread(cached_row, ctx, m, item)
        if hit is not None:
            return hit
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    provider = ctx.provider(item.spec.provider)
    request_id: str | None = None
    cost: float | None = None
    warnings: list[str] = []
    estimate: float | None = None
    budget: BudgetGuard = ctx.budget or BudgetGuard()
    committed = False  # a budget reservation to settle

    def lap(name: str, t0: float) -> None:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 4)

    try:
        prior = await _state_io(ctx, ctx.state.read_handle, item.key)
        reattach = bool(prior and prior.get("state") == "submitted" and not ctx.force)
        t0 = time.perf_counter()
        staged, media = await stages.stage(ctx.run_id, item, upload=not reattach)
        lap("stage", t0)
        estimate = cost = provider.estimate(item.spec, media).usd
        uploaded = not reattach
        async with ctx.limiters[provider.name].slot(item.key):
            refusal = None if reattach else budget.commit(provider.name, estimate, provider.paid)
            if refusal:
                return _row(ctx, m, item, status="skipped", error=refusal, reason="budget", cost_usd=0.0,
                            timings=timings)
            committed = not reattach
            for attempt in (1, 2):
                t0 = time.perf_counter()
                if attempt == 2 and (not uploaded or (staged is not None and staged.expires_at)):
                    # a resubmit needs a readable input: re-stage (re-signing a URL is free)
                    staged, media = await stages.stage(ctx.run_id, item, upload=True)
                    uploaded = True
                handle = await stages.submit(ctx.run_id, item, staged, attempt=attempt,
                                             note=warnings[-1] if warnings else "")
                lap("submit", t0)
                request_id = handle.request_id
                ctx.in_flight[item.key] = handle
                t0 = time.perf_counter()
                try:
                    status = await stages.poll(ctx.run_id, item, handle, media)
                except JobGoneError as exc:
                    if attempt == 2:
                        raise
                    ctx.state.delete_handle(item.key)
                    warnings.append(f"remote job {handle.request_id} was gone ({exc}); resubmitted once")
                    continue
                finally:
                    lap("poll", t0)
                if status.state == JobState.CANCELED and attempt == 1 and reattach:
                    ctx.state.delete_handle(item.key)
                    warnings.append(f"remote job {handle.request_id} had been canceled; resubmitted once")
                    continue
                break
            if status.cost_usd is not None:
                cost = status.cost_usd
            if committed:
                budget.settle(provider.name, estimate, cost if status.state == JobState.SUCCEEDED else 0.0)
                committed = False
            if status.state != JobState.SUCCEEDED:
                ctx.state.delete_handle(item.key)  # terminal: a rerun may try again
                reason = status.message or status.state.value
                return _row(ctx, m, item, status="failed", error=f"{provider.name} job failed: {reason}",
                            reason="job-failed", request_id=request_id, cost_usd=0.0 if not provider.paid else cost,
                            timings=timings, warnings=warnings)
        # the slot is the provider's concurrency (jobs queued or running there): the job is
        # done, so the next item may submit while this one downloads from the CDN (issue 8:
        # a download inside the slot idled it for every download's duration)
        t0 = time.perf_counter()
        outputs = await stages.download(ctx.run_id, item, handle)
        lap("download", t0)
        ctx.in_flight.pop(item.key, None)
        t0 = time.perf_counter()
        try:
            facts = await stages.verify(ctx.run_id, item, media, outputs, pipeline.input_local_path(item, staged))
        except VerifyError:
            # a result that failed verification is not left at the final key for readers to take;
            # the handle stays, so a rerun re-fetches it without paying again
            await asyncio.to_thread(_discard, outputs, ctx.output_options)
            raise
        lap("verify", t0)
        metrics = facts.pop("metrics", {}) if isinstance(facts, dict) else {}
        warnings.extend(facts.pop("warnings", []) if isinstance(facts, dict) else [])
        timings["total"] = round(time.perf_counter() - t_all, 4)
        row = _row(ctx, m, item, status="verified", outputs=outputs, request_id=request_id, cost_usd=cost,
                   timings=timings, verify=facts, metrics=metrics, warnings=warnings)
        record = {**row.safe(), "outputs": outputs}
        await _state_io(ctx, ctx.state.write_record, item.key, record)  # last: its presence means done
        await _state_io(ctx, ctx.state.delete_handle, item.key)
        if hasattr(provider, "forget"):
            provider.forget(handle)  # type: ignore[attr-defined]
        return row
    except VidbatchError as exc:
        if committed:
            budget.settle(provider.name, estimate, None)
        ctx.in_flight.pop(item.key, None)
        timings["total"] = round(time.perf_counter() - t_all, 4)
        return _row(ctx, m, item, status="failed", error=str(exc), reason=_reason(exc), request_id=request_id,
                    cost_usd=cost if request_id and provider.paid else 0.0, timings=timings, warnings=warnings)
    except Exception as exc:  # noqa: BLE001 - a defect or a library error: this item fails, the batch goes on
        if committed:
            budget.settle(provider.name, estimate, None)
        ctx.in_flight.pop(item.key, None)
        timings["total"] = round(time.perf_counter() - t_all, 4)
        log.debug("internal error on %s", item.rel or item.key[:12], exc_info=True)
        error = redact(" ".join(f"internal error: {type(exc).__name__}: {exc}".split()))
        return _row(ctx, m, item, status="failed", error=error, reason="internal", request_id=request_id,
                    cost_usd=cost if request_id and provider.paid else 0.0, timings=timings, warnings=warnings)


def _discard(outputs: Iterable[str], options: Mapping[str, Any]) -> None:
    for url in outputs:
        try:
            storage.delete(url, options)
        except OSError:
            log.warning("could not remove %s after it failed verification", url)


async def _state_io(ctx: RunContext, fn: Callable[..., Any], *args: Any) -> Any:
    """A state-store call: inline on a local root (~20-150 us; a thread hop costs more),
    in a thread on a remote one (an S3 round trip must not stall the event loop)."""
    if storage.is_local(ctx.state.root):
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


#: items planned per thread hop: the planner stays lazy, without a hop (and a lock
#: round) per item
PULL = 8


def _pull(items: Iterator[Item], n: int) -> tuple[list[Item], bool, BaseException | None]:
    got: list[Item] = []
    try:
        for _ in range(n):
            got.append(next(items))
    except StopIteration:
        return got, True, None
    except Exception as exc:  # noqa: BLE001 - raised to a worker once the items before it are served
        return got, True, exc
    return got, False, None


async def drive(items: Iterator[Item], workers: int, fn: Callable[[Item], Awaitable[ReportRow]],
                on_row: Callable[[Item, ReportRow], None] | None = None) -> list[ReportRow]:
    """Run ``fn`` over a (lazy) item iterator with ``workers`` concurrent workers."""
    rows: list[tuple[int, ReportRow]] = []
    lock = asyncio.Lock()
    buffer: collections.deque[Item] = collections.deque()
    exhausted = False
    error: BaseException | None = None

    async def next_item() -> Item | None:
        nonlocal exhausted, error
        async with lock:
            if not buffer and not exhausted:
                got, exhausted, error = await asyncio.to_thread(_pull, items, PULL)
                buffer.extend(got)
            if buffer:
                return buffer.popleft()
            if error is not None:
                exc, error = error, None
                raise exc
            return None

    async def worker() -> None:
        while (item := await next_item()) is not None:
            row = await fn(item)
            rows.append((item.index, row))
            if on_row:
                on_row(item, row)

    await asyncio.gather(*(worker() for _ in range(max(1, workers))))
    return [r for _, r in sorted(rows, key=lambda p: p[0])]


def worker_count(ctx: RunContext) -> int:
    """Enough workers to keep every provider's slots busy while others stage/verify."""
    return sum(lim.concurrency for lim in ctx.limiters.values()) * 2 + 2
