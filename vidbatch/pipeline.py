"""The five stages of one item, as plain async functions (no Prefect here).

``tasks/`` wraps each stage in a Prefect task; this module holds the logic:

    stage     probe the input, then make it readable by the provider
    submit    write-ahead intent -> POST -> persist the handle (never pay twice)
    poll      adaptive waits until terminal; transient poll errors are absorbed
    download  stream every artifact to a temp key, promote atomically
    verify    decode and check the outputs, measure, then write the record (last)
"""

from __future__ import annotations

import asyncio
import logging
import os
import posixpath
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from vidbatch import storage
from vidbatch.errors import (
    InputError,
    JobGoneError,
    PermanentError,
    ProviderError,
    RateLimitedError,
    ResultError,
    StorageError,
    SubmitUncertainError,
    TransientError,
    VerifyError,
)
from vidbatch.limits import ProviderLimiter
from vidbatch.polling import Pace, PollSchedule
from vidbatch.providers.base import Provider
from vidbatch.providers.http import retry_delay, with_retries
from vidbatch.spec import Artifact, Item, JobHandle, JobState, JobStatus, MediaInfo, StagedInput
from vidbatch.state import StateStore

log = logging.getLogger("vidbatch")


class UnknownSubmitError(PermanentError):
    """A submit may have reached the provider and cannot be checked: not resubmitted."""


@dataclass
class RunContext:
    """Everything the stages share during one run (one per process)."""

    run_id: str
    state: StateStore
    providers: Mapping[str, Provider]
    limiters: Mapping[str, ProviderLimiter]
    output_options: Mapping[str, Any] = field(default_factory=dict)
    force: bool = False
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="vidbatch-"))
    #: observed job seconds per second of video, per (provider, operation): poll economy
    pace: dict[tuple[str, str], float] = field(default_factory=dict)
    #: mean relative deviation of those observations, and how many there were
    pace_spread: dict[tuple[str, str], float] = field(default_factory=dict)
    pace_count: dict[tuple[str, str], int] = field(default_factory=dict)
    poll_deadline_factor: float = 120.0
    poll_deadline_min: float = 1800.0
    in_flight: dict[str, JobHandle] = field(default_factory=dict)
    #: items whose job an earlier run submitted (it may have left temp keys behind)
    reattached: set[str] = field(default_factory=set)
    lease_registry: Any = None
    budget: Any = None

    def provider(self, name: str) -> Provider:
        return self.providers[name]

    def expected_seconds(self, item: Item, media: MediaInfo | None) -> float:
        duration = media.duration if media else 10.0
        per = self.pace.get((item.spec.provider, item.spec.operation))
        return max(1.0, (per if per is not None else 2.0) * max(duration, 0.1))

    def pace_estimate(self, item: Item, media: MediaInfo | None) -> Pace | None:
        """The learned job time of this item (None before the first job of its kind finished).

        The margin widens with the observed spread (3x the mean relative deviation,
        or of the samples' own uncertainty; at least 5 %, 25 % after one observation).
        """
        key = (item.spec.provider, item.spec.operation)
        per = self.pace.get(key)
        if per is None:
            return None
        duration = media.duration if media and media.duration > 0 else 10.0
        n = self.pace_count.get(key, 1)
        margin = min(0.5, max(0.25 if n < 2 else 0.05, 3.0 * self.pace_spread.get(key, 0.0)))
        return Pace(per * max(duration, 0.1), margin)

    def seed_pace(self, doc: Mapping[str, Any]) -> None:
        """Paces an earlier run learned (``StateStore.read_pace``): one observation each
        (25 % margin) until this run learns its own."""
        for name, value in doc.items():
            provider, _, operation = str(name).partition("/")
            try:
                per, spread = float(value["pace"]), float(value.get("spread", 0.0))
            except (KeyError, TypeError, ValueError):
                continue
            if per > 0 and (provider, operation) not in self.pace:
                key = (provider, operation)
                self.pace[key], self.pace_spread[key], self.pace_count[key] = per, spread, 1

    def pace_doc(self) -> dict[str, Any]:
        return {f"{p}/{o}": {"pace": round(v, 6), "spread": round(self.pace_spread.get((p, o), 0.0), 4),
                             "n": self.pace_count.get((p, o), 1), "at": round(time.time())}
                for (p, o), v in self.pace.items()}

    def learn(self, item: Item, media: MediaInfo | None, seconds: float, uncertainty: float = 0.0) -> None:
        """One finished job's run time; ``uncertainty``: relative half-width of the poll
        bracket it was seen in (a job seen late by a sparse schedule is a loose sample)."""
        if not media or media.duration <= 0:
            return
        key = (item.spec.provider, item.spec.operation)
        sample = seconds / media.duration
        old = self.pace.get(key)
        if old is None:
            self.pace[key], self.pace_spread[key] = sample, uncertainty
        else:
            dev = max(abs(sample - old) / old if old > 0 else 0.0, uncertainty)
            self.pace_spread[key] = 0.7 * self.pace_spread.get(key, 0.0) + 0.3 * dev
            self.pace[key] = 0.7 * old + 0.3 * sample
        self.pace_count[key] = self.pace_count.get(key, 0) + 1


