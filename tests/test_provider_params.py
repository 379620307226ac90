"""Normalized -> native parameter mapping of the hosted providers, and refusals.

Every impossible combination is refused by ``validate(spec)`` with a one-line
``ConfigError`` that says how to fix it, before anything is uploaded or paid.
"""

from __future__ import annotations

from typing import Any

import pytest

from vidbatch.errors import ConfigError, CredentialsError, InputError
from vidbatch.providers.base import ProviderSettings
from vidbatch.providers.fal import FalProvider
from vidbatch.providers.registry import create, get_class
from vidbatch.providers.removebgvideo import RemoveBgVideoProvider, client_token
from vidbatch.providers.scenario import ScenarioProvider
from vidbatch.spec import JobSpec, MediaInfo, StagedInput

FAL_CREDS = {"FAL_KEY": "kid:fal-secret-1234"}
SC_CREDS = {"SCENARIO_SDK_API_KEY": "sc-key-1234", "SCENARIO_SDK_API_SECRET": "sc-secret-1234"}
RBV_CREDS = {"REMOVEBGVIDEO_API_KEY": "rbv-key-1234"}
MEDIA = MediaInfo(width=640, height=360, fps=25.0, frames=50, duration=2.0, container="mov,mp4,m4a,3gp,3g2,mj2", size=10_000)


def bg(provider: str, model: str, **kw: Any) -> JobSpec:
    return JobSpec(provider=provider, operation="remove-background", model=model, **kw)


def up(provider: str, **kw: Any) -> JobSpec:
    return JobSpec(provider=provider, operation="upscale", model="seedvr2", **kw)


@pytest.fixture()
def falp() -> FalProvider:
    return FalProvider(ProviderSettings(credentials=FAL_CREDS))


@pytest.fixture()
def scp() -> ScenarioProvider:
    return ScenarioProvider(ProviderSettings(credentials=SC_CREDS))


@pytest.fixture()
def rbv() -> RemoveBgVideoProvider:
    return RemoveBgVideoProvider(ProviderSettings(credentials=RBV_CREDS))


