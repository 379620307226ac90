"""The provider contract as a reusable test mixin.

``ProviderContract`` holds the checks every provider must pass, local or hosted:
validate, stage a local file and a ``memory://`` file, submit, poll to a terminal
state, list results, download every artifact (real video bytes, decoded with
PyAV), cancel semantics, handle persistence across provider instances, estimate.

``HostedProviderContract`` adds the error classes, driven through the emulator's
fault knobs over real HTTP: 401 -> ``AuthError``, 429 -> ``RateLimitedError``
with ``retry_after``, 5xx -> ``TransientError``, a lost submit response ->
``SubmitUncertainError`` (and the re-check where the provider can), a failed job
-> ``JobStatus`` FAILED with the provider's reason, a validation error ->
``PermanentError``, insufficient credits -> ``QuotaError``, expired result URLs
-> refreshed by ``refresh_artifact``, a truncated download -> ``TransientError``.

Use it by subclassing in a test module and providing fixtures:

``provider``  a ready ``Provider`` (function scope; the mixin closes nothing)
``spec``      the default ``JobSpec`` for that provider
``clip``      a local path to a tiny input video (mp4)
``emulator``  (hosted only) an ``EmulatorControl`` for the running emulator
``make_provider`` (hosted only) a factory ``(credentials=None, **options) -> Provider``

and class attributes (see the defaults below).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tempfile
import time
import zipfile
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, ClassVar, Mapping

import httpx
import pytest

from vidbatch.errors import (
    AuthError,
    ConfigError,
    PermanentError,
    QuotaError,
    RateLimitedError,
    SubmitUncertainError,
    TransientError,
)
from vidbatch.providers.base import ArtifactExpiredError, Provider
from vidbatch.spec import Artifact, Item, JobHandle, JobSpec, JobState, JobStatus, StagedInput, item_key

# --------------------------------------------------------------------------- helpers


def make_item(url: str, spec: JobSpec, size: int = 0, storage_options: Mapping[str, Any] | None = None) -> Item:
    fingerprint = f"test:{url}:{size}"
    return Item(
        url=url,
        fingerprint=fingerprint,
        size=size,
        spec=spec,
        key=item_key(spec, fingerprint),
        output=f"memory://out/{os.path.basename(url)}.{spec.ext}",
        storage_options=dict(storage_options or {}),
    )


async def wait_terminal(provider: Provider, handle: JobHandle, timeout: float = 120.0) -> JobStatus:
    """Poll until terminal (fast: the emulator runs jobs in about a second)."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while True:
        status = await provider.poll(handle)
        if status.state.terminal:
            return status
        if time.monotonic() > deadline:
            raise AssertionError(f"job {handle.request_id} still {status.state.value} after {timeout} s")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


async def read_artifact(provider: Provider, artifact: Artifact) -> bytes:
    buf = bytearray()
    async for chunk in provider.open_artifact(artifact):
        assert isinstance(chunk, (bytes, bytearray)) and chunk
        buf += chunk
    return bytes(buf)


def decode_frames(data: bytes, suffix: str = "") -> int:
    """Frames in a video/animated image (or PNGs in a png_sequence zip); 0 if undecodable."""
    if data[:4] == b"PK\x03\x04":
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            return sum(1 for n in zf.namelist() if n.lower().endswith(".png"))
    import av

    with tempfile.NamedTemporaryFile(suffix=suffix or ".bin") as fh:
        fh.write(data)
        fh.flush()
        try:
            with av.open(fh.name) as container:
                stream = container.streams.video[0]
                return sum(1 for _ in container.decode(stream))
        except (av.error.FFmpegError, IndexError):  # type: ignore[attr-defined]
            return 0


def suffix_for(artifact: Artifact) -> str:
    ct = artifact.content_type or ""
    for key, ext in (("webm", ".webm"), ("quicktime", ".mov"), ("mp4", ".mp4"), ("gif", ".gif"), ("webp", ".webp"),
                     ("png", ".png"), ("zip", ".zip")):
        if key in ct:
            return ext
    return os.path.splitext(artifact.url.split("?", 1)[0])[1]


