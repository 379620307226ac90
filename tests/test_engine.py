"""The local engine end to end: real synthetic clips in, every output format decoded back."""

from __future__ import annotations

import glob
import os
import threading

import av
import numpy as np
import pytest
from PIL import Image

from vidbatch import engine, media, synth
from vidbatch.engine import codecs
from vidbatch.errors import InputError
from vidbatch.spec import FORMAT_EXT, FORMATS

W, H, SECONDS, FPS = 320, 180, 1.2, 25
N = 30
SCENE = dict(width=W, height=H, seconds=SECONDS, fps=FPS)
GREEN = (0, 255, 0)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    return tmp_path_factory.mktemp("engine")


@pytest.fixture(scope="module")
def clip(d):
    return synth.make_clip(str(d / "person.mp4"), audio=True, **SCENE)


@pytest.fixture(scope="module")
def gt():
    """Ground-truth alpha of a few frames of ``clip``."""
    return {i: synth.ground_truth_alpha(i, **SCENE) for i in (0, 10, 20, 29)}


def out_path(d, name: str, fmt: str) -> str:
    return str(d / f"{name}.{FORMAT_EXT[fmt]}")


def check_timing(path: str) -> media.MediaInfo:
    info = media.probe(path)
    assert (info.width, info.height, info.frames) == (W, H, N), info
    assert info.fps == pytest.approx(FPS, rel=0.01)
    assert abs(info.duration - SECONDS) <= 1 / FPS + 1e-3, info
    return info


# --------------------------------------------------------------------------- remove-background


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f != "mp4"])
def test_transparent_every_alpha_format(d, clip, gt, fmt):
    dst = out_path(d, "transparent", fmt)
    res = engine.remove_background(clip, dst, fmt=fmt)
    assert (res.output, res.frames, res.width, res.height, res.fps) == (dst, N, W, H, FPS)
    info = check_timing(dst)
    assert info.has_alpha
    frames = list(media.iter_frames(dst, "rgba"))
    assert len(frames) == N and frames[0].shape == (H, W, 4)
    alphas = np.stack([f[..., 3] for f in frames])
    assert alphas.min() < 255, "a transparent output must not be uniformly opaque"
    for i, truth in gt.items():
        a = frames[i][..., 3].astype(float)
        assert a[truth > 0.95].mean() > 0.75 * 255, f"frame {i}: the person is not mostly opaque"
        corners = np.concatenate([a[:12, :12].ravel(), a[:12, -12:].ravel()])
        assert corners.mean() < 0.1 * 255, f"frame {i}: the top corners are not transparent"
        iou = ((a > 127) & (truth > 0.5)).sum() / ((a > 127) | (truth > 0.5)).sum()
        assert iou > 0.6, f"frame {i}: IoU {iou:.2f} against the ground truth"


