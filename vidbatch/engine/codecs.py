"""Writers for every output format, all fed ``av.VideoFrame``s one at a time.

======== =========================================== ==================== =======
format   video                                       alpha                audio
======== =========================================== ==================== =======
webm     VP9 (libvpx-vp9 realtime, cpu-used 8, crf)  yuva420p             opus
mov      ProRes 422 (prores_aw) / 4444 (prores_ks)   4444 yuva444p10le    aac
mp4      H.264 (libx264 veryfast, crf 20) yuv420p    none (ValueError)    aac
gif      palettegen/paletteuse, a palette/second     on/off (α ≥ 128)     -
webp     animated WebP (libwebp q 80 m 0, own mux)   yuva420p             -
png_seq  zip of frame_000001.png… + meta.json        rgba (exact)         -
======== =========================================== ==================== =======

GIF and WebP live in ``vidbatch.engine.anim``. Every writer encodes into
``<dst>.part-…`` and renames on ``close()``, so a crash never leaves a
half-written file under the real name; ``abort()`` deletes the partial file.
PyAV converts each frame to the encoder's pixel format itself (swscale), so
callers pass whatever is cheapest to produce.
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from fractions import Fraction
from typing import Protocol

import av

from vidbatch.spec import FORMATS

AUDIO_CODEC: dict[str, str] = {"webm": "libopus", "mov": "aac", "mp4": "aac"}
#: formats whose container keeps audio (the rest drop it)
AUDIO_FORMATS = frozenset(AUDIO_CODEC)

_VP9_OPTS = {"crf": "30", "b": "0", "row-mt": "1", "deadline": "realtime", "cpu-used": "8", "tile-columns": "2"}
_X264_OPTS = {"crf": "20", "preset": "veryfast"}
#: ProRes: 4444 with alpha through prores_ks (its alpha round trip is verified,
#: notes §4). Opaque output is 422 Standard through prores_aw, which skips
#: prores_ks's per-slice quantiser search and encodes ~5-9x faster at 720p;
#: prores_aw refuses odd widths, where prores_ks takes over.
_PRORES_ALPHA = ("prores_ks", "yuva444p10le", {"profile": "4444", "vendor": "apl0"})
_PRORES_OPAQUE = ("prores_aw", "yuv422p10le", {"profile": "2", "vendor": "apl0"})
_PRORES_OPAQUE_ODD = ("prores_ks", "yuv422p10le", {"profile": "2", "vendor": "apl0"})


def mask_format(fmt: str) -> str:
    """The format a mask video is written in when the main output is ``fmt``.

    A mask is an opaque grayscale video, so it uses the same container where
    that container is a real video format (webm, mov, mp4). GIF, WebP and PNG
    sequences are image formats: their masks are written as H.264 MP4.
    """
    _check_fmt(fmt)
    return fmt if fmt in ("webm", "mov", "mp4") else "mp4"


def supports_alpha(fmt: str) -> bool:
    _check_fmt(fmt)
    return fmt != "mp4"


def supports_audio(fmt: str) -> bool:
    _check_fmt(fmt)
    return fmt in AUDIO_FORMATS


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; expected one of {', '.join(FORMATS)}")


class Writer(Protocol):
    width: int
    height: int
    frames: int

    def write(self, frame: av.VideoFrame) -> None: ...
    def write_audio(self, frame: av.AudioFrame) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


def _part(dst: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(dst)) or ".", exist_ok=True)
    return f"{dst}.part-{uuid.uuid4().hex[:8]}"


class BaseWriter:
    """Shared bookkeeping: the temp file, the frame counter, the CFR timeline."""

    def __init__(self, dst: str, width: int, height: int, rate: Fraction) -> None:
        self.dst, self.width, self.height, self.rate = dst, width, height, Fraction(rate)
        self.tmp = _part(dst)
        self.frames = 0
        self.closed = False

    def write_audio(self, frame: av.AudioFrame) -> None:  # formats without audio drop it
        return None

    def _stamp(self, frame: av.VideoFrame) -> av.VideoFrame:
        # a constant-rate timeline: frame i at i / rate (inputs may be VFR or odd-based)
        frame.pts = self.frames
        frame.time_base = 1 / self.rate
        self.frames += 1
        return frame

    def _finish(self) -> None:
        os.replace(self.tmp, self.dst)
        self.closed = True

    def abort(self) -> None:
        self.closed = True
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass

    def __enter__(self) -> BaseWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.closed:
            self.close()  # type: ignore[attr-defined]


class AVWriter(BaseWriter):
    """webm / mov / mp4 (and the masks): one PyAV container, optional audio."""

    def __init__(
        self,
        dst: str,
        fmt: str,
        width: int,
        height: int,
        rate: Fraction,
        *,
        alpha: bool = False,
        audio: av.audio.stream.AudioStream | None = None,
    ) -> None:
        super().__init__(dst, width, height, rate)
        self.fmt = fmt
        opts = {"movflags": "+faststart"} if fmt == "mp4" else {}
        self.out = av.open(self.tmp, "w", format=fmt, options=opts)
        try:
            if fmt == "webm":
                vs = self.out.add_stream("libvpx-vp9", rate=self.rate, options=dict(_VP9_OPTS))
                vs.pix_fmt = "yuva420p" if alpha else "yuv420p"
                if alpha:
                    # WebM readers look for AlphaMode=1 before they read BlockAdditional
                    vs.metadata["alpha_mode"] = "1"
            elif fmt == "mov":
                if alpha:
                    codec, pix, popts = _PRORES_ALPHA
                else:
                    codec, pix, popts = _PRORES_OPAQUE_ODD if width % 2 else _PRORES_OPAQUE
                vs = self.out.add_stream(codec, rate=self.rate, options=dict(popts))
                vs.pix_fmt = pix
            elif fmt == "mp4":
                if alpha:
                    raise ValueError("mp4 (H.264) cannot carry alpha; use webm, mov, gif, webp or png_sequence")
                vs = self.out.add_stream("libx264", rate=self.rate, options=dict(_X264_OPTS))
                # 4:2:0 needs even sizes; an odd-sized input keeps its size in 4:4:4
                # (High 4:4:4: fine in FFmpeg/VLC, not in every browser)
                vs.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
            else:
                raise ValueError(f"AVWriter does not write {fmt!r}")
            vs.width, vs.height = width, height
            vs.codec_context.thread_type = "AUTO"
            self.vs = vs
            self.astream: av.audio.stream.AudioStream | None = None
            if audio is not None and fmt in AUDIO_CODEC:
                self.astream = self._add_audio(audio)
        except BaseException:
            self.out.close()
            self.abort()
            raise

    def _add_audio(self, src: av.audio.stream.AudioStream) -> av.audio.stream.AudioStream:
        name = AUDIO_CODEC[self.fmt]
        rate = src.codec_context.sample_rate or 48000
        if name == "libopus":
            rate = 48000  # opus only takes 48/24/16/12/8 kHz
        channels = src.codec_context.channels or 2
        layout = "mono" if channels == 1 else "stereo"  # surround is downmixed
        a = self.out.add_stream(name, rate=rate)
        a.layout = layout
        if name == "aac":
            a.bit_rate = 160_000 if layout == "stereo" else 96_000
        self._resampler = av.AudioResampler(format=a.codec_context.format, layout=layout, rate=rate)
        return a

    def write(self, frame: av.VideoFrame) -> None:
        if frame.width != self.width or frame.height != self.height:
            frame = frame.reformat(width=self.width, height=self.height)
        self.out.mux(self.vs.encode(self._stamp(frame)))

    def write_audio(self, frame: av.AudioFrame) -> None:
        if self.astream is None:
            return
        frame.pts = None  # let the resampler and encoder build a gap-free timeline
        for f in self._resampler.resample(frame):
            self.out.mux(self.astream.encode(f))

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.out.mux(self.vs.encode(None))
            if self.astream is not None:
                for f in self._resampler.resample(None):
                    self.out.mux(self.astream.encode(f))
                self.out.mux(self.astream.encode(None))
            self.out.close()
        except BaseException:
            self.out.close()
            self.abort()
            raise
        self._finish()

    def abort(self) -> None:
        try:
            self.out.close()
        except Exception:  # noqa: BLE001 - best effort on the error path
            pass
        super().abort()


class PngSequenceWriter(BaseWriter):
    """A zip of ``frame_000001.png``… (RGBA, or RGB when opaque) plus ``meta.json``.

    PNG is already deflated, so members are stored, not compressed again. The
    PNG encoder runs with frame threads; packets come back in frame order.
    """

    def __init__(self, dst: str, width: int, height: int, rate: Fraction, *, alpha: bool = False) -> None:
        super().__init__(dst, width, height, rate)
        self.zip = zipfile.ZipFile(self.tmp, "w", compression=zipfile.ZIP_STORED)
        self.pix = "rgba" if alpha else "rgb24"
        ctx = av.CodecContext.create("png", "w")
        ctx.width, ctx.height, ctx.pix_fmt = width, height, self.pix
        ctx.time_base = 1 / self.rate
        ctx.thread_type = "AUTO"
        # zlib level 1 + "up" prediction: ~2x faster than the defaults, ~5 % larger
        ctx.options = {"compression_level": "1", "pred": "up"}
        ctx.open()
        self.ctx = ctx
        self.written = 0

    def write(self, frame: av.VideoFrame) -> None:
        if frame.format.name != self.pix or frame.width != self.width or frame.height != self.height:
            frame = frame.reformat(width=self.width, height=self.height, format=self.pix)
        self._store(self.ctx.encode(self._stamp(frame)))

    def _store(self, packets: list[av.Packet]) -> None:
        for pkt in packets:
            self.written += 1
            self.zip.writestr(f"frame_{self.written:06d}.png", bytes(pkt))

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._store(self.ctx.encode(None))
            meta = {
                "fps": float(self.rate),
                "rate": f"{self.rate.numerator}/{self.rate.denominator}",
                "width": self.width,
                "height": self.height,
                "frames": self.written,
                "alpha": self.pix == "rgba",
            }
            self.zip.writestr("meta.json", json.dumps(meta, indent=1))
            self.zip.close()
        except BaseException:
            self.abort()
            raise
        self._finish()

    def abort(self) -> None:
        try:
            self.zip.close()
        except Exception:  # noqa: BLE001
            pass
        super().abort()


def open_writer(
    dst: str,
    fmt: str,
    *,
    width: int,
    height: int,
    rate: Fraction | float,
    alpha: bool = False,
    audio: av.audio.stream.AudioStream | None = None,
) -> Writer:
    """A writer for ``fmt`` at ``dst``. ``audio`` (an input stream) is re-encoded
    for webm/mov/mp4 and ignored for gif/webp/png_sequence."""
    _check_fmt(fmt)
    rate = Fraction(rate).limit_denominator(1001) if not isinstance(rate, Fraction) else rate
    if fmt in ("webm", "mov", "mp4"):
        return AVWriter(dst, fmt, width, height, rate, alpha=alpha, audio=audio)
    if fmt in ("gif", "webp"):
        from vidbatch.engine.anim import GifWriter, WebPWriter  # (imports this module)

        cls = GifWriter if fmt == "gif" else WebPWriter
        return cls(dst, width, height, rate, alpha=alpha)
    return PngSequenceWriter(dst, width, height, rate, alpha=alpha)


def open_mask_writer(dst: str, fmt: str, *, width: int, height: int, rate: Fraction) -> Writer:
    """The grayscale mask video that goes with a main output in ``fmt``."""
    return open_writer(dst, mask_format(fmt), width=width, height=height, rate=rate, alpha=False)


__all__ = [
    "AUDIO_FORMATS",
    "Writer",
    "mask_format",
    "open_mask_writer",
    "open_writer",
    "supports_alpha",
    "supports_audio",
]