# -- stage ---------------------------------------------------------------------
def probe_input(item: Item) -> MediaInfo:
    """Probe an input where it lives (local path, or a streamed remote file)."""
    from vidbatch import media

    if storage.is_local(item.url):
        path = storage.local_path(item.url)
        if not os.path.exists(path):
            raise InputError(f"input not found: {item.url}")
        return media.probe(path)
    fs, path = storage.fs_for(item.url, item.storage_options)
    try:
        with fs.open(path, "rb", block_size=2 * 1024 * 1024) as fh:
            return probe_stream(fh, item.url, int(item.size) if item.size else -1)
    except FileNotFoundError:
        raise InputError(f"input not found: {item.url}") from None


def probe_stream(fh: Any, url: str, size: int = 0) -> MediaInfo:
    """Probe a remote input through a file object, reading the header only.

    Remote inputs are not copied just to be probed (a hosted provider reads
    them itself). Frames are counted by demuxing (no decoding) only when the
    container's header has no frame count.
    """
    import av

    from vidbatch.redact import redact_url

    name = redact_url(url)
    if size == 0:  # -1: unknown (an http input without a size)
        raise InputError(f"input is empty (0 bytes): {name}")
    try:
        with av.open(fh, "r") as container:
            if not container.streams.video:
                raise InputError(f"no video stream in {name} (audio-only or not a video)")
            vs = container.streams.video[0]
            fps = float(vs.average_rate or vs.guessed_rate or 0)
            nominal = float(vs.guessed_rate or vs.base_rate or 0)
            if vs.duration and vs.time_base:
                duration = float(vs.duration * vs.time_base)
            else:
                duration = float(container.duration or 0) / 1e6
            frames = int(vs.frames or 0)
            if not frames:
                frames = sum(1 for pkt in container.demux(vs) if pkt.size)
            if not duration and fps:
                duration = frames / fps
            pix = vs.codec_context.pix_fmt or ""
            return MediaInfo(
                width=vs.codec_context.width, height=vs.codec_context.height, fps=fps, frames=frames,
                duration=round(duration, 6), codec=vs.codec_context.name, pix_fmt=pix,
                container=container.format.name, has_alpha="a" in pix.replace("gray", ""),
                has_audio=bool(container.streams.audio), size=size,
                nominal_fps=round(nominal, 6) if 0 < nominal < 1000 else 0.0,
            )
    except av.FFmpegError as exc:
        raise InputError(f"{name} is not a readable video ({type(exc).__name__})") from None


async def stage(ctx: RunContext, item: Item) -> tuple[StagedInput, MediaInfo]:
    info = await asyncio.to_thread(probe_input, item)
    provider = ctx.provider(item.spec.provider)
    provider.check_input(item.spec, info)
    # staging is an upload or a presign: no job, nothing billed, so a transient
    # failure (a 429 on the upload) is retried right here rather than failing the stage
    staged = await _api_call(ctx, provider, lambda: provider.stage(item), attempts=3)
    return staged, info


