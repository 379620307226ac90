"""Put the segmented person on a new background: transparent, a colour, an image.

Most inputs decode to yuv420p. For those, compositing happens on the YUV planes
directly: the alpha becomes a fourth plane (yuva420p) or the planes are blended
with the background's planes. That skips an RGB->YUV conversion per frame,
which is a third of the encoder's input cost at 720p. Other inputs (RGBA PNGs,
ProRes 4444, GIF) take the RGB route. Both routes convert RGB<->YUV with
swscale's defaults, so they give the same picture.
"""

from __future__ import annotations

import os
import re

import av
import numpy as np

from vidbatch.errors import InputError

_HEX = re.compile(r"^#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")
_YUV420 = ("yuv420p",)  # yuvj420p (full range) goes the RGB way: its range differs


def parse_color(value: str) -> tuple[int, int, int]:
    """``#rrggbb`` or ``#rgb`` -> (r, g, b)."""
    if not _HEX.match(value):
        raise ValueError(f"background colour must be #rrggbb, got {value!r}")
    h = value[1:]
    if len(h) == 3:
        h = "".join(c * 2 for c in h)
    return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)


def load_background_image(path: str, width: int, height: int) -> np.ndarray:
    """The image at ``path`` scaled to cover ``width``x``height`` (centre crop), RGB uint8."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise InputError(f"background image not found: {path}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            # cover, not stretch: a background keeps its proportions
            scale = max(width / im.width, height / im.height)
            w, h = max(width, round(im.width * scale)), max(height, round(im.height * scale))
            im = im.resize((w, h), Image.LANCZOS)
            x, y = (w - width) // 2, (h - height) // 2
            return np.asarray(im.crop((x, y, x + width, y + height)))
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"background image is not readable: {os.path.basename(path)} ({exc})") from None


def _planes(frame: av.VideoFrame) -> list[np.ndarray]:
    """Writable numpy views (h x w) of a planar frame's planes, without the padding."""
    out = []
    for p in frame.planes:
        buf = np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)
        out.append(buf[:, : p.width])
    return out


def _blend(fg: np.ndarray, bg: np.ndarray, a: np.ndarray, out: np.ndarray) -> None:
    """out = (fg * a + bg * (255 - a)) / 255, exact rounding, in uint16."""
    a16 = a.astype(np.uint16)
    t = fg.astype(np.uint16) * a16
    t += bg.astype(np.uint16) * (255 - a16)
    t += 128
    # x / 255 == (x + (x >> 8)) >> 8 for x < 65536 after the +128 rounding bias
    t += t >> 8
    t >>= 8
    out[...] = t


def _half(alpha: np.ndarray, h: int, w: int) -> np.ndarray:
    """Alpha at chroma resolution (2x2 mean; odd sizes keep the last row/column)."""
    H, W = alpha.shape
    a = alpha
    if H % 2 or W % 2:
        a = np.pad(alpha, ((0, H % 2), (0, W % 2)), mode="edge")
    q = a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2).astype(np.uint16).sum(axis=(1, 3))
    return ((q + 2) >> 2).astype(np.uint8)[:h, :w]


class Compositor:
    """Turns (decoded frame, its RGB, alpha) into the output frame for one background."""

    def __init__(self, background: str, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.transparent = background == "transparent"
        self._bg_rgb: np.ndarray | None = None
        self._bg_yuv: list[np.ndarray] | None = None
        if self.transparent:
            return
        if background.startswith("#"):
            rgb = np.empty((height, width, 3), np.uint8)
            rgb[...] = parse_color(background)
        else:
            rgb = load_background_image(background, width, height)
        self._bg_rgb = rgb
        yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
        self._bg_yuv = [p.copy() for p in _planes(yuv)]

    def __call__(self, frame: av.VideoFrame, rgb: np.ndarray, alpha: np.ndarray) -> av.VideoFrame:
        yuv = frame.format.name in _YUV420 and (frame.width, frame.height) == (self.width, self.height)
        if self.transparent:
            if yuv:
                out = av.VideoFrame(frame.width, frame.height, "yuva420p")
                dst = _planes(out)
                for d, s in zip(dst[:3], _planes(frame)):
                    d[...] = s
                dst[3][...] = alpha
                return out
            return av.VideoFrame.from_ndarray(np.dstack((rgb, alpha)), format="rgba")
        assert self._bg_rgb is not None and self._bg_yuv is not None
        if yuv:
            out = av.VideoFrame(frame.width, frame.height, "yuv420p")
            dst, src = _planes(out), _planes(frame)
            _blend(src[0], self._bg_yuv[0], alpha, dst[0])
            ah = _half(alpha, dst[1].shape[0], dst[1].shape[1])
            _blend(src[1], self._bg_yuv[1], ah, dst[1])
            _blend(src[2], self._bg_yuv[2], ah, dst[2])
            return out
        out_rgb = np.empty_like(rgb)
        _blend(rgb, self._bg_rgb, alpha[..., None], out_rgb)
        return av.VideoFrame.from_ndarray(out_rgb, format="rgb24")