def test_transparent_mp4_is_refused(d, clip):
    with pytest.raises(ValueError, match="alpha"):
        engine.remove_background(clip, str(d / "x.mp4"), fmt="mp4")
    assert not glob.glob(str(d / "x.mp4*"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_colour_background_is_opaque(d, clip, gt, fmt):
    dst = out_path(d, "green", fmt)
    engine.remove_background(clip, dst, fmt=fmt, background="#00ff00")
    check_timing(dst)
    for i, frame in enumerate(media.iter_frames(dst, "rgba")):
        assert frame[..., 3].min() == 255, "a colour background must be opaque everywhere"
        if i in gt:
            corner = frame[:12, :12, :3].reshape(-1, 3).mean(axis=0)
            assert np.abs(corner - GREEN).max() < 40, f"frame {i}: corner is {corner}"
            person = frame[..., :3][gt[i] > 0.95].mean(axis=0)
            assert np.abs(person - GREEN).max() > 60, "the person was painted over"


def test_image_background(d, clip):
    bg = str(d / "bg.png")
    img = np.zeros((90, 160, 3), np.uint8)
    img[:, :80] = (200, 40, 40)  # left half red, right half blue: checks orientation
    img[:, 80:] = (40, 40, 200)
    Image.fromarray(img).save(bg)
    dst = str(d / "imagebg.mp4")
    engine.remove_background(clip, dst, fmt="mp4", background=bg)
    check_timing(dst)
    frame = next(media.iter_frames(dst, "rgb24")).astype(int)
    assert np.abs(frame[:12, :12].reshape(-1, 3).mean(0) - (200, 40, 40)).max() < 30
    assert np.abs(frame[:12, -12:].reshape(-1, 3).mean(0) - (40, 40, 200)).max() < 30


@pytest.mark.parametrize("fmt", FORMATS)
def test_mask_video(d, clip, gt, fmt):
    dst = out_path(d, "masked", fmt)
    mask = str(d / f"mask_{fmt}.{FORMAT_EXT[codecs.mask_format(fmt)]}")
    background = "#0000ff" if fmt == "mp4" else "transparent"
    res = engine.remove_background(clip, dst, fmt=fmt, background=background, mask_dst=mask)
    assert res.mask == mask
    check_timing(dst)
    info = check_timing(mask)
    assert not info.has_alpha and info.container == codecs.mask_format(fmt)
    for i, frame in enumerate(media.iter_frames(mask, "rgb24")):
        f = frame.astype(int)
        # grayscale: the three channels agree (up to chroma rounding)
        assert np.abs(f[..., 0] - f[..., 1]).mean() < 3 and np.abs(f[..., 1] - f[..., 2]).mean() < 3
        if i in gt:
            assert f[..., 1][gt[i] > 0.95].mean() > 180 and f[:12, :12, 1].mean() < 40


def test_mask_format_mapping():
    assert [codecs.mask_format(f) for f in FORMATS] == ["webm", "mov", "mp4", "mp4", "mp4", "mp4"]
    with pytest.raises(ValueError):
        codecs.mask_format("avi")


@pytest.mark.parametrize("fmt", FORMATS)
def test_audio_passes_through_where_the_container_allows(d, clip, fmt):
    dst = out_path(d, "green", fmt)
    if not os.path.exists(dst):
        engine.remove_background(clip, dst, fmt=fmt, background="#00ff00")
    assert media.probe(clip).has_audio
    assert media.probe(dst).has_audio == (fmt in ("webm", "mov", "mp4"))


def test_chained_runs_on_outputs_with_alpha(d, clip):
    """Outputs are valid inputs: VP9-alpha WebM (libvpx-vp9), animated WebP (Pillow), PNG zip."""
    for fmt in ("webm", "webp", "png_sequence"):
        src = out_path(d, "transparent", fmt)
        if not os.path.exists(src):
            engine.remove_background(clip, src, fmt=fmt)
        res = engine.remove_background(src, str(d / f"again_{fmt}.webm"), background="#ffffff")
        assert res.frames == N and check_timing(res.output)


def test_input_alpha_is_kept(d):
    """Pixels already transparent in the input stay transparent (alpha = model x input)."""
    sc = synth.scene(**SCENE)
    src = str(d / "half.zip")
    with codecs.open_writer(src, "png_sequence", width=W, height=H, rate=FPS, alpha=True) as w:
        for rgb, _ in sc:
            a = np.full((H, W), 255, np.uint8)
            a[:, W // 2 :] = 0
            w.write(av.VideoFrame.from_ndarray(np.dstack((rgb, a)), format="rgba"))
    dst = str(d / "half_out.webm")
    engine.remove_background(src, dst)
    frames = list(media.iter_frames(dst))
    assert len(frames) == N
    assert max(int(f[:, W // 2 + 2 :, 3].max()) for f in frames) < 8
    assert max(int(f[:, : W // 2, 3].max()) for f in frames) > 200


def test_general_model_and_no_smoothing(d, clip, gt):
    dst = str(d / "general.webm")
    engine.remove_background(clip, dst, model="selfie-general", smoothing=1.0)
    a = list(media.iter_frames(dst))[10][..., 3]
    assert a[gt[10] > 0.95].mean() > 0.6 * 255


def test_concurrent_runs_in_threads(d, clip):
    """The engine is called from worker threads at once: no shared segmenter state."""
    second = synth.make_clip(str(d / "other.mp4"), seed=5, background="busy", **SCENE)
    results: dict[int, object] = {}

    def run(k: int, src: str) -> None:
        try:
            results[k] = engine.remove_background(src, str(d / f"conc{k}.webm"))
        except BaseException as exc:  # noqa: BLE001
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k, src)) for k, src in enumerate([clip, second, clip])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(3):
        assert isinstance(results[k], engine.EngineResult), results[k]
        check_timing(results[k].output)
    # the two runs on the same clip agree: nothing leaked between the threads
    a = [f[..., 3] for f in media.iter_frames(str(d / "conc0.webm"))]
    b = [f[..., 3] for f in media.iter_frames(str(d / "conc2.webm"))]
    assert max(np.abs(x.astype(int) - y).mean() for x, y in zip(a, b)) < 1.0


@pytest.mark.parametrize("fmt", ["gif", "png_sequence", "webm"])
def test_upscale_of_a_transparent_input_is_opaque(d, clip, fmt):
    src = out_path(d, "transparent", "webp")
    if not os.path.exists(src):
        engine.remove_background(clip, src, fmt="webp")
    dst = out_path(d, "up_from_alpha", fmt)
    engine.upscale(src, dst, fmt=fmt, factor=2)
    assert media.probe(dst).frames == N
    assert min(int(f[..., 3].min()) for f in media.iter_frames(dst)) == 255


def test_calls_are_counted(d, clip):
    before = engine.CALLS["upscale"]
    engine.upscale(clip, str(d / "count.mp4"), factor=1)
    assert engine.CALLS["upscale"] == before + 1


# --------------------------------------------------------------------------- upscale


@pytest.mark.parametrize("fmt", FORMATS)
def test_upscale_factor_2(d, clip, fmt):
    dst = out_path(d, "up2", fmt)
    res = engine.upscale(clip, dst, fmt=fmt, factor=2)
    assert (res.width, res.height, res.frames) == (2 * W, 2 * H, N)
    info = media.probe(dst)
    assert (info.width, info.height, info.frames) == (2 * W, 2 * H, N)
    assert abs(info.duration - SECONDS) <= 1 / FPS + 1e-3
    assert info.has_audio == (fmt in ("webm", "mov", "mp4"))
    frame = next(media.iter_frames(dst, "rgba"))
    assert frame[..., 3].min() == 255  # upscales are opaque


def test_upscale_target_720p_is_a_real_resample(d, clip):
    dst = str(d / "up720.mp4")
    res = engine.upscale(clip, dst, target="720p")
    assert (res.width, res.height, res.frames) == (1280, 720, N)
    info = media.probe(dst)
    assert (info.width, info.height, info.frames, info.has_audio) == (1280, 720, N, True)
    big = next(media.iter_frames(dst, "rgb24")).astype(float)
    small = next(media.iter_frames(clip, "rgb24")).astype(float)
    down = np.asarray(Image.fromarray(big.astype(np.uint8)).resize((W, H), Image.BOX), float)
    assert np.abs(down - small).mean() < 6


# --------------------------------------------------------------------------- errors


def test_engine_input_errors(d):
    (d / "text.mp4").write_text("not a video\n" * 10)
    (d / "zero.mp4").write_bytes(b"")
    for bad in (str(d / "missing.mp4"), str(d / "text.mp4"), str(d / "zero.mp4")):
        with pytest.raises(InputError) as err:
            engine.remove_background(bad, str(d / "never.webm"))
        assert "\n" not in str(err.value)
        with pytest.raises(InputError):
            engine.upscale(bad, str(d / "never.mp4"), factor=2)
    assert not glob.glob(str(d / "never.*"))


def test_truncated_input_leaves_no_output(d, clip):
    src = synth.make_clip(str(d / "cut_src.webm"), codec="vp9", **SCENE)
    data = open(src, "rb").read()
    cut = str(d / "cut.webm")
    open(cut, "wb").write(data[: len(data) // 3])
    with pytest.raises(InputError, match="truncated"):
        engine.remove_background(cut, str(d / "cut_out.webm"), mask_dst=str(d / "cut_mask.webm"))
    assert not glob.glob(str(d / "cut_out*")) and not glob.glob(str(d / "cut_mask*"))


def test_engine_argument_errors(d, clip):
    with pytest.raises(ValueError, match="format"):
        engine.remove_background(clip, str(d / "x.avi"), fmt="avi")
    with pytest.raises(ValueError, match="model"):
        engine.remove_background(clip, str(d / "x.webm"), model="birefnet")
    with pytest.raises(ValueError, match="colour"):
        engine.remove_background(clip, str(d / "x.webm"), background="#12345")
    with pytest.raises(InputError, match="background image"):
        engine.remove_background(clip, str(d / "x.webm"), background=str(d / "no-such.png"))
    with pytest.raises(ValueError, match="target"):
        engine.upscale(clip, str(d / "x.mp4"), target="480p")
    with pytest.raises(ValueError, match="model"):
        engine.upscale(clip, str(d / "x.mp4"), model="seedvr2")
    assert not glob.glob(str(d / "x.*"))
