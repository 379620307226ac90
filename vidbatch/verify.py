"""Verification of an output against its input and its spec.

Every check records its facts in the report; each has a severity (``fail``,
``warn`` or ``off``) and, where real providers legitimately deviate, a
tolerance. ``verify:`` in the manifest overrides both per check::

    verify:
      frame_count: {tolerance: 0}         # no dropped or duplicated frame at all
      size: {multiple: 16, on_fail: warn}
      fps: {on_fail: off}                 # measured and reported, never judged

The checks (``CHECKS``) and why their defaults are what they are:

- ``decode``: the output decodes to the end. A file that stops decoding is
  broken whatever a player makes of it.
- ``alpha``: alpha is present iff a transparent background was asked for,
  judged on decoded alpha values: a transparent output must not be uniformly
  opaque (a clip with no subject may be uniformly transparent); an opaque one
  must be.
- ``size``: the input's size (remove-background) or what the factor / target
  demands (upscale), where each side may be rounded up or down to a multiple of
  2 and, for upscales, of 4, 8, 16 or 32 (``multiple``: the largest block
  allowed; 1 = exact). 4:2:0 encoders (H.264, VP9 without 4:4:4) need even
  sides, and upscalers that work on latents encode sizes in blocks of 8-32
  pixels. A result of another size class (half the width, the source size) is
  still a failure: the nearest accepted size is within one block.
- ``frame_count``: the input's count within ``tolerance`` frames (default 1):
  muxers and re-encoders commonly drop or duplicate one frame at the end (the
  last frame's duration, a B-frame flush, trimming to the audio). A
  variable-frame-rate input re-timed to a constant rate has as many frames as
  its duration holds at the output's rate, within the same tolerance.
- ``fps``: the input's average rate, or its nominal rate (what a re-timing to
  a constant rate uses), within ``tolerance`` (relative, default 1 %):
  containers store rates as rationals and millisecond timestamps (WebM) round
  them.
- ``duration``: the input's duration within ``tolerance`` frames (default 1,
  at the slower of the two rates) plus the container's timestamp granularity
  (1 ms; 10 ms for GIF, whose frame delays are centiseconds).
- ``mask``: the mask video decodes, has the output's size, the output's frame
  count (within the ``frame_count`` tolerance) and no transparency.

Then quality metrics (``vidbatch.metrics``) and the manifest's thresholds.
A failed check raises ``VerifyError`` carrying every fact gathered, so a paid
result that fails is kept (quarantined) with the reason it failed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping

import numpy as np

from vidbatch.errors import InputError, VerifyError
from vidbatch.spec import Item, MediaInfo, upscaled_size

Severity = Literal["fail", "warn", "off"]
SEVERITIES: tuple[str, ...] = ("fail", "warn", "off")

#: structural checks, in the order they are reported
CHECKS: tuple[str, ...] = ("decode", "alpha", "size", "frame_count", "fps", "duration", "mask")
#: what ``multiple`` may be: the block sizes encoders and upscalers round to
MULTIPLES: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
#: ``multiple`` when the manifest does not set one
DEFAULT_MULTIPLE = {"remove-background": 2, "upscale": 32}
#: container timestamp granularity, seconds (GIF frame delays are centiseconds)
TIMESTAMP_STEP = 0.001
GIF_STEP = 0.01


@dataclass(frozen=True)
class CheckPolicy:
    """How one check judges: its severity and its tolerance (units depend on the check)."""

    on_fail: Severity = "fail"
    tolerance: float | None = None
    multiple: int | None = None


DEFAULT_POLICIES: dict[str, CheckPolicy] = {
    "decode": CheckPolicy(),
    "alpha": CheckPolicy(),
    "size": CheckPolicy(),  # multiple: DEFAULT_MULTIPLE by operation
    "frame_count": CheckPolicy(tolerance=1),
    "fps": CheckPolicy(tolerance=0.01),
    "duration": CheckPolicy(tolerance=1),
    "mask": CheckPolicy(),
}
#: which tolerance field each check takes (``validate_check_rule``)
_TOLERANCE_FIELD = {"frame_count": "tolerance", "fps": "tolerance", "duration": "tolerance", "size": "multiple"}


def _get(rule: Any, key: str) -> Any:
    return rule.get(key) if isinstance(rule, Mapping) else getattr(rule, key, None)


def validate_check_rule(name: str, rule: Any) -> None:
    """Raise ``ValueError`` for a malformed rule of a structural check (``CHECKS``)."""
    if _get(rule, "max") is not None or _get(rule, "min") is not None:
        raise ValueError(f"verify check {name!r} takes on_fail and a tolerance, not max/min "
                         "(max/min are for quality metrics)")
    on_fail = _get(rule, "on_fail") or "fail"
    if on_fail not in SEVERITIES:
        raise ValueError(f"verify check {name!r}: on_fail must be one of {', '.join(SEVERITIES)}")
    field = _TOLERANCE_FIELD.get(name)
    for other in ("tolerance", "multiple"):
        if _get(rule, other) is not None and other != field:
            allowed = f"; it takes {field}" if field else "; it takes only on_fail"
            raise ValueError(f"verify check {name!r} has no {other}{allowed}")
    tol = _get(rule, "tolerance")
    if tol is not None and (not math.isfinite(float(tol)) or float(tol) < 0):
        raise ValueError(f"verify check {name!r}: tolerance must be a finite number >= 0")
    if name == "frame_count" and tol is not None and float(tol) != int(float(tol)):
        raise ValueError("verify check 'frame_count': tolerance is a whole number of frames")
    multiple = _get(rule, "multiple")
    if multiple is not None and multiple not in MULTIPLES:
        raise ValueError(f"verify check 'size': multiple must be one of {', '.join(map(str, MULTIPLES))}")


def validate_rules(rules: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for a malformed ``verify:`` rule: a check's or a metric's."""
    from vidbatch.metrics import METRICS, validate_rules as validate_metric_rules

    for name, rule in rules.items():
        if name in CHECKS:
            validate_check_rule(name, rule)
        elif name in METRICS:
            validate_metric_rules({name: rule})
        else:
            import difflib

            known = [*CHECKS, *METRICS]
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            raise ValueError(f"unknown check or metric {name!r} in verify rules{hint}")