class EmulatorControl:
    """The emulator's control API over real HTTP (``/_emulator/...``)."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def _post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        r = httpx.post(f"{self.url}/_emulator/{path}", json=dict(body or {}), timeout=30)
        r.raise_for_status()
        return r.json() if r.content else None

    def faults(self, **config: Any) -> Any:
        """Replace the fault configuration (``FaultConfig`` JSON)."""
        return self._post("faults", config)

    def configure(self, **knobs: Any) -> Any:
        """Change runtime knobs (``job_seconds``, ``instant``, ``removebgvideo_credits``...)."""
        return self._post("config", knobs)

    def reset(self) -> Any:
        return self._post("reset")

    def stats(self) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/_emulator/stats", timeout=30)
        r.raise_for_status()
        return r.json()


# --------------------------------------------------------------------------- the contract


class ProviderContract:
    """Checks every provider passes. Subclasses set the attributes and fixtures."""

    #: whether ``mask: true`` is offered for ``spec``'s operation
    mask_supported: ClassVar[bool] = True
    #: cancel of a running job: True (accepted, job ends CANCELED), False
    #: (refused, the job runs on), None (either is fine)
    cancel_accepted: ClassVar[bool | None] = None
    #: seconds a job takes in the slow-job context (cancel test)
    job_timeout: ClassVar[float] = 120.0

    @asynccontextmanager
    async def slow_jobs(self, request: pytest.FixtureRequest) -> AsyncIterator[None]:
        """Make jobs last long enough to cancel them (hosted: an emulator knob)."""
        yield

    # -- helpers --------------------------------------------------------
    async def stage_local(self, provider: Provider, spec: JobSpec, clip: str) -> StagedInput:
        return await provider.stage(make_item(clip, spec, os.path.getsize(clip)))

    async def run_job(self, provider: Provider, spec: JobSpec, clip: str) -> tuple[JobHandle, JobStatus]:
        provider.validate(spec)
        staged = await self.stage_local(provider, spec, clip)
        handle = await provider.submit(spec, staged)
        status = await wait_terminal(provider, handle, self.job_timeout)
        return handle, status

    async def check_artifacts(self, provider: Provider, handle: JobHandle, expect_mask: bool) -> list[Artifact]:
        arts = await provider.results(handle)
        kinds = [a.kind for a in arts]
        assert kinds.count("video") == 1, kinds
        assert ("mask" in kinds) == expect_mask, kinds
        for art in arts:
            data = await read_artifact(provider, art)
            if art.size is not None:
                assert len(data) == art.size
            assert decode_frames(data, suffix_for(art)) > 0, f"{art.kind} artifact is not a decodable video"
        return arts

    # -- tests ----------------------------------------------------------
    async def test_validate_accepts_default_spec(self, provider: Provider, spec: JobSpec) -> None:
        provider.validate(spec)
        assert spec.model in provider.operation_info(spec.operation).models

    async def test_validate_refuses_unknown_native_param(self, provider: Provider, spec: JobSpec) -> None:
        bad = JobSpec(**{**spec.__dict__, "params": {"no_such_param_xyz": 1}})
        with pytest.raises(ConfigError) as info:
            provider.validate(bad)
        assert "no_such_param_xyz" in str(info.value) and "\n" not in str(info.value)

    async def test_job_from_local_file(self, provider: Provider, spec: JobSpec, clip: str) -> None:
        handle, status = await self.run_job(provider, spec, clip)
        assert status.state == JobState.SUCCEEDED, status.message
        json.dumps(handle.to_json())  # persistable as JSON
        await self.check_artifacts(provider, handle, expect_mask=False)

    async def test_mask_output(self, provider: Provider, spec: JobSpec, clip: str) -> None:
        if not self.mask_supported:
            with pytest.raises(ConfigError):
                provider.validate(JobSpec(**{**spec.__dict__, "mask": True}))
            return
        mspec = JobSpec(**{**spec.__dict__, "mask": True})
        handle, status = await self.run_job(provider, mspec, clip)
        assert status.state == JobState.SUCCEEDED, status.message
        await self.check_artifacts(provider, handle, expect_mask=True)

    async def test_job_from_memory_file(self, provider: Provider, spec: JobSpec, clip: str) -> None:
        import fsspec

        url = f"memory://contract/{os.getpid()}-{time.monotonic_ns()}/input.mp4"
        with open(clip, "rb") as src, fsspec.open(url, "wb") as dst:
            dst.write(src.read())
        staged = await provider.stage(make_item(url, spec, os.path.getsize(clip)))
        assert staged.url or staged.asset_id or staged.local_path
        if staged.url:
            assert not staged.url.startswith("memory://"), "a memory:// input must be uploaded, not passed as is"
        handle = await provider.submit(spec, staged)
        status = await wait_terminal(provider, handle, self.job_timeout)
        assert status.state == JobState.SUCCEEDED, status.message
        await self.check_artifacts(provider, handle, expect_mask=False)

    async def test_handle_resumes_in_a_new_instance(
        self, provider: Provider, spec: JobSpec, clip: str, request: pytest.FixtureRequest
    ) -> None:
        staged = await self.stage_local(provider, spec, clip)
        handle = await provider.submit(spec, staged)
        restored = JobHandle.from_json(json.loads(json.dumps(handle.to_json())))
        other = type(provider)(provider.settings)
        try:
            status = await wait_terminal(other, restored, self.job_timeout)
            assert status.state == JobState.SUCCEEDED, status.message
            arts = await other.results(restored)
            assert decode_frames(await read_artifact(other, arts[0]), suffix_for(arts[0])) > 0
        finally:
            await other.aclose()

    async def test_cancel(self, provider: Provider, spec: JobSpec, clip: str, request: pytest.FixtureRequest) -> None:
        staged = await self.stage_local(provider, spec, clip)
        async with self.slow_jobs(request):
            handle = await provider.submit(spec, staged)
            accepted = await provider.cancel(handle)
            assert isinstance(accepted, bool)
            if self.cancel_accepted is not None:
                assert accepted is self.cancel_accepted
            status = await provider.poll(handle)  # the handle stays valid either way
            if accepted:
                status = await wait_terminal(provider, handle, self.job_timeout)
                assert status.state in (JobState.CANCELED, JobState.FAILED), status
            else:
                assert status.state in (JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED)

    async def test_estimate_and_poll_interval(self, provider: Provider, spec: JobSpec) -> None:
        from vidbatch.spec import MediaInfo

        cost = provider.estimate(spec, MediaInfo(width=160, height=90, fps=25, frames=25, duration=1.0))
        assert cost.usd is None or cost.usd >= 0
        assert cost.basis
        json.dumps(cost.to_json())
        assert provider.poll_interval(0, 60) >= provider.min_poll_interval > 0
        assert provider.poll_interval(600, 60) <= 30 or provider.poll_interval(600, 60) == provider.min_poll_interval


class HostedProviderContract(ProviderContract):
    """Error classes of a hosted provider, through the emulator's faults over real HTTP."""

    #: emulator route names (``<provider>:<route>``)
    route_submit: ClassVar[str]
    route_poll: ClassVar[str]
    route_download: ClassVar[str]
    #: emulator config knobs that leave the account without credits (None: not emulated)
    quota_knobs: ClassVar[dict[str, Any] | None] = None
    #: credentials the emulator refuses
    bad_credentials: ClassVar[dict[str, str]]

    @asynccontextmanager
    async def slow_jobs(self, request: pytest.FixtureRequest) -> AsyncIterator[None]:
        emulator: EmulatorControl = request.getfixturevalue("emulator")
        emulator.configure(job_seconds=30)
        try:
            yield
        finally:
            emulator.configure(job_seconds=0)

    def break_request(self, provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
        """Make the next submit send a body the provider's API rejects as invalid."""
        raise NotImplementedError

    # -- error classes ----------------------------------------------------
    async def test_auth_error(
        self, provider: Provider, spec: JobSpec, clip: str, make_provider: Callable[..., Provider]
    ) -> None:
        bad = make_provider(credentials=self.bad_credentials)
        try:
            with pytest.raises(AuthError) as info:
                await self.stage_local(bad, spec, clip)
            staged = await self.stage_local(provider, spec, clip)
            with pytest.raises(AuthError) as info2:
                await bad.submit(spec, staged)
            for err in (info.value, info2.value):
                assert err.status in (401, 403)
                for secret in self.bad_credentials.values():
                    assert secret not in str(err)
        finally:
            await bad.aclose()

    async def test_rate_limited(self, provider: Provider, spec: JobSpec, clip: str, emulator: EmulatorControl) -> None:
        staged = await self.stage_local(provider, spec, clip)
        emulator.faults(retry_after=3, rules=[{"fault": "rate_limit", "routes": [self.route_submit], "times": 1},
                                              {"fault": "rate_limit", "routes": [self.route_poll], "times": 1}])
        with pytest.raises(RateLimitedError) as info:
            await provider.submit(spec, staged)
        assert info.value.retry_after == pytest.approx(3)
        assert not isinstance(info.value, SubmitUncertainError)
        handle = await provider.submit(spec, staged)  # the 429 created nothing; a resubmit is safe
        with pytest.raises(RateLimitedError):
            await provider.poll(handle)
        assert (await wait_terminal(provider, handle)).state == JobState.SUCCEEDED
        assert emulator.stats()["submissions"][provider.name] == 1

    async def test_server_error_is_transient(
        self, provider: Provider, spec: JobSpec, clip: str, emulator: EmulatorControl
    ) -> None:
        staged = await self.stage_local(provider, spec, clip)
        emulator.faults(rules=[{"fault": "server_error", "routes": [self.route_submit], "times": 1},
                               {"fault": "server_error", "routes": [self.route_poll], "times": 1}])
        with pytest.raises(TransientError) as info:
            await provider.submit(spec, staged)
        assert type(info.value) is not SubmitUncertainError  # an answer came back: nothing was created
        assert info.value.status is not None and info.value.status >= 500
        handle = await provider.submit(spec, staged)
        with pytest.raises(TransientError):
            await provider.poll(handle)
        assert (await wait_terminal(provider, handle)).state == JobState.SUCCEEDED

    async def test_lost_submit_response_is_uncertain(
        self, provider: Provider, spec: JobSpec, clip: str, emulator: EmulatorControl
    ) -> None:
        staged = await self.stage_local(provider, spec, clip)
        since = time.time()
        emulator.faults(rules=[{"fault": "lost_response", "routes": [self.route_submit], "times": 1}])
        with pytest.raises(SubmitUncertainError):
            await provider.submit(spec, staged)
        assert emulator.stats()["submissions"][provider.name] == 1  # the job exists
        found = await provider.recheck_submit(spec, staged, since)
        if not provider.can_recheck_submit:
            assert found is None
            return
        assert found is not None, "the re-check must find the job the lost response created"
        assert (await wait_terminal(provider, found)).state == JobState.SUCCEEDED

    async def test_dropped_submit_is_uncertain_and_recheck_finds_nothing(
        self, provider: Provider, spec: JobSpec, clip: str, emulator: EmulatorControl
    ) -> None:
        staged = await self.stage_local(provider, spec, clip)
        since = time.time()
        emulator.faults(rules=[{"fault": "drop", "routes": [self.route_submit], "times": 1}])
        with pytest.raises(SubmitUncertainError):
            await provider.submit(spec, staged)
        assert emulator.stats()["submissions"][provider.name] == 0
        assert await provider.recheck_submit(spec, staged, since) is None

    async def test_failed_job_reports_reason(
        self, provider: Provider, spec: JobSpec, clip: str, emulator: EmulatorControl
    ) -> None:
        emulator.faults(job_failure=1.0, providers=[provider.name], failure_reason="emulated meltdown 42")
        handle, status = await self.run_job(provider, spec, clip)
        assert status.state == JobState.FAILED
        assert "emulated meltdown 42" in status.message

    async def test_validation_error_is_permanent(
        self, provider: Provider, spec: JobSpec, clip: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        staged = await self.stage_local(provider, spec, clip)
        self.break_request(provider, monkeypatch)
        with pytest.raises(PermanentError) as info:
            await provider.submit(spec, staged)
        assert not isinstance(info.value, (AuthError, QuotaError))
        assert info.value.status in (400, 422)

    async def test_insufficient_credits_is_quota(
        self, provider: Provider, spec: JobSpec, clip: str, emulator: EmulatorControl
    ) -> None:
        if self.quota_knobs is None:
            pytest.skip(f"{provider.name}: the emulator does not model credits")
        staged = await self.stage_local(provider, spec, clip)
        emulator.configure(**self.quota_knobs)
        try:
            with pytest.raises(QuotaError):
                await provider.submit(spec, staged)
        finally:
            emulator.configure(**{k: None for k in self.quota_knobs})

    async def test_expired_result_urls_are_refreshed(
        self, provider: Provider, spec: JobSpec, clip: str, emulator: EmulatorControl
    ) -> None:
        """A result URL that lapsed is refused; ``refresh_artifact`` hands out a working one."""
        from vidbatch.providers.http import stream_download

        emulator.configure(url_ttl=1.0)  # every result URL lapses 1 s after it is minted
        try:
            handle, status = await self.run_job(provider, spec, clip)
            assert status.state == JobState.SUCCEEDED, status.message
            arts = await provider.results(handle)
            await asyncio.sleep(1.3)
            async with httpx.AsyncClient() as raw:
                for art in arts:
                    with pytest.raises(ArtifactExpiredError):  # the stale URL is refused...
                        async for _ in stream_download(raw, art.url, provider=provider.name):
                            pass
                    fresh = await provider.refresh_artifact(handle, art)  # ...a refreshed one works
                    assert fresh.url != art.url and fresh.kind == art.kind
                    assert decode_frames(await read_artifact(provider, fresh), suffix_for(art)) > 0
        finally:
            emulator.configure(url_ttl=None)

    async def test_first_result_url_already_expired(
        self, provider: Provider, spec: JobSpec, clip: str, emulator: EmulatorControl
    ) -> None:
        """The emulator's ``expired_urls`` fault: downloads still succeed (the provider refreshes)."""
        emulator.faults(expired_urls=1.0, providers=[provider.name])
        mspec = JobSpec(**{**spec.__dict__, "mask": self.mask_supported})
        handle, status = await self.run_job(provider, mspec, clip)
        assert status.state == JobState.SUCCEEDED, status.message
        for art in await provider.results(handle):
            assert decode_frames(await read_artifact(provider, art), suffix_for(art)) > 0
        injected = emulator.stats()["faults_injected"]
        assert any(k.startswith(f"{provider.name}:url:expired") for k in injected), injected

    async def test_truncated_download_is_transient(
        self, provider: Provider, spec: JobSpec, clip: str, emulator: EmulatorControl
    ) -> None:
        handle, status = await self.run_job(provider, spec, clip)
        assert status.state == JobState.SUCCEEDED
        art = (await provider.results(handle))[0]
        emulator.faults(rules=[{"fault": "truncate", "routes": [self.route_download], "times": 1}])
        with pytest.raises(TransientError) as info:
            await read_artifact(provider, art)
        assert not isinstance(info.value, ArtifactExpiredError)
        data = await read_artifact(provider, art)
        assert decode_frames(data, suffix_for(art)) > 0
        if art.size is not None:
            assert len(data) == art.size
