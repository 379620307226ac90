"""Typed native parameters of every hosted model, mirroring each provider's names.

Each class is the JSON body a provider's endpoint accepts, with the provider's
own field names, enums, ranges and defaults (``/work/shared/providers/*.md``).
They are used twice: to validate a manifest's ``params:`` (native extras passed
through) before anything runs, and to build the exact request body at submit.

``native()`` turns pydantic's errors into one-line ``ConfigError`` messages that
name the allowed keys or values; ``merge()`` lays the user's native extras over
the values vidbatch derives from the normalized settings (``model:``,
``format:``, ``mask:``, ``factor:``/``target:``, ``background:``) and refuses a
native key that contradicts them, because the planner, the verifier and the
output paths all follow the normalized settings.
"""

from __future__ import annotations

import typing
from typing import Any, Literal, Mapping, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vidbatch.errors import ConfigError

# --------------------------------------------------------------------------- shared enums

BIREFNET_IMAGE_MODELS: tuple[str, ...] = (
    "General Use (Light)",
    "General Use (Light 2K)",
    "General Use (Heavy)",
    "Matting",
    "Portrait",
)
DYNAMIC = "General Use (Dynamic)"
#: fal's video endpoint adds the Dynamic checkpoint (256-2304 px)
BIREFNET_VIDEO_MODELS: tuple[str, ...] = BIREFNET_IMAGE_MODELS + (DYNAMIC,)

BirefnetModel = Literal["General Use (Light)", "General Use (Light 2K)", "General Use (Heavy)", "Matting", "Portrait"]
BirefnetVideoModel = Literal[
    "General Use (Light)", "General Use (Light 2K)", "General Use (Heavy)", "Matting", "Portrait", "General Use (Dynamic)"
]
Resolution = Literal["1024x1024", "2048x2048"]
VideoResolution = Literal["1024x1024", "2048x2048", "2304x2304"]
VideoOutputType = Literal["X264 (.mp4)", "VP9 (.webm)", "PRORES4444 (.mov)", "GIF (.gif)"]
Quality = Literal["low", "medium", "high", "maximum"]
WriteMode = Literal["fast", "balanced", "small"]
UpscaleMode = Literal["factor", "target"]
TargetResolution = Literal["720p", "1080p", "1440p", "2160p"]

#: normalized format -> fal/Scenario container enum (both use the same strings)
VIDEO_OUTPUT_TYPE: dict[str, str] = {
    "mp4": "X264 (.mp4)",
    "webm": "VP9 (.webm)",
    "mov": "PRORES4444 (.mov)",
    "gif": "GIF (.gif)",
}