def refused(provider: Any, spec: JobSpec, *needles: str) -> str:
    with pytest.raises(ConfigError) as info:
        provider.validate(spec)
    msg = str(info.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg
    return msg


# --------------------------------------------------------------------------- registry


def test_registry_names_the_hosted_classes() -> None:
    assert get_class("fal") is FalProvider
    assert get_class("scenario") is ScenarioProvider
    assert get_class("removebgvideo") is RemoveBgVideoProvider


# --------------------------------------------------------------------------- fal


@pytest.mark.parametrize(
    "fmt,native_type",
    [("webm", "VP9 (.webm)"), ("mov", "PRORES4444 (.mov)"), ("gif", "GIF (.gif)")],
)
def test_fal_video_formats(falp: FalProvider, fmt: str, native_type: str) -> None:
    endpoint, body = falp._native(bg("fal", "General Use (Light)", format=fmt), StagedInput(url="https://x/in.mp4"))
    assert endpoint == "fal-ai/birefnet/v2/video"
    assert body["video_output_type"] == native_type
    assert body["video_url"] == "https://x/in.mp4"
    assert body["model"] == "General Use (Light)" and body["output_mask"] is False


def test_fal_video_mapping_full(falp: FalProvider) -> None:
    spec = bg(
        "fal",
        "General Use (Dynamic)",
        format="mov",
        mask=True,
        params={"operating_resolution": "2304x2304", "refine_foreground": False, "video_quality": "maximum",
                "video_write_mode": "small"},
    )
    falp.validate(spec)
    _, body = falp._native(spec, StagedInput(url="https://x/in.mp4"))
    assert body == {
        "video_url": "https://x/in.mp4",
        "model": "General Use (Dynamic)",
        "operating_resolution": "2304x2304",
        "output_mask": True,
        "refine_foreground": False,
        "sync_mode": False,
        "video_output_type": "PRORES4444 (.mov)",
        "video_quality": "maximum",
        "video_write_mode": "small",
    }


def test_fal_every_model_accepted(falp: FalProvider) -> None:
    for model in falp.operations["remove-background"].models:
        falp.validate(bg("fal", model, format="webm"))
    assert falp.default_model("remove-background") == "General Use (Light)"
    assert len(falp.operations["remove-background"].models) == 6


def test_fal_refusals(falp: FalProvider) -> None:
    refused(falp, bg("fal", "General Use (Light)", format="mp4"), "mp4", "webm", "mov", "gif")
    refused(falp, bg("fal", "General Use (Light)", format="webp"), "webp", "not offered")
    refused(falp, bg("fal", "General Use (Light)", format="png_sequence"), "png_sequence")
    refused(falp, bg("fal", "General Use (Light)", format="webm", background="#00ff00"), "removebgvideo", "composite")
    refused(falp, bg("fal", "General Use (Light)", format="webm", background="https://x/bg.png"), "removebgvideo")
    refused(falp, bg("fal", "General Use (Light)", format="webm", params={"operating_resolution": "2304x2304"}),
            "2304x2304", "General Use (Dynamic)")
    refused(falp, bg("fal", "BiRefNet Ultra", format="webm"), "unknown model", "General Use (Light)")
    refused(falp, bg("fal", "General Use (Light)", format="webm", params={"colour": "red"}),
            "unknown param 'colour'", "operating_resolution", "video_write_mode", "input_kind")
    refused(falp, bg("fal", "General Use (Light)", format="webm", params={"video_quality": "ultra"}),
            "video_quality", "low, medium, high, maximum")
    refused(falp, bg("fal", "General Use (Light)", format="webm", params={"operating_resolution": "4096x4096"}),
            "1024x1024, 2048x2048, 2304x2304")
    refused(falp, bg("fal", "General Use (Light)", format="webm", params={"video_output_type": "X264 (.mp4)"}),
            "format:", "video_output_type")
    refused(falp, bg("fal", "General Use (Light)", format="webm", params={"output_mask": True}), "mask:")
    refused(falp, bg("fal", "General Use (Light)", format="webm", params={"video_url": "https://evil/x.mp4"}),
            "video_url", "remove it")
    refused(falp, bg("fal", "General Use (Light)", format="webm", params={"sync_mode": True}), "sync_mode")
    refused(falp, bg("fal", "General Use (Light)", format="webm", params={"input_kind": "audio"}), "auto, video, image")
    # agreeing with the normalized value is fine
    falp.validate(bg("fal", "Portrait", format="webm", params={"model": "Portrait", "video_output_type": "VP9 (.webm)"}))


def test_fal_image_endpoint(falp: FalProvider) -> None:
    spec = bg("fal", "Matting", format="webp", mask=True)
    endpoint, body = falp._native(spec, StagedInput(url="https://x/in.png", content_type="image/png"))
    assert endpoint == "fal-ai/birefnet/v2"
    assert body["image_url"] == "https://x/in.png" and body["output_format"] == "webp" and body["output_mask"] is True
    assert "video_url" not in body and "video_output_type" not in body
    # chosen explicitly
    spec = bg("fal", "General Use (Light)", format="gif", params={"input_kind": "image"})
    falp.validate(spec)
    endpoint, body = falp._native(spec, StagedInput(url="https://x/in.mp4"))
    assert endpoint == "fal-ai/birefnet/v2" and body["output_format"] == "gif"
    refused(falp, bg("fal", "General Use (Dynamic)", format="webp", params={"input_kind": "image"}), "video-only")
    refused(falp, bg("fal", "General Use (Light)", format="webm", params={"input_kind": "image"}), "webp or gif")
    refused(falp, bg("fal", "General Use (Light)", format="webp", params={"input_kind": "image", "operating_resolution": "2304x2304"}),
            "1024x1024, 2048x2048")
    with pytest.raises(ConfigError, match="webp or gif"):
        falp._native(bg("fal", "General Use (Light)", format="webm"), StagedInput(url="https://x/a.jpg", content_type="image/jpeg"))


def test_fal_upscale_mapping(falp: FalProvider) -> None:
    staged = StagedInput(url="https://x/in.mp4")
    endpoint, body = falp._native(up("fal", format="mp4", factor=4), staged)
    assert endpoint == "fal-ai/seedvr/upscale/video"
    assert body["upscale_mode"] == "factor" and body["upscale_factor"] == 4 and "target_resolution" not in body
    assert body["output_format"] == "X264 (.mp4)"
    _, body = falp._native(up("fal", format="webm", target="720p"), staged)
    assert body["upscale_mode"] == "target" and body["target_resolution"] == "720p" and "upscale_factor" not in body
    assert body["output_format"] == "VP9 (.webm)"
    _, body = falp._native(up("fal", format="mov", factor=1.5, params={"noise_scale": 0.3, "seed": 7, "output_quality": "low"}), staged)
    assert body["upscale_factor"] == 1.5 and body["noise_scale"] == 0.3 and body["seed"] == 7 and body["output_quality"] == "low"
    # the default is explicit: factor 2
    _, body = falp._native(up("fal", format="mp4"), staged)
    assert body["upscale_mode"] == "factor" and body["upscale_factor"] == 2


def test_fal_upscale_refusals(falp: FalProvider) -> None:
    refused(falp, up("fal", format="mp4", factor=2, target="1080p"), "either factor or target")
    refused(falp, up("fal", format="mp4", factor=11), "1-10")
    refused(falp, up("fal", format="mp4", factor=0.5), "1-10")
    refused(falp, up("fal", format="webp"), "not offered")
    refused(falp, up("fal", format="mp4", params={"noise_scale": 2}), "noise_scale", "less than or equal to 1")
    refused(falp, up("fal", format="mp4", target="720p", params={"upscale_factor": 3}), "factor:")
    refused(falp, up("fal", format="mp4", params={"target_resolution": "4k"}), "target:")
    refused(falp, up("fal", format="mp4", params={"output_write_mode": "fastest"}), "fast, balanced, small")
    refused(falp, JobSpec("fal", "upscale", "real-esrgan", format="mp4"), "seedvr2")
    refused(falp, JobSpec("fal", "colorize", "x"), "does not offer")


def test_fal_estimates(falp: FalProvider) -> None:
    cost = falp.estimate(up("fal", format="mp4", target="720p"), MEDIA)
    # 640x360 -> 1280x720, 50 frames: 46.08 MP -> $0.04608
    assert cost.units == pytest.approx(1280 * 720 * 50 / 1e6)
    assert cost.usd == pytest.approx(1280 * 720 * 50 / 1e6 * 0.001)
    cost = falp.estimate(up("fal", format="mp4", factor=3), MEDIA)
    assert cost.usd == pytest.approx(1920 * 1080 * 50 / 1e6 * 0.001)
    cost = falp.estimate(bg("fal", "General Use (Light)", format="webm"), MEDIA)
    assert cost.usd is None and "UNKNOWN" in cost.basis
    image = MediaInfo(width=512, height=512, fps=0, frames=1, duration=0.0)
    cost = falp.estimate(bg("fal", "General Use (Light)", format="webp", params={"input_kind": "image"}), image)
    assert cost.usd == pytest.approx(3 * 0.00111) and cost.unit == "compute s"


def test_fal_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CredentialsError, match="FAL_KEY"):
        FalProvider(ProviderSettings()).check_credentials()
    FalProvider(ProviderSettings(credentials={"FAL_KEY_ID": "id1", "FAL_KEY_SECRET": "sec-9876"})).check_credentials()
    monkeypatch.setenv("FAL_KEY", "envid:env-secret-5555")
    p = FalProvider(ProviderSettings())
    p.check_credentials()
    assert p._auth() == {"Authorization": "Key envid:env-secret-5555"}
    # registered secrets never show in messages
    from vidbatch.redact import redact

    assert "env-secret-5555" not in redact("key envid:env-secret-5555 leaked")


