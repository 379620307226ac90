"""Verification checks, their tolerances at the boundaries, and their severities.

Outputs are real files encoded with PyAV (the emulator's synthetic clip writer);
the input is described by the ``MediaInfo`` a probe would return, so each
boundary can be placed exactly.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from vidbatch import media
from vidbatch.emulator.media import write_clip
from vidbatch.errors import VerifyError
from vidbatch.spec import Item, JobSpec, MediaInfo
from vidbatch.verify import accepted_sides, input_is_vfr, validate_rules, verify_outputs


def _item(op: str = "remove-background", *, background: str = "transparent", fmt: str = "webm",
          factor: float | None = None, rules: dict[str, Any] | None = None, mask: bool = False) -> Item:
    spec = JobSpec(provider="fal", operation=op, model="m", format=fmt, background=background, mask=mask,
                   factor=factor if op == "upscale" else None)
    return Item(url="in.mp4", fingerprint="f", size=1, spec=spec, key="k" * 64, output="out", thresholds=rules or {})


def _input(width: int = 64, height: int = 48, fps: float = 25.0, frames: int = 24,
           duration: float | None = None, nominal: float = 0.0) -> MediaInfo:
    return MediaInfo(width=width, height=height, fps=fps, frames=frames,
                     duration=frames / fps if duration is None else duration, nominal_fps=nominal)


def _clip(tmp_path: Path, name: str, *, fmt: str = "webm", width: int = 64, height: int = 48, fps: float = 25,
          frames: int = 24, alpha: bool = True, gray: bool = False) -> str:
    path = tmp_path / f"{name}.{fmt}"
    write_clip(path, fmt, width, height, Fraction(fps).limit_denominator(1001), frames, alpha=alpha, gray=gray)
    return str(path)


def _checks(call) -> dict[str, Any]:  # noqa: ANN001 - a zero-argument callable
    """The output's per-check facts, whether verification passed or failed."""
    try:
        facts = call()
    except VerifyError as exc:
        assert exc.facts, "a failed verification carries its facts"
        return {"failed": True, **exc.facts["output"]["checks"], "_message": str(exc)}
    return {"failed": False, **facts["output"]["checks"], "_warnings": facts["warnings"]}


def test_exact_output_passes_and_reports_every_check(tmp_path):
    out = _clip(tmp_path, "ok")
    facts = verify_outputs(_item(), _input(), out)
    checks = facts["output"]["checks"]
    assert set(checks) == {"decode", "alpha", "size", "frame_count", "fps", "duration"}
    assert all(c["ok"] and c["on_fail"] == "fail" for c in checks.values())
    assert facts["output"]["ok"] is True and facts["warnings"] == []


@pytest.mark.parametrize("frames, ok", [(23, True), (25, True), (22, False), (26, False)])
def test_frame_count_tolerates_one_frame_at_the_end(tmp_path, frames, ok):
    out = _clip(tmp_path, f"f{frames}", frames=frames)
    # duration judged off here: this test is about the count alone
    checks = _checks(lambda: verify_outputs(_item(rules={"duration": {"on_fail": "off"}}), _input(frames=24), out))
    assert checks["frame_count"]["ok"] is ok
    assert checks["failed"] is (not ok)
    if not ok:
        assert "frame_count: " in checks["_message"] and "(tolerance 1)" in checks["_message"]


def test_frame_count_tolerance_zero_and_severities(tmp_path):
    out = _clip(tmp_path, "short", frames=23)
    strict = _checks(lambda: verify_outputs(_item(rules={"frame_count": {"tolerance": 0}}), _input(), out))
    assert strict["failed"] and not strict["frame_count"]["ok"]
    warned = _checks(lambda: verify_outputs(_item(rules={"frame_count": {"tolerance": 0, "on_fail": "warn"}}),
                                            _input(), out))
    assert not warned["failed"] and warned["frame_count"]["on_fail"] == "warn"
    assert any("frame_count" in w for w in warned["_warnings"])
    off = _checks(lambda: verify_outputs(_item(rules={"frame_count": {"tolerance": 0, "on_fail": "off"}}),
                                         _input(), out))
    # off: not judged, not a warning, but the fact stays in the report
    assert not off["failed"] and off["_warnings"] == [] and off["frame_count"]["ok"] is False


