"""The provider contract applied to fal, Scenario and removebgvideo against the emulator.

One in-process ``EmulatorServer`` on a free loopback port for the module, real
HTTP only (the clients are the production code, pointed at the emulator with
``ProviderSettings.base_url``). Jobs take about a second (``job_seconds=0``,
tiny 160x90 clips); the emulator is reset before every test.
"""

from __future__ import annotations

import os
from typing import Any, AsyncIterator, Callable, Iterator

import pytest

from tests.contract import EmulatorControl, HostedProviderContract, make_item, wait_terminal
from tests.s3 import S3Endpoint, s3, s3_server  # noqa: F401  (fixtures)
from vidbatch.errors import PermanentError
from vidbatch.providers.base import Provider, ProviderSettings
from vidbatch.providers.fal import FalProvider
from vidbatch.providers.removebgvideo import RemoveBgVideoProvider
from vidbatch.providers.scenario import ScenarioProvider
from vidbatch.spec import JobSpec, JobState

pytestmark = pytest.mark.asyncio(loop_scope="module")

KEY, SECRET = "vbtest-key", "vbtest-secret-0123"
PINNED = f"{KEY}:{SECRET}"


@pytest.fixture(scope="module")
def emulator_server() -> Iterator[Any]:
    from vidbatch.emulator import EmulatorServer

    with EmulatorServer(api_key=PINNED, job_seconds=0, queue_seconds=0, upload_import_seconds=0.05) as server:
        yield server


@pytest.fixture()
def emulator(emulator_server: Any) -> Iterator[EmulatorControl]:
    control = EmulatorControl(emulator_server.base_url)
    control.reset()
    yield control
    control.faults()
    control.configure(job_seconds=0, url_ttl=None, removebgvideo_credits=None)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    from vidbatch.synth import make_clip

    d = tmp_path_factory.mktemp("hosted-clips")
    return make_clip(str(d / "tiny.mp4"), width=160, height=90, seconds=1.0, fps=10)


class _Hosted(HostedProviderContract):
    provider_cls: type[Provider]
    credentials: dict[str, str]
    default_spec: JobSpec

    @pytest.fixture()
    def make_provider(self, emulator: EmulatorControl) -> Callable[..., Provider]:
        def make(credentials: dict[str, str] | None = None, **options: Any) -> Provider:
            settings = ProviderSettings(
                base_url=emulator.url, credentials=credentials or self.credentials, timeout=20.0, options=options
            )
            return self.provider_cls(settings)

        return make

    @pytest.fixture()
    async def provider(self, make_provider: Callable[..., Provider]) -> AsyncIterator[Provider]:
        p = make_provider()
        yield p
        await p.aclose()

    @pytest.fixture()
    def spec(self) -> JobSpec:
        return self.default_spec

    async def test_s3_input_is_fetched_by_the_provider(
        self, provider: Provider, spec: JobSpec, clip: str, s3: S3Endpoint, emulator: EmulatorControl
    ) -> None:
        """s3:// inputs are not uploaded by us: a presigned URL goes to the provider."""
        with open(clip, "rb") as fh:
            s3.client().put_object(Bucket="vb-in", Key="clips/tiny.mp4", Body=fh.read())
        staged = await provider.stage(make_item("s3://vb-in/clips/tiny.mp4", spec, os.path.getsize(clip)))
        if staged.url:
            assert "X-Amz-Signature=" in staged.url and staged.expires_at
        status = await wait_terminal(provider, await provider.submit(spec, staged))
        assert status.state == JobState.SUCCEEDED, status.message
        stats = emulator.stats()
        assert stats["requests"].get(f"{provider.name}:upload", 0) == 0
        assert stats["requests"].get("scenario:upload_part", 0) == 0


# --------------------------------------------------------------------------- fal