# -- submit --------------------------------------------------------------------
async def submit(ctx: RunContext, item: Item, staged: StagedInput, *, attempt: int = 1, note: str = "") -> JobHandle:
    provider = ctx.provider(item.spec.provider)
    prior = ctx.state.read_handle(item.key)
    if prior and not ctx.force:
        if prior.get("state") == "submitted":
            ctx.reattached.add(item.key)
            return JobHandle.from_json(prior["handle"])
        if prior.get("state") == "submitting" and provider.paid:
            if not provider.can_recheck_submit:
                raise UnknownSubmitError(
                    f"unknown - not resubmitted: an earlier submit of this item to {provider.name} may have "
                    "reached the provider and cannot be checked; rerun with --force to submit it again",
                    provider=provider.name,
                )
            found = await _recheck(ctx, provider, item, staged, since=float(prior.get("at", 0)) - 120,
                                   hint=prior.get("hint"))
            if found is not None:
                ctx.state.write_handle(item.key, found.to_json(), attempt, "re-found after an interrupted submit")
                ctx.reattached.add(item.key)
                return found
            # the provider lists no job from that submit: it never created one, submitting is safe
            log.info("%s: the interrupted submit of %s created no job; submitting", provider.name, item.rel or item.key[:12])
    hint = provider.submit_hint(item.spec, staged) if provider.can_recheck_submit else {}
    ctx.state.write_intent(item.key, provider.name, attempt, note, hint=hint)
    try:
        # a 429 is the provider refusing the request: no job exists, so it is re-sent
        # right here (at a 10 % rate-limit rate it would spend the stage's retries)
        handle = await _api_call(ctx, provider, lambda: provider.submit(item.spec, staged), attempts=4,
                                 retry_on=RateLimitedError)
    except SubmitUncertainError as exc:
        if not provider.paid:
            ctx.state.delete_handle(item.key)
            raise
        if not provider.can_recheck_submit:
            raise UnknownSubmitError(
                f"unknown - not resubmitted: the submit to {provider.name} timed out after it was sent, so the "
                "job may exist and be billed; check the provider's dashboard, then rerun with --force to submit again",
                provider=provider.name,
            ) from None
        found = await _recheck(ctx, provider, item, staged, since=time.time() - 120, hint=hint)
        if found is None:
            # not listed: keep the intent, so the retry re-checks once more before it submits again
            raise TransientError(f"{exc}; the provider lists no such job, re-checking before a resubmit",
                                 provider=provider.name) from None
        handle = found
    except (asyncio.CancelledError, KeyboardInterrupt):
        # interrupted while the request may be on the wire: keep the intent, a rerun re-checks
        raise
    except BaseException:
        # the request was refused before a job existed (or never sent): safe to retry
        ctx.state.delete_handle(item.key)
        raise
    ctx.state.write_handle(item.key, handle.to_json(), attempt, note)
    return handle


async def _recheck(ctx: RunContext, provider: Provider, item: Item, staged: StagedInput, since: float,
                   hint: Mapping[str, Any] | None) -> JobHandle | None:
    """The job an uncertain submit created, or None when the provider lists none.

    A listing that keeps failing raises ``TransientError`` (the intent stays; a
    retry or a rerun checks again): "could not check" is never "not found".
    """
    found: JobHandle | None = await _api_call(
        ctx, provider, lambda: provider.recheck_submit(item.spec, staged, since, hint=hint), attempts=3)
    return found


