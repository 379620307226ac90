"""Job execution: queue delay, account admission, input fetch, engine, timing.

One asyncio task per job walks it through its life::

    queued --(queue_seconds, then a free account slot: FIFO)--> running
    running: fetch input (phase "fetching") -> engine in a worker thread
             ("processing") -> wait until job_seconds have passed since the
             start ("finalizing" once the engine is done) -> succeeded
    any step may end in failed (input unreadable, engine error, injected
    fault) or canceled (fal cancel)

A job counts as "in flight" from submit (removebgvideo drafts: from start)
until it is terminal, and as "running" while it holds an account slot.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import hashlib
import logging
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import anyio
import httpx

from vidbatch.emulator import media
from vidbatch.emulator.state import EmulatorState, Job, Output, StoredFile

log = logging.getLogger("vidbatch.emulator")


class JobError(Exception):
    """A job failure with the fal error type and result status it maps to."""

    def __init__(self, message: str, error_type: str, status: int) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status = status


def input_error(message: str) -> JobError:
    return JobError(message, "file_download_error", 422)


class Runner:
    def __init__(self, state: EmulatorState) -> None:
        self.state = state
        self.pool = ThreadPoolExecutor(max_workers=state.config.workers, thread_name_prefix="emulator-engine")
        self.client: httpx.AsyncClient | None = None
        self._engine: Any = None

    # -- plumbing --------------------------------------------------------
    @property
    def engine(self) -> Any:
        if self._engine is None:
            self._engine = media.load_engine(self.state.config.engine)
        return self._engine

    def http(self) -> httpx.AsyncClient:
        if self.client is None:
            timeout = httpx.Timeout(self.state.config.fetch_timeout, connect=30.0)
            self.client = httpx.AsyncClient(timeout=timeout, follow_redirects=True)
        return self.client

    async def in_thread(self, fn: Any, *args: Any) -> Any:
        """Engine work: the bounded ``workers`` pool."""
        return await asyncio.wrap_future(self.pool.submit(fn, *args))

    @staticmethod
    async def io(fn: Any, *args: Any) -> Any:
        """File I/O and probes: anyio's thread pool, so they never wait behind the engine."""
        return await anyio.to_thread.run_sync(functools.partial(fn, *args))

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- public ------------------------------------------------------------
    def start(self, job: Job) -> None:
        """Begin a job's life (submit, or removebgvideo ``/start``)."""
        job.state = "queued"
        self.state.enter_flight(job)
        self.state.account(job.provider, job.owner).queued[job.id] = job
        job.extra["slow"] = self.state.faults.slow_job(job.provider)
        job.task = asyncio.get_running_loop().create_task(self._life(job), name=f"job-{job.id}")

    def cancel(self, job: Job) -> None:
        job.cancel_requested = True
        if job.task is not None and not job.task.done():
            job.task.cancel()

    async def probe(self, sf: StoredFile) -> media.MediaInfo:
        if sf.info is not None:
            return sf.info
        cached = self.state.probe_cache.get(sf.sha256 or "") if sf.sha256 else None
        if cached is None:
            cached = await self.io(media.probe, sf.path)
            if sf.sha256:
                self.state.probe_cache[sf.sha256] = cached
        sf.info = cached
        return cached

    # -- life of a job ---------------------------------------------------------
    async def _life(self, job: Job) -> None:
        state, cfg = self.state, self.state.config
        acct = state.account(job.provider, job.owner)
        admitted = False
        try:
            await state.clock.sleep(cfg.queue_seconds)
            await acct.acquire(job)
            admitted = True
            acct.queued.pop(job.id, None)
            job.state, job.phase = "running", "fetching"
            job.started_mono = state.clock.mono()
            state.enter_running(job)
            job.log("Starting request")
            try:
                produced = await self._work(job)
            except JobError as exc:
                await self._wait_min_time(job)
                self._fail(job, str(exc), exc.error_type, exc.status)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an engine bug is a failed job, not a dead server
                log.warning("job %s: engine error: %s", job.id, "".join(traceback.format_exception_only(exc)).strip())
                await self._wait_min_time(job)
                self._fail(job, f"Internal error while processing the video: {exc}", "internal_server_error", 500)
                return
            produced = await self._spoil(job, produced)
            job.engine_done_mono = state.clock.mono()
            job.phase = "finalizing"
            await self._wait_min_time(job)
            self._succeed(job, produced)
        except asyncio.CancelledError:
            acct.queued.pop(job.id, None)
            if not job.terminal:
                job.state, job.error = "canceled", "Request was cancelled"
                job.error_type, job.error_status = "client_cancelled", 499
                self._finish(job)
        finally:
            if admitted:
                state.leave_running(job)
                acct.release()
            acct.queued.pop(job.id, None)

    async def _wait_min_time(self, job: Job) -> None:
        assert job.started_mono is not None
        elapsed = self.state.clock.mono() - job.started_mono
        minimum = self.state.config.job_seconds + job.extra.get("slow", 0.0)
        remaining = self.state.clock.real(minimum) - elapsed
        if remaining > 0:
            await asyncio.sleep(remaining)

    async def _work(self, job: Job) -> list[media.Produced]:
        state = self.state
        assert job.work is not None
        if job.fault == "invalid":  # fal deferred validation: fails on the runner
            detail = job.extra.get("validation_detail") or [{}]
            raise JobError(detail[0].get("msg", "Validation error"), detail[0].get("type", "validation_error"), 422)
        sf = await self.fetch_input(job)
        job.input_file = sf
        if sf.sha256 is None:
            sf.sha256 = await self.io(media.sha256_file, sf.path)
        if sf.sha256:
            state.record_content(job, sf.sha256)
        names = [job.input_url or "", sf.name]
        if state.faults.input_fails(job.provider, sf.sha256, names):
            raise JobError(f"Input rejected by the emulator (fail_inputs): {sf.name}", "unsupported_video_format", 422)
        try:
            info = await self.probe(sf)
        except media.MediaError as exc:
            raise JobError(f"Unsupported or corrupt input file: {exc}", "unsupported_video_format", 422) from exc
        job.input_info = info
        if job.work.op == "remove-background-image" and info.kind != "image":
            raise JobError("image_url does not point to an image", "unsupported_image_format", 422)
        if job.work.op != "remove-background-image" and info.kind == "image":
            raise JobError("video_url does not point to a video", "unsupported_video_format", 422)
        if job.fault == "failure":
            raise JobError(state.faults.config.failure_reason, "internal_server_error", 500)
        if job.fault == "completed_with_error":
            raise JobError(state.faults.config.failure_reason, "unsupported_video_format", 422)
        if job.work.background_url:
            bg = await self.fetch_url(job.work.background_url, "background image", job.owner, job.provider)
            job.work.background = str(bg.path)
        job.phase = "processing"
        job.log(f"Processing {info.frames} frames at {info.width}x{info.height}")
        out_dir = state.files_dir / f"out-{job.id}"
        if state.config.instant:
            state.stats.engine_calls["instant"] += 1
            return await self.in_thread(media.run_instant, state.templates, job.work, info)
        state.stats.engine_calls[job.work.op] += 1
        engine = self.engine
        return await self.in_thread(media.run_engine, engine, job.work, sf.path, out_dir, "output")

    async def _spoil(self, job: Job, produced: list[media.Produced]) -> list[media.Produced]:
        """The output faults: replace the outputs of a succeeded job (see ``FaultConfig``)."""
        kind = self.state.faults.output_fault(job.provider)
        if kind is None or not produced or job.work is None or job.work.op == "remove-background-image":
            return produced
        job.fault = job.fault or f"output:{kind}"
        main = produced[0]
        info = job.input_info or main.info
        templates = self.state.templates
        if kind == "not_video":
            path = self.state.new_path(main.path.suffix)
            await self.io(path.write_bytes, b"this is not a video\n" * 64)
            bad = media.Produced("video", path, main.content_type, main.info)
            return [bad, *produced[1:]]
        if kind == "wrong_size":
            half = dataclasses.replace(info, width=max(2, info.width // 4 * 2), height=max(2, info.height // 4 * 2))
            work = dataclasses.replace(job.work, mask=False)
            bad = (await self.in_thread(media.run_instant, templates, work, half))[0]
            return [bad, *produced[1:]]
        if kind == "bad_output":
            # what a user rejects: the alpha channel lost, or a result cut short
            if job.work.op != "upscale" and job.work.background == "transparent" and job.work.fmt in media.ALPHA_FORMATS:
                job.extra["output_fault"] = "no_alpha"
                bad = (await self.in_thread(functools.partial(media.run_instant, templates, job.work, info, alpha=False)))[0]
                return [bad, *produced[1:]]
            job.extra["output_fault"] = "short"
            frames = max(1, info.frames - max(2, info.frames // 4))
            short = dataclasses.replace(info, frames=frames, duration=frames / info.fps if info.fps else 0.0)
            return await self.in_thread(media.run_instant, templates, job.work, short)
        # legit_deviation: what real providers do and a verifier must accept
        if job.work.op == "upscale":
            job.extra["output_fault"] = "rounded_to_16"
            width, height = media.output_size(job.work, info)
            size = (-(-width // 16) * 16, -(-height // 16) * 16)
            return await self.in_thread(functools.partial(media.run_instant, templates, job.work, info, size=size))
        if info.nominal and info.rate and info.nominal != info.rate and info.duration:
            job.extra["output_fault"] = "retimed_cfr"
            frames = max(1, round(info.duration * float(info.nominal)))
            bent = dataclasses.replace(info, frames=frames, rate=info.nominal, fps=round(float(info.nominal), 3))
        else:
            job.extra["output_fault"] = "one_frame_short"
            bent = dataclasses.replace(info, frames=max(1, info.frames - 1))
        return await self.in_thread(media.run_instant, templates, job.work, bent)

    def _succeed(self, job: Job, produced: list[media.Produced]) -> None:
        state = self.state
        stem = job.extra.get("output_stem", "output")
        for item in produced:
            suffix = item.path.suffix
            name = f"{stem}{'-mask' if item.kind == 'mask' else ''}{suffix}"
            sf = state.add_produced(item, name, job.owner, job.provider)
            job.outputs.append(Output(item.kind, sf))
        job.state, job.phase = "succeeded", ""
        job.log("Request completed")
        self._finish(job)

    def _fail(self, job: Job, message: str, error_type: str, status: int) -> None:
        job.state, job.phase = "failed", ""
        job.error, job.error_type, job.error_status = message, error_type, status
        job.log(message, "ERROR")
        self._finish(job)

    def _finish(self, job: Job) -> None:
        job.finished_mono = self.state.clock.mono()
        job.finished = self.state.clock.wall()
        if not self.state.current(job):
            return  # reset while it ran: its tables and stats are gone
        self.state.leave_flight(job)
        hook = job.extra.get("on_finish")
        if hook is not None:
            hook(job)

    # -- inputs ------------------------------------------------------------------
    async def fetch_input(self, job: Job) -> StoredFile:
        if job.input_file is not None:
            return job.input_file
        if not job.input_url:
            raise input_error("No input URL")
        return await self.fetch_url(job.input_url, "input", job.owner, job.provider)

    async def fetch_url(self, url: str, what: str, owner: str, provider: str) -> StoredFile:
        """Fetch ``url`` to a local file: our own URLs directly, data URIs, http(s)."""
        state = self.state
        if url.startswith("data:"):
            return await self._from_data_uri(url, owner, provider)
        local, reason = state.local_file_for_url(url)
        if local is not None:
            return local
        if reason is not None:
            raise input_error(f"Failed to download the {what} file: {reason}")
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise input_error(f"Failed to download the {what} file: unsupported URL scheme {scheme!r}")
        path = state.new_path(Path(urlsplit(url).path).suffix[:8])
        digest = hashlib.sha256()
        size = 0
        try:
            async with self.http().stream("GET", url) as resp:
                if resp.status_code != 200:
                    raise input_error(f"Failed to download the {what} file: HTTP {resp.status_code}")
                ctype = resp.headers.get("content-type", "application/octet-stream")
                with open(path, "wb") as fh:
                    async for chunk in resp.aiter_bytes(1 << 20):
                        digest.update(chunk)
                        size += len(chunk)
                        await self.io(fh.write, chunk)
        except httpx.HTTPError as exc:
            path.unlink(missing_ok=True)
            raise input_error(f"Failed to download the {what} file: {type(exc).__name__}") from exc
        name = unquote(Path(urlsplit(url).path).name) or "input"
        return state.add_file(path, name, ctype, size, digest.hexdigest(), owner=owner, provider=provider)

    async def _from_data_uri(self, url: str, owner: str, provider: str) -> StoredFile:
        head, _, payload = url.partition(",")
        ctype = head[5:].split(";")[0] or "application/octet-stream"
        try:
            data = base64.b64decode(payload, validate=False) if ";base64" in head else unquote(payload).encode()
        except (binascii.Error, ValueError) as exc:
            raise input_error("Invalid data URI") from exc
        path = self.state.new_path()
        await self.io(path.write_bytes, data)
        return self.state.add_file(path, "data-uri", ctype, len(data), hashlib.sha256(data).hexdigest(),
                                   owner=owner, provider=provider)


def new_job(state: EmulatorState, provider: str, app: str, owner: str, work: media.Work | None,
            request: dict[str, Any], job_id: str | None = None) -> Job:
    return Job(
        id=job_id or str(uuid.uuid4()),
        provider=provider,
        app=app,
        owner=owner,
        work=work,
        request=request,
        created=state.clock.wall(),
        created_mono=state.clock.mono(),
    )


__all__ = ["Runner", "JobError", "new_job"]
