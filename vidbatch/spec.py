"""The value types that flow between the manifest, the tasks and the providers.

All are frozen dataclasses: small, hashable where it matters, JSON-serialisable
through ``to_json`` / ``from_json`` where they cross a process boundary (job
handles are persisted on the state store; task results go through Prefect).
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Mapping

Operation = Literal["remove-background", "upscale"]
OPERATIONS: tuple[str, ...] = ("remove-background", "upscale")

Format = Literal["webm", "mov", "mp4", "gif", "webp", "png_sequence"]
FORMATS: tuple[str, ...] = ("webm", "mov", "mp4", "gif", "webp", "png_sequence")
#: formats whose files can carry an alpha channel (GIF: on/off transparency only)
ALPHA_FORMATS: frozenset[str] = frozenset({"webm", "mov", "gif", "webp", "png_sequence"})
#: file extension written for each format
FORMAT_EXT: dict[str, str] = {
    "webm": "webm",
    "mov": "mov",
    "mp4": "mp4",
    "gif": "gif",
    "webp": "webp",
    "png_sequence": "zip",
}

TARGETS: dict[str, int] = {"720p": 720, "1080p": 1080, "1440p": 1440, "2160p": 2160}


def canonical_json(value: Any) -> str:
    """Stable JSON used for hashing: sorted keys, no whitespace."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True)
class JobSpec:
    """What to do to one input, in normalized (provider-neutral) terms."""

    provider: str
    operation: str
    model: str
    format: str = "webm"
    background: str = "transparent"
    mask: bool = False
    factor: float | None = None
    target: str | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def transparent(self) -> bool:
        return self.operation == "remove-background" and self.background == "transparent"

    @property
    def ext(self) -> str:
        return FORMAT_EXT[self.format]

    def canonical(self) -> dict[str, Any]:
        data = asdict(self)
        data["params"] = dict(sorted(dict(self.params).items()))
        if self.operation != "remove-background":
            data.pop("background")
            data.pop("mask")
        if self.operation != "upscale":
            data.pop("factor")
            data.pop("target")
        return data

    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.canonical()).encode()).hexdigest()


@dataclass(frozen=True)
class Item:
    """One input video, fully planned: where from, what to do, where to."""

    url: str
    fingerprint: str
    size: int
    spec: JobSpec
    key: str
    output: str
    mask_output: str | None = None
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    rel: str = ""
    index: int = 0
    #: quality thresholds from ``verify:`` (not part of the key: changing a
    #: threshold re-judges, it does not reprocess)
    thresholds: Mapping[str, Any] = field(default_factory=dict)

    @property
    def outputs(self) -> list[str]:
        return [self.output] + ([self.mask_output] if self.mask_output else [])


def item_key(spec: JobSpec, fingerprint: str) -> str:
    """sha256(provider, operation, model, canonical params, format, ..., fingerprint)."""
    payload = canonical_json({"spec": spec.canonical(), "input": fingerprint})
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass(frozen=True)
class MediaInfo:
    """What a probe of a video (or image / PNG-sequence zip) found."""

    width: int
    height: int
    fps: float
    frames: int
    duration: float
    codec: str = ""
    pix_fmt: str = ""
    container: str = ""
    has_alpha: bool = False
    has_audio: bool = False
    size: int = 0
    #: the nominal (constant) frame rate the container states, when it has one; a
    #: variable-frame-rate input has an average ``fps`` apart from it (0: unknown)
    nominal_fps: float = 0.0

    @property
    def megapixels(self) -> float:
        return self.width * self.height * max(self.frames, 1) / 1e6

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StagedInput:
    """The input as the provider will read it: a URL, or an asset id."""

    url: str | None = None
    asset_id: str | None = None
    local_path: str | None = None
    expires_at: float | None = None
    #: MIME type of the input as staged (e.g. ``video/mp4``, ``image/png``); lets a
    #: provider pick an endpoint by input kind (fal: image vs video BiRefNet)
    content_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StagedInput:
        return cls(**dict(data))


@dataclass(frozen=True)
class JobHandle:
    """Everything needed to find a remote job again, from any process.

    ``urls`` holds the URLs the provider returned (status / response / cancel),
    kept rather than rebuilt (fal's traps). Persisted before submit returns.
    """

    provider: str
    request_id: str
    urls: Mapping[str, str] = field(default_factory=dict)
    submitted_at: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "provider": self.provider,
            "request_id": self.request_id,
            "urls": dict(self.urls),
            "submitted_at": self.submitted_at,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> JobHandle:
        return cls(
            provider=data["provider"],
            request_id=data["request_id"],
            urls=dict(data.get("urls") or {}),
            submitted_at=float(data.get("submitted_at") or 0.0),
            extra=dict(data.get("extra") or {}),
        )


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELED)


@dataclass(frozen=True)
class JobStatus:
    state: JobState
    message: str = ""
    progress: float | None = None
    queue_position: int | None = None
    logs: tuple[str, ...] = ()
    #: provider-reported cost once known (USD), for the report
    cost_usd: float | None = None
    #: the provider's own charge where it bills in its own units (Scenario
    #: ``billing.cuCost`` in CU, removebgvideo credits); ``usd`` set if a rate is known
    cost: Cost | None = None


@dataclass(frozen=True)
class Artifact:
    """One downloadable result of a job."""

    url: str
    kind: Literal["video", "mask"] = "video"
    content_type: str = ""
    size: int | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Cost:
    """An estimate or an actual charge. ``usd`` is None where no price is published."""

    usd: float | None
    units: float | None = None
    unit: str = ""
    basis: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)


def upscaled_size(width: int, height: int, factor: float | None, target: str | None) -> tuple[int, int]:
    """Output size of an upscale: by ``factor``, or to ``target`` lines (e.g. 720p).

    The single definition shared by the engine, the emulator, the providers'
    estimates and the verifier. Dimensions are rounded to even numbers (4:2:0).
    """
    if target is not None:
        lines = TARGETS[target]
        scale = lines / min(width, height)
        return _even(width * scale), _even(height * scale)
    f = 2.0 if factor is None else float(factor)
    return _even(width * f), _even(height * f)


def mask_format(fmt: str) -> str:
    """The container of a mask video for an output format.

    WebM and MOV keep their container; GIF, WebP and PNG sequences get an MP4
    mask (a grayscale video is what compositing tools expect).
    """
    return fmt if fmt in ("webm", "mov", "mp4") else "mp4"
