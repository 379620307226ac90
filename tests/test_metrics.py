"""Each quality metric moves the right way on constructed clips.

Clips are built here with numpy + PyAV (H.264 inputs, VP9-alpha WebM / PNG-zip
outputs) so the tests do not depend on the engine or on ``vidbatch.synth``.
"""

from __future__ import annotations

import io
import json
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from vidbatch.metrics import METRICS, Violation, check_thresholds, compute_metrics, metrics_markdown

W, H, N, FPS = 320, 180, 24, 24


# --------------------------------------------------------------------------- writers


def write_video(path: Path, frames: list[np.ndarray], *, fps: int = FPS) -> str:
    """RGB frames -> H.264 (.mp4, near-lossless); RGBA frames -> VP9 yuva420p (.webm)."""
    rgba = frames[0].shape[2] == 4
    with av.open(str(path), "w") as out:
        if rgba:
            s = out.add_stream("libvpx-vp9", rate=fps, options={"crf": "12", "b": "0", "deadline": "realtime",
                                                                "cpu-used": "8"})
            s.pix_fmt = "yuva420p"
        else:
            s = out.add_stream("libx264", rate=fps, options={"crf": "8", "preset": "ultrafast"})
            s.pix_fmt = "yuv420p"
        s.height, s.width = frames[0].shape[:2]
        for i, fr in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(fr), format="rgba" if rgba else "rgb24")
            vf.pts, vf.time_base = i, Fraction(1, fps)
            out.mux(s.encode(vf))
        out.mux(s.encode(None))
    return str(path)


def write_zip(path: Path, frames: list[np.ndarray], *, fps: int = FPS) -> str:
    """A PNG-sequence zip (frame_000001.png ... + meta.json), lossless."""
    from PIL import Image

    with zipfile.ZipFile(path, "w") as zf:
        for i, fr in enumerate(frames, 1):
            buf = io.BytesIO()
            Image.fromarray(fr).save(buf, format="PNG", compress_level=1)
            zf.writestr(f"frame_{i:06d}.png", buf.getvalue())
        h, w = frames[0].shape[:2]
        zf.writestr("meta.json", json.dumps({"fps": fps, "width": w, "height": h, "frames": len(frames)}))
    return str(path)


# --------------------------------------------------------------------------- scenes


def texture(h: int, w: int, seed: int, tint: tuple[float, float, float]) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.0)
    noise = (noise - noise.min()) / (noise.max() - noise.min())
    return np.clip((0.35 + 0.5 * noise)[..., None] * np.asarray(tint) * 255, 0, 255).astype(np.float32)


def ellipse_alpha(i: int, grow: float = 0.0) -> np.ndarray:
    """A soft-edged ellipse moving 2 px/frame; ``grow`` shifts its boundary (px)."""
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    cx, cy = 110 + 2 * i, 95
    r = np.sqrt(((xx - cx) / 55) ** 2 + ((yy - cy) / 70) ** 2) * 55  # ~distance in px along x
    return np.clip((55 + grow - r) / 3.0 + 0.5, 0.0, 1.0)


