"""Local media I/O: probe a file and stream its decoded frames.

One reader covers every input and output format vidbatch handles:

* anything FFmpeg demuxes, through PyAV (H.264 MP4, ProRes MOV, GIF, stills…).
  VP8/VP9 streams flagged ``alpha_mode=1`` are decoded with ``libvpx`` /
  ``libvpx-vp9``: FFmpeg's native vp8/vp9 decoders silently drop the alpha that
  WebM stores in BlockAdditional (notes/local-engine.md §4);
* WebP (still or animated) through Pillow: av 18 cannot decode animated WebP;
* PNG sequences: a ``.zip`` of ``frame_000001.png``… plus ``meta.json``
  (fps, width, height, frames), which vidbatch writes for ``png_sequence``.

Frames are streamed one at a time (bounded memory). Every problem with the
input becomes a one-line :class:`vidbatch.errors.InputError`.

A still image probes as a one-frame clip at 25 fps (FFmpeg's image default),
which is also what the engine writes for it.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from fractions import Fraction
from typing import Iterator, Union

import av
import numpy as np

from vidbatch.errors import InputError
from vidbatch.spec import MediaInfo

AnyFrame = Union[av.VideoFrame, av.AudioFrame]

DEFAULT_RATE = Fraction(25)
PNG_SEQ_META = "meta.json"
_PNG_NAME = re.compile(r"(?:^|/)frame_(\d+)\.png$", re.IGNORECASE)
#: decoders that keep the alpha plane of WebM VP8/VP9 (BlockAdditional)
_ALPHA_DECODERS = {"vp8": "libvpx", "vp9": "libvpx-vp9"}


def _name(path: str) -> str:
    return os.path.basename(path) or path


def _check_file(path: str) -> int:
    if not os.path.exists(path):
        raise InputError(f"input not found: {path}")
    if not os.path.isfile(path):
        raise InputError(f"input is not a file: {path}")
    size = os.path.getsize(path)
    if size == 0:
        raise InputError(f"input is empty (0 bytes): {_name(path)}")
    return size


def _sniff(path: str) -> str:
    """Which reader handles ``path``: ``zip`` (PNG sequence), ``webp`` (Pillow) or ``av``."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return "av"


def _webp_durations(path: str) -> list[int]:
    """Frame durations (ms) of an animated WebP, read from its ANMF chunk headers
    without decoding; [] for a still. Pillow would decode every frame to say."""
    out: list[int] = []
    with open(path, "rb") as fh:
        fh.seek(12)
        while True:
            head = fh.read(8)
            if len(head) < 8:
                break
            size = int.from_bytes(head[4:8], "little")
            if head[:4] == b"ANMF":
                body = fh.read(16)
                if len(body) < 16:
                    break
                out.append(int.from_bytes(body[12:15], "little"))
                fh.seek(size + (size & 1) - 16, os.SEEK_CUR)
            else:
                fh.seek(size + (size & 1), os.SEEK_CUR)
    return out


def snap_rate(fps: float) -> Fraction:
    """A frame rate measured from timestamps, snapped to the nearest common exact rate."""
    if not fps or not math.isfinite(fps) or fps <= 0:
        return DEFAULT_RATE
    # the nearest of N and N*1000/1001 (NTSC), if it is within 0.2 %
    cands = [c for c in (Fraction(round(fps)), Fraction(round(fps * 1.001) * 1000, 1001)) if c > 0]
    best = min(cands, key=lambda c: abs(float(c) - fps), default=None)
    if best is not None and abs(float(best) - fps) <= 0.002 * fps:
        return best
    return Fraction(fps).limit_denominator(1001)


def _pix_has_alpha(name: str) -> bool:
    if not name:
        return False
    try:
        fmt = av.VideoFormat(name)
    except (ValueError, av.FFmpegError):
        return False
    # alpha formats carry an extra component: rgba/bgra/argb, yuva*, gbrap (4); ya8 (2)
    return len(fmt.components) in (2, 4)


def _stream_duration(stream: av.video.stream.VideoStream, container: av.container.InputContainer) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    tag = {k.lower(): v for k, v in (stream.metadata or {}).items()}.get("duration")
    if tag:
        m = re.match(r"(\d+):(\d+):(\d+(?:\.\d+)?)", tag)
        if m:
            return int(m[1]) * 3600 + int(m[2]) * 60 + float(m[3])
    if container.duration and len(container.streams) == 1:
        return container.duration / 1_000_000
    return None


