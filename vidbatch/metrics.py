"""Quality metrics of the verify stage, streamed over frames with bounded memory.

``compute_metrics`` decodes the input, the output (and the mask video) in
lockstep, each on its own decode thread at most 3 frames ahead (memory stays
flat whatever the length), pairs frames by timestamp, and works on small copies
(longest side <= ``max_side``, area-averaged). Only 12 evenly spaced frames are
looked at in full resolution (``fg_bleed``, ``sharpness_gain``).

Speed matters because verify already decodes every output once: the metrics
should cost less than half of decoding the clip twice. So frames come straight
from PyAV's decoded planes (no full-frame colour conversion), are shrunk with
``cv2.resize(INTER_AREA)`` and compared in a normalised YCbCr space (Y in 0..1,
Cb/Cr in -0.5..0.5); every per-frame step is a few vectorised ops on ~60k pixels.

``METRICS`` documents each metric (the README renders it); ``check_thresholds``
applies a manifest's ``verify:`` rules to a metrics dict.
"""

from __future__ import annotations

import difflib
import math
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class MetricInfo:
    name: str
    operation: str  # "remove-background" | "upscale"
    definition: str
    range: str
    better: str  # "lower" | "higher" | "closer to 1" | "-"
    good: str


METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo(
        "alpha_flicker", "remove-background",
        "Mean over frame pairs and pixels of w·|α_t−α_{t−1}|, with w = clip(1−d/0.1, 0, 1) and d the input's "
        "own change at that pixel (max of |ΔY|, |ΔCb|, |ΔCr|, 3×3-dilated): alpha changes the input does not explain.",
        "0..1", "lower", "< 0.005"),
    MetricInfo(
        "edge_flicker", "remove-background",
        "alpha_flicker restricted to the boundary band: pixels with 0.05<α<0.95 or within 2 working px of the "
        "α=0.5 contour, in either frame of the pair (normalised by the band's size).",
        "0..1", "lower", "< 0.03"),
    MetricInfo(
        "coverage_pulse", "remove-background",
        "Mean |u_t−u_{t−1}|/2 where u_t = mean w·(α_t−α_{t−1}) is the change of foreground area at pixels the input "
        "did not change (w as in alpha_flicker); divided by max(coverage_mean, 0.01). A high-pass of the "
        "coverage series: steady growth/shrink scores ~0, a matte that breathes scores its relative amplitude.",
        ">= 0 (share of the subject's area)", "lower", "< 0.01"),
    MetricInfo(
        "fg_bleed", "remove-background",
        "Transparent outputs only, on up to 12 frames at full resolution: for edge pixels (0.04<α<0.96) with a "
        "local background colour B (the input around the matte, where α≈0) and foreground colour F (the output "
        "where α≈1) at least 0.1 apart, β = clip((C−F)·(B−F)/|B−F|², 0, 1); fg_bleed = Σβ / Σ(1−α). "
        "1 = the edge keeps all the background the input mixed in (no decontamination), 0 = none left. "
        "Left out when there are no such pixels (a binary GIF matte).",
        "0..1", "lower", "< 0.5 if colours are decontaminated; ~1.0 is usual (edges keep the input's colours)"),
    MetricInfo(
        "mask_agreement", "remove-background",
        "With a mask video: IoU of mask>0.5 vs output α>0.5, pooled over all frames (1.0 if both are empty).",
        "0..1", "higher", "> 0.98"),
    MetricInfo(
        "coverage_mean", "remove-background",
        "Mean α over all pixels and frames (share of the frame that is foreground). For opaque outputs α is "
        "derived from the colour: ((C−K)·(I−K))/|I−K|² clipped to 0..1, with K the background colour (or "
        "image, cover-fitted as the engine does) and I the input: approximate where I≈K.",
        "0..1", "-", "clip dependent"),
    MetricInfo(
        "fidelity_psnr", "upscale",
        "Luma PSNR (dB) of the output area-downscaled to the working size vs the input at the same size "
        "(the input fitted in max_side, 320 by default; max_side=0 compares at the input's own size), "
        "from the MSE pooled over all frames (capped at 100).",
        "dB", "higher", "> 35"),
    MetricInfo(
        "fidelity_ssim", "upscale",
        "Mean SSIM of the same luma pairs, on every 2nd frame (Gaussian window 11×11 σ=1.5, C1=0.01², C2=0.03²).",
        "0..1", "higher", "> 0.95"),
    MetricInfo(
        "luma_flicker", "upscale",
        "Mean over frame pairs of |Δ mean-luma(output) − Δ mean-luma(input)|: brightness changes the input does "
        "not have.",
        "0..1", "lower", "< 0.002"),
    MetricInfo(
        "sharpness_gain", "upscale",
        "On up to 12 frames at output resolution: Σ mean(|∂x Y|+|∂y Y|) (3×3 Sobel) of the output / the same "
        "of the input Lanczos-resampled to the output size (swscale, in the input's own pixel format).",
        "> 0", "closer to 1 (or above)", "0.9 .. 1.5"),
    MetricInfo(
        "frames", "any", "Number of output frames compared.", ">= 0", "-", "= input frames"),
)}


