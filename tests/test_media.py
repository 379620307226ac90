"""vidbatch.media (probe, iter_frames) and vidbatch.synth, on real files made here."""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from fractions import Fraction

import av
import numpy as np
import pytest
from PIL import Image

from vidbatch import media, synth
from vidbatch.engine import codecs
from vidbatch.errors import InputError

W, H, SECONDS, FPS = 320, 180, 1.2, 25
N = 30  # frames in every clip here
SCENE = dict(width=W, height=H, seconds=SECONDS, fps=FPS)


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="module")
def mp4(d):
    return synth.make_clip(str(d / "clip.mp4"), audio=True, **SCENE)


@pytest.fixture(scope="module")
def vp9(d):
    return synth.make_clip(str(d / "clip.webm"), codec="vp9", **SCENE)


@pytest.fixture(scope="module")
def rgba_frames():
    """The synthetic scene as RGBA with its exact alpha (what a perfect matte gives)."""
    sc = synth.scene(**SCENE)
    return [np.dstack((rgb, np.round(a * 255).astype(np.uint8))) for rgb, a in sc]


def _write(path: str, fmt: str, frames: list[np.ndarray], *, alpha: bool = True) -> str:
    with codecs.open_writer(path, fmt, width=W, height=H, rate=Fraction(FPS), alpha=alpha) as w:
        for a in frames:
            w.write(av.VideoFrame.from_ndarray(a, format="rgba"))
    return path


# --------------------------------------------------------------------------- probe


def test_probe_mp4(mp4):
    info = media.probe(mp4)
    assert (info.width, info.height, info.frames) == (W, H, N)
    assert info.fps == FPS and info.duration == pytest.approx(SECONDS, abs=1e-3)
    assert (info.codec, info.pix_fmt, info.container) == ("h264", "yuv420p", "mp4")
    assert info.has_audio and not info.has_alpha
    assert info.size == os.path.getsize(mp4)


def test_probe_webm_counts_frames_by_decoding(vp9):
    # Matroska headers carry no frame count
    with av.open(vp9) as c:
        assert c.streams.video[0].frames == 0
    info = media.probe(vp9)
    assert (info.frames, info.fps, info.codec, info.container) == (N, FPS, "vp9", "webm")
    assert not info.has_alpha and not info.has_audio


def test_iter_frames_formats_and_streaming(mp4):
    it = media.iter_frames(mp4, "rgba")
    assert not isinstance(it, list)
    first = next(it)
    assert first.shape == (H, W, 4) and first.dtype == np.uint8
    assert 1 + sum(1 for _ in it) == N
    assert next(media.iter_frames(mp4, "rgb24")).shape == (H, W, 3)
    assert next(media.iter_frames(mp4, "gray")).shape == (H, W)
    yuv = next(media.iter_frames_yuv(mp4))
    assert yuv.format.name == "yuv420p" and (yuv.width, yuv.height) == (W, H)


def test_synth_frames_match_decoded_clip(mp4):
    sc = synth.scene(**SCENE)
    decoded = list(media.iter_frames(mp4, "rgb24"))
    for i in (0, 17):
        ref = sc.frame(i)[0].astype(int)
        # H.264 crf 18 on noisy textures, 4:2:0: close to the rendered frame, not equal
        err = np.abs(decoded[i] - ref).mean()
        assert err < 8
        assert np.abs(decoded[i + 5] - ref).mean() > 2 * err  # and the frames differ


# --------------------------------------------------------------------------- alpha round trips


@pytest.mark.parametrize(
    "fmt,ext,codec,max_err",
    [
        ("webm", "webm", "vp9", 3.0),
        ("mov", "mov", "prores", 1.0),
        ("gif", "gif", "gif", 6.0),  # on/off alpha: edges are thresholded
        ("webp", "webp", "webp", 3.0),
        ("png_sequence", "zip", "png", 0.01),
    ],
)
def test_alpha_round_trip(d, rgba_frames, fmt, ext, codec, max_err):
    path = _write(str(d / f"alpha.{ext}"), fmt, rgba_frames)
    info = media.probe(path)
    assert info.has_alpha, info
    assert (info.width, info.height, info.frames, info.codec) == (W, H, N, codec)
    assert info.fps == pytest.approx(FPS) and info.duration == pytest.approx(SECONDS, abs=1 / FPS)
    n = 0
    for i, frame in enumerate(media.iter_frames(path, "rgba")):
        assert frame.shape == (H, W, 4)
        err = np.abs(frame[..., 3].astype(int) - rgba_frames[i][..., 3]).mean()
        assert err < max_err, (i, err)
        n += 1
    assert n == N


