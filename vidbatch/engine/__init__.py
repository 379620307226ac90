"""The embedded CPU engine behind the ``local`` provider and the emulator.

Named honestly: background removal is MediaPipe's *selfie (person) segmenter*
shipped inside the ``mediapipe==0.10.21`` wheel, temporally smoothed; upscale is
a *Lanczos resample* of the decoded YUV frames. Neither is BiRefNet or SeedVR2.

Public API (local file paths in, local file paths out)::

    remove_background(src, dst, fmt=..., background=..., mask_dst=None, model=...)
    upscale(src, dst, fmt=..., factor=None, target=None, model="lanczos")

``CALLS`` counts engine invocations in this process (tests use it to prove that a
cached rerun does no engine work).
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from dataclasses import dataclass

MODELS: dict[str, tuple[str, ...]] = {
    "remove-background": ("selfie-landscape", "selfie-general"),
    "upscale": ("lanczos",),
}
DEFAULT_MODEL: dict[str, str] = {"remove-background": "selfie-landscape", "upscale": "lanczos"}

# mediapipe's C++ logging (glog/TFLite) prints GPU/EGL notices on every model load;
# it must be silenced before mediapipe is first imported
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CALLS: Counter[str] = Counter()
_calls_lock = threading.Lock()


def _count(op: str) -> None:
    with _calls_lock:
        CALLS[op] += 1


@dataclass(frozen=True)
class EngineResult:
    output: str
    mask: str | None
    frames: int
    width: int
    height: int
    fps: float
    seconds: float


def remove_background(
    src: str,
    dst: str,
    *,
    fmt: str = "webm",
    background: str = "transparent",
    mask_dst: str | None = None,
    model: str = "selfie-landscape",
    smoothing: float = 0.6,
) -> EngineResult:
    """Segment the person in every frame of ``src`` and write ``dst`` in ``fmt``.

    ``background`` is ``"transparent"``, ``"#rrggbb"`` or a local image path.
    ``mask_dst`` (optional) receives a grayscale mask video in the same container
    family (webm/mov/mp4 -> that container; gif/webp/png_sequence -> mp4... see
    ``vidbatch.engine.codecs.mask_format``).
    """
    from vidbatch.engine.pipeline import run_remove_background

    _count("remove-background")
    return run_remove_background(
        src, dst, fmt=fmt, background=background, mask_dst=mask_dst, model=model, smoothing=smoothing
    )


def upscale(
    src: str,
    dst: str,
    *,
    fmt: str = "mp4",
    factor: float | None = None,
    target: str | None = None,
    model: str = "lanczos",
) -> EngineResult:
    """Resample ``src`` by ``factor`` or to ``target`` (e.g. ``"720p"``) with Lanczos."""
    from vidbatch.engine.pipeline import run_upscale

    _count("upscale")
    return run_upscale(src, dst, fmt=fmt, factor=factor, target=target, model=model)