@pytest.fixture(scope="module")
def matting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("matting")
    bg = texture(H, W, 1, (0.3, 0.6, 1.0))  # blue-ish static backdrop
    fg = texture(H, W, 2, (1.0, 0.6, 0.2))  # orange subject texture
    inp, stable, flicker, clean, clean_zip, naive_zip, mask, green = [], [], [], [], [], [], [], []
    rng = np.random.default_rng(7)
    for i in range(N):
        a = ellipse_alpha(i)
        img = (a[..., None] * fg + (1 - a[..., None]) * bg).round().astype(np.uint8)
        inp.append(img)
        a8 = (a * 255).round().astype(np.uint8)
        stable.append(np.dstack([img, a8]))
        # a breathing, noisy matte: boundary +-2.5 px on alternate frames plus edge noise
        af = ellipse_alpha(i, 2.5 if i % 2 else -2.5)
        af = np.clip(af + (rng.random(af.shape) - 0.5) * 0.3 * ((af > 0) & (af < 1)), 0, 1)
        flicker.append(np.dstack([img, (af * 255).round().astype(np.uint8)]))
        # decontaminated: the subject's own colour everywhere (colour-extended), so edges hold no backdrop
        clean.append(np.dstack([fg.round().astype(np.uint8), a8]))
        mask.append(np.repeat(a8[..., None], 3, axis=2))
        g = (a[..., None] * img + (1 - a[..., None]) * np.array([0, 255, 0])).round().astype(np.uint8)
        green.append(g)
    return {
        "input": write_video(d / "in.mp4", inp),
        "stable": write_video(d / "stable.webm", stable),
        "half_rate": write_video(d / "half_rate.webm", stable[::2], fps=FPS // 2),
        "flicker": write_video(d / "flicker.webm", flicker),
        "clean": write_video(d / "clean.webm", clean),
        "clean_zip": write_zip(d / "clean.zip", clean),
        "naive_zip": write_zip(d / "naive.zip", stable),
        "mask": write_video(d / "mask.mp4", mask),
        "shifted_mask": write_video(d / "shifted_mask.mp4", [np.roll(m, 25, axis=1) for m in mask]),
        "green": write_video(d / "green.mp4", green),
    }


@pytest.fixture(scope="module")
def upscaling(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("upscale")
    w, h = 160, 96
    big = texture(2 * h, 2 * w + 64, 3, (0.9, 0.8, 0.7))
    big[::9] *= 0.6  # some line detail so sharpness has something to measure
    inp = [cv2.resize(big[:, 2 * i : 2 * i + 2 * w], (w, h), interpolation=cv2.INTER_AREA).round().astype(np.uint8)
           for i in range(N)]
    lanczos = [cv2.resize(f, (2 * w, 2 * h), interpolation=cv2.INTER_LANCZOS4) for f in inp]
    blurred = [cv2.GaussianBlur(f, (0, 0), 1.5) for f in lanczos]
    shifted = [np.pad(f, ((0, 0), (4, 0), (0, 0)), mode="edge")[:, : 2 * w] for f in lanczos]
    flick = [np.clip(f.astype(np.int16) + (12 if i % 2 else -12), 0, 255).astype(np.uint8)
             for i, f in enumerate(lanczos)]
    return {
        "input": write_video(d / "in.mp4", inp),
        "lanczos": write_video(d / "lanczos.mp4", lanczos),
        "blurred": write_video(d / "blurred.mp4", blurred),
        "shifted": write_video(d / "shifted.mp4", shifted),
        "flicker": write_video(d / "flicker.mp4", flick),
        "lanczos_zip": write_zip(d / "lanczos.zip", [np.dstack([f, np.full(f.shape[:2], 255, np.uint8)])
                                                     for f in lanczos]),
    }


# --------------------------------------------------------------------------- remove-background


def test_flickering_matte_scores_worse(matting: dict[str, str]) -> None:
    good = compute_metrics("remove-background", matting["input"], matting["stable"])
    bad = compute_metrics("remove-background", matting["input"], matting["flicker"])
    assert good["frames"] == bad["frames"] == N
    for name in ("alpha_flicker", "edge_flicker", "coverage_pulse"):
        assert 0 <= good[name] < bad[name], (name, good[name], bad[name])
    # a moving subject against a textured backdrop is mostly explained by the input's change
    assert good["edge_flicker"] < 0.3 * bad["edge_flicker"]
    assert good["coverage_pulse"] < 0.2 * bad["coverage_pulse"]
    assert bad["coverage_pulse"] > 0.02
    assert 0.15 < good["coverage_mean"] < 0.25


def test_background_left_in_edges_scores_worse_bleed(matting: dict[str, str]) -> None:
    naive = compute_metrics("remove-background", matting["input"], matting["stable"])
    clean = compute_metrics("remove-background", matting["input"], matting["clean"])
    assert naive["fg_bleed"] > 0.7 and clean["fg_bleed"] < 0.3, (naive["fg_bleed"], clean["fg_bleed"])
    # lossless PNG-sequence outputs: same verdict, sharper numbers
    naive_z = compute_metrics("remove-background", matting["input"], matting["naive_zip"])
    clean_z = compute_metrics("remove-background", matting["input"], matting["clean_zip"])
    assert naive_z["fg_bleed"] > 0.8 and clean_z["fg_bleed"] < 0.2, (naive_z["fg_bleed"], clean_z["fg_bleed"])


def test_mask_agreement_and_opaque_outputs(matting: dict[str, str]) -> None:
    good = compute_metrics("remove-background", matting["input"], matting["stable"], mask_path=matting["mask"])
    bad = compute_metrics("remove-background", matting["input"], matting["stable"],
                          mask_path=matting["shifted_mask"])
    assert good["mask_agreement"] > 0.97 and bad["mask_agreement"] < 0.7
    # a green-screen composite: alpha derived from the distance to the background colour
    green = compute_metrics("remove-background", matting["input"], matting["green"], background="#00ff00",
                            mask_path=matting["mask"])
    assert "fg_bleed" not in green  # only defined for transparent outputs
    assert green["mask_agreement"] > 0.95
    assert abs(green["coverage_mean"] - good["coverage_mean"]) < 0.02
    assert green["alpha_flicker"] < 0.01


def test_frames_are_paired_by_time(matting: dict[str, str]) -> None:
    # a 12 fps output of a 24 fps input (a GIF would do this): frame k is input frame 2k
    m = compute_metrics("remove-background", matting["input"], matting["half_rate"], mask_path=matting["mask"])
    assert m["frames"] == N // 2
    assert m["mask_agreement"] > 0.97  # paired by index it would drift by 2 px per frame
    assert m["alpha_flicker"] < 0.002


def test_working_size_does_not_change_the_verdict(matting: dict[str, str]) -> None:
    # absolute values depend on the working size (compare engines at the same max_side); verdicts do not
    for max_side in (80, 0):
        good = compute_metrics("remove-background", matting["input"], matting["stable"], max_side=max_side)
        bad = compute_metrics("remove-background", matting["input"], matting["flicker"], max_side=max_side)
        assert good["coverage_mean"] == pytest.approx(0.21, abs=0.01)
        for name in ("alpha_flicker", "edge_flicker", "coverage_pulse"):
            assert bad[name] > 5 * good[name], (max_side, name, good[name], bad[name])


# --------------------------------------------------------------------------- upscale


def test_upscale_metrics_move_the_right_way(upscaling: dict[str, str]) -> None:
    m = {k: compute_metrics("upscale", upscaling["input"], v) for k, v in upscaling.items() if k != "input"}
    assert 0.85 < m["lanczos"]["sharpness_gain"] < 1.15, m["lanczos"]
    assert m["blurred"]["sharpness_gain"] < m["lanczos"]["sharpness_gain"] - 0.25
    assert m["lanczos"]["fidelity_psnr"] > 35 and m["lanczos"]["fidelity_ssim"] > 0.95
    assert m["shifted"]["fidelity_psnr"] < m["lanczos"]["fidelity_psnr"] - 8
    assert m["shifted"]["fidelity_ssim"] < m["lanczos"]["fidelity_ssim"] - 0.1
    assert m["lanczos"]["luma_flicker"] < 0.003
    assert m["flicker"]["luma_flicker"] > 0.07  # +-12 levels every frame: |Δ| of ~24/219 per pair
    # the PNG-zip reader gives the same numbers as the video (lossless vs near-lossless)
    assert m["lanczos_zip"]["sharpness_gain"] == pytest.approx(m["lanczos"]["sharpness_gain"], abs=0.1)
    assert m["lanczos_zip"]["frames"] == N


# --------------------------------------------------------------------------- thresholds


def test_thresholds() -> None:
    metrics = {"alpha_flicker": 0.05, "edge_flicker": 0.01, "fidelity_psnr": 28.0}
    rules = {
        "alpha_flicker": {"max": 0.02, "on_fail": "warn"},
        "edge_flicker": {"max": 0.02},
        "fidelity_psnr": {"min": 30, "on_fail": "fail"},
        "fg_bleed": {"max": 0.5},  # not computed for this output: skipped, not violated
    }
    got = check_thresholds(metrics, rules)
    assert got == [
        Violation("alpha_flicker", 0.05, 0.02, "max", "warn"),
        Violation("fidelity_psnr", 28.0, 30.0, "min", "fail"),
    ]
    assert "alpha_flicker" in str(got[0]) and "warn" in str(got[0])
    with pytest.raises(ValueError, match="did you mean 'alpha_flicker'"):
        check_thresholds(metrics, {"alpha_flciker": {"max": 0.1}})
    with pytest.raises(ValueError, match="on_fail"):
        check_thresholds(metrics, {"alpha_flicker": {"max": 0.1, "on_fail": "explode"}})


def test_thresholds_accept_manifest_models() -> None:
    manifest = pytest.importorskip("vidbatch.manifest")
    rules = {"fidelity_ssim": manifest.Threshold(min=0.9, on_fail="warn")}
    assert check_thresholds({"fidelity_ssim": 0.8}, rules) == [Violation("fidelity_ssim", 0.8, 0.9, "min", "warn")]


def test_table_documents_every_metric() -> None:
    for name, info in METRICS.items():
        assert info.name == name and info.definition and info.range and info.better
    rows = metrics_markdown().splitlines()
    assert len(rows) == 2 + len(METRICS)
    # escaped |x| must not add cells: every row has the header's 6 columns
    assert all(r.replace("\\|", "").count("|") == 7 for r in rows)


def test_broken_output_raises_and_leaves_no_threads(matting: dict[str, str], tmp_path: Path) -> None:
    import threading

    from vidbatch.errors import InputError

    broken = tmp_path / "broken.webm"
    data = Path(matting["stable"]).read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # truncated mid-stream
    before = threading.active_count()
    with pytest.raises(InputError):
        compute_metrics("remove-background", matting["input"], str(broken))
    with pytest.raises(InputError):
        compute_metrics("remove-background", str(tmp_path / "missing.mp4"), matting["stable"])
    assert threading.active_count() == before
    assert compute_metrics("remove-background", matting["input"], matting["green"],
                           background="https://example.com/bg.png") == {}
