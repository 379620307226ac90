"""Media helpers of the emulator: formats, probing, engine calls, instant outputs.

Everything here is blocking (PyAV / Pillow / the engine) and runs in the
emulator's worker threads, never on the event loop.

Instant mode (``EmulatorConfig.instant``) does not call the engine: it serves
a synthetic clip made once per (format, size, fps, frame count, alpha, mask)
and cached, so thousands of jobs cost nothing but the first encode. The clip
is a real file of the requested container with the size and frame count the
real engine would produce (input size; upscaled size via
``vidbatch.spec.upscaled_size``), alpha when the format carries it.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import os
import threading
import zipfile
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator

import numpy as np

#: fal ``video_output_type`` / seedvr ``output_format`` / Scenario ``videoOutputType``
VIDEO_OUTPUT_TYPES: dict[str, str] = {
    "X264 (.mp4)": "mp4",
    "VP9 (.webm)": "webm",
    "PRORES4444 (.mov)": "mov",
    "GIF (.gif)": "gif",
}
CONTENT_TYPES: dict[str, str] = {
    "webm": "video/webm",
    "mov": "video/quicktime",
    "mp4": "video/mp4",
    "gif": "image/gif",
    "webp": "image/webp",
    "png_sequence": "application/zip",
    "png": "image/png",
}
EXTENSIONS: dict[str, str] = {"png_sequence": "zip"}
ALPHA_FORMATS = frozenset({"webm", "mov", "gif", "webp", "png_sequence", "png"})
IMAGE_FORMATS = frozenset({"png", "webp", "gif"})


def ext_for(fmt: str) -> str:
    return EXTENSIONS.get(fmt, fmt)


def mask_format(fmt: str) -> str:
    """Container of the mask video for an output format (mirrors the engine)."""
    try:  # the engine is the authority when it says so
        from vidbatch.engine.codecs import mask_format as engine_mask_format  # type: ignore

        return str(engine_mask_format(fmt))
    except Exception:
        return fmt if fmt in ("webm", "mov", "mp4") else "mp4"


@dataclass
class MediaInfo:
    width: int
    height: int
    fps: float = 0.0
    frames: int = 1
    duration: float = 0.0
    kind: str = "video"  # video | image
    rate: Fraction | None = field(default=None, repr=False)
    #: the container's nominal rate; differs from ``rate`` (the average) for a variable-rate input
    nominal: Fraction | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "fps": self.fps,
            "num_frames": self.frames,
            "duration": self.duration,
        }


class MediaError(Exception):
    """The input is not a decodable video / image."""


def probe(path: str | os.PathLike[str]) -> MediaInfo:
    """Size, rate and frame count of a video (PyAV) or still image (Pillow)."""
    path = str(path)
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(b"\x89PNG") or head[:3] == b"\xff\xd8\xff" or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        try:
            from PIL import Image

            with Image.open(path) as img:
                frames = getattr(img, "n_frames", 1) or 1
                return MediaInfo(width=img.width, height=img.height, frames=frames, kind="image" if frames == 1 else "video")
        except Exception as exc:  # noqa: BLE001 - any decoder failure means "not media"
            raise MediaError(f"cannot decode image: {exc}") from exc
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise MediaError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or Fraction(25)
            nominal = stream.guessed_rate or stream.base_rate
            frames = int(stream.frames or 0)
            if frames <= 0:
                # demux only (no decode): one packet per frame for video codecs
                frames = sum(1 for pkt in container.demux(stream) if pkt.size)
            width, height = stream.codec_context.width, stream.codec_context.height
    except MediaError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise MediaError(f"cannot decode video: {exc}") from exc
    if not width or not height or frames <= 0:
        raise MediaError("video has no frames")
    fps = float(rate)
    return MediaInfo(width=width, height=height, fps=round(fps, 3), frames=frames,
                     duration=round(frames / fps, 3) if fps else 0.0, rate=Fraction(rate),
                     nominal=Fraction(nominal) if nominal and 0 < nominal < 1000 else None)


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def concat_files(paths: list[Path], dst: Path) -> tuple[int, str]:
    """Concatenate upload parts into ``dst`` (parts are deleted); return (size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    with open(dst, "wb") as out:
        for p in paths:
            with open(p, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            Path(p).unlink(missing_ok=True)
    return size, digest.hexdigest()


# ---------------------------------------------------------------- synthetic clips
def _frames(width: int, height: int, count: int, *, alpha: bool, gray: bool) -> Iterator[np.ndarray]:
    """A moving disc over a gradient: cheap, deterministic, compresses well."""
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.zeros((height, width, 4), np.uint8)
    base[..., 0] = (xx * 255 // max(width - 1, 1)).astype(np.uint8)
    base[..., 1] = (yy * 255 // max(height - 1, 1)).astype(np.uint8)
    base[..., 2] = 96
    base[..., 3] = 255
    radius = max(2, min(width, height) // 4)
    for i in range(count):
        cx = radius + (i * 3) % max(1, width - 2 * radius)
        cy = height // 2
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 <= radius * radius
        if gray:
            yield np.where(disc, 255, 0).astype(np.uint8)
            continue
        frame = base.copy()
        frame[disc, :3] = (230, 200, 170)
        if alpha:
            frame[..., 3] = np.where(disc, 255, 0).astype(np.uint8)
            yield frame
        else:
            yield frame[..., :3].copy()


def _av_settings(fmt: str, alpha: bool, width: int, height: int) -> tuple[str, str, str, dict[str, str]]:
    odd = width % 2 or height % 2
    if fmt == "webm":
        return "webm", "libvpx-vp9", "yuva420p" if alpha else "yuv420p", {
            "deadline": "realtime", "cpu-used": "8", "crf": "40", "b": "0", "row-mt": "1"}
    if fmt == "mov":
        return "mov", "prores_ks", "yuva444p10le" if alpha else "yuv422p10le", {
            "profile": "4444" if alpha else "2"}
    # mp4: 4:2:0 needs even sizes; odd sizes fall back to 4:4:4 (High 4:4:4)
    return "mp4", "libx264", "yuv444p" if odd else "yuv420p", {"preset": "ultrafast", "crf": "30"}


def write_clip(dst: str | os.PathLike[str], fmt: str, width: int, height: int, fps: float | Fraction,
               frames: int, *, alpha: bool, gray: bool = False) -> None:
    """Encode a synthetic clip (``gray`` for a mask) in ``fmt``."""
    dst = str(dst)
    frames = max(1, int(frames))
    rate = Fraction(fps).limit_denominator(100000) if fps else Fraction(25)
    alpha = alpha and not gray and fmt in ALPHA_FORMATS
    if fmt in ("gif", "webp", "png_sequence", "png"):
        from PIL import Image

        images = [Image.fromarray(arr) for arr in _frames(width, height, frames, alpha=alpha, gray=gray)]
        if fmt == "png":
            images[0].save(dst, format="PNG")
        elif fmt == "png_sequence":
            with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
                for i, img in enumerate(images):
                    buf = io.BytesIO()
                    img.save(buf, format="PNG")
                    zf.writestr(f"frame_{i:05d}.png", buf.getvalue())
        else:
            # per-frame delays rounded cumulatively (GIF: to centiseconds), as FFmpeg's muxers
            # do, so the total duration stays that of the frames at ``rate``
            step = 10 if fmt == "gif" else 1
            ends = [int(round(1000 * (i + 1) / float(rate) / step)) * step for i in range(len(images))]
            duration = [max(step, b - a) for a, b in zip([0, *ends], ends)]
            kwargs: dict[str, Any] = {"save_all": True, "append_images": images[1:], "duration": duration, "loop": 0}
            if fmt == "gif":
                kwargs["disposal"] = 2
                images[0].save(dst, format="GIF", **kwargs)
            else:
                images[0].save(dst, format="WEBP", lossless=False, quality=60, **kwargs)
        return
    import av

    container_fmt, codec, pix_fmt, options = _av_settings(fmt, alpha, width, height)
    src_format = "gray" if gray else ("rgba" if alpha else "rgb24")
    with av.open(dst, "w", format=container_fmt) as out:
        stream = out.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options
        for arr in _frames(width, height, frames, alpha=alpha, gray=gray):
            frame = av.VideoFrame.from_ndarray(arr, format=src_format)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


class TemplateCache:
    """Synthetic outputs for instant mode, made once per shape and reused."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def get(self, fmt: str, width: int, height: int, fps: float | Fraction, frames: int, *,
            alpha: bool, gray: bool = False) -> Path:
        rate = Fraction(fps).limit_denominator(100000) if fps else Fraction(25)
        key = f"v1-{fmt}-{width}x{height}-{rate.numerator}_{rate.denominator}-{frames}-{int(alpha)}{int(gray)}"
        path = self.root / f"{key}.{ext_for(fmt)}"
        if path.exists():
            return path
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if not path.exists():
                # unique temp name: other processes may share this cache directory
                tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                write_clip(tmp, fmt, width, height, rate, frames, alpha=alpha, gray=gray)
                os.replace(tmp, path)
        return path


# ---------------------------------------------------------------- engine calls
@dataclass
class Work:
    """What one job asks for, in engine terms (set by the provider module)."""

    op: str  # remove-background | remove-background-image | upscale
    fmt: str
    background: str = "transparent"  # "transparent" | "#rrggbb" | local image path
    background_url: str | None = None
    mask: bool = False
    mask_fmt: str | None = None
    factor: float | None = None
    target: str | None = None
    model: str | None = None


@dataclass
class Produced:
    kind: str  # video | mask
    path: Path
    content_type: str
    info: MediaInfo
    shared: bool = False  # a cached template: never deleted with the job


def load_engine(engine: Any) -> Any:
    return engine if engine is not None else importlib.import_module("vidbatch.engine")


def _info_from(result: Any, path: Path) -> MediaInfo:
    width = getattr(result, "width", None)
    if width:
        fps = float(getattr(result, "fps", 0) or 0)
        frames = int(getattr(result, "frames", 0) or 0)
        return MediaInfo(width=int(width), height=int(result.height), fps=round(fps, 3), frames=frames,
                         duration=round(frames / fps, 3) if fps else 0.0)
    try:
        return probe(path)
    except MediaError:
        return MediaInfo(width=0, height=0)


def run_engine(engine: Any, work: Work, src: Path, out_dir: Path, stem: str) -> list[Produced]:
    """Run one job on the engine; return the files it produced."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if work.op == "remove-background-image":
        return _image_remove_background(engine, work, src, out_dir, stem)
    dst = out_dir / f"{stem}.{ext_for(work.fmt)}"
    if work.op == "upscale":
        result = engine.upscale(str(src), str(dst), fmt=work.fmt, factor=work.factor, target=work.target)
        out = Path(getattr(result, "output", None) or dst)
        return [Produced("video", out, CONTENT_TYPES[work.fmt], _info_from(result, out))]
    mfmt = work.mask_fmt or mask_format(work.fmt)
    mask_dst = out_dir / f"{stem}-mask.{ext_for(mfmt)}" if work.mask else None
    kwargs: dict[str, Any] = {"fmt": work.fmt, "background": work.background}
    if mask_dst is not None:
        kwargs["mask_dst"] = str(mask_dst)
    if work.model:
        kwargs["model"] = work.model
    result = engine.remove_background(str(src), str(dst), **kwargs)
    out = Path(getattr(result, "output", None) or dst)
    info = _info_from(result, out)
    produced = [Produced("video", out, CONTENT_TYPES[work.fmt], info)]
    if mask_dst is not None:
        mpath = Path(getattr(result, "mask", None) or mask_dst)
        suffix = mpath.suffix.lstrip(".")
        ctype = CONTENT_TYPES.get("png_sequence" if suffix == "zip" else suffix, "application/octet-stream")
        produced.append(Produced("mask", mpath, ctype, info))
    return produced


def _image_remove_background(engine: Any, work: Work, src: Path, out_dir: Path, stem: str) -> list[Produced]:
    """fal's image model: run the video engine on a one-frame clip, keep frame 0."""
    import av
    from PIL import Image

    with Image.open(src) as img:
        rgb = np.asarray(img.convert("RGB"))
    height, width = rgb.shape[:2]
    clip = out_dir / f"{stem}-input.mov"
    with av.open(str(clip), "w", format="mov") as out:  # PNG-in-MOV: lossless, any size
        stream = out.add_stream("png", rate=1)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    cut = out_dir / f"{stem}-cut.mov"
    mask_clip = out_dir / f"{stem}-cutmask.mov" if work.mask else None
    kwargs: dict[str, Any] = {"fmt": "mov", "background": "transparent"}
    if mask_clip is not None:
        kwargs["mask_dst"] = str(mask_clip)
    result = engine.remove_background(str(clip), str(cut), **kwargs)
    produced: list[Produced] = []
    rgba = _first_frame(Path(getattr(result, "output", None) or cut), "rgba")
    dst = out_dir / f"{stem}.{work.fmt}"
    Image.fromarray(rgba).save(dst, format=work.fmt.upper())
    info = MediaInfo(width=width, height=height, kind="image")
    produced.append(Produced("video", dst, CONTENT_TYPES[work.fmt], info))
    if mask_clip is not None:
        gray = _first_frame(Path(getattr(result, "mask", None) or mask_clip), "gray")
        mdst = out_dir / f"{stem}-mask.{work.fmt}"
        Image.fromarray(gray).save(mdst, format=work.fmt.upper())
        produced.append(Produced("mask", mdst, CONTENT_TYPES[work.fmt], info))
    for tmp in (clip, cut, mask_clip):
        if tmp is not None and tmp.exists():
            tmp.unlink()
    return produced


def _first_frame(path: Path, fmt: str) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        if codec in ("vp9", "vp8"):  # the native decoders drop the alpha plane
            ctx = av.CodecContext.create("libvpx-vp9" if codec == "vp9" else "libvpx", "r")
            for packet in container.demux(stream):
                for frame in ctx.decode(packet if packet.size else None):
                    return frame.to_ndarray(format=fmt)
        for frame in container.decode(stream):
            return frame.to_ndarray(format=fmt)
    raise MediaError("engine output has no frames")


def output_size(work: Work, info: MediaInfo) -> tuple[int, int]:
    """The size a job's output has: the input's, or the upscaled one."""
    from vidbatch.spec import upscaled_size

    if work.op == "upscale":
        return upscaled_size(info.width, info.height, work.factor, work.target)
    return info.width, info.height


def run_instant(templates: TemplateCache, work: Work, info: MediaInfo, *,
                size: tuple[int, int] | None = None, alpha: bool | None = None) -> list[Produced]:
    """Instant mode: the cached synthetic output for this job's shape.

    ``info`` gives the frame count and rate; ``size`` / ``alpha`` override what the
    job asks for (the output faults use them to spoil or bend a result).
    """
    width, height = size or output_size(work, info)
    if alpha is None:
        alpha = work.op != "upscale" and work.background == "transparent" and work.fmt in ALPHA_FORMATS
    frames = 1 if work.op == "remove-background-image" else info.frames
    rate = info.rate or (Fraction(info.fps).limit_denominator(100000) if info.fps else Fraction(25))
    path = templates.get(work.fmt, width, height, rate, frames, alpha=alpha)
    out_info = MediaInfo(width=width, height=height, fps=info.fps, frames=frames, duration=info.duration if frames > 1 else 0.0,
                         kind="image" if work.op == "remove-background-image" else "video")
    produced = [Produced("video", path, CONTENT_TYPES[work.fmt], out_info, shared=True)]
    if work.mask and work.op != "upscale":
        mfmt = work.fmt if work.op == "remove-background-image" else (work.mask_fmt or mask_format(work.fmt))
        mpath = templates.get(mfmt, width, height, rate, frames, alpha=False, gray=True)
        produced.append(Produced("mask", mpath, CONTENT_TYPES[mfmt], out_info, shared=True))
    return produced