class TestFal(_Hosted):
    provider_cls = FalProvider
    credentials = {"FAL_KEY": PINNED}
    bad_credentials = {"FAL_KEY": "vbtest-key:wrong-secret-9999"}
    default_spec = JobSpec("fal", "remove-background", "General Use (Light)", format="webm")
    route_submit, route_poll, route_download = "fal:submit", "fal:status", "fal:download"
    cancel_accepted = True

    def break_request(self, provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
        native = provider._native  # type: ignore[attr-defined]

        def broken(spec: JobSpec, staged: Any) -> tuple[str, dict[str, Any]]:
            endpoint, body = native(spec, staged)
            return endpoint, {**body, "operating_resolution": "9999x9999"}

        monkeypatch.setattr(provider, "_native", broken)

    async def test_multipart_upload(self, make_provider: Callable[..., Provider], clip: str,
                                    emulator: EmulatorControl) -> None:
        """Above the threshold the upload goes up in parts (fal: 10 MiB parts above 100 MiB)."""
        p = make_provider(multipart_threshold=4096, part_size=4096)
        try:
            spec = self.default_spec
            staged = await p.stage(make_item(clip, spec, os.path.getsize(clip)))
            requests = emulator.stats()["requests"]
            assert requests.get("fal:multipart_part", 0) == -(-os.path.getsize(clip) // 4096)
            assert requests.get("fal:multipart_complete") == 1
            status = await wait_terminal(p, await p.submit(spec, staged))
            assert status.state == JobState.SUCCEEDED, status.message
        finally:
            await p.aclose()

    async def test_upscale(self, provider: Provider, clip: str) -> None:
        spec = JobSpec("fal", "upscale", "seedvr2", format="mp4", target="720p")
        handle, status = await self.run_job(provider, spec, clip)
        assert status.state == JobState.SUCCEEDED, status.message
        # SeedVR2's price is per output megapixel: the actual cost comes with the result
        assert status.cost is not None and status.cost.unit == "MP" and status.cost_usd and status.cost_usd > 0
        arts = await self.check_artifacts(provider, handle, expect_mask=False)
        assert arts[0].meta.get("height") == 720

    async def test_deferred_validation_fails_the_job(self, provider: Provider, clip: str,
                                                     emulator: EmulatorControl,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
        """COMPLETED is not success: a 422 result fails the job with fal's message."""
        emulator.configure(fal_deferred_validation=True)
        try:
            staged = await self.stage_local(provider, self.default_spec, clip)
            self.break_request(provider, monkeypatch)
            handle = await provider.submit(self.default_spec, staged)
            status = await wait_terminal(provider, handle)
            assert status.state == JobState.FAILED
            assert "operating_resolution" in status.message
        finally:
            emulator.configure(fal_deferred_validation=False)

    async def test_completed_with_error(self, provider: Provider, clip: str, emulator: EmulatorControl) -> None:
        emulator.faults(completed_with_error=1.0, providers=["fal"])
        handle, status = await self.run_job(provider, self.default_spec, clip)
        assert status.state == JobState.FAILED and status.message
        with pytest.raises(PermanentError):
            await provider.results(handle)

    async def test_image_input_uses_the_image_endpoint(self, provider: Provider, tmp_path: Any,
                                                       emulator: EmulatorControl) -> None:
        from PIL import Image

        from tests.contract import decode_frames, read_artifact

        png = tmp_path / "still.png"
        Image.new("RGB", (96, 64), (200, 30, 30)).save(png)
        spec = JobSpec("fal", "remove-background", "General Use (Light)", format="webp", mask=True)
        staged = await provider.stage(make_item(str(png), spec, png.stat().st_size))
        assert staged.content_type == "image/png"
        handle = await provider.submit(spec, staged)
        assert handle.extra["endpoint"] == "fal-ai/birefnet/v2"
        status = await wait_terminal(provider, handle)
        assert status.state == JobState.SUCCEEDED, status.message
        arts = await provider.results(handle)
        assert [a.kind for a in arts] == ["video", "mask"]
        assert arts[0].content_type == "image/webp"
        assert decode_frames(await read_artifact(provider, arts[0]), ".webp") >= 1

    async def test_handle_keeps_the_returned_urls(self, provider: Provider, clip: str) -> None:
        staged = await self.stage_local(provider, self.default_spec, clip)
        handle = await provider.submit(self.default_spec, staged)
        assert set(handle.urls) == {"status_url", "response_url", "cancel_url"}
        # status/result URLs drop the endpoint's subpath (fal's own URLs)
        assert "/fal-ai/birefnet/requests/" in handle.urls["status_url"]
        await wait_terminal(provider, handle)


# --------------------------------------------------------------------------- Scenario


class TestScenario(_Hosted):
    provider_cls = ScenarioProvider
    credentials = {"SCENARIO_SDK_API_KEY": KEY, "SCENARIO_SDK_API_SECRET": SECRET}
    bad_credentials = {"SCENARIO_SDK_API_KEY": KEY, "SCENARIO_SDK_API_SECRET": "wrong-secret-9999"}
    default_spec = JobSpec("scenario", "remove-background", "General Use (Light)", format="webm")
    route_submit, route_poll, route_download = "scenario:submit", "scenario:status", "scenario:download"
    cancel_accepted = False  # "Cannot cancel this type of job"

    def break_request(self, provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
        native = provider._native  # type: ignore[attr-defined]

        def broken(spec: JobSpec, asset_id: str) -> tuple[str, dict[str, Any]]:
            model_id, body = native(spec, asset_id)
            return model_id, {**body, "operatingResolution": "2304x2304"}

        monkeypatch.setattr(provider, "_native", broken)

    async def test_upscale_and_cost(self, provider: Provider, clip: str) -> None:
        spec = JobSpec("scenario", "upscale", "seedvr2", format="mp4", factor=2)
        handle, status = await self.run_job(provider, spec, clip)
        assert status.state == JobState.SUCCEEDED, status.message
        assert status.cost is not None and status.cost.unit == "CU" and status.cost.units is not None
        assert status.cost_usd is None  # no CU price configured
        arts = await self.check_artifacts(provider, handle, expect_mask=False)
        assert arts[0].meta.get("width") == 320

    async def test_quote_dry_run(self, make_provider: Callable[..., Provider], clip: str,
                                 emulator: EmulatorControl) -> None:
        p = make_provider(cu_usd=0.01)
        try:
            staged = await self.stage_local(p, self.default_spec, clip)
            cost = await p.quote(self.default_spec, staged)  # type: ignore[attr-defined]
            assert cost.unit == "CU" and cost.units and cost.units > 0
            assert cost.usd == pytest.approx(cost.units * 0.01)
            assert emulator.stats()["submissions"]["scenario"] == 0  # a dry run is not a job
        finally:
            await p.aclose()

    async def test_url_input_uses_the_url_upload_form(self, provider: Provider, clip: str, emulator_server: Any) -> None:
        """A URL input goes through the ``{"url", "kind": "video"}`` upload form."""
        fal = FalProvider(ProviderSettings(base_url=emulator_server.base_url, credentials={"FAL_KEY": PINNED}))
        try:
            public = await fal.upload(clip)  # any public URL will do: put the clip on the emulated fal CDN
        finally:
            await fal.aclose()
        staged = await provider.stage(make_item(public, self.default_spec))
        assert staged.asset_id and staged.asset_id.startswith("asset_")
        status = await wait_terminal(provider, await provider.submit(self.default_spec, staged))
        assert status.state == JobState.SUCCEEDED, status.message

    async def test_multipart_parts(self, make_provider: Callable[..., Provider], tmp_path: Any,
                                   emulator: EmulatorControl) -> None:
        """Several parts, every one but the last >= 5 MiB, streamed from the input store."""
        big = tmp_path / "big.mp4"
        big.write_bytes(os.urandom(5 * 1024 * 1024) + b"tail" * 1000)  # not a video: the import fails
        p = make_provider(part_size=5 * 1024 * 1024)
        try:
            with pytest.raises(PermanentError, match="upload .* failed"):
                await p.stage(make_item(str(big), self.default_spec, big.stat().st_size))
            assert emulator.stats()["requests"].get("scenario:upload_part") == 2
        finally:
            await p.aclose()


# --------------------------------------------------------------------------- removebgvideo


class TestRemoveBgVideo(_Hosted):
    provider_cls = RemoveBgVideoProvider
    credentials = {"REMOVEBGVIDEO_API_KEY": PINNED}
    bad_credentials = {"REMOVEBGVIDEO_API_KEY": "wrong-key-9999"}
    default_spec = JobSpec("removebgvideo", "remove-background", "original", format="webm")
    route_submit, route_poll, route_download = "removebgvideo:submit", "removebgvideo:status", "removebgvideo:download"
    mask_supported = False
    cancel_accepted = False  # no cancel endpoint
    quota_knobs = {"removebgvideo_credits": 0}

    def break_request(self, provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
        body = provider._body  # type: ignore[attr-defined]

        def broken(spec: JobSpec, staged: Any, **kw: Any) -> dict[str, Any]:
            return {**body(spec, staged, **kw), "output_format": "avi"}

        monkeypatch.setattr(provider, "_body", broken)

    async def test_colour_background(self, provider: Provider, clip: str) -> None:
        spec = JobSpec("removebgvideo", "remove-background", "light", format="mp4", background="#00ff00")
        handle, status = await self.run_job(provider, spec, clip)
        assert status.state == JobState.SUCCEEDED, status.message
        assert status.cost is not None and status.cost.unit == "credits" and status.cost.units == pytest.approx(0.75)
        await self.check_artifacts(provider, handle, expect_mask=False)

    async def test_refuses_unsupported_upload(self, provider: Provider, tmp_path: Any) -> None:
        from vidbatch.errors import InputError

        f = tmp_path / "clip.mkv"
        f.write_bytes(b"\x1aE\xdf\xa3" + b"0" * 100)
        with pytest.raises(InputError, match="mp4, .mov, .webm or .avi"):
            await provider.stage(make_item(str(f), self.default_spec, 104))