def policies(rules: Mapping[str, Any] | None) -> dict[str, CheckPolicy]:
    """The default policies with the manifest's ``verify:`` rules for checks laid over them."""
    out = dict(DEFAULT_POLICIES)
    for name, rule in (rules or {}).items():
        if name not in CHECKS:
            continue
        base = out[name]
        out[name] = CheckPolicy(
            on_fail=_get(rule, "on_fail") or base.on_fail,
            tolerance=float(_get(rule, "tolerance")) if _get(rule, "tolerance") is not None else base.tolerance,
            multiple=_get(rule, "multiple") if _get(rule, "multiple") is not None else base.multiple,
        )
    return out


def metric_rules(rules: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``verify:`` rules that are quality-metric thresholds (not structural checks, not off)."""
    return {k: v for k, v in (rules or {}).items() if k not in CHECKS and (_get(v, "on_fail") or "fail") != "off"}


# --------------------------------------------------------------------------- expectations


def expected_size(item: Item, media_in: MediaInfo) -> tuple[int, int]:
    if item.spec.operation == "upscale":
        return upscaled_size(media_in.width, media_in.height, item.spec.factor, item.spec.target)
    return media_in.width, media_in.height


def accepted_sides(expected: int, multiple: int) -> list[int]:
    """Side lengths accepted for an expected one: itself, or rounded to a block up to ``multiple``."""
    out = {expected}
    for m in MULTIPLES[1:]:
        if m > multiple:
            break
        out.add(max(m, expected // m * m))
        out.add(-(-expected // m) * m)
    return sorted(out)


def input_is_vfr(media_in: MediaInfo, tolerance: float = 0.01) -> bool:
    """Whether the input's average rate differs from its nominal (constant) rate."""
    nominal = media_in.nominal_fps
    return bool(nominal and media_in.fps and abs(nominal - media_in.fps) > tolerance * nominal)


def _rates(media_in: MediaInfo) -> list[float]:
    return [r for r in dict.fromkeys((media_in.fps, media_in.nominal_fps)) if r]


# --------------------------------------------------------------------------- facts


def _scan(path: str) -> dict[str, Any]:
    """Decode every frame once; alpha statistics on a pixel subsample.

    A file that stops decoding gives the facts up to there and ``decode_error``.
    """
    from vidbatch import media

    try:
        info = media.probe(path)
    except InputError as exc:
        return {"frames": 0, "width": 0, "height": 0, "fps": 0.0, "duration": 0.0, "alpha_min": None,
                "decode_error": str(exc)}
    frames = 0
    alpha_min, alpha_max, alpha_sum, opaque_frames = 255, 0, 0.0, 0
    width = height = 0
    error = None
    try:
        with media.Reader(path) as rd:
            for frame in rd.frames():
                frames += 1
                height, width = frame.height, frame.width
                a = _alpha(frame)
                lo, hi = (int(a.min()), int(a.max())) if a is not None else (255, 255)
                alpha_min, alpha_max = min(alpha_min, lo), max(alpha_max, hi)
                alpha_sum += float(a.mean()) if a is not None else 255.0
                opaque_frames += int(lo == 255)
    except InputError as exc:
        error = f"does not decode to the end: {exc} (after {frames} frames)"
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
        "decode_error": error,
    }