def test_fal_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    for env in ("VIDBATCH_FAL_QUEUE_URL", "VIDBATCH_FAL_REST_URL", "VIDBATCH_FAL_CDN_URL"):
        monkeypatch.delenv(env, raising=False)
    p = FalProvider(ProviderSettings())
    assert (p.queue_url, p.rest_url, p.cdn_url) == ("https://queue.fal.run", "https://rest.fal.ai", "https://v3.fal.media")
    p = FalProvider(ProviderSettings(base_url="http://127.0.0.1:9/"))
    assert (p.queue_url, p.rest_url) == ("http://127.0.0.1:9/fal/queue", "http://127.0.0.1:9/fal/rest")
    monkeypatch.setenv("VIDBATCH_FAL_QUEUE_URL", "http://q.local/")
    assert FalProvider(ProviderSettings()).queue_url == "http://q.local"


# --------------------------------------------------------------------------- Scenario


def test_scenario_birefnet_mapping(scp: ScenarioProvider) -> None:
    model_id, body = scp._native(bg("scenario", "Portrait", format="webm", mask=True,
                                    params={"operatingResolution": "2048x2048", "videoQuality": "low"}), "asset_abc")
    assert model_id == "model_birefnet-v2-video"
    assert body == {
        "video": "asset_abc",
        "model": "Portrait",
        "operatingResolution": "2048x2048",
        "outputMask": True,
        "refineForeground": True,
        "videoQuality": "low",
        "videoWriteMode": "balanced",
    }  # videoOutputType VP9 is Scenario's default: not sent
    _, body = scp._native(bg("scenario", "General Use (Light)", format="mov"), "asset_abc")
    assert body["videoOutputType"] == "PRORES4444 (.mov)"
    _, body = scp._native(bg("scenario", "General Use (Light)", format="gif"), "asset_abc")
    assert body["videoOutputType"] == "GIF (.gif)"