def _vfr_input(tmp_path: Path) -> str:
    """A real variable-frame-rate H.264 clip: frame gaps of 33 and 50 ms."""
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(60):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 4, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
            t += 50 if i % 3 == 0 else 33
        for packet in stream.encode():
            out.mux(packet)
    return str(path)


def test_vfr_input_retimed_to_constant_rate_passes(tmp_path):
    info = media.probe(_vfr_input(tmp_path))
    assert input_is_vfr(info), info
    rate = info.nominal_fps
    retimed = round(info.duration * rate)
    assert retimed != info.frames  # re-timing changes the count: the plain check would refuse it
    out = _clip(tmp_path, "cfr", fmt="mp4", fps=rate, frames=retimed, alpha=False)
    item = _item(background="#00ff00", fmt="mp4")
    facts = verify_outputs(item, info, out)
    assert facts["output"]["checks"]["frame_count"]["expected"] == [info.frames, retimed]
    # one frame beyond the tolerance of the re-timed count fails
    over = _clip(tmp_path, "cfr2", fmt="mp4", fps=rate, frames=retimed + 2, alpha=False)
    checks = _checks(lambda: verify_outputs(item, info, over))
    assert not checks["frame_count"]["ok"]
    # the same output for a constant-rate input of that average rate is not a re-timing: refused
    cfr = _input(fps=info.fps, frames=info.frames, duration=info.duration, nominal=info.fps)
    assert not input_is_vfr(cfr)
    assert not _checks(lambda: verify_outputs(item, cfr, out))["fps"]["ok"]


@pytest.mark.parametrize("input_fps, ok", [(25.25, True), (24.76, True), (25.26, False), (24.74, False)])
def test_fps_relative_tolerance_one_percent(tmp_path, input_fps, ok):
    out = _clip(tmp_path, "fps")  # 25 fps
    info = _input(fps=input_fps, frames=24, duration=0.96)
    checks = _checks(lambda: verify_outputs(_item(), info, out))
    assert checks["fps"]["ok"] is ok and checks["failed"] is (not ok)


@pytest.mark.parametrize("input_duration, ok", [(1.0005, True), (0.9195, True), (1.0015, False), (0.9185, False)])
def test_duration_one_frame_plus_timestamp_step(tmp_path, input_duration, ok):
    out = _clip(tmp_path, "dur")  # 24 frames at 25 fps: 0.96 s; one frame = 0.04 s, plus 1 ms
    checks = _checks(lambda: verify_outputs(_item(), _input(duration=input_duration), out))
    assert checks["duration"]["ok"] is ok and checks["failed"] is (not ok)


def test_accepted_sides():
    assert accepted_sides(200, 1) == [200]
    assert accepted_sides(65, 2) == [64, 65, 66]
    assert accepted_sides(1080, 32) == [1056, 1072, 1080, 1088]
    assert accepted_sides(200, 32) == [192, 200, 208, 224]


@pytest.mark.parametrize("size, rules, ok", [
    ((200, 120), None, True),          # exact (100x60 x 2)
    ((208, 128), None, True),          # each side rounded up to a multiple of 16
    ((224, 128), None, True),          # 200 rounded up to 32
    ((224, 128), {"size": {"multiple": 16}}, False),   # ... which a multiple of 16 does not allow
    ((208, 128), {"size": {"multiple": 1}}, False),    # exact only
    ((240, 128), None, False),         # beyond any rounding of 200
    ((100, 60), None, False),          # the source size: another size class
])
def test_upscale_size_rounding(tmp_path, size, rules, ok):
    out = _clip(tmp_path, f"up{size[0]}x{size[1]}", fmt="mp4", width=size[0], height=size[1], alpha=False)
    item = _item("upscale", fmt="mp4", factor=2.0, rules=rules)
    checks = _checks(lambda: verify_outputs(item, _input(width=100, height=60), out))
    assert checks["size"]["ok"] is ok and checks["failed"] is (not ok)