def _alpha(frame: Any) -> np.ndarray | None:
    """The frame's alpha values (a 4x4 subsample, 8-bit), or None when its format has no alpha.

    Read from the alpha plane, never from an RGBA conversion: swscale's 4:2:0 -> RGBA
    path leaves the alpha of the last columns unset when the width is not a multiple
    of 16, which reads as transparency an opaque video does not have.
    """
    if not any(c.is_alpha for c in frame.format.components):
        return None
    yuva = frame.reformat(format="yuva444p")
    plane = yuva.planes[3]
    values = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : yuva.width]
    return values[::4, ::4]


@dataclass
class _Judge:
    """Collects each check's outcome for one file."""

    policies: Mapping[str, CheckPolicy]
    checks: dict[str, dict[str, Any]]

    def __call__(self, name: str, ok: bool, detail: str, **expected: Any) -> None:
        entry: dict[str, Any] = {"ok": bool(ok), "on_fail": self.policies[name].on_fail}
        if detail:
            entry["detail"] = detail
        if expected:
            entry.update(expected)
        self.checks[name] = entry

    def failures(self, severity: str) -> list[str]:
        return [f"{name}: {c.get('detail', 'failed')}" for name, c in self.checks.items()
                if not c["ok"] and c["on_fail"] == severity]


