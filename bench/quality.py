"""Quality bench: background removal scored against an exact ground-truth alpha,
plus the cost of ``vidbatch.metrics`` against plain decoding.

Clips come from ``vidbatch.synth`` (the astronaut cut-out composited over panning
textures or busy photos; the matte *is* the truth), plus a background-only clip
(every alpha should be ~0) and a static-person clip (checks flicker only).

Truth metrics (notes/local-engine.md §6), against the float ground truth:
  IoU      at alpha > 0.5, pooled over all frames ("-" when the truth is empty)
  MAE      mean |alpha - alpha_gt|
  flicker  mean |(alpha_t - alpha_t-1) - (alpha_gt,t - alpha_gt,t-1)|  (MAD form of dtSSD)
next to the trivial baselines (all foreground, all background) and an "oracle"
(the truth itself, through the VP9-alpha codec: the floor any engine can reach).
The no-reference verify metrics (``compute_metrics``) are printed for the same
outputs, to show they track the truth.

Hosted providers: any output file can be scored with ``score_output(path, truth)``;
when provider keys are set the bench says which ones could be added (see HOSTED).

    python bench/quality.py                 # 640x360 4 s clips + the 720p timing
    python bench/quality.py --no-timing     # quality only
    python bench/quality.py --timing-only
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Iterable, Iterator

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from vidbatch import media, synth  # noqa: E402
from vidbatch.metrics import compute_metrics, open_frames  # noqa: E402

Truth = Callable[[int], np.ndarray]

CLIPS: dict[str, dict] = {
    "person / textures": dict(background="textures", seed=0),
    "person / busy": dict(background="busy", seed=1),
    "background only": dict(background="textures", person=False, seed=3),
    "static person": dict(background="textures", motion=False, seed=2),
}
#: hosted providers and the environment they need; scoring them = run the provider on
#: the clip, then ``score_output(downloaded_output, truth)``
HOSTED: dict[str, tuple[str, ...]] = {
    "fal": ("FAL_KEY",),
    "scenario": ("SCENARIO_SDK_API_KEY", "SCENARIO_SDK_API_SECRET"),
    "removebgvideo": ("REMOVEBGVIDEO_API_KEY",),
}


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class TruthScore:
    iou: float | None  # None when the truth is empty (background-only clip)
    mae: float
    flicker: float
    frames: int


def score_alphas(alphas: Iterable[np.ndarray], truth: Truth) -> TruthScore:
    """Score a stream of alpha mattes (float 0..1, HxW) against ``truth(i)``."""
    inter = union = gt_area = 0
    mae = flick = 0.0
    prev: tuple[np.ndarray, np.ndarray] | None = None
    n = 0
    for i, a in enumerate(alphas):
        gt = truth(i)
        if a.shape != gt.shape:
            raise ValueError(f"frame {i}: output is {a.shape}, truth is {gt.shape}")
        p, g = a > 0.5, gt > 0.5
        inter += int(np.count_nonzero(p & g))
        union += int(np.count_nonzero(p | g))
        gt_area += int(np.count_nonzero(g))
        mae += float(np.abs(a - gt).mean())
        if prev is not None:
            flick += float(np.abs((a - prev[0]) - (gt - prev[1])).mean())
        prev = (a, gt)
        n += 1
    return TruthScore(inter / union if gt_area and union else None, mae / max(n, 1), flick / max(n - 1, 1), n)


def output_alphas(path: str) -> Iterator[np.ndarray]:
    """Decoded alpha of every frame of a (transparent) output, float32 0..1."""
    for pic in open_frames(path).frames:
        yield pic.alpha_full().astype(np.float32) / 255.0


def score_output(path: str, truth: Truth) -> TruthScore:
    """The hook for any engine or hosted provider: score its output file against the truth."""
    return score_alphas(output_alphas(path), truth)


# --------------------------------------------------------------------------- clips and engines


def write_oracle(src_scene: synth.Scene, dst: str) -> str:
    """The truth as an output: input colours + exact alpha through VP9 yuva420p."""
    import av

    rate = Fraction(src_scene.fps).limit_denominator(1001)
    with av.open(dst, "w") as out:
        s = out.add_stream("libvpx-vp9", rate=rate, options={
            "crf": "30", "b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"})
        s.width, s.height, s.pix_fmt = src_scene.width, src_scene.height, "yuva420p"
        for i in range(src_scene.frames):
            rgb, a = src_scene.frame(i)
            vf = av.VideoFrame.from_ndarray(np.dstack([rgb, np.round(a * 255).astype(np.uint8)]), format="rgba")
            vf.pts, vf.time_base = i, 1 / rate
            out.mux(s.encode(vf))
        out.mux(s.encode(None))
    return dst


def engines() -> dict[str, Callable[[str, str], object]]:
    out: dict[str, Callable[[str, str], object]] = {}
    try:
        from vidbatch import engine

        out["local (mediapipe selfie)"] = lambda src, dst: engine.remove_background(
            src, dst, fmt="webm", background="transparent")
    except ImportError as exc:  # pragma: no cover
        print(f"(local engine unavailable: {exc})")
    return out


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "–" if v is None else format(v, spec)


def quality(work: str, *, width: int, height: int, seconds: float, fps: float) -> None:
    rows: list[str] = []
    nr_rows: list[str] = []
    runners = engines()
    for clip, kw in CLIPS.items():
        params = dict(width=width, height=height, seconds=seconds, fps=fps, **kw)
        sc = synth.scene(**params)
        src = synth.make_clip(os.path.join(work, f"{clip.replace(' / ', '_').replace(' ', '_')}.mp4"), **params)
        truth: Truth = sc.alpha
        gt_cov = float(np.mean([sc.alpha(i).mean() for i in range(sc.frames)]))
        for name, const in (("baseline: all foreground", 1.0), ("baseline: all background", 0.0)):
            s = score_alphas((np.full((height, width), const, np.float32) for _ in range(sc.frames)), truth)
            rows.append(f"| {clip} | {name} | {fmt(s.iou)} | {s.mae:.4f} | {s.flicker:.4f} | – |")
        outputs = {"oracle (truth → VP9)": write_oracle(sc, os.path.join(work, f"oracle_{id(sc)}.webm"))}
        for name, run in runners.items():
            dst = os.path.join(work, f"{name.split()[0]}_{id(sc)}.webm")
            t = time.perf_counter()
            run(src, dst)
            el = time.perf_counter() - t
            outputs[name] = dst
            outputs[name + "@fps"] = f"{sc.frames / el:.1f}"  # type: ignore[assignment]
        for name, path in outputs.items():
            if name.endswith("@fps"):
                continue
            s = score_output(path, truth)
            speed = outputs.get(name + "@fps", "–")
            rows.append(f"| {clip} | {name} | {fmt(s.iou)} | {s.mae:.4f} | {s.flicker:.4f} | {speed} |")
            m = compute_metrics("remove-background", src, path)
            nr_rows.append(
                f"| {clip} | {name} | {m['alpha_flicker']:.4f} | {m['edge_flicker']:.4f} | "
                f"{m['coverage_pulse']:.4f} | {fmt(m.get('fg_bleed'))} | {m['coverage_mean']:.3f} ({gt_cov:.3f}) |")
    print(f"\n### Background removal vs exact ground truth ({width}x{height}, {seconds:g} s @ {fps:g} fps, "
          "H.264 crf 18 input)\n")
    print("| clip | engine | IoU (α>0.5) ↑ | mean abs α error ↓ | flicker ↓ | engine fps |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print("\n### No-reference verify metrics on the same outputs (vidbatch.metrics, max_side=320)\n")
    print("| clip | engine | alpha_flicker | edge_flicker | coverage_pulse | fg_bleed | coverage_mean (truth) |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(nr_rows))
    keys = [p for p, env in HOSTED.items() if all(os.environ.get(e) for e in env)]
    print("\nHosted providers: " + (
        f"keys present for {', '.join(keys)}: run each on the clips above and score the downloaded output "
        "with score_output(path, scene.alpha)." if keys else
        "no keys set (" + ", ".join("+".join(e) for e in HOSTED.values()) + "); not scored."))


# --------------------------------------------------------------------------- timing


def _best(fn: Callable[[], object], reps: int) -> tuple[float, float, float]:
    """Best-of-``reps`` (wall s, CPU s of all threads, CPU s of this thread). The box is
    shared, so the least disturbed run is the fairest; CPU time is steadier than wall."""
    wall = cpu = own = float("inf")
    for _ in range(reps):
        w, c, o = time.perf_counter(), time.process_time(), time.thread_time()
        fn()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
        own = min(own, time.thread_time() - o)
    return wall, cpu, own


def _decode(path: str) -> int:
    """A plain decode of every frame (what verify's scan pays anyway), no conversion."""
    with media.open_video(path) as rd:
        return sum(1 for _ in rd.frames())


def timing(work: str, reps: int = 5) -> None:
    print("\n### Cost of compute_metrics vs decoding (1280x720, 10 s @ 30 fps; best of "
          f"{reps}; {os.cpu_count()} cores)\n")
    src = synth.make_clip(os.path.join(work, "t720.mp4"), width=1280, height=720, seconds=10, fps=30)
    cases: list[tuple[str, str, str, dict]] = []
    try:
        from vidbatch import engine
    except ImportError:
        engine = None
    out = os.path.join(work, "t720_out.webm")
    if engine is not None:
        engine.remove_background(src, out, fmt="webm", background="transparent")
        cases.append(("remove-background (local engine, VP9-alpha output)", src, out, {}))
        green = os.path.join(work, "t720_green.mp4")
        engine.remove_background(src, green, fmt="mp4", background="#00ff00")
        cases.append(("remove-background (local engine, #00ff00 H.264 output)", src, green, {"background": "#00ff00"}))
        small = synth.make_clip(os.path.join(work, "t360.mp4"), width=640, height=360, seconds=10, fps=30)
        up = os.path.join(work, "t360_up.mp4")
        engine.upscale(small, up, fmt="mp4", factor=2)
        cases.append(("upscale 360p→720p (local Lanczos, H.264 output)", small, up, {}))
    else:
        write_oracle(synth.scene(width=1280, height=720, seconds=10, fps=30), out)
        cases.append(("remove-background (truth, VP9-alpha output)", src, out, {}))
    print("| case | decode input (wall / CPU) | decode output | decoding twice = in + out | compute_metrics "
          "(wall / CPU, all threads) | extra CPU ÷ decoding twice | metric math (main-thread CPU) ÷ decoding twice |")
    print("|---|---|---|---|---|---|---|")
    for label, a, b, kw in cases:
        op = "upscale" if label.startswith("upscale") else "remove-background"
        _decode(a), _decode(b), compute_metrics(op, a, b, **kw)  # warm caches and imports
        da, db = _best(lambda: _decode(a), reps), _best(lambda: _decode(b), reps)
        tm = _best(lambda: compute_metrics(op, a, b, **kw), reps)
        both = (da[0] + db[0], da[1] + db[1])
        # decoding runs on helper threads inside compute_metrics, so the main thread's CPU
        # time is the metric work itself
        print(f"| {label} | {da[0]:.2f} / {da[1]:.2f} s | {db[0]:.2f} / {db[1]:.2f} s | "
              f"{both[0]:.2f} / {both[1]:.2f} s | {tm[0]:.2f} / {tm[1]:.2f} s | "
              f"{(tm[1] - both[1]) / both[1]:.2f} | {tm[2]:.2f} s → {tm[2] / both[1]:.2f} |")
    print("\nMetric values of those outputs:\n")
    for label, a, b, kw in cases:
        op = "upscale" if label.startswith("upscale") else "remove-background"
        vals = compute_metrics(op, a, b, **kw)
        print(f"- {label}: " + ", ".join(f"{k} {v:.4g}" for k, v in vals.items()))
    info = media.probe(src)
    print(f"\n(input: {info.width}x{info.height} {info.codec}, {info.frames} frames; target: metrics − decoding "
          f"< 0.5 × decoding twice; load average during the run: {os.getloadavg()[0]:.1f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--timing-only", action="store_true")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=360)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--fps", type=float, default=25)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vidbatch-quality-") as work:
        if not args.timing_only:
            quality(work, width=args.width, height=args.height, seconds=args.seconds, fps=args.fps)
        if not args.no_timing:
            timing(work)


if __name__ == "__main__":
    main()