class _Native(BaseModel):
    """A provider request body: unknown keys refused, values checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: fields vidbatch fills from the staged input (never from ``params:``)
    input_fields: typing.ClassVar[tuple[str, ...]] = ()

    @classmethod
    def user_keys(cls) -> list[str]:
        return [k for k in cls.model_fields if k not in cls.input_fields]

    def body(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


# --------------------------------------------------------------------------- fal


class FalBirefnetVideo(_Native):
    """``fal-ai/birefnet/v2/video`` input (seed 001)."""

    input_fields = ("video_url",)

    video_url: str
    model: BirefnetVideoModel = "General Use (Light)"
    operating_resolution: VideoResolution = "1024x1024"
    output_mask: bool = False
    refine_foreground: bool = True
    sync_mode: bool = False
    video_output_type: VideoOutputType = "X264 (.mp4)"
    video_quality: Quality = "high"
    video_write_mode: WriteMode = "balanced"

    @model_validator(mode="after")
    def _combinations(self) -> FalBirefnetVideo:
        if self.operating_resolution == "2304x2304" and self.model != DYNAMIC:
            raise ValueError(
                f"operating_resolution 2304x2304 is only offered with model {DYNAMIC!r}; "
                "use 1024x1024 or 2048x2048, or that model"
            )
        if self.sync_mode:
            raise ValueError(_SYNC_MODE)
        return self


_SYNC_MODE = (
    "sync_mode: true returns the media base64-encoded inside the result JSON (kept only minutes); "
    "leave it false"
)


class FalBirefnetImage(_Native):
    """``fal-ai/birefnet/v2`` (image) input (seed 004): no Dynamic, no 2304."""

    input_fields = ("image_url",)

    image_url: str
    model: BirefnetModel = "General Use (Light)"
    operating_resolution: Resolution = "1024x1024"
    output_mask: bool = False
    refine_foreground: bool = True
    sync_mode: bool = False
    output_format: Literal["png", "webp", "gif"] = "png"

    @model_validator(mode="after")
    def _combinations(self) -> FalBirefnetImage:
        if self.sync_mode:
            raise ValueError(_SYNC_MODE)
        return self


class FalSeedvrVideo(_Native):
    """``fal-ai/seedvr/upscale/video`` input (fal.md 5.4; encoding fields are 3P)."""

    input_fields = ("video_url",)

    video_url: str
    upscale_mode: UpscaleMode = "factor"
    upscale_factor: float = Field(default=2.0, ge=1, le=10)
    target_resolution: TargetResolution = "1080p"
    noise_scale: float = Field(default=0.1, ge=0, le=1)
    output_format: VideoOutputType = "X264 (.mp4)"
    output_quality: Quality = "high"
    output_write_mode: WriteMode = "balanced"
    seed: Optional[int] = None
    sync_mode: bool = False

    @model_validator(mode="after")
    def _combinations(self) -> FalSeedvrVideo:
        if self.sync_mode:
            raise ValueError(_SYNC_MODE)
        return self


# --------------------------------------------------------------------------- Scenario


class ScenarioBirefnetVideo(_Native):
    """``model_birefnet-v2-video`` input (seed 000 + model page): no Dynamic, no 2304."""

    input_fields = ("video",)

    video: str
    model: BirefnetModel = "General Use (Light)"
    operatingResolution: Resolution = "1024x1024"
    outputMask: bool = False
    refineForeground: bool = True
    videoQuality: Quality = "high"
    videoWriteMode: WriteMode = "balanced"
    #: Scenario's default keeps alpha (unlike fal's mp4); only sent when not the default
    videoOutputType: VideoOutputType = "VP9 (.webm)"

    def body(self) -> dict[str, Any]:
        data = super().body()
        # the field is absent from the seed and the model page: send it only when
        # it changes something (scenario.md 4.1)
        if data.get("videoOutputType") == "VP9 (.webm)":
            data.pop("videoOutputType")
        return data


class ScenarioSeedvrVideo(_Native):
    """``model_seedvr-2-upscale-video`` input (seed 003): upscaleFactor 2-10, no format."""

    input_fields = ("video",)

    video: str
    upscaleMode: UpscaleMode = "factor"
    upscaleFactor: float = Field(default=2.0, ge=2, le=10)
    targetResolution: TargetResolution = "1080p"
    noiseScale: float = Field(default=0.1, ge=0, le=1)
    outputQuality: Quality = "high"
    outputWriteMode: WriteMode = "balanced"
    seed: Optional[int] = None


# --------------------------------------------------------------------------- removebgvideo

RbvModel = Literal["original", "light", "pro", "human"]
RBV_MODELS: tuple[str, ...] = typing.get_args(RbvModel)
RbvFormat = Literal["webm", "mov", "mp4", "gif", "webp", "png_sequence"]
RbvBgType = Literal["transparent", "green", "white", "black", "blue", "custom", "color", "image"]


class RbvBackground(BaseModel):
    """The ``background`` object of ``POST /v1/jobs`` / ``/start`` (composition-json page)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["transparent", "color", "image"]
    color: Optional[str] = None
    image_url: Optional[str] = None