def test_vp8_alpha_uses_libvpx_decoder(d, rgba_frames):
    path = str(d / "vp8.webm")
    with av.open(path, "w") as out:
        s = out.add_stream("libvpx", rate=FPS, options={"auto-alt-ref": "0", "crf": "10", "b": "1M"})
        s.width, s.height, s.pix_fmt = W, H, "yuva420p"
        s.metadata["alpha_mode"] = "1"
        for i, a in enumerate(rgba_frames):
            f = av.VideoFrame.from_ndarray(a, format="rgba")
            f.pts = i
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    info = media.probe(path)
    assert info.codec == "vp8" and info.has_alpha and info.frames == N
    frame = next(media.iter_frames(path))
    assert np.abs(frame[..., 3].astype(int) - rgba_frames[0][..., 3]).mean() < 4


def test_opaque_gif_and_webp_report_no_alpha(d, rgba_frames):
    opaque = [np.dstack((f[..., :3], np.full((H, W), 255, np.uint8))) for f in rgba_frames[:5]]
    assert not media.probe(_write(str(d / "opaque.gif"), "gif", opaque, alpha=False)).has_alpha
    assert not media.probe(_write(str(d / "opaque.webp"), "webp", opaque, alpha=False)).has_alpha


def test_webp_identical_frames_keep_count_and_timing(d, rgba_frames):
    # an encoder that merges identical frames would lose the count (see WebPWriter)
    path = _write(str(d / "same.webp"), "webp", [rgba_frames[0]] * 10)
    info = media.probe(path)
    assert info.frames == 10 and info.fps == FPS and info.duration == pytest.approx(0.4)
    assert sum(1 for _ in media.iter_frames(path)) == 10


def test_png_sequence_zip_layout(d, rgba_frames):
    path = _write(str(d / "seq.zip"), "png_sequence", rgba_frames[:3])
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        meta = json.loads(z.read("meta.json"))
    assert names[:3] == ["frame_000001.png", "frame_000002.png", "frame_000003.png"]
    assert meta["fps"] == FPS and meta["frames"] == 3 and (meta["width"], meta["height"]) == (W, H)


def test_png_sequence_written_by_hand(d):
    """Any zip of frame_NNNNNN.png (+ meta.json) is an input; numeric order, not name order."""
    path = str(d / "hand.zip")
    with zipfile.ZipFile(path, "w") as z:
        for i in (10, 2, 1):
            buf = io.BytesIO()
            Image.fromarray(np.full((8, 16, 4), i, np.uint8)).save(buf, "PNG")
            z.writestr(f"clip/frame_{i:06d}.png", buf.getvalue())
        z.writestr("clip/meta.json", json.dumps({"fps": 12}))
    info = media.probe(path)
    assert (info.frames, info.fps, info.width, info.height) == (3, 12.0, 16, 8)
    assert info.duration == pytest.approx(0.25)
    assert [int(f[0, 0, 0]) for f in media.iter_frames(path)] == [1, 2, 10]


@pytest.mark.parametrize("ext,mode", [("png", "RGBA"), ("jpg", "RGB"), ("webp", "RGB")])
def test_probe_still_images(d, ext, mode):
    path = str(d / f"still.{ext}")
    Image.fromarray(np.full((40, 60, len(mode)), 200, np.uint8), mode).save(path)
    info = media.probe(path)
    assert (info.width, info.height, info.frames) == (60, 40, 1)
    assert info.has_alpha == (mode == "RGBA")
    assert info.fps == 25.0 and info.duration == pytest.approx(0.04)
    assert [f.shape for f in media.iter_frames(path)] == [(40, 60, 4)]


# --------------------------------------------------------------------------- errors


def _audio_only(path: str) -> str:
    with av.open(path, "w") as out:
        s = out.add_stream("aac", rate=48000)
        s.layout = "stereo"
        for i in range(10):
            f = av.AudioFrame.from_ndarray(np.zeros((2, 1024), np.float32), format="fltp", layout="stereo")
            f.sample_rate, f.pts = 48000, i * 1024
            out.mux(s.encode(f))
        out.mux(s.encode(None))
    return path