# -- poll ----------------------------------------------------------------------
async def poll(ctx: RunContext, item: Item, handle: JobHandle, media: MediaInfo | None) -> JobStatus:
    """Wait until the job is terminal. Transient poll errors are retried here."""
    provider = ctx.provider(item.spec.provider)
    # poll economy (vidbatch.polling): progress > learned pace (read live) > the duration prior
    schedule = PollSchedule(prior=ctx.expected_seconds(item, media), learned=lambda: ctx.pace_estimate(item, media))
    deadline_s = max(ctx.poll_deadline_min, ctx.poll_deadline_factor * (media.duration if media else 60))
    start = handle.submitted_at or time.time()
    errors = 0
    # a provider that pushes statuses is followed instead of polled, until its stream fails
    watching = provider.pushes_status
    watched_at: float | None = None

    def observe(status: JobStatus) -> None:
        schedule.observe(time.time() - start, status)

    async def pause(elapsed: float) -> None:
        nonlocal watching, watched_at
        if watching:
            async with ctx.limiters[provider.name].request():
                watching = await provider.watch(handle, max(1.0, deadline_s - elapsed), on_status=observe)
            if watching:
                watched_at = time.time() - start
                return
        await provider.wait(handle, schedule.next_wait(elapsed))

    if item.key not in ctx.reattached:
        # a job just submitted is not done yet: the first status request waits for the schedule
        await pause(time.time() - start)
    while True:
        elapsed = time.time() - start
        if elapsed > deadline_s:
            raise PermanentError(
                f"job {handle.request_id} still not finished after {int(elapsed)} s (deadline {int(deadline_s)} s); "
                "the handle is kept, rerun to re-attach",
                provider=provider.name,
            )
        try:
            async with ctx.limiters[provider.name].request():
                status = await provider.poll(handle)
            errors = 0
        except TransientError as exc:
            errors += 1
            if errors > 12:
                raise
            await asyncio.sleep(retry_delay(exc, errors))
            continue
        now = time.time() - start
        if status.state.terminal:
            if watched_at is not None:
                schedule.pushed_end(watched_at)
            if status.state == JobState.SUCCEEDED and item.key not in ctx.reattached:
                run_s = schedule.run_seconds(now)
                ctx.learn(item, media, run_s, (now - schedule.last_pending) / 2 / run_s if run_s > 0 else 0.0)
            return status
        schedule.observe(now, status)
        await pause(now)


# -- download ------------------------------------------------------------------
async def _stream_to(provider: Provider, art: Artifact, url: str, options: Mapping[str, Any], key: str) -> int:
    """Stream one artifact into ``url`` atomically, in bounded memory.

    On S3 the final key is one multipart upload completed after the last byte
    (aborted on error), so the bytes go up once and nothing partial is visible;
    elsewhere a temp sibling is renamed into place (``storage.astream_into``).
    """
    try:
        return await storage.astream_into(provider.open_artifact(art), url, options, key)
    except storage.EmptySourceError:
        raise ResultError(f"{provider.name} returned an empty {art.kind} file", provider=provider.name) from None


async def _api_call(ctx: RunContext, provider: Provider, call: Callable[[], Awaitable[Any]], attempts: int = 8,
                    retry_on: type[TransientError] = TransientError) -> Any:
    """One provider request that is safe to repeat, paced by ``requests_per_second``
    and retried where it fails (``providers.http.with_retries``).

    That is every GET, the stage's upload (it creates no job) and a submit the
    provider refused (``retry_on=RateLimitedError``). A download is several
    requests (result, file, refresh); retrying each one where it fails keeps a
    10 % rate-limit rate from failing whole stages.
    """
    async def paced() -> Any:
        async with ctx.limiters[provider.name].request():
            return await call()

    return await with_retries(paced, attempts=attempts, cap=30.0, retry_on=retry_on)