class Reader:
    """An open input: header facts plus a streaming decoder. Use as a context manager.

    ``rate`` is the exact frame rate, ``header_frames`` the frame count the header
    states (0 if it does not say), ``duration`` the video duration if known.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.size = _check_file(self.path)
        self.kind = _sniff(self.path)
        self.has_audio = False
        self.audio_stream: av.audio.stream.AudioStream | None = None
        self._container: av.container.InputContainer | None = None
        self._zip: zipfile.ZipFile | None = None
        self._names: list[str] = []
        self._alpha_decoder: str | None = None
        # header facts, filled in by the opener for the kind of file
        self.width = self.height = self.header_frames = 0
        self.rate = DEFAULT_RATE
        #: the stream's nominal (constant) rate, where the container states one apart from the average
        self.nominal_rate: Fraction | None = None
        self.duration: float | None = None
        self.codec = self.pix_fmt = self.container = ""
        self.has_alpha = False
        try:
            {"av": self._open_av, "webp": self._open_webp, "zip": self._open_zip}[self.kind]()
        except InputError:
            self.close()
            raise
        except (av.FFmpegError, OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
            self.close()
            raise InputError(f"not a readable video: {_name(self.path)} ({_short(exc)})") from None

    # ------------------------------------------------------------------ openers

    def _open_av(self) -> None:
        try:
            c = av.open(self.path, metadata_errors="ignore")
        except av.FFmpegError as exc:
            raise InputError(
                f"not a readable video (unknown format, or truncated): {_name(self.path)} ({_short(exc)})"
            ) from None
        self._container = c
        if not c.streams.video:
            kinds = sorted({s.type for s in c.streams}) or ["no streams"]
            raise InputError(f"no video stream in {_name(self.path)} (found: {', '.join(kinds)})")
        vs = c.streams.video[0]
        cc = vs.codec_context
        if not cc.width or not cc.height:
            raise InputError(f"video stream of {_name(self.path)} has no frame size (not decodable)")
        self.stream = vs
        self.width, self.height = cc.width, cc.height
        self.codec = cc.name
        self.pix_fmt = cc.pix_fmt or ""
        names = c.format.name.split(",")
        ext = os.path.splitext(self.path)[1].lower().lstrip(".")
        if "mp4" in names:
            # one demuxer for the whole ISO family: the brand tells MOV from MP4
            brand = str((c.metadata or {}).get("major_brand", "")).strip()
            self.container = ext if ext in names else ("mov" if brand == "qt" else "mp4")
        else:
            self.container = ext if ext in names else names[0].removesuffix("_pipe")
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        self.rate = Fraction(rate) if rate and 0 < rate < 1000 else DEFAULT_RATE
        nominal = vs.guessed_rate or vs.base_rate
        self.nominal_rate = Fraction(nominal) if nominal and 0 < nominal < 1000 else None
        self.header_frames = int(vs.frames or 0)
        self.duration = _stream_duration(vs, c)
        if self.codec == "gif" and self.header_frames and self.duration:
            # GIF stores delays in 1/100 s: trust the total, derive the rate
            self.rate = snap_rate(self.header_frames / self.duration)
        meta = {k.lower(): v for k, v in (vs.metadata or {}).items()}
        if self.codec in _ALPHA_DECODERS and meta.get("alpha_mode") == "1":
            self._alpha_decoder = _ALPHA_DECODERS[self.codec]
            self.pix_fmt = "yuva420p"
        self.has_alpha = self._alpha_decoder is not None or _pix_has_alpha(self.pix_fmt)
        if c.streams.audio:
            self.has_audio = True
            self.audio_stream = c.streams.audio[0]

    def _open_webp(self) -> None:
        from PIL import Image

        im = Image.open(self.path)
        self._image = im
        self.width, self.height = im.size
        self.codec, self.container = "webp", "webp"
        self.has_alpha = im.mode in ("RGBA", "LA") or "transparency" in im.info
        self.pix_fmt = "rgba" if self.has_alpha else "rgb24"
        durations = _webp_durations(self.path)
        self.header_frames = len(durations) or 1
        total_ms = sum(durations)
        if total_ms > 0:
            self.rate = snap_rate(len(durations) * 1000 / total_ms)
            self.duration = total_ms / 1000
        else:
            self.rate = DEFAULT_RATE

    def _open_zip(self) -> None:
        z = zipfile.ZipFile(self.path)
        self._zip = z
        found = [(int(m[1]), n) for n in z.namelist() if (m := _PNG_NAME.search(n))]
        if not found:
            raise InputError(f"zip has no frame_NNNNNN.png members: {_name(self.path)}")
        self._names = [n for _, n in sorted(found)]
        meta: dict = {}
        meta_name = next((n for n in z.namelist() if n.rsplit("/", 1)[-1] == PNG_SEQ_META), None)
        if meta_name:
            try:
                meta = json.loads(z.read(meta_name))
            except ValueError:
                raise InputError(f"bad {PNG_SEQ_META} in {_name(self.path)}") from None
        from PIL import Image

        with z.open(self._names[0]) as fh:
            im = Image.open(fh)
            im.load()
        self.width, self.height = im.size
        self.has_alpha = im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info
        self.pix_fmt = "rgba" if self.has_alpha else "rgb24"
        self.codec, self.container = "png", "png_sequence"
        fps = meta.get("rate") or meta.get("fps")
        self.rate = Fraction(str(fps)).limit_denominator(1001) if fps else DEFAULT_RATE
        self.header_frames = len(self._names)
        self.duration = self.header_frames / float(self.rate)

    # ------------------------------------------------------------------ decoding

    @property
    def fps(self) -> float:
        return float(self.rate)

    def decode(self, *, audio: bool = False) -> Iterator[AnyFrame]:
        """Video frames (and, with ``audio``, the first audio stream's frames) in file order."""
        try:
            if self.kind == "av":
                yield from self._decode_av(audio)
            elif self.kind == "webp":
                yield from self._decode_webp()
            else:
                yield from self._decode_zip()
        except InputError:
            raise
        except (av.FFmpegError, OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise InputError(f"cannot decode {_name(self.path)}: {_short(exc)}") from None

    def frames(self) -> Iterator[av.VideoFrame]:
        """Decoded video frames in their native pixel format (yuv420p for most video)."""
        for f in self.decode(audio=False):
            yield f  # type: ignore[misc]

    def _decode_av(self, audio: bool) -> Iterator[AnyFrame]:
        c = self._container
        assert c is not None
        vs = self.stream
        if self._alpha_decoder:
            dec = av.CodecContext.create(self._alpha_decoder, "r")
        else:
            dec = vs.codec_context
        if not dec.is_open:
            # frame + slice threads: decode is the cheap stage, but not free at 720p
            dec.thread_type = "AUTO"
        streams = [vs]
        a_stream = self.audio_stream if audio else None
        if a_stream is not None:
            a_stream.codec_context.thread_type = "AUTO"
            streams.append(a_stream)
        n = 0
        for pkt in c.demux(*streams):
            if pkt.stream is vs:
                for frame in dec.decode(pkt if pkt.size else None):
                    n += 1
                    yield frame
            elif a_stream is not None:
                try:
                    yield from a_stream.decode(pkt)
                except av.FFmpegError:
                    continue  # a damaged audio packet must not fail the video
        self._check_complete(n)

    def _check_complete(self, n: int) -> None:
        """Raise if decoding stopped before what the header promised (a truncated file)."""
        if n == 0:
            raise InputError(f"no decodable video frames in {_name(self.path)}")
        expected = self.header_frames
        if expected:
            # an MP4 edit list may legitimately drop a frame or two that the sample
            # table counts; a cut file loses far more
            expected -= max(2, int(0.01 * expected))
        elif self.duration:
            expected = int(self.duration * float(self.rate) + 0.5)
            # durations are rounded to the container's tick; allow a little slack
            expected -= max(2, int(0.02 * expected))
        if expected and n < expected:
            raise InputError(
                f"truncated or damaged video: {_name(self.path)} decoded {n} of {expected} frames"
            )

    def _decode_webp(self) -> Iterator[av.VideoFrame]:
        from PIL import ImageSequence

        fmt = "rgba" if self.has_alpha else "rgb24"
        mode = "RGBA" if self.has_alpha else "RGB"
        for frame in ImageSequence.Iterator(self._image):
            yield av.VideoFrame.from_ndarray(np.asarray(frame.convert(mode)), format=fmt)

    def _decode_zip(self) -> Iterator[av.VideoFrame]:
        from PIL import Image

        assert self._zip is not None
        fmt = "rgba" if self.has_alpha else "rgb24"
        mode = "RGBA" if self.has_alpha else "RGB"
        for name in self._names:
            with self._zip.open(name) as fh:
                im = Image.open(fh)
                arr = np.asarray(im.convert(mode))
            if arr.shape[:2] != (self.height, self.width):
                raise InputError(f"{name} in {_name(self.path)} is {arr.shape[1]}x{arr.shape[0]}, "
                                 f"expected {self.width}x{self.height}")
            yield av.VideoFrame.from_ndarray(arr, format=fmt)

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._zip is not None:
            self._zip.close()
            self._zip = None
        im = getattr(self, "_image", None)
        if im is not None:
            im.close()
            self._image = None

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(exc: BaseException) -> str:
    text = str(exc).split(": '", 1)[0]  # PyAV appends the full path; keep it short
    return " ".join(text.split())[:160] or type(exc).__name__


def open_video(path: str | os.PathLike[str]) -> Reader:
    """Open ``path`` for decoding (raises InputError). Close it, or use ``with``."""
    return Reader(path)


# --------------------------------------------------------------------------- probe


def probe(path: str) -> MediaInfo:
    """Facts about a local video, image or PNG-sequence zip (raises InputError).

    The frame count comes from the header when it has one (MP4/MOV); otherwise
    (WebM, GIF, …) by decoding. Header counts are checked against the packets
    actually present, so a truncated file is an InputError, not a short count.
    """
    with Reader(path) as rd:
        frames = rd.header_frames
        has_alpha = rd.has_alpha
        if rd.kind == "av":
            frames, has_alpha = _count_av(rd)
        # (a PNG zip's first frame was decoded on open; its frames are its members)
        duration = rd.duration if rd.duration else frames / rd.fps
        return MediaInfo(
            width=rd.width,
            height=rd.height,
            fps=rd.fps,
            frames=frames,
            duration=round(duration, 6),
            codec=rd.codec,
            pix_fmt=rd.pix_fmt,
            container=rd.container,
            has_alpha=has_alpha,
            has_audio=rd.has_audio,
            size=rd.size,
            nominal_fps=round(float(rd.nominal_rate), 6) if rd.nominal_rate and rd.codec != "gif" else 0.0,
        )


def _count_av(rd: Reader) -> tuple[int, bool]:
    c = rd._container
    assert c is not None
    vs = rd.stream
    name = _name(rd.path)
    try:
        gif = rd.codec == "gif"
        if rd.header_frames and not gif:
            # cheap: count packets, decode only until the first frame comes out
            ctx = vs.codec_context
            ctx.thread_type = "AUTO"
            packets, decoded = 0, 0
            for pkt in c.demux(vs):
                if pkt.size:
                    packets += 1
                if not decoded:
                    decoded += len(ctx.decode(pkt if pkt.size else None))
            if not decoded:
                raise InputError(f"no decodable video frames in {name}")
            if packets < rd.header_frames:
                raise InputError(
                    f"truncated or damaged video: {name} has {packets} of {rd.header_frames} frames"
                )
            return rd.header_frames, rd.has_alpha
        # no count in the header (or a GIF, whose alpha needs a look at the pixels):
        # decode everything, without pixel conversion, so it is cheap
        n, transparent = 0, False
        if rd._alpha_decoder and not gif:
            # counting does not need the alpha plane: the native decoder is faster
            rd._alpha_decoder, alpha_decoder = None, rd._alpha_decoder
        else:
            alpha_decoder = None
        for frame in rd._decode_av(audio=False):
            n += 1
            if gif and not transparent:
                # the GIF decoder always outputs bgra: alpha only if a pixel is see-through
                transparent = bool(frame.to_ndarray(format="rgba")[..., 3].min() < 255)
        rd._alpha_decoder = alpha_decoder
        return n, (transparent if gif else rd.has_alpha)
    except InputError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise InputError(f"cannot decode {name}: {_short(exc)}") from None


# --------------------------------------------------------------------------- frames


def iter_frames(path: str, fmt: str = "rgba") -> Iterator[np.ndarray]:
    """Decoded frames as arrays, one at a time: HxWx4 uint8 for ``rgba``, HxWx3 for
    ``rgb24``, HxW for ``gray`` (any PyAV ndarray format works)."""
    with Reader(path) as rd:
        for frame in rd.frames():
            yield frame.to_ndarray(format=fmt)


def iter_frames_yuv(path: str) -> Iterator[av.VideoFrame]:
    """Decoded frames as yuv420p ``av.VideoFrame``s (native for most video: no copy)."""
    with Reader(path) as rd:
        for frame in rd.frames():
            yield frame if frame.format.name == "yuv420p" else frame.reformat(format="yuv420p")