@pytest.mark.parametrize("size, ok", [((66, 50), True), ((64, 48), True), ((80, 64), False)])
def test_remove_background_size_only_rounds_to_even(tmp_path, size, ok):
    out = _clip(tmp_path, f"rb{size[0]}", width=size[0], height=size[1])
    checks = _checks(lambda: verify_outputs(_item(), _input(width=65, height=49), out))
    assert checks["size"]["ok"] is ok


def test_alpha_missing_fails_and_can_be_a_warning(tmp_path):
    out = _clip(tmp_path, "opaque", alpha=False)
    checks = _checks(lambda: verify_outputs(_item(), _input(), out))
    assert checks["failed"] and not checks["alpha"]["ok"] and "no transparency" in checks["_message"]
    warned = _checks(lambda: verify_outputs(_item(rules={"alpha": {"on_fail": "warn"}}), _input(), out))
    assert not warned["failed"] and warned["_warnings"]


def test_mask_must_match_the_output(tmp_path):
    out = _clip(tmp_path, "out")
    good = _clip(tmp_path, "mask", fmt="webm", alpha=False, gray=True)
    facts = verify_outputs(_item(mask=True), _input(), out, mask_path=good)
    assert facts["mask"]["checks"]["mask"]["ok"]
    short = _clip(tmp_path, "mask2", fmt="webm", frames=20, alpha=False, gray=True)
    with pytest.raises(VerifyError) as err:
        verify_outputs(_item(mask=True), _input(), out, mask_path=short)
    assert "mask video failed verification" in str(err.value)
    assert err.value.facts["output"]["ok"] and not err.value.facts["mask"]["checks"]["mask"]["ok"]


def test_not_a_video_fails_with_facts(tmp_path):
    bad = tmp_path / "bad.webm"
    bad.write_bytes(b"not a video\n" * 100)
    with pytest.raises(VerifyError) as err:
        verify_outputs(_item(), _input(), str(bad))
    assert "decode" in str(err.value)
    assert err.value.facts["output"]["checks"]["decode"]["ok"] is False


@pytest.mark.parametrize("rules, message", [
    ({"frame_count": {"max": 1}}, "not max/min"),
    ({"size": {"multiple": 12}}, "multiple must be one of"),
    ({"fps": {"tolerance": -1}}, "tolerance must be"),
    ({"frame_count": {"tolerance": 1.5}}, "whole number"),
    ({"alpha": {"tolerance": 1}}, "takes only on_fail"),
    ({"frame_cout": {"tolerance": 1}}, "did you mean 'frame_count'"),
    ({"edge_flicker": {"tolerance": 1, "max": 0.1}}, "takes max/min"),
])
def test_rule_validation(rules, message):
    with pytest.raises(ValueError, match=message):
        validate_rules(rules)


@pytest.mark.parametrize("fmt", ["mp4", "webm"])
def test_opaque_output_of_odd_block_width_is_opaque(tmp_path, fmt):
    # 100 px wide: swscale's 4:2:0 -> RGBA conversion leaves the last columns' alpha
    # unset; alpha is read from the alpha plane, so an opaque video stays opaque
    out = _clip(tmp_path, "w100", fmt=fmt, width=100, height=60, alpha=False)
    facts = verify_outputs(_item(background="#00ff00", fmt=fmt), _input(width=100, height=60), out)
    assert facts["output"]["checks"]["alpha"]["ok"] and facts["output"]["alpha_min"] == 255
    with pytest.raises(VerifyError, match="no transparency"):
        verify_outputs(_item(fmt=fmt if fmt != "mp4" else "webm"), _input(width=100, height=60), out)