def _timing_checks(judge: _Judge, facts: Mapping[str, Any], media_in: MediaInfo, pol: Mapping[str, CheckPolicy],
                   *, ref_frames: int | None = None) -> None:
    """frame_count, fps, duration of one file against the input."""
    out_frames, out_fps, out_dur = facts["frames"], facts["fps"] or 0.0, facts["duration"] or 0.0
    tol_frames = int(pol["frame_count"].tolerance or 0)
    # fps: the input's average rate or its nominal one, within a relative tolerance
    rel = pol["fps"].tolerance or 0.0
    rates = _rates(media_in)
    fps_ok = not rates or not out_fps or any(abs(out_fps - r) <= rel * r + 1e-9 for r in rates)
    judge("fps", fps_ok, "" if fps_ok else
          f"{out_fps:.3f}, the input has {' or '.join(f'{r:.3f}' for r in rates)}",
          expected=[round(r, 3) for r in rates])
    # frame count: the input's, or (a VFR input re-timed to a constant rate) its duration at the output's rate
    want = media_in.frames if ref_frames is None else ref_frames
    accepted = [want]
    if ref_frames is None and input_is_vfr(media_in, rel or 0.01) and out_fps and media_in.duration and fps_ok:
        accepted.append(int(round(media_in.duration * out_fps)))
    count_ok = any(abs(out_frames - a) <= tol_frames for a in accepted)
    whose = "the input has" if ref_frames is None else "the output has"
    judge("frame_count", count_ok, "" if count_ok else
          f"{out_frames} frames, {whose} {' (or re-timed: '.join(map(str, accepted))}{')' if len(accepted) > 1 else ''}"
          f" (tolerance {tol_frames})", expected=accepted, tolerance=tol_frames)
    if ref_frames is not None:
        return
    # duration: within N frames at the slower rate, plus the container's timestamp granularity
    slow = min([r for r in (media_in.fps, out_fps) if r] or [20.0])
    step = GIF_STEP if facts.get("codec") == "gif" else TIMESTAMP_STEP
    allowed = (pol["duration"].tolerance or 0.0) / slow + step
    dur_ok = not (out_dur and media_in.duration) or abs(out_dur - media_in.duration) <= allowed + 1e-9
    judge("duration", dur_ok, "" if dur_ok else
          f"{out_dur:.3f} s, the input lasts {media_in.duration:.3f} s (tolerance {allowed:.3f} s)",
          expected=round(media_in.duration, 6), tolerance_s=round(allowed, 6))


def check_video(item: Item, media_in: MediaInfo, path: str, *, transparent: bool, what: str = "output",
                rules: Mapping[str, CheckPolicy] | None = None) -> dict[str, Any]:
    """Every check on the main output; returns its facts with ``checks`` and ``ok``.

    Raises ``VerifyError`` (with the facts) when a check with ``on_fail: fail`` fails.
    """
    pol = rules or policies(item.thresholds)
    facts = _scan(path)
    judge = _Judge(pol, {})
    error = facts.pop("decode_error")
    decoded = facts["frames"] > 0
    judge("decode", error is None and decoded, error or ("" if decoded else "no decodable frames"))
    if decoded:
        transparent_ok = facts["alpha_min"] != 255
        opaque_ok = facts["alpha_min"] is None or facts["alpha_min"] >= 250
        if transparent:
            judge("alpha", transparent_ok,
                  "" if transparent_ok else "no transparency: every decoded alpha value is opaque although "
                  "background is transparent", expected="transparent")
        else:
            judge("alpha", opaque_ok, "" if opaque_ok else "has transparent pixels although an opaque output "
                  "was asked for", expected="opaque")
        want_w, want_h = expected_size(item, media_in)
        multiple = pol["size"].multiple or DEFAULT_MULTIPLE.get(item.spec.operation, 2)
        widths, heights = accepted_sides(want_w, multiple), accepted_sides(want_h, multiple)
        size_ok = facts["width"] in widths and facts["height"] in heights
        judge("size", size_ok, "" if size_ok else
              f"{facts['width']}x{facts['height']}, expected {want_w}x{want_h}"
              + (f" (or each side rounded to a multiple of up to {multiple})" if multiple > 1 else ""),
              expected=[want_w, want_h], multiple=multiple)
        _timing_checks(judge, facts, media_in, pol)
    return _conclude(facts, judge, what, fatal=not decoded)


def check_mask(item: Item, media_in: MediaInfo, path: str, output: Mapping[str, Any],
               rules: Mapping[str, CheckPolicy] | None = None) -> dict[str, Any]:
    """The mask video: decodes, matches the output's size and frame count, no transparency."""
    pol = rules or policies(item.thresholds)
    facts = _scan(path)
    error = facts.pop("decode_error")
    problems = []
    if error or not facts["frames"]:
        problems.append(error or "no decodable frames")
    else:
        if (facts["width"], facts["height"]) != (output["width"], output["height"]):
            problems.append(f"size {facts['width']}x{facts['height']}, the output is "
                            f"{output['width']}x{output['height']}")
        tol = int(pol["frame_count"].tolerance or 0)
        if abs(facts["frames"] - output["frames"]) > tol:
            problems.append(f"{facts['frames']} frames, the output has {output['frames']} (tolerance {tol})")
        if facts["alpha_min"] is not None and facts["alpha_min"] < 250:
            problems.append("has transparent pixels (a mask is an opaque grayscale video)")
    judge = _Judge(pol, {})
    judge("mask", not problems, "; ".join(problems))
    return _conclude(facts, judge, "mask video", fatal=not facts["frames"])