class RbvJob(_Native):
    """``POST /v1/jobs`` body (process-video page + Python SDK ``create_job``)."""

    input_fields = ("video_url",)

    video_url: str
    model: RbvModel = "original"
    bg_type: RbvBgType = "transparent"
    bg_color: Optional[list[int]] = Field(default=None, min_length=3, max_length=3)
    background: Optional[RbvBackground] = None
    output_format: RbvFormat = "webm"
    text_prompt: Optional[str] = None
    webhook_url: Optional[str] = None
    auto_start: bool = True
    metadata: Optional[dict[str, Any]] = None
    composition: Optional[dict[str, Any]] = None
    preview_duration: Optional[float] = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _combinations(self) -> RbvJob:
        if self.text_prompt and self.model != "pro":
            raise ValueError("text_prompt is only used by model 'pro'; set model: pro or drop text_prompt")
        if self.bg_type == "custom" and not self.bg_color:
            raise ValueError("bg_type 'custom' needs bg_color [r, g, b]")
        if self.bg_color and any(not 0 <= c <= 255 for c in self.bg_color):
            raise ValueError("bg_color values must be 0-255")
        if not self.auto_start:
            raise ValueError(
                "auto_start: false creates a draft job that never runs without /start; "
                "vidbatch always starts its jobs - drop auto_start"
            )
        return self


# --------------------------------------------------------------------------- helpers


def allowed_values(model_cls: type[BaseModel], key: str) -> tuple[Any, ...]:
    field = model_cls.model_fields.get(key)
    if field is None:
        return ()
    ann = field.annotation
    for arg in (ann, *typing.get_args(ann)):
        if typing.get_origin(arg) is Literal:
            return typing.get_args(arg)
    return ()


def native(
    model_cls: type[_Native], values: Mapping[str, Any], *, where: str, extra_keys: tuple[str, ...] = ()
) -> _Native:
    """Build and check a native body; any problem is one ``ConfigError`` line.

    ``where`` prefixes the message, e.g. ``"fal fal-ai/birefnet/v2/video"``;
    ``extra_keys`` are vidbatch-level keys the provider also accepts in ``params``.
    """
    try:
        return model_cls.model_validate(dict(values))
    except ValidationError as exc:
        raise ConfigError(f"{where}: {describe(exc, model_cls, extra_keys)}") from None


def describe(exc: ValidationError, model_cls: type[_Native], extra_keys: tuple[str, ...] = ()) -> str:
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err.get("loc", ())]
    key = loc[0] if loc else ""
    etype = err.get("type", "")
    if etype == "extra_forbidden":
        allowed = model_cls.user_keys() + list(extra_keys)
        return f"unknown param {key!r}; allowed params: {', '.join(allowed)}"
    if etype == "literal_error":
        allowed = allowed_values(model_cls, key) if len(loc) == 1 else ()
        choices = ", ".join(str(a) for a in allowed) if allowed else err.get("ctx", {}).get("expected", "")
        return f"params.{'.'.join(loc)}: {err.get('input')!r} is not allowed; choose one of: {choices}"
    if etype == "missing":
        return f"params.{'.'.join(loc)} is required"
    msg = str(err.get("msg", "invalid"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if not loc:
        return msg
    return f"params.{'.'.join(loc)}: {msg} (got {err.get('input')!r})"


def merge(
    derived: Mapping[str, Any],
    user: Mapping[str, Any],
    *,
    owned: Mapping[str, str],
    inputs: tuple[str, ...],
    where: str,
) -> dict[str, Any]:
    """``derived`` (from normalized settings) overlaid with the user's native ``params``.

    ``owned`` maps native keys to the manifest setting that decides them; a user
    value for such a key must agree with the derived one. ``inputs`` are the keys
    vidbatch fills from the staged input.
    """
    out = dict(derived)
    for key, value in user.items():
        if key in inputs:
            raise ConfigError(f"{where}: params.{key} is filled from the input video by vidbatch; remove it")
        if key in owned:
            if key in derived and _same(derived[key], value):
                continue
            setting = owned[key]
            shown = f"{derived[key]!r}" if key in derived else "unset"
            raise ConfigError(
                f"{where}: params.{key}={value!r} contradicts the manifest's {setting} "
                f"(which gives {key}={shown}); change {setting} instead of params.{key}"
            )
        out[key] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return float(a) == float(b)
    return a == b