def test_scenario_refusals(scp: ScenarioProvider) -> None:
    refused(scp, bg("scenario", "General Use (Dynamic)", format="webm"), "fal-only")
    refused(scp, bg("scenario", "General Use (Light)", format="webm", params={"operatingResolution": "2304x2304"}),
            "1024x1024, 2048x2048")
    refused(scp, bg("scenario", "General Use (Light)", format="mp4"), "no alpha")
    refused(scp, bg("scenario", "General Use (Light)", format="webp"), "not offered")
    refused(scp, bg("scenario", "General Use (Light)", format="webm", background="#ffffff"), "removebgvideo")
    refused(scp, bg("scenario", "General Use (Light)", format="webm", params={"operating_resolution": "1024x1024"}),
            "unknown param 'operating_resolution'", "operatingResolution")
    refused(scp, bg("scenario", "General Use (Light)", format="webm", params={"video": "asset_other"}), "remove it")
    refused(scp, up("scenario", format="mp4", factor=1.5), "2-10", "fal")
    refused(scp, up("scenario", format="mp4", factor=12), "2-10")
    refused(scp, up("scenario", format="webm"), "mp4")
    refused(scp, up("scenario", format="mp4", params={"noiseScale": -1}), "noiseScale")
    refused(scp, up("scenario", format="mp4", params={"upscale_factor": 2}), "upscaleFactor")


def test_scenario_upscale_mapping(scp: ScenarioProvider) -> None:
    model_id, body = scp._native(up("scenario", format="mp4", target="1440p", params={"seed": 3}), "asset_1")
    assert model_id == "model_seedvr-2-upscale-video"
    assert body == {"video": "asset_1", "upscaleMode": "target", "targetResolution": "1440p", "noiseScale": 0.1,
                    "outputQuality": "high", "outputWriteMode": "balanced", "seed": 3}
    _, body = scp._native(up("scenario", format="mp4", factor=3), "asset_1")
    assert body["upscaleMode"] == "factor" and body["upscaleFactor"] == 3 and "targetResolution" not in body


def test_scenario_estimate_and_credentials(scp: ScenarioProvider, monkeypatch: pytest.MonkeyPatch) -> None:
    cost = scp.estimate(bg("scenario", "General Use (Light)"), MEDIA)
    assert cost.usd is None and "dryRun" in cost.basis
    rated = ScenarioProvider(ProviderSettings(credentials=SC_CREDS,
                                              options={"cu_per_second": 2, "cu_per_output_mp": 0.1, "cu_usd": 0.05}))
    cost = rated.estimate(bg("scenario", "General Use (Light)"), MEDIA)
    assert cost.units == 4 and cost.usd == pytest.approx(0.2)
    cost = rated.estimate(up("scenario", format="mp4", factor=2), MEDIA)
    assert cost.units == pytest.approx(1280 * 720 * 50 / 1e6 * 0.1) and cost.unit == "CU"
    with pytest.raises(ConfigError, match="cu_usd"):
        ScenarioProvider(ProviderSettings(credentials=SC_CREDS, options={"cu_usd": "cheap"}))
    for name in SC_CREDS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(CredentialsError, match="SCENARIO_SDK_API_KEY and SCENARIO_SDK_API_SECRET"):
        ScenarioProvider(ProviderSettings()).check_credentials()
    p = ScenarioProvider(ProviderSettings(base_url="http://127.0.0.1:9", credentials=SC_CREDS))
    assert p.api_url == "http://127.0.0.1:9/scenario/v1"
    import base64

    assert p._auth()["Authorization"] == "Basic " + base64.b64encode(b"sc-key-1234:sc-secret-1234").decode()


# --------------------------------------------------------------------------- removebgvideo


def body_of(p: RemoveBgVideoProvider, spec: JobSpec) -> dict[str, Any]:
    p.validate(spec)
    return p._body(spec, StagedInput(url="https://cdn/in.mp4"))


@pytest.mark.parametrize("fmt", ["webm", "mov", "gif", "webp", "png_sequence"])
def test_rbv_transparent_formats(rbv: RemoveBgVideoProvider, fmt: str) -> None:
    body = body_of(rbv, bg("removebgvideo", "original", format=fmt))
    assert body["output_format"] == fmt
    assert body["bg_type"] == "transparent" and body["background"] == {"type": "transparent"}
    assert body["model"] == "original" and body["auto_start"] is True
    assert body["video_url"] == "https://cdn/in.mp4"


