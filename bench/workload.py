"""Inputs and manifests: N distinct tiny clips, one manifest per measured run.

One 64x64, 1 s, 8 fps H.264 clip (6 KB) is rendered once and hard-linked or
copied N times with distinct mtimes, so every copy is its own item (vidbatch's
local fingerprint is mtime + size) and no run hits another run's cache (each
run also writes under its own output root).
"""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

CLIP = dict(width=64, height=64, seconds=1.0, fps=8)


def make_inputs(root: Path, n: int) -> list[Path]:
    from vidbatch.synth import make_clip

    src = root / "clip.mp4"
    if not src.exists():
        make_clip(str(src), **CLIP)  # type: ignore[arg-type]
    d = root / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    out = []
    base = 1_600_000_000
    for i in range(n):
        p = d / f"v{i:05d}.mp4"
        if not p.exists():
            shutil.copyfile(src, p)
            os.utime(p, (base + i, base + i))
        out.append(p)
    return out


def manifest(root: Path, name: str, inputs: list[Path], concurrency: int, provider: str = "fal") -> Path:
    """A manifest for ``inputs`` with its own output root under ``root/name``."""
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    videos = "\n".join(f"  - {p}" for p in inputs)
    text = textwrap.dedent(f"""\
        version: 1
        name: {name}
        output: {out}/out/{{stem}}.{{ext}}
        defaults:
          provider: {provider}
          operation: remove-background
          format: webm
          background: transparent
        limits:
          {provider}: {{concurrency: {concurrency}}}
        videos:
        """) + videos + "\n"
    path = out / "manifest.yaml"
    path.write_text(text)
    return path
