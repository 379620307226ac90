"""Synthetic clips with an exact ground-truth alpha, made offline.

No test video of a person ships in any wheel, so the demo, the tests, the
benchmarks and the emulator build their own: scikit-image's bundled astronaut
photo, cut out with a fixed alpha matte (``vidbatch/data/astronaut_alpha.png``),
composited over a panning mosaic of scikit-image's bundled textures or photos,
plus a little noise, and encoded with PyAV (H.264 yuv420p by default) so the
engine sees real codec input.  Everything is deterministic for given arguments.

Only images bundled inside the scikit-image wheel are used (``astronaut``,
``grass``, ``gravel``, ``brick``, ``coffee``, ``rocket``, ``chelsea``);
others such as ``eagle`` are fetched through pooch and would need the network.

The shipped matte was made once by ``_grabcut_alpha`` (the recipe of
notes/local-engine.md §6) and is the truth by definition: the clip *is*
``alpha * person + (1 - alpha) * background + noise``.

Public API::

    make_clip(path, *, width, height, seconds, fps, person, background, motion,
              audio, codec, seed) -> str
    scene(...) -> Scene            # frame(i) -> (rgb, alpha) without encoding
    ground_truth_alpha(i, ...) -> float32 HxW in [0, 1]
    make_demo_clips(out_dir) -> list[str]
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources
from typing import Iterator, Literal

import numpy as np
from PIL import Image

Background = Literal["textures", "busy", "plain"]
BACKGROUNDS: tuple[str, ...] = ("textures", "busy", "plain")
CODECS: tuple[str, ...] = ("h264", "vp9")

#: pan speed and bob amplitude at 1280x720 (scaled with the frame width / height)
_PAN_PX_720P = 12.0
_BOB_PX_720P = 6.0
#: the person's height as a share of the frame height (600 px at 720p)
_PERSON_SHARE = 600 / 720
#: noise standard deviation in 8-bit levels (camera-like grain; keeps codecs honest)
_NOISE_SIGMA = 2.0
_NOISE_BANK = 6


# --------------------------------------------------------------------------- sources


@functools.lru_cache(maxsize=1)
def _astronaut() -> tuple[np.ndarray, np.ndarray]:
    """The 512x512 astronaut photo (uint8 RGB) and its matte (float32 0..1)."""
    from skimage import data

    rgb = np.ascontiguousarray(data.astronaut())
    ref = resources.files("vidbatch").joinpath("data/astronaut_alpha.png")
    with ref.open("rb") as fh:
        alpha = np.asarray(Image.open(fh).convert("L"), dtype=np.float32) / 255.0
    if alpha.shape != rgb.shape[:2]:
        raise RuntimeError("vidbatch/data/astronaut_alpha.png does not match the astronaut image")
    rgb.setflags(write=False)
    alpha.setflags(write=False)
    return rgb, alpha


def _grabcut_alpha() -> np.ndarray:  # pragma: no cover - used once to make the shipped PNG
    """Regenerate the shipped matte (needs OpenCV; the PNG is the source of truth)."""
    import cv2
    from skimage import data

    img = data.astronaut()
    m = np.full(img.shape[:2], cv2.GC_BGD, np.uint8)
    m[15:512, 15:505] = cv2.GC_PR_FGD
    bgd = [(0, 15, 0, 512), (0, 512, 0, 18), (0, 200, 0, 95), (0, 140, 95, 150), (0, 140, 305, 360),
           (0, 290, 350, 512), (280, 338, 362, 512), (195, 238, 0, 58), (105, 148, 118, 156),
           (122, 150, 296, 350), (140, 228, 312, 352)]
    fgd = [(40, 175, 170, 280), (230, 512, 60, 340), (370, 512, 300, 480), (160, 285, 125, 300)]
    for y0, y1, x0, x1 in bgd:
        m[y0:y1, x0:x1] = cv2.GC_BGD
    for y0, y1, x0, x1 in fgd:
        m[y0:y1, x0:x1] = cv2.GC_FGD
    cv2.setRNGSeed(0)
    cv2.grabCut(cv2.cvtColor(img, cv2.COLOR_RGB2BGR), m, None, np.zeros((1, 65)), np.zeros((1, 65)), 8,
                cv2.GC_INIT_WITH_MASK)
    fg = np.where((m == cv2.GC_FGD) | (m == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)
    _, lab, stats, _ = cv2.connectedComponentsWithStats(fg, 8)
    fg = np.where(lab == 1 + np.argmax(stats[1:, cv2.CC_STAT_AREA]), 255, 0).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, np.ones((9, 9), np.uint8))
    alpha = cv2.GaussianBlur(fg.astype(np.float32) / 255, (0, 0), 1.2)
    return np.clip(np.round(alpha * 255), 0, 255).astype(np.uint8)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    mode = "L" if img.ndim == 2 else "RGB"
    if img.dtype != np.uint8:
        # float mattes go through a 32-bit float image so nothing is quantised
        return np.asarray(Image.fromarray(img.astype(np.float32), "F").resize((width, height), Image.LANCZOS))
    return np.asarray(Image.fromarray(img, mode).resize((width, height), Image.LANCZOS))


def _tiles(kind: str, height: int) -> list[np.ndarray]:
    """Background tiles scaled to the frame height (RGB uint8)."""
    from skimage import data

    if kind == "textures":
        # the texture photos are grayscale; a tint makes them look like a scene
        tints = {"grass": (0.55, 0.95, 0.45), "gravel": (0.95, 0.9, 0.8), "brick": (1.0, 0.6, 0.45)}
        tiles = []
        for name, tint in tints.items():
            gray = getattr(data, name)().astype(np.float32)
            rgb = np.clip(gray[..., None] * np.asarray(tint, np.float32), 0, 255).astype(np.uint8)
            tiles.append(rgb)
    elif kind == "busy":
        # skin- and orange-coloured clutter: the hard case for a person segmenter
        tiles = [data.coffee(), data.rocket(), data.chelsea()]
    else:
        raise ValueError(kind)
    out = []
    for t in tiles:
        w = max(2, round(t.shape[1] * height / t.shape[0]))
        out.append(_resize(np.ascontiguousarray(t), w, height))
    return out


# --------------------------------------------------------------------------- scene


@dataclass
class Scene:
    """A deterministic synthetic clip; ``frame(i)`` renders frame ``i`` exactly."""

    width: int = 640
    height: int = 360
    seconds: float = 3.0
    fps: float = 25
    person: bool = True
    background: str = "textures"
    motion: bool = True
    seed: int = 0
    _strip: np.ndarray = field(init=False, repr=False)
    _period: int = field(init=False, repr=False)
    _fg: np.ndarray = field(init=False, repr=False)
    _fg_alpha: np.ndarray = field(init=False, repr=False)
    _noise: list[np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.background not in BACKGROUNDS:
            raise ValueError(f"background must be one of {BACKGROUNDS}, got {self.background!r}")
        if self.width % 2 or self.height % 2 or self.width < 16 or self.height < 16:
            raise ValueError("width and height must be even and at least 16 (4:2:0 video)")
        w, h = self.width, self.height
        rng = np.random.default_rng(self.seed)
        if self.background == "plain":
            # a soft vertical gradient: the easy case (a studio backdrop)
            t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
            top, bottom = np.array([200, 215, 235], np.float32), np.array([120, 135, 160], np.float32)
            col = (top * (1 - t) + bottom * t).astype(np.uint8)
            strip = np.broadcast_to(col, (h, w, 3)).copy()
        else:
            tiles = _tiles(self.background, h)
            order = rng.permutation(len(tiles))
            strip = np.concatenate([tiles[i] for i in order], axis=1)
            while strip.shape[1] < w:
                strip = np.concatenate([strip, strip], axis=1)
        self._period = strip.shape[1]
        # append the first ``w`` columns so any pan offset mod period is one slice
        self._strip = np.ascontiguousarray(np.concatenate([strip, strip[:, :w]], axis=1))
        rgb, alpha = _astronaut()
        ph = max(8, round(h * _PERSON_SHARE))
        self._fg = _resize(rgb, ph, ph).astype(np.float32)
        self._fg_alpha = np.clip(_resize(alpha, ph, ph), 0.0, 1.0)
        self._noise = []  # built on first use: alpha-only scenes never need it

    @property
    def frames(self) -> int:
        return max(1, round(self.seconds * self.fps))

    def _person_xy(self, i: int) -> tuple[int, int]:
        w, h = self.width, self.height
        ph = self._fg.shape[0]
        bob = _BOB_PX_720P * h / 720
        # the photo is cut at the chest: keep its bottom edge at or below the frame edge
        base_y = h - ph + math.ceil(bob)
        if not self.motion:
            return (w - ph) // 2, base_y
        n = max(1, self.frames - 1)
        # sweep left to right, always wholly in frame (a cut-off person is a
        # different, harder test; it is not what the demo clips are for)
        x0, x1 = 0, max(0, w - ph)
        x = round(x0 + (x1 - x0) * i / n)
        y = round(base_y + bob * math.sin(2 * math.pi * i / max(8.0, self.fps)))
        return x, y

    def _paste(self, canvas_shape: tuple[int, int], i: int) -> tuple[np.ndarray, tuple[slice, slice], tuple[slice, slice]]:
        x, y = self._person_xy(i)
        ph = self._fg.shape[0]
        h, w = canvas_shape
        cx0, cy0, cx1, cy1 = max(0, x), max(0, y), min(w, x + ph), min(h, y + ph)
        dst = (slice(cy0, cy1), slice(cx0, cx1))
        src = (slice(cy0 - y, cy1 - y), slice(cx0 - x, cx1 - x))
        return self._fg_alpha, dst, src

    def alpha(self, i: int) -> np.ndarray:
        """The exact ground-truth alpha of frame ``i`` (float32 HxW, 0..1)."""
        out = np.zeros((self.height, self.width), np.float32)
        if self.person:
            a, dst, src = self._paste(out.shape, i)
            out[dst] = a[src]
        return out

    def background_frame(self, i: int) -> np.ndarray:
        off = int(round(_PAN_PX_720P * self.width / 1280 * i)) % self._period if self.motion else 0
        return self._strip[:, off : off + self.width]

    def frame(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(rgb uint8 HxWx3, alpha float32 HxW) of frame ``i``."""
        img = self.background_frame(i).astype(np.float32)
        alpha = np.zeros((self.height, self.width), np.float32)
        if self.person:
            a, dst, src = self._paste(alpha.shape, i)
            alpha[dst] = a[src]
            region = img[dst]
            am = a[src][..., None]
            img[dst] = am * self._fg[src] + (1.0 - am) * region
        if not self._noise:
            # a small bank of noise fields, cycled: per-frame gaussian noise at 720p
            # would dominate the render time; its own seed keeps it deterministic
            rng = np.random.default_rng([self.seed, 1])
            shape = (self.height, self.width, 3)
            self._noise = [np.round(rng.normal(0.0, _NOISE_SIGMA, shape)).astype(np.int16) for _ in range(_NOISE_BANK)]
        noisy = np.round(img).astype(np.int16) + self._noise[i % _NOISE_BANK]
        return np.clip(noisy, 0, 255).astype(np.uint8), alpha

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(self.frames):
            yield self.frame(i)