def test_rbv_backgrounds(rbv: RemoveBgVideoProvider) -> None:
    body = body_of(rbv, bg("removebgvideo", "light", format="mp4", background="#10a0ff"))
    assert body["bg_type"] == "custom" and body["bg_color"] == [16, 160, 255]
    assert body["background"] == {"type": "color", "color": "#10a0ff"}
    body = body_of(rbv, bg("removebgvideo", "human", format="mp4", background="https://img/bg.jpg"))
    assert body["bg_type"] == "image" and body["background"] == {"type": "image", "image_url": "https://img/bg.jpg"}
    body = body_of(rbv, bg("removebgvideo", "pro", format="webm", params={"text_prompt": "person and dog", "preview_duration": 3}))
    assert body["text_prompt"] == "person and dog" and body["preview_duration"] == 3
    # vidbatch always tags its jobs so an uncertain submit can be found again
    spec = bg("removebgvideo", "original", format="webm", params={"metadata": {"team": "media"}})
    body = body_of(rbv, spec)
    assert body["metadata"]["team"] == "media"
    assert body["metadata"]["vidbatch_token"] == client_token(spec, StagedInput(url="https://cdn/in.mp4"))


def test_rbv_refusals(rbv: RemoveBgVideoProvider) -> None:
    refused(rbv, bg("removebgvideo", "original", format="mp4"), "no alpha", "webm")
    refused(rbv, bg("removebgvideo", "original", format="webm", mask=True), "mask")
    refused(rbv, bg("removebgvideo", "ultra", format="webm"), "original, light, pro, human")
    refused(rbv, up("removebgvideo", format="mp4"), "does not offer 'upscale'")
    refused(rbv, bg("removebgvideo", "original", format="webm", params={"text_prompt": "cat"}), "pro")
    refused(rbv, bg("removebgvideo", "original", format="webm", params={"auto_start": False}), "auto_start")
    refused(rbv, bg("removebgvideo", "original", format="webm", params={"bg_type": "green"}), "background:")
    refused(rbv, bg("removebgvideo", "original", format="webm", params={"output_format": "mp4"}), "format:")
    refused(rbv, bg("removebgvideo", "original", format="webm", params={"resolution": "4k"}),
            "unknown param 'resolution'", "text_prompt", "composition")
    refused(rbv, bg("removebgvideo", "original", format="mp4", background="/tmp/bg.png"), "http(s) or s3://")
    refused(rbv, bg("removebgvideo", "original", format="webm", params={"preview_duration": 0}), "preview_duration")


def test_rbv_cost_and_limits(rbv: RemoveBgVideoProvider) -> None:
    media = MediaInfo(width=640, height=360, fps=25, frames=251, duration=10.04)
    cost = rbv.estimate(bg("removebgvideo", "original"), media)
    assert cost.units == pytest.approx(60 * 11 / 60) and cost.unit == "credits" and cost.usd is None
    cost = rbv.estimate(bg("removebgvideo", "pro"), media)
    assert cost.units == pytest.approx(180 * 11 / 60)
    priced = RemoveBgVideoProvider(ProviderSettings(credentials=RBV_CREDS, options={"usd_per_credit": 0.01}))
    assert priced.estimate(bg("removebgvideo", "light"), media).usd == pytest.approx(45 * 11 / 60 * 0.01)
    with pytest.raises(InputError, match="500 MB"):
        rbv.check_input(bg("removebgvideo", "original"), MediaInfo(640, 360, 25, 10, 1, size=600_000_000))
    with pytest.raises(InputError, match="mp4, mov, webm or avi"):
        rbv.check_input(bg("removebgvideo", "original"), MediaInfo(640, 360, 25, 10, 1, container="flv"))
    rbv.check_input(bg("removebgvideo", "original"), MEDIA)


def test_rbv_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REMOVEBGVIDEO_API_KEY", raising=False)
    with pytest.raises(CredentialsError, match="REMOVEBGVIDEO_API_KEY"):
        create("removebgvideo").check_credentials()
    p = create("removebgvideo", ProviderSettings(base_url="http://h:1", credentials=RBV_CREDS))
    assert p.api_url == "http://h:1/removebgvideo"  # type: ignore[attr-defined]
    assert p._auth() == {"X-Api-Key": "rbv-key-1234"}  # type: ignore[attr-defined]


def test_poll_intervals() -> None:
    assert FalProvider.min_poll_interval >= 1 and ScenarioProvider.min_poll_interval >= 1
    assert RemoveBgVideoProvider.min_poll_interval >= 1
    assert FalProvider.can_recheck_submit is False
    assert ScenarioProvider.can_recheck_submit and RemoveBgVideoProvider.can_recheck_submit
