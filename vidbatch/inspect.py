"""``vidbatch inspect FILE``: probe + decode facts (+ quality of the alpha) as JSON."""

from __future__ import annotations

import os
import tempfile
from typing import Any

from vidbatch import media, storage
from vidbatch.errors import InputError


def inspect_file(url: str) -> dict[str, Any]:
    made = None
    if storage.is_local(url):
        path = storage.local_path(url)
        if not os.path.exists(path):
            raise InputError(f"file not found: {url}")
    else:
        fd, path = tempfile.mkstemp(suffix=os.path.splitext(url)[1])
        with os.fdopen(fd, "wb") as fh:
            for chunk in storage.iter_read(url):
                fh.write(chunk)
        made = path
    try:
        info = media.probe(path)
        frames = 0
        alpha_min, alpha_max = 255, 0
        for frame in media.iter_frames(path, "rgba"):
            frames += 1
            a = frame[::4, ::4, 3]
            alpha_min, alpha_max = min(alpha_min, int(a.min())), max(alpha_max, int(a.max()))
        return {
            "file": url,
            "probe": info.to_json(),
            "decoded": {
                "frames": frames,
                "decodes_to_end": frames == info.frames or info.frames == 0,
                "alpha_min": alpha_min if frames else None,
                "alpha_max": alpha_max if frames else None,
                "transparent_pixels": bool(frames and alpha_min < 255),
            },
        }
    finally:
        if made:
            os.remove(made)