def metrics_markdown() -> str:
    """``METRICS`` as a markdown table (for the README)."""
    lines = ["| metric | operation | definition | range | better | typical good |", "|---|---|---|---|---|---|"]
    for m in METRICS.values():
        cells = [f"`{m.name}`", m.operation, m.definition, m.range, m.better, m.good]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")  # |x| would split cells
    return "\n".join(lines)


# --------------------------------------------------------------------------- thresholds


@dataclass(frozen=True)
class Violation:
    metric: str
    value: float
    bound: float
    kind: str  # "max" | "min"
    on_fail: str  # "warn" | "fail"

    def __str__(self) -> str:
        op = ">" if self.kind == "max" else "<"
        return f"{self.metric} = {self.value:.4g} {op} {self.kind} {self.bound:g} ({self.on_fail})"


def _get(rule: Any, key: str) -> Any:
    # rules come as plain dicts (YAML) or as the manifest's pydantic Threshold models
    return rule.get(key) if isinstance(rule, Mapping) else getattr(rule, key, None)


def validate_rules(rules: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for unknown metric names or malformed rules."""
    for name, rule in rules.items():
        if name not in METRICS:
            close = difflib.get_close_matches(name, list(METRICS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(METRICS)}"
            raise ValueError(f"unknown metric {name!r} in verify rules{hint}")
        if _get(rule, "max") is None and _get(rule, "min") is None:
            raise ValueError(f"verify rule for {name!r} needs 'max' or 'min'")
        if (_get(rule, "on_fail") or "fail") not in ("warn", "fail", "off"):
            raise ValueError(f"verify rule for {name!r}: on_fail must be 'warn', 'fail' or 'off'")
        for extra in ("tolerance", "multiple"):
            if _get(rule, extra) is not None:
                raise ValueError(f"verify rule for metric {name!r} takes max/min, not {extra}")


def check_thresholds(metrics: Mapping[str, float], rules: Mapping[str, Any]) -> list[Violation]:
    """Violations of ``rules`` (``{"alpha_flicker": {"max": 0.02, "on_fail": "warn"}}``).

    Metrics absent from ``metrics`` (e.g. upscale metrics on a background removal,
    fg_bleed on an opaque output) or NaN are skipped, not violated.
    """
    validate_rules(rules)
    out: list[Violation] = []
    for name, rule in rules.items():
        value = metrics.get(name)
        if value is None or not math.isfinite(float(value)):
            continue
        on_fail = _get(rule, "on_fail") or "fail"
        if on_fail == "off":
            continue
        hi, lo = _get(rule, "max"), _get(rule, "min")
        if hi is not None and value > hi:
            out.append(Violation(name, float(value), float(hi), "max", on_fail))
        if lo is not None and value < lo:
            out.append(Violation(name, float(value), float(lo), "min", on_fail))
    return out


# --------------------------------------------------------------------------- frame sources

#: 8-bit planar formats read straight from the decoder's planes: name -> (chroma?, alpha?)
_PLANAR8 = {
    "yuv420p": (True, False), "yuvj420p": (True, False), "yuva420p": (True, True),
    "yuv422p": (True, False), "yuvj422p": (True, False), "yuva422p": (True, True),
    "yuv444p": (True, False), "yuvj444p": (True, False), "yuva444p": (True, True),
    "gray": (False, False),
}
#: Kr, Kb of the luma equation; ffmpeg/swscale use BT.601 when a stream does not say
_KRKB = {"601": (0.299, 0.114), "709": (0.2126, 0.0722)}
_SAMPLES = 12


@dataclass(frozen=True)
class Small:
    """A frame at the working size: Y 0..1, Cb/Cr -0.5..0.5, α 0..1 (float32; None if not asked)."""

    y: np.ndarray | None = None
    cb: np.ndarray | None = None
    cr: np.ndarray | None = None
    a: np.ndarray | None = None


def _area(img: np.ndarray, w: int, h: int) -> np.ndarray:
    """Area-average downscale. Exact halvings first: OpenCV's 2x INTER_AREA path is ~8x
    faster than one 4x INTER_AREA (0.03 vs 0.2 ms at 720p), and 2x2 boxes compose exactly."""
    import cv2

    while img.shape[1] >= 2 * w and img.shape[0] >= 2 * h:
        img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2), interpolation=cv2.INTER_AREA)
    if img.shape[1] == w and img.shape[0] == h:
        return img
    return cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)


def _plane(frame: Any, i: int) -> np.ndarray:
    p = frame.planes[i]
    return np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]


_local = threading.local()


def _reformatter() -> Any:
    # a VideoReformatter keeps its SwsContext (Lanczos coefficients) across frames;
    # one per thread, as verify may run several items at once
    r = getattr(_local, "reformatter", None)
    if r is None:
        from av.video.reformatter import VideoReformatter

        r = _local.reformatter = VideoReformatter()
    return r


def _rgb_to_ycc(rgb: np.ndarray, matrix: str = "601") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kr, kb = _KRKB[matrix]
    r, g, b = (rgb[..., i].astype(np.float32) / 255.0 for i in range(3))
    y = kr * r + (1 - kr - kb) * g + kb * b
    return y, (b - y) / (2 * (1 - kb)), (r - y) / (2 * (1 - kr))


@dataclass(frozen=True)
class Pic:
    """One decoded ``av.VideoFrame`` and its time (seconds from the first frame)."""

    t: float
    frame: Any

    @property
    def size(self) -> tuple[int, int]:
        return self.frame.width, self.frame.height

    @property
    def full_range(self) -> bool:
        f = self.frame
        return f.color_range == 2 or f.format.name.startswith("yuvj") or f.format.name == "gray"

    @property
    def matrix(self) -> str:
        return "709" if self.frame.colorspace == 1 else "601"

    def small(self, w: int, h: int, *, colour: bool = True, alpha: bool = False) -> Small:
        """The frame at the working size. ``colour=False`` skips luma and chroma (the
        transparent-output path needs only alpha on most frames)."""
        f = self.frame
        if f.format.name in _PLANAR8:
            chroma, has_a = _PLANAR8[f.format.name]
            full = self.full_range
            y = cb = cr = a = None
            if colour:
                y = _area(_plane(f, 0), w, h).astype(np.float32)
                y = y / 255.0 if full else (y - 16.0) / 219.0
                if chroma:
                    div = 255.0 if full else 224.0
                    cb = (_area(_plane(f, 1), w, h).astype(np.float32) - 128.0) / div
                    cr = (_area(_plane(f, 2), w, h).astype(np.float32) - 128.0) / div
                else:
                    cb = cr = np.zeros_like(y)
            if alpha:
                a = _area(_plane(f, 3), w, h).astype(np.float32) / 255.0 if has_a else np.ones((h, w), np.float32)
            return Small(y, cb, cr, a)
        # anything else (PNG/WebP rgba, GIF bgra, 10/12-bit ProRes): via full-size RGBA
        rgba = _area(self.rgba(), w, h)
        y, cb, cr = _rgb_to_ycc(rgba) if colour else (None, None, None)
        a = rgba[..., 3].astype(np.float32) / 255.0 if alpha else None
        return Small(y, cb, cr, a)

    def luma_small(self, w: int, h: int) -> np.ndarray:
        """Just the luma at the working size (upscale fidelity, mask videos)."""
        f = self.frame
        if f.format.name in _PLANAR8:
            y = _area(_plane(f, 0), w, h).astype(np.float32)
            return y / 255.0 if self.full_range else (y - 16.0) / 219.0
        return _rgb_to_ycc(_area(self.rgba(), w, h))[0]

    def rgba(self) -> np.ndarray:
        """Full-resolution RGBA uint8 (slow path)."""
        return self.frame.to_ndarray(format="rgba")

    def alpha_full(self) -> np.ndarray:
        """Full-resolution alpha, uint8 HxW (a view of the decoder's plane when possible)."""
        f = self.frame
        if _PLANAR8.get(f.format.name, (0, 0))[1]:
            return _plane(f, 3)
        return self.rgba()[..., 3]

    def ycc_at(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """Normalised (Y, Cb, Cr) of full-resolution pixels ``(ys, xs)``: Nx3 float32."""
        f = self.frame
        if f.format.name in _PLANAR8 and _PLANAR8[f.format.name][0]:
            full = self.full_range
            y = _plane(f, 0)[ys, xs].astype(np.float32)
            cols = [y / 255.0 if full else (y - 16.0) / 219.0]
            for i in (1, 2):
                p = _plane(f, i)  # chroma may be subsampled: index it at the matching position
                c = p[(ys * p.shape[0]) // f.height, (xs * p.shape[1]) // f.width].astype(np.float32)
                cols.append((c - 128.0) / (255.0 if full else 224.0))
            return np.stack(cols, axis=1)
        return np.stack(_rgb_to_ycc(self.rgba()[ys, xs]), axis=1)

    def luma8(self, size: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
        """Full-resolution luma as uint8 and the factor to 0..1 units; with ``size``, the
        frame Lanczos-resampled to that size first (the upscale reference)."""
        import cv2

        f = self.frame
        if f.format.name in _PLANAR8:
            if size is not None and size != self.size:
                # swscale Lanczos in the frame's own format: what a plain resample upscaler does
                f = _reformatter().reformat(f, size[0], size[1], f.format.name, interpolation="LANCZOS")
            return _plane(f, 0), 1 / 255.0 if self.full_range else 1 / 219.0
        y = cv2.cvtColor(self.rgba(), cv2.COLOR_RGBA2GRAY)  # BT.601 luma
        if size is not None and size != self.size:
            y = cv2.resize(y, size, interpolation=cv2.INTER_LANCZOS4)
        return y, 1 / 255.0


@dataclass(frozen=True)
class _Source:
    frames: Iterator[Pic]
    count: int  # expected number of frames (0 = unknown)
    fps: float
    reader: Any = None

    def close(self) -> None:
        # stop the decode thread first (it owns the reader while it runs), then the reader
        getattr(self.frames, "close", lambda: None)()
        if self.reader is not None:
            self.reader.close()


def open_frames(path: str, *, prefetch: int = 3) -> _Source:
    """Stream ``path``'s frames through ``vidbatch.media`` (VP9-alpha, ProRes, GIF, WebP,
    PNG-sequence zips). Its ``Reader`` hands out ``av.VideoFrame``s, which we shrink from
    the planes; ``media.iter_frames`` would convert every full frame to RGBA first.

    With ``prefetch`` > 0 a helper thread decodes up to that many frames ahead: two
    frame-threaded decoders pulled alternately from one thread stall each other (720p
    H.264 + VP9 in lockstep cost 2.0 s CPU / 2.3 s wall, against 1.6 s / 1.2 s apart).
    """
    from vidbatch import media

    reader = media.open_video(path)
    fps = reader.fps or 25.0
    count = reader.header_frames or round((reader.duration or 0.0) * fps)

    def gen() -> Iterator[Pic]:
        t0: float | None = None
        t = -1.0 / fps
        try:
            for f in reader.frames():
                ft = f.time
                # flushed frames may come without a time base (time None/NaN): keep the cadence
                t = ft - t0 if ft is not None and math.isfinite(ft) and t0 is not None else t + 1.0 / fps
                if t0 is None:
                    t0 = ft if ft is not None and math.isfinite(ft) else 0.0
                    t = 0.0
                yield Pic(t, f)
        finally:
            reader.close()

    return _Source(_prefetched(gen(), prefetch) if prefetch > 0 else gen(), count, fps, reader)


_END = object()


def _prefetched(it: Iterator[Pic], depth: int) -> Iterator[Pic]:
    """``it`` run on a helper thread through a queue of ``depth`` items (bounded memory)."""
    q: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()

    def put(x: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(x, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in it:
                if not put(x):
                    break
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(exc)
        finally:
            it.close()  # type: ignore[attr-defined]

    th = threading.Thread(target=run, name="metrics-decode", daemon=True)
    th.start()
    try:
        while True:
            x = q.get()
            if x is _END:
                return
            if isinstance(x, BaseException):
                raise x
            yield x
    finally:
        stop.set()
        th.join()


class _Follower:
    """Pairs a second stream with the leading one by time: ``at(t)`` returns the latest
    frame at or before ``t`` (within 40 % of a frame), so outputs with another frame
    rate (a 15 fps GIF of a 30 fps input) are compared with the right input frame."""

    def __init__(self, src: _Source) -> None:
        self._src = src
        self._it, self._eps = src.frames, 0.4 / max(src.fps, 1e-3)
        self._cur: Pic | None = next(self._it, None)
        self._nxt: Pic | None = next(self._it, None)

    def at(self, t: float) -> Pic | None:
        while self._nxt is not None and self._nxt.t <= t + self._eps:
            self._cur, self._nxt = self._nxt, next(self._it, None)
        return self._cur

    def close(self) -> None:
        self._src.close()


# --------------------------------------------------------------------------- helpers


def _fit(w: int, h: int, max_side: int) -> tuple[int, int]:
    if max_side <= 0 or max(w, h) <= max_side:
        return w, h
    s = max_side / max(w, h)
    return max(1, round(w * s)), max(1, round(h * s))


def _parse_colour(bg: str) -> tuple[int, int, int] | None:
    s = bg.strip().lstrip("#")
    if len(s) == 6:
        try:
            return int(s[0:2], 16), int(s[2:4], 16), int(s[4:6], 16)
        except ValueError:
            return None
    return None


def _background(bg: str, full: tuple[int, int], small: tuple[int, int], matrix: str) -> tuple[np.ndarray, ...]:
    """The replacement background (a '#rrggbb' colour or a local image) at the working
    size, as normalised (Y, Cb, Cr)."""
    rgb = _parse_colour(bg)
    if rgb is not None:
        return tuple(c.reshape(1, 1) for c in _rgb_to_ycc(np.asarray(rgb, np.uint8).reshape(1, 1, 3), matrix))
    from PIL import Image

    W, H = full
    with Image.open(bg) as im:
        # exactly as the engine's compositor: cover the frame, Lanczos, centre crop, then
        # the same area downscale as the frames (textured images differ otherwise)
        im = im.convert("RGB")
        scale = max(W / im.width, H / im.height)
        cw, ch = max(W, round(im.width * scale)), max(H, round(im.height * scale))
        x, y = (cw - W) // 2, (ch - H) // 2
        arr = np.asarray(im.resize((cw, ch), Image.LANCZOS).crop((x, y, x + W, y + H)))
    return _rgb_to_ycc(_area(arr, *small), matrix)


def _ssim(x: np.ndarray, y: np.ndarray) -> float:
    """Mean SSIM (Gaussian window σ 1.5, 11x11; data range 1). Four blurs, not five:
    the denominator needs only σx²+σy² = G(x²+y²) − μx² − μy². In-place ops: the
    elementwise work costs more than the blurs at this size."""
    import cv2

    def g(img: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(img, (11, 11), 1.5)

    mx, my = g(x), g(y)
    mxy = mx * my
    m2 = mx * mx
    m2 += my * my
    s2 = g(x * x + y * y)
    s2 -= m2
    sxy = g(x * y)
    sxy -= mxy
    mxy *= 2.0
    mxy += 0.01**2  # C1
    sxy *= 2.0
    sxy += 0.03**2  # C2
    m2 += 0.01**2
    s2 += 0.03**2
    mxy *= sxy
    m2 *= s2
    return float((mxy / m2).mean())


def _sharpness(y8: np.ndarray, scale: float) -> float:
    """Mean L1 gradient magnitude |∂x|+|∂y| (3x3 Sobel) in luma units. Integer Sobel +
    cv2.norm: 0.5 ms at 720p, against 6 ms for a float Sobel + magnitude."""
    import cv2

    gx = cv2.norm(cv2.Sobel(y8, cv2.CV_16S, 1, 0, ksize=3), cv2.NORM_L1)
    gy = cv2.norm(cv2.Sobel(y8, cv2.CV_16S, 0, 1, ksize=3), cv2.NORM_L1)
    return (gx + gy) * scale / y8.size


def _band(a: np.ndarray) -> np.ndarray:
    """Boundary band: soft alpha, or within 2 px of the alpha=0.5 contour."""
    import cv2

    m = (a > 0.5).astype(np.uint8)
    k = np.ones((5, 5), np.uint8)
    return ((a > 0.05) & (a < 0.95)) | (cv2.dilate(m, k) != cv2.erode(m, k))


def _norm_conv(img: np.ndarray, mask: np.ndarray, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Local mean of ``img`` over ``mask`` pixels (normalised convolution) and its weight."""
    import cv2

    m = mask.astype(np.float32)
    num = cv2.GaussianBlur(img * m[..., None], (0, 0), sigma)
    den = cv2.GaussianBlur(m, (0, 0), sigma)
    return num / np.maximum(den, 1e-6)[..., None], den


def _bleed(out: Pic, so: Small, si: Small) -> tuple[float, float]:
    """(Σβ, Σ(1−α)) over one frame's full-resolution edge pixels (see METRICS).

    Colours are compared in the normalised YCbCr space: the mixing model
    C = F + β(B − F) is affine, so β is the same as in RGB. The local colours B and
    F come from the working-size frames, so only the edge pixels are touched at
    full resolution (straight alpha there is exact; a downscale would mix in the
    undefined colour of transparent pixels).
    """
    import cv2

    a_full = out.alpha_full()
    pts = cv2.findNonZero(cv2.inRange(a_full, 11, 244))  # 0.3 ms at 720p; np.nonzero takes 2 ms
    if pts is None:
        return 0.0, 0.0
    xs, ys = pts[:, 0, 0], pts[:, 0, 1]
    h, w = so.a.shape
    # σ of 3 working px (~12 px at 720p): "just around" the matte, on each side
    bg, bg_w = _norm_conv(np.dstack([si.y, si.cb, si.cr]), so.a < 0.02, 3.0)
    fg, fg_w = _norm_conv(np.dstack([so.y, so.cb, so.cr]), so.a > 0.98, 3.0)
    H, W = a_full.shape
    sy, sx = (ys * h) // H, (xs * w) // W
    ok = (bg_w[sy, sx] > 0.05) & (fg_w[sy, sx] > 0.05)
    b, f = bg[sy[ok], sx[ok]], fg[sy[ok], sx[ok]]
    bf = b - f
    n2 = (bf * bf).sum(axis=1)
    keep = n2 > 0.1**2  # where background and foreground look alike, bleed is invisible and undefined
    if not keep.any():
        return 0.0, 0.0
    ys, xs = ys[ok][keep], xs[ok][keep]
    c = out.ycc_at(ys, xs)
    beta = np.clip(((c - f[keep]) * bf[keep]).sum(axis=1) / n2[keep], 0.0, 1.0)
    alpha = a_full[ys, xs].astype(np.float32) / 255.0
    return float(beta.sum()), float((1.0 - alpha).sum())


# --------------------------------------------------------------------------- the metrics


def compute_metrics(
    operation: str,
    input_path: str,
    output_path: str,
    *,
    mask_path: str | None = None,
    background: str = "transparent",
    max_side: int = 320,
) -> dict[str, float]:
    """Quality metrics of ``output_path`` against ``input_path`` (see ``METRICS``).

    Metrics that cannot be computed for this output (e.g. ``fg_bleed`` for an
    opaque one, ``mask_agreement`` without a mask) are left out, never NaN.
    """
    if operation not in ("remove-background", "upscale"):
        raise ValueError(f"unknown operation {operation!r}")
    sources: list[_Source] = []
    try:
        out_src = _opened(sources, output_path)
        fin = _Follower(_opened(sources, input_path))
        if operation == "upscale":
            return _upscale(out_src, fin, max_side)
        if background != "transparent" and _parse_colour(background) is None and not os.path.exists(background):
            return {}  # a remote image background: no colour to derive alpha from
        fmask = _Follower(_opened(sources, mask_path)) if mask_path else None
        return _remove_bg(out_src, fin, fmask, background, max_side)
    finally:
        for src in reversed(sources):
            src.close()


def _opened(sources: list[_Source], path: str) -> _Source:
    src = open_frames(path)
    sources.append(src)  # closed by the caller whatever happens next
    return src


def _stride(count: int) -> int:
    return max(1, math.ceil(count / _SAMPLES)) if count else 10


def _derived_alpha(so: Small, si: Small, k: tuple[np.ndarray, ...]) -> np.ndarray:
    """α of an opaque output: where its colour C lies between the new background K and
    the input I, ((C−K)·(I−K)) / |I−K|², clipped to 0..1 (in place: runs every frame)."""
    dot = nrm = None
    for c, i, kc in zip((so.y, so.cb, so.cr), (si.y, si.cb, si.cr), k):
        ik = i - kc
        ck = c - kc
        ck *= ik
        ik *= ik
        dot, nrm = (ck, ik) if dot is None else (dot + ck, nrm + ik)
    np.maximum(nrm, 1e-3, out=nrm)
    dot /= nrm
    return np.clip(dot, 0.0, 1.0, out=dot)


_DIL3 = np.ones((3, 3), np.uint8)


def _unexplained(si: Small, pi: Small) -> np.ndarray:
    """w = clip(1 − d/0.1, 0, 1), d = the input's own change (max of |ΔY|, |ΔCb|, |ΔCr|)
    dilated 3x3 (an edge that moved a pixel further than the input's edge still counts)."""
    import cv2

    d = cv2.absdiff(si.y, pi.y)
    cv2.max(d, cv2.absdiff(si.cb, pi.cb), dst=d)
    cv2.max(d, cv2.absdiff(si.cr, pi.cr), dst=d)
    w = cv2.dilate(d, _DIL3)
    w *= -10.0
    w += 1.0
    return np.maximum(w, 0.0, out=w)  # d >= 0, so w <= 1 already


def _remove_bg(out_src: _Source, fin: _Follower, fmask: _Follower | None, background: str,
               max_side: int) -> dict[str, float]:
    transparent = background == "transparent"
    stride = _stride(out_src.count)
    size: tuple[int, int] | None = None
    kbg: tuple[np.ndarray, ...] | None = None
    prev: tuple[Small, np.ndarray, np.ndarray] | None = None  # (input, alpha, band)
    n = pairs = 0
    flick = edge = edge_n = pulse = 0.0
    u_prev: float | None = None
    cov = inter = union = 0.0
    bleed_b = bleed_n = 0.0
    for k, out in enumerate(out_src.frames):
        inp = fin.at(out.t)
        if inp is None:
            break
        if size is None:
            size = _fit(*inp.size, max_side)
        w, h = size
        si = inp.small(w, h)
        sample = k % stride == stride // 2
        if transparent:
            so = out.small(w, h, colour=sample, alpha=True)  # colour only where fg_bleed looks
            a = so.a
        else:
            so = out.small(w, h)
            if kbg is None:
                kbg = _background(background, out.size, size, out.matrix)
            a = _derived_alpha(so, si, kbg)
        band = _band(a)
        cov += float(a.mean())
        if fmask is not None:
            mp = fmask.at(out.t)
            if mp is not None:
                m = mp.luma_small(w, h) > 0.5
                o = a > 0.5
                inter += np.count_nonzero(m & o)
                union += np.count_nonzero(m | o)
        if transparent and sample:
            b, nb = _bleed(out, so, si)
            bleed_b, bleed_n = bleed_b + b, bleed_n + nb
        if prev is not None:
            pi, pa, pband = prev
            wgt = _unexplained(si, pi).ravel()
            da = (a - pa).ravel()
            # sums as BLAS dot products: no temporaries (this loop runs once per frame)
            u = float(np.dot(wgt, da)) / da.size
            np.abs(da, out=da)
            flick += float(np.dot(wgt, da)) / da.size
            eb = (band | pband).ravel()
            en = np.count_nonzero(eb)
            if en:
                wgt *= eb
                edge += float(np.dot(wgt, da))
                edge_n += en
            if u_prev is not None:
                pulse += abs(u - u_prev) / 2.0
            u_prev = u
            pairs += 1
        prev = (si, a, band)
        n += 1
    res: dict[str, float] = {"frames": float(n)}
    if n == 0:
        return res
    cov_mean = cov / n
    res["coverage_mean"] = cov_mean
    res["alpha_flicker"] = flick / pairs if pairs else 0.0
    res["edge_flicker"] = edge / edge_n if edge_n else 0.0
    res["coverage_pulse"] = (pulse / (pairs - 1) if pairs > 1 else 0.0) / max(cov_mean, 0.01)
    if transparent and bleed_n:  # none with a binary (GIF) matte: undefined, so left out
        res["fg_bleed"] = min(1.0, bleed_b / bleed_n)
    if fmask is not None:
        res["mask_agreement"] = inter / union if union else 1.0
    return res


def _upscale(out_src: _Source, fin: _Follower, max_side: int) -> dict[str, float]:
    stride = _stride(out_src.count)
    size: tuple[int, int] | None = None
    n = 0
    mse = ssim = flicker = sharp_out = sharp_ref = 0.0
    n_ssim = 0
    prev: tuple[float, float] | None = None
    for k, out in enumerate(out_src.frames):
        inp = fin.at(out.t)
        if inp is None:
            break
        if size is None:
            size = _fit(*inp.size, max_side)
        yi = inp.luma_small(*size)
        yo = out.luma_small(*size)
        diff = yo - yi
        mse += float((diff * diff).mean())
        if k % 2 == 0:  # SSIM is the costliest step; every 2nd frame (PSNR sees every frame)
            ssim += _ssim(yi, yo)
            n_ssim += 1
        mi, mo = float(yi.mean()), float(yo.mean())
        if prev is not None:
            flicker += abs((mo - prev[1]) - (mi - prev[0]))
        prev = (mi, mo)
        if k % stride == stride // 2:
            sharp_out += _sharpness(*out.luma8())
            sharp_ref += _sharpness(*inp.luma8(out.size))
        n += 1
    res: dict[str, float] = {"frames": float(n)}
    if n == 0:
        return res
    res["fidelity_psnr"] = min(100.0, 10.0 * math.log10(1.0 / max(mse / n, 1e-10)))
    res["fidelity_ssim"] = ssim / n_ssim
    res["luma_flicker"] = flicker / (n - 1) if n > 1 else 0.0
    if sharp_ref > 0:
        res["sharpness_gain"] = sharp_out / sharp_ref
    return res