def _bad_inputs(d, mp4, vp9) -> dict[str, tuple[str, str]]:
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("this is not a video\n" * 20)
    (d / "junk.zip").write_bytes(b"PK\x03\x04junk")
    webm = open(vp9, "rb").read()
    (d / "cut.webm").write_bytes(webm[: len(webm) // 3])
    return {
        "missing": (str(d / "nope.mp4"), "not found"),
        "empty": (str(d / "empty.mp4"), "empty"),
        "text": (str(d / "text.mp4"), "not a readable video"),
        "audio": (_audio_only(str(d / "audio.m4a")), "no video stream"),
        "junk zip": (str(d / "junk.zip"), "not a readable video"),
        "truncated webm": (str(d / "cut.webm"), "truncated"),
    }


@pytest.mark.parametrize("case", ["missing", "empty", "text", "audio", "junk zip", "truncated webm"])
def test_bad_inputs_raise_input_error(d, mp4, vp9, case):
    path, words = _bad_inputs(d, mp4, vp9)[case]
    with pytest.raises(InputError, match=words) as probe_err:
        media.probe(path)
    assert "\n" not in str(probe_err.value)
    with pytest.raises(InputError):
        for _ in media.iter_frames(path):
            pass


def test_truncated_mp4_with_header_first(d, rgba_frames):
    # the engine's mp4s are faststart (moov first): a cut file still has a header
    # that promises more frames than the file holds
    path = _write(str(d / "fs.mp4"), "mp4", rgba_frames, alpha=False)
    with open(path, "rb") as fh:
        assert b"moov" in fh.read(4096)
    data = open(path, "rb").read()
    cut = str(d / "fs_cut.mp4")
    open(cut, "wb").write(data[: int(len(data) * 0.6)])
    with pytest.raises(InputError, match="truncated"):
        media.probe(cut)
    with pytest.raises(InputError, match="truncated"):
        for _ in media.iter_frames(cut):
            pass


# --------------------------------------------------------------------------- synth


def test_synth_is_deterministic_and_alpha_is_exact(d):
    a = synth.make_clip(str(d / "a.mp4"), width=160, height=90, seconds=0.4, seed=3)
    b = synth.make_clip(str(d / "b.mp4"), width=160, height=90, seconds=0.4, seed=3)
    assert hashlib.sha256(open(a, "rb").read()).digest() == hashlib.sha256(open(b, "rb").read()).digest()
    sc = synth.scene(width=160, height=90, seconds=0.4, seed=3)
    for i in (0, 9):
        _, alpha = sc.frame(i)
        gt = synth.ground_truth_alpha(i, width=160, height=90, seconds=0.4, seed=3)
        assert gt.dtype == np.float32 and np.array_equal(alpha, gt)
        assert 0.2 < gt.mean() < 0.6 and gt.max() == pytest.approx(1.0, abs=1e-3) and gt[0, 0] == 0
    empty = synth.scene(width=160, height=90, person=False)
    assert empty.alpha(0).max() == 0


@pytest.mark.parametrize("background", synth.BACKGROUNDS)
def test_synth_backgrounds_and_motion(background):
    sc = synth.scene(width=160, height=90, seconds=1.0, background=background)
    (f0, a0), (f9, a9) = sc.frame(0), sc.frame(9)
    assert f0.shape == (90, 160, 3) and f0.dtype == np.uint8
    assert not np.array_equal(a0, a9)  # the person moves
    still = synth.scene(width=160, height=90, seconds=1.0, background=background, motion=False)
    assert np.array_equal(still.alpha(0), still.alpha(9))


def test_make_demo_clips(d):
    paths = synth.make_demo_clips(str(d / "demo"))
    infos = [media.probe(p) for p in paths]
    assert len(paths) >= 4
    assert all(i.duration >= 3.0 and i.frames >= 75 for i in infos)
    assert any((i.width, i.height) == (1280, 720) for i in infos)
    assert any(i.has_audio for i in infos)
    mtimes = [os.path.getmtime(p) for p in paths]
    assert synth.make_demo_clips(str(d / "demo")) == paths  # reused, not rebuilt
    assert [os.path.getmtime(p) for p in paths] == mtimes
