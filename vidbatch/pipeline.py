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
from typing import Any, Mapping

from vidbatch import storage
from vidbatch.errors import (
    InputError,
    JobGoneError,
    PermanentError,
    ProviderError,
    ResultError,
    StorageError,
    SubmitUncertainError,
    TransientError,
    VerifyError,
)
from vidbatch.limits import ProviderLimiter
from vidbatch.providers.base import Provider
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
    poll_deadline_factor: float = 120.0
    poll_deadline_min: float = 1800.0
    in_flight: dict[str, JobHandle] = field(default_factory=dict)
    lease_registry: Any = None
    budget: Any = None

    def provider(self, name: str) -> Provider:
        return self.providers[name]

    def expected_seconds(self, item: Item, media: MediaInfo | None) -> float:
        duration = media.duration if media else 10.0
        per = self.pace.get((item.spec.provider, item.spec.operation))
        return max(1.0, (per if per is not None else 2.0) * max(duration, 0.1))

    def learn(self, item: Item, media: MediaInfo | None, seconds: float) -> None:
        if not media or media.duration <= 0:
            return
        key = (item.spec.provider, item.spec.operation)
        sample = seconds / media.duration
        old = self.pace.get(key)
        self.pace[key] = sample if old is None else 0.7 * old + 0.3 * sample


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
            )
    except av.FFmpegError as exc:
        raise InputError(f"{name} is not a readable video ({type(exc).__name__})") from None


async def stage(ctx: RunContext, item: Item) -> tuple[StagedInput, MediaInfo]:
    info = await asyncio.to_thread(probe_input, item)
    provider = ctx.provider(item.spec.provider)
    provider.check_input(item.spec, info)
    staged = await provider.stage(item)
    return staged, info


# -- submit --------------------------------------------------------------------
async def submit(ctx: RunContext, item: Item, staged: StagedInput, *, attempt: int = 1, note: str = "") -> JobHandle:
    provider = ctx.provider(item.spec.provider)
    prior = ctx.state.read_handle(item.key)
    if prior and not ctx.force:
        if prior.get("state") == "submitted":
            return JobHandle.from_json(prior["handle"])
        if prior.get("state") == "submitting" and provider.paid:
            found = await _recheck(provider, item, staged, since=float(prior.get("at", 0)) - 120)
            if found is not None:
                ctx.state.write_handle(item.key, found.to_json(), attempt, "re-found after an interrupted submit")
                return found
            raise UnknownSubmitError(
                f"unknown - not resubmitted: an earlier submit of this item to {provider.name} may have "
                "reached the provider and cannot be checked; rerun with --force to submit it again",
                provider=provider.name,
            )
    async with ctx.limiters[provider.name].request():
        ctx.state.write_intent(item.key, provider.name, attempt, note)
        try:
            handle = await provider.submit(item.spec, staged)
        except SubmitUncertainError:
            found = await _recheck(provider, item, staged, since=time.time() - 120)
            if found is None:
                if not provider.paid:
                    ctx.state.delete_handle(item.key)
                    raise
                raise UnknownSubmitError(
                    f"unknown - not resubmitted: the submit to {provider.name} timed out after it was sent, so the "
                    "job may exist and be billed; check the provider's dashboard, then rerun with --force to submit again",
                    provider=provider.name,
                ) from None
            handle = found
        except BaseException:
            # the request was refused before a job existed (or never sent): safe to retry
            ctx.state.delete_handle(item.key)
            raise
    ctx.state.write_handle(item.key, handle.to_json(), attempt, note)
    return handle


async def _recheck(provider: Provider, item: Item, staged: StagedInput, since: float) -> JobHandle | None:
    if not provider.can_recheck_submit:
        return None
    try:
        return await provider.recheck_submit(item.spec, staged, since)
    except ProviderError:
        return None


# -- poll ----------------------------------------------------------------------
async def poll(ctx: RunContext, item: Item, handle: JobHandle, media: MediaInfo | None) -> JobStatus:
    """Wait until the job is terminal. Transient poll errors are retried here."""
    provider = ctx.provider(item.spec.provider)
    expected = ctx.expected_seconds(item, media)
    deadline_s = max(ctx.poll_deadline_min, ctx.poll_deadline_factor * (media.duration if media else 60))
    start = handle.submitted_at or time.time()
    errors = 0
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
            await asyncio.sleep(exc.retry_after or min(30.0, 0.5 * 2**errors))
            continue
        if status.state.terminal:
            if status.state == JobState.SUCCEEDED:
                ctx.learn(item, media, time.time() - start)
            return status
        interval = provider.poll_interval(time.time() - start, expected)
        await provider.wait(handle, interval)


# -- download ------------------------------------------------------------------
async def _stream_to(provider: Provider, art: Artifact, url: str, options: Mapping[str, Any], key: str) -> int:
    tmp = storage.tmp_url_for(url, key)
    fs, tmp_path = storage.fs_for(tmp, options)
    parent = posixpath.dirname(tmp_path)
    written = 0
    try:
        if parent:
            await asyncio.to_thread(fs.makedirs, parent, exist_ok=True)
        fh = await asyncio.to_thread(fs.open, tmp_path, "wb")
        try:
            async for chunk in provider.open_artifact(art):
                await asyncio.to_thread(fh.write, chunk)
                written += len(chunk)
        finally:
            await asyncio.to_thread(fh.close)
    except BaseException:
        await asyncio.to_thread(storage.delete, tmp, options)
        raise
    if written == 0:
        await asyncio.to_thread(storage.delete, tmp, options)
        raise ResultError(f"{provider.name} returned an empty {art.kind} file", provider=provider.name)
    await asyncio.to_thread(storage.promote, tmp, url, options)
    return written


async def download(ctx: RunContext, item: Item, handle: JobHandle) -> list[str]:
    provider = ctx.provider(item.spec.provider)
    async with ctx.limiters[provider.name].request():
        arts = await provider.results(handle)
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
    for art, target in plan:
        for attempt in range(4):
            try:
                await _stream_to(provider, art, target, ctx.output_options, item.key)
                break
            except (ResultError, PermanentError, TransientError) as exc:
                if isinstance(exc, (JobGoneError,)) or attempt == 3:
                    raise
                if isinstance(exc, TransientError):
                    await asyncio.sleep(exc.retry_after or 0.5 * 2**attempt)
                # an expired or broken URL: ask the provider for a fresh one
                async with ctx.limiters[provider.name].request():
                    art = await provider.refresh_artifact(handle, art)
        outputs.append(target)
    return outputs


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
        facts["warnings"] = verify_mod.apply_thresholds(item, facts.get("metrics") or {})
        return facts
    except (OSError, StorageError) as exc:
        raise VerifyError(f"cannot read output for verification: {exc}") from exc
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
