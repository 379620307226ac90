"""``local``: the embedded CPU engine as a provider (no keys, no network, no bill).

Models are named for what they are: ``selfie-landscape`` / ``selfie-general``
(MediaPipe's person segmenters from the ``mediapipe==0.10.21`` wheel) and
``lanczos`` (a resample). A "job" is an engine run in a worker thread of this
process; its handle does not survive the process, so a rerun after a crash finds
the job gone and runs it again (free, so that is allowed).
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from typing import AsyncIterator, ClassVar

from vidbatch import engine, storage
from vidbatch.errors import ConfigError, InputError, JobGoneError
from vidbatch.providers.base import OperationInfo, Provider
from vidbatch.redact import redact_url
from vidbatch.spec import (
    FORMAT_EXT,
    FORMATS,
    Artifact,
    Cost,
    Item,
    JobHandle,
    JobSpec,
    JobState,
    JobStatus,
    MediaInfo,
    StagedInput,
    mask_format,
)

#: engine runs of this process, by job id
_JOBS: dict[str, asyncio.Task[engine.EngineResult]] = {}


class LocalProvider(Provider):
    name: ClassVar[str] = "local"
    operations: ClassVar[dict[str, OperationInfo]] = {
        "remove-background": OperationInfo(
            engine.DEFAULT_MODEL["remove-background"], engine.MODELS["remove-background"], FORMATS
        ),
        "upscale": OperationInfo(engine.DEFAULT_MODEL["upscale"], engine.MODELS["upscale"], FORMATS),
    }
    paid: ClassVar[bool] = False
    min_poll_interval: ClassVar[float] = 0.5
    PARAMS: ClassVar[dict[str, type]] = {"smoothing": float}

    def __init__(self, settings=None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(settings)
        self._workdir = tempfile.mkdtemp(prefix="vidbatch-local-")

    def validate(self, spec: JobSpec) -> None:
        super().validate(spec)
        for key, value in spec.params.items():
            if key not in self.PARAMS:
                raise ConfigError(
                    f"local: unknown param {key!r}; the local engine takes: {', '.join(self.PARAMS)}"
                )
            if key == "smoothing" and not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise ConfigError(
                    "local: params.smoothing must be a number in (0, 1]: the weight of the new frame's mask "
                    "(1 = no temporal smoothing, default 0.6)"
                )

    async def stage(self, item: Item) -> StagedInput:
        if storage.is_local(item.url):
            return StagedInput(local_path=storage.local_path(item.url))
        # the engine reads local files: stream the input into the work folder
        suffix = posixpath.splitext(item.url.split("?")[0])[1] or ".mp4"
        path = os.path.join(self._workdir, f"in-{item.key[:16]}{suffix}")
        await asyncio.to_thread(_copy_to_local, item.url, dict(item.storage_options), path)
        return StagedInput(local_path=path)

    async def submit(self, spec: JobSpec, staged: StagedInput) -> JobHandle:
        if not staged.local_path:
            raise InputError("local: the input was not staged to a local file")
        job_id = uuid.uuid4().hex
        jobdir = os.path.join(self._workdir, job_id)
        os.makedirs(jobdir, exist_ok=True)
        out = os.path.join(jobdir, f"output.{FORMAT_EXT[spec.format]}")
        mask = os.path.join(jobdir, f"mask.{FORMAT_EXT[mask_format(spec.format)]}") if spec.mask else None
        if spec.operation == "remove-background":
            background = spec.background
            if background not in ("transparent",) and not background.startswith("#"):
                background = await asyncio.to_thread(_background_image, background, jobdir)
            call = lambda: engine.remove_background(  # noqa: E731
                staged.local_path, out, fmt=spec.format, background=background, mask_dst=mask,
                model=spec.model, **_engine_params(spec),
            )
        else:
            call = lambda: engine.upscale(  # noqa: E731
                staged.local_path, out, fmt=spec.format, factor=spec.factor, target=spec.target, model=spec.model
            )
        _JOBS[job_id] = asyncio.ensure_future(asyncio.to_thread(call))
        return JobHandle(provider=self.name, request_id=job_id, submitted_at=time.time(), extra={"dir": jobdir})

    def _task(self, handle: JobHandle) -> asyncio.Task[engine.EngineResult]:
        task = _JOBS.get(handle.request_id)
        if task is None:
            raise JobGoneError(f"local job {handle.request_id[:8]} is gone (the process that ran it exited)", provider="local")
        return task

    async def poll(self, handle: JobHandle) -> JobStatus:
        task = self._task(handle)
        if not task.done():
            return JobStatus(JobState.RUNNING)
        if task.cancelled():
            return JobStatus(JobState.CANCELED, message="cancelled")
        exc = task.exception()
        if exc is not None:
            return JobStatus(JobState.FAILED, message=str(exc) or type(exc).__name__)
        return JobStatus(JobState.SUCCEEDED, cost_usd=0.0)

    async def wait(self, handle: JobHandle, seconds: float) -> None:
        task = _JOBS.get(handle.request_id)
        if task is None:
            return
        # wake as soon as the engine finishes instead of sleeping a fixed interval
        await asyncio.wait({task}, timeout=max(seconds, 5.0))

    async def results(self, handle: JobHandle) -> list[Artifact]:
        result = self._task(handle).result()
        arts = [Artifact(url=result.output, kind="video", size=os.path.getsize(result.output))]
        if result.mask:
            arts.append(Artifact(url=result.mask, kind="mask", size=os.path.getsize(result.mask)))
        return arts

    async def open_artifact(self, artifact: Artifact) -> AsyncIterator[bytes]:  # type: ignore[override]
        async for chunk in storage.aiter_read(artifact.url):
            yield chunk

    async def cancel(self, handle: JobHandle) -> bool:
        task = _JOBS.get(handle.request_id)
        return bool(task and task.cancel())

    def forget(self, handle: JobHandle) -> None:
        """Drop a finished job's files once its outputs are stored."""
        _JOBS.pop(handle.request_id, None)
        jobdir = handle.extra.get("dir")
        if jobdir and str(jobdir).startswith(self._workdir):
            shutil.rmtree(jobdir, ignore_errors=True)

    def estimate(self, spec: JobSpec, media: MediaInfo) -> Cost:
        return Cost(usd=0.0, units=media.frames, unit="frames", basis="local CPU: free")

    async def aclose(self) -> None:
        shutil.rmtree(self._workdir, ignore_errors=True)


def _engine_params(spec: JobSpec) -> dict[str, float]:
    return {"smoothing": float(spec.params["smoothing"])} if "smoothing" in spec.params else {}


def _copy_to_local(url: str, options: dict, path: str) -> None:
    if storage.protocol_of(url) in ("http", "https"):
        import httpx

        with httpx.stream("GET", url, follow_redirects=True, timeout=60) as resp:
            if resp.status_code >= 400:
                raise InputError(f"cannot download input ({resp.status_code}): {redact_url(url)}")
            with open(path, "wb") as out:
                for chunk in resp.iter_bytes(storage.CHUNK):
                    out.write(chunk)
        return
    with open(path, "wb") as out:
        for chunk in storage.iter_read(url, options):
            out.write(chunk)


def _background_image(url: str, jobdir: str) -> str:
    if storage.is_local(url):
        path = storage.local_path(url)
        if not os.path.exists(path):
            raise InputError(f"background image not found: {url}")
        return path
    path = os.path.join(jobdir, "background" + (posixpath.splitext(url.split("?")[0])[1] or ".png"))
    _copy_to_local(url, {}, path)
    return path
