"""Verification of an output against its input and its spec.

Checks (each recorded as a fact in the report, a failure raises ``VerifyError``):

- the output decodes to the end;
- frame count equals the input's; fps equal; duration within one frame;
- width x height equals the input's (remove-background) or what the factor /
  target demands (upscale);
- an alpha channel is present iff a transparent background was asked for, judged
  on decoded alpha values: a transparent output must not be uniformly opaque (a
  clip with no person may be uniformly transparent); an opaque one must be;
- the mask video (when asked) decodes with the same frame count and size.

Then quality metrics (``vidbatch.metrics``) and the manifest's thresholds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vidbatch.errors import InputError, VerifyError
from vidbatch.spec import Item, MediaInfo, upscaled_size


def expected_size(item: Item, media_in: MediaInfo) -> tuple[int, int]:
    if item.spec.operation == "upscale":
        return upscaled_size(media_in.width, media_in.height, item.spec.factor, item.spec.target)
    return media_in.width, media_in.height


def _scan(path: str) -> dict[str, Any]:
    """Decode every frame once; alpha statistics on a pixel subsample."""
    from vidbatch import media

    info = media.probe(path)
    frames = 0
    alpha_min, alpha_max, alpha_sum, opaque_frames = 255, 0, 0.0, 0
    width = height = 0
    try:
        for frame in media.iter_frames(path, "rgba"):
            frames += 1
            height, width = frame.shape[:2]
            a = frame[::4, ::4, 3]
            lo, hi = int(a.min()), int(a.max())
            alpha_min, alpha_max = min(alpha_min, lo), max(alpha_max, hi)
            alpha_sum += float(a.mean())
            opaque_frames += int(lo == 255)
    except InputError as exc:
        raise VerifyError(f"output does not decode to the end: {exc} (after {frames} frames)") from exc
    return {
        "frames": frames,
        "width": width or info.width,
        "height": height or info.height,
        "fps": info.fps,
        "duration": info.duration,
        "codec": info.codec,
        "pix_fmt": info.pix_fmt,
        "container": info.container,
        "has_alpha_channel": info.has_alpha,
        "alpha_min": alpha_min if frames else None,
        "alpha_max": alpha_max if frames else None,
        "alpha_mean": round(alpha_sum / frames / 255.0, 4) if frames else None,
        "opaque_frames": opaque_frames,
        "size_bytes": info.size,
    }


def check_video(item: Item, media_in: MediaInfo, path: str, *, transparent: bool, what: str = "output") -> dict[str, Any]:
    facts = _scan(path)
    problems: list[str] = []
    if facts["frames"] == 0:
        raise VerifyError(f"{what} has no decodable frames")
    if facts["frames"] != media_in.frames:
        problems.append(f"{facts['frames']} frames, the input has {media_in.frames}")
    if media_in.fps and facts["fps"] and abs(facts["fps"] - media_in.fps) > 0.01 * media_in.fps:
        problems.append(f"{facts['fps']:.3f} fps, the input has {media_in.fps:.3f}")
    frame_time = 1.0 / media_in.fps if media_in.fps else 0.05
    if facts["duration"] and media_in.duration and abs(facts["duration"] - media_in.duration) > frame_time + 1e-3:
        problems.append(f"duration {facts['duration']:.3f} s, the input lasts {media_in.duration:.3f} s")
    want_w, want_h = expected_size(item, media_in)
    if (facts["width"], facts["height"]) != (want_w, want_h):
        problems.append(f"size {facts['width']}x{facts['height']}, expected {want_w}x{want_h}")
    if transparent:
        if facts["alpha_min"] == 255:
            problems.append("no transparency: every decoded alpha value is opaque although background is transparent")
    elif facts["alpha_min"] is not None and facts["alpha_min"] < 250:
        problems.append("has transparent pixels although an opaque output was asked for")
    facts["ok"] = not problems
    if problems:
        raise VerifyError(f"{what} failed verification: " + "; ".join(problems))
    return facts


def verify_outputs(
    item: Item,
    media_in: MediaInfo,
    output_path: str,
    *,
    mask_path: str | None = None,
    input_path: str | None = None,
) -> dict[str, Any]:
    """All checks and metrics for one item. Returns the report's verify facts."""
    facts: dict[str, Any] = {"output": check_video(item, media_in, output_path, transparent=item.spec.transparent)}
    if mask_path is not None:
        facts["mask"] = check_video(item, media_in, mask_path, transparent=False, what="mask video")
    facts["input"] = media_in.to_json()
    metrics: dict[str, float] = {}
    if input_path is not None:
        metrics = compute_metrics(item, input_path, output_path, mask_path)
    facts["metrics"] = metrics
    return facts


def compute_metrics(item: Item, input_path: str, output_path: str, mask_path: str | None) -> dict[str, float]:
    try:
        from vidbatch import metrics as metrics_mod
    except ImportError:  # pragma: no cover - metrics ship with the package
        return {}
    values = metrics_mod.compute_metrics(
        item.spec.operation, input_path, output_path, mask_path=mask_path, background=item.spec.background
    )
    return {k: (round(float(v), 6) if isinstance(v, (int, float, np.floating)) else v) for k, v in values.items()}


def apply_thresholds(item: Item, metrics: dict[str, float]) -> list[str]:
    """``verify:`` rules: ``on_fail: warn`` flags the item, ``fail`` fails it."""
    if not item.thresholds:
        return []
    from vidbatch.metrics import check_thresholds

    violations = check_thresholds(metrics, item.thresholds)
    failed = [v for v in violations if v.on_fail == "fail"]
    if failed:
        raise VerifyError("quality threshold failed: " + "; ".join(str(v) for v in failed))
    return [f"quality threshold: {v}" for v in violations]