def _conclude(facts: dict[str, Any], judge: _Judge, what: str, *, fatal: bool) -> dict[str, Any]:
    facts["checks"] = judge.checks
    facts["ok"] = all(c["ok"] for c in judge.checks.values() if c["on_fail"] != "off")
    facts["warnings"] = [f"{what} {w}" for w in judge.failures("warn")]
    failed = judge.failures("fail")
    if fatal and not failed:  # nothing decoded: there is nothing to keep as verified, whatever the severity
        failed = [f"decode: {judge.checks.get('decode', judge.checks.get('mask', {})).get('detail', 'no frames')}"]
    if failed:
        raise VerifyError(f"{what} failed verification: " + "; ".join(failed), facts={what: facts})
    return facts


def verify_outputs(
    item: Item,
    media_in: MediaInfo,
    output_path: str,
    *,
    mask_path: str | None = None,
    input_path: str | None = None,
) -> dict[str, Any]:
    """All checks and metrics for one item. Returns the report's verify facts.

    ``facts["warnings"]`` lists checks that failed with ``on_fail: warn``.
    Raises ``VerifyError`` whose ``facts`` hold everything measured so far.
    """
    pol = policies(item.thresholds)
    facts: dict[str, Any] = {"input": media_in.to_json()}
    try:
        facts["output"] = check_video(item, media_in, output_path, transparent=item.spec.transparent, rules=pol)
        if mask_path is not None:
            facts["mask"] = check_mask(item, media_in, mask_path, facts["output"], rules=pol)
    except VerifyError as exc:
        raise VerifyError(str(exc), facts={**facts, **_renamed(exc.facts)}) from None
    warnings = facts["output"].pop("warnings") + (facts["mask"].pop("warnings") if "mask" in facts else [])
    metrics: dict[str, float] = {}
    if input_path is not None:
        metrics = compute_metrics(item, input_path, output_path, mask_path)
    facts["metrics"] = metrics
    facts["warnings"] = warnings
    return facts


def _renamed(facts: Mapping[str, Any]) -> dict[str, Any]:
    return {("mask" if k == "mask video" else k): v for k, v in facts.items()}


def compute_metrics(item: Item, input_path: str, output_path: str, mask_path: str | None) -> dict[str, float]:
    try:
        from vidbatch import metrics as metrics_mod
    except ImportError:  # pragma: no cover - metrics ship with the package
        return {}
    values = metrics_mod.compute_metrics(
        item.spec.operation, input_path, output_path, mask_path=mask_path, background=item.spec.background
    )
    return {k: (round(float(v), 6) if isinstance(v, (int, float, np.floating)) else v) for k, v in values.items()}


def apply_thresholds(item: Item, metrics: dict[str, float], facts: Mapping[str, Any] | None = None) -> list[str]:
    """``verify:`` metric rules: ``on_fail: warn`` flags the item, ``fail`` fails it, ``off`` ignores it."""
    rules = metric_rules(item.thresholds)
    if not rules:
        return []
    from vidbatch.metrics import check_thresholds

    violations = check_thresholds(metrics, rules)
    failed = [v for v in violations if v.on_fail == "fail"]
    if failed:
        raise VerifyError("quality threshold failed: " + "; ".join(str(v) for v in failed),
                          facts={**dict(facts or {}), "metrics": metrics})
    return [f"quality threshold: {v}" for v in violations]