def scene(
    *,
    width: int = 640,
    height: int = 360,
    seconds: float = 3.0,
    fps: float = 25,
    person: bool = True,
    background: str = "textures",
    motion: bool = True,
    seed: int = 0,
) -> Scene:
    return Scene(width, height, seconds, fps, person, background, motion, seed)


def ground_truth_alpha(
    i: int,
    *,
    width: int = 640,
    height: int = 360,
    seconds: float = 3.0,
    fps: float = 25,
    person: bool = True,
    background: str = "textures",
    motion: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Exact alpha (float32 HxW in 0..1) of frame ``i`` of the clip ``make_clip`` writes
    with the same arguments (the background does not change the alpha)."""
    return _alpha_scene(width, height, seconds, fps, person, motion, seed).alpha(i)


@functools.lru_cache(maxsize=8)
def _alpha_scene(width: int, height: int, seconds: float, fps: float, person: bool, motion: bool, seed: int) -> Scene:
    return Scene(width, height, seconds, fps, person, "plain", motion, seed)


# --------------------------------------------------------------------------- encoding


def _rate(fps: float) -> Fraction:
    from vidbatch.media import snap_rate

    return snap_rate(fps)  # 29.97 -> 30000/1001, as cameras write it


def _tone(n: int, rate: int, start: int) -> np.ndarray:
    """A deterministic stereo test tone (440 Hz left, 660 Hz right, slow tremolo)."""
    t = (np.arange(n) + start) / rate
    env = 0.25 * (0.75 + 0.25 * np.sin(2 * np.pi * 0.5 * t))
    return np.stack([env * np.sin(2 * np.pi * 440 * t), env * np.sin(2 * np.pi * 660 * t)]).astype(np.float32)


def make_clip(
    path: str | os.PathLike[str],
    *,
    width: int = 640,
    height: int = 360,
    seconds: float = 3.0,
    fps: float = 25,
    person: bool = True,
    background: str = "textures",
    motion: bool = True,
    audio: bool = False,
    codec: str = "h264",
    seed: int = 0,
) -> str:
    """Render a synthetic clip to ``path`` and return the path.

    ``codec``: ``h264`` (libx264 yuv420p crf 18; .mp4/.mov/.mkv; AAC audio) or
    ``vp9`` (libvpx-vp9 yuv420p; .webm/.mkv; Opus audio).
    """
    import av

    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    sc = Scene(width, height, seconds, fps, person, background, motion, seed)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    rate = _rate(fps)
    tmp = f"{path}.part{os.getpid()}"
    try:
        with av.open(tmp, "w", format=_container_for(path)) as out:
            if codec == "h264":
                vs = out.add_stream("libx264", rate=rate, options={"crf": "18", "preset": "veryfast"})
            else:
                vs = out.add_stream(
                    "libvpx-vp9",
                    rate=rate,
                    options={"crf": "24", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"},
                )
            vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
            vs.codec_context.thread_type = "AUTO"
            astream = None
            sr = 48000
            if audio:
                astream = out.add_stream("aac" if codec == "h264" else "libopus", rate=sr)
                astream.layout = "stereo"
            sent = 0
            for i in range(sc.frames):
                rgb, _ = sc.frame(i)
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
                frame.pts = i
                frame.time_base = 1 / rate
                out.mux(vs.encode(frame))
                if astream is not None:
                    # keep the audio level with the video so the file is interleaved
                    want = round((i + 1) / float(rate) * sr)
                    sent = _write_audio(out, astream, sent, want, sr)
            out.mux(vs.encode(None))
            if astream is not None:
                want = round(sc.frames / float(rate) * sr)
                _write_audio(out, astream, sent, want, sr)
                out.mux(astream.encode(None))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _write_audio(out, stream, sent: int, want: int, sr: int) -> int:  # noqa: ANN001 - PyAV types
    import av

    chunk = 1024
    fmt = "fltp" if stream.codec_context.name == "aac" else "flt"
    while sent < want:
        n = min(chunk, want - sent)
        samples = _tone(n, sr, sent)
        if fmt == "flt":
            samples = np.ascontiguousarray(samples.T).reshape(1, -1)
        af = av.AudioFrame.from_ndarray(samples, format=fmt, layout="stereo")
        af.sample_rate = sr
        af.pts = sent
        af.time_base = Fraction(1, sr)
        out.mux(stream.encode(af))
        sent += n
    return sent


def _container_for(path: str) -> str | None:
    ext = os.path.splitext(path)[1].lower()
    return {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm"}.get(ext)


def make_demo_clips(out_dir: str | os.PathLike[str]) -> list[str]:
    """Four >= 3 s demo clips (one 1280x720), deterministic, offline; returns their paths.

    Existing files are reused so repeated demo runs cost nothing.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    specs: list[tuple[str, dict]] = [
        ("astronaut_textures_720p.mp4", dict(width=1280, height=720, background="textures", audio=True)),
        ("astronaut_busy_360p.mp4", dict(width=640, height=360, background="busy", audio=True, seed=1)),
        ("astronaut_studio_static_360p.mp4", dict(width=640, height=360, background="plain", motion=False, seed=2)),
        ("empty_set_360p.mp4", dict(width=640, height=360, background="textures", person=False, seed=3)),
    ]
    paths = []
    for name, kw in specs:
        p = os.path.join(out_dir, name)
        if not (os.path.exists(p) and os.path.getsize(p) > 0):
            make_clip(p, seconds=3.2, fps=25, **kw)
        paths.append(p)
    return paths