async def download(ctx: RunContext, item: Item, handle: JobHandle) -> list[str]:
    provider = ctx.provider(item.spec.provider)
    arts = await _api_call(ctx, provider, lambda: provider.results(handle))
    videos = [a for a in arts if a.kind == "video"]
    masks = [a for a in arts if a.kind == "mask"]
    if not videos:
        raise ResultError(f"{provider.name} job {handle.request_id} returned no video", provider=provider.name)
    plan: list[tuple[Artifact, str]] = [(videos[0], item.output)]
    if item.mask_output:
        if not masks:
            raise ResultError(f"{provider.name} returned no mask video although mask: true", provider=provider.name)
        plan.append((masks[0], item.mask_output))
    outputs: list[str] = []
    started = time.time()
    for art, target in plan:
        for attempt in range(4):
            try:
                await _stream_to(provider, art, target, ctx.output_options, item.key)
                break
            except (ResultError, PermanentError, TransientError) as exc:
                if isinstance(exc, (JobGoneError,)) or attempt == 3:
                    raise
                if isinstance(exc, TransientError):
                    await asyncio.sleep(retry_delay(exc, attempt))
                # an expired or broken URL: ask the provider for a fresh one
                stale = art
                art = await _api_call(ctx, provider, lambda: provider.refresh_artifact(handle, stale))
        if item.key in ctx.reattached:
            # a run killed mid-download left its temp key; this item's output is promoted now
            await asyncio.to_thread(_sweep_stale_temps, target, item.key, ctx.output_options, started)
        outputs.append(target)
    return outputs


def _sweep_stale_temps(url: str, key: str, options: Mapping[str, Any], before: float) -> int:
    """Delete temp siblings of ``url`` that an earlier run of this item left behind.

    Only keys of this item and this output (``tmp_url_for`` names) that were last
    written before this download began; only called for re-attached items (whose
    earlier run died), so a plain run never lists the output folder.
    """
    head, tail = posixpath.split(url)
    prefix = f"{storage.TEMP_PREFIX}{key[:12]}-"
    removed = 0
    try:
        fs, folder = storage.fs_for(head, options)
        entries = fs.ls(folder, detail=True)
    except (OSError, ValueError, StorageError):
        return 0
    for entry in entries:
        name = posixpath.basename(str(entry.get("name", "")).rstrip("/"))
        if not (name.startswith(prefix) and name.endswith(f"-{tail}")):
            continue
        stamp = entry.get("mtime") or entry.get("LastModified") or entry.get("last_modified")
        when = stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp or 0)
        if when >= before:
            continue  # written since this download began: not a leftover
        try:
            fs.rm(entry["name"])
            removed += 1
        except OSError:
            pass
    if removed:
        log.info("removed %d temp key(s) a killed run left for %s", removed, tail)
    return removed


# -- verify --------------------------------------------------------------------
def _local_copy(url: str, options: Mapping[str, Any], workdir: str) -> tuple[str, bool]:
    if storage.is_local(url):
        return storage.local_path(url), False
    fd, path = tempfile.mkstemp(dir=workdir, suffix=posixpath.splitext(url)[1])
    with os.fdopen(fd, "wb") as out:
        for chunk in storage.iter_read(url, options):
            out.write(chunk)
    return path, True


def verify_item(ctx: RunContext, item: Item, media_in: MediaInfo, outputs: list[str], input_local: str | None) -> dict[str, Any]:
    """Decode and check the outputs; compute quality metrics. Raises VerifyError."""
    from vidbatch import verify as verify_mod

    made: list[str] = []
    try:
        paths = []
        for url in outputs:
            p, tmp = _local_copy(url, ctx.output_options, ctx.workdir)
            paths.append(p)
            if tmp:
                made.append(p)
        mask_path = paths[1] if len(paths) > 1 else None
        facts = verify_mod.verify_outputs(item, media_in, paths[0], mask_path=mask_path, input_path=input_local)
        facts["warnings"] += verify_mod.apply_thresholds(item, facts.get("metrics") or {}, facts)
        return facts
    except (OSError, StorageError) as exc:
        raise VerifyError(f"cannot read output for verification: {exc}") from exc
    except InputError as exc:
        # the provider's output does not decode: a bad result, not a bad input
        raise VerifyError(f"output failed verification: {exc}") from None
    finally:
        for p in made:
            try:
                os.remove(p)
            except OSError:
                pass


def input_local_path(item: Item, staged: StagedInput | None) -> str | None:
    if staged and staged.local_path:
        return staged.local_path
    if storage.is_local(item.url):
        return storage.local_path(item.url)
    return None
