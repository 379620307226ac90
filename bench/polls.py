"""Poll economy: status requests per job and detection delay, per provider and duration.

Drives vidbatch's own ``pipeline.stage -> submit -> poll`` against the emulator
for jobs of 5 s, 60 s and 600 s. Long jobs run on an emulated clock: the
emulator's ``time_scale`` makes a 600 s job take 6 s of wall time, and the
poll loop sees the same clock (``pipeline.time.time`` and ``Provider.wait``
are scaled by the same factor in this process), so the schedule is exactly
the one a real 600 s job gets. Loopback latency is scaled too (a 3 ms request
counts 0.3 s at 100x), which only makes the delays slightly pessimistic.

Per (duration, provider): wave 1 = ``k`` jobs submitted together by a first run
on a fresh state store (no pace known), wave 2 = ``k`` more in the same run
(pace learned from wave 1), wave 3 = ``k`` in the next run on the same state
store (pace saved by the first run, ``StateStore.read_pace``). Polls are the
emulator's count of status requests per job; the delay is detection time
minus the job's run time as the emulator reports it (its wall seconds times
the scale: emulated seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import tempfile
import textwrap
import time
import types
from pathlib import Path
from typing import Any

PROVIDERS = ("fal", "scenario", "removebgvideo")
DURATIONS = (5.0, 60.0, 600.0)


class ScaledClock:
    """``time()`` that runs ``scale`` times faster than the wall clock."""

    def __init__(self) -> None:
        self.scale = 1.0
        self._t0 = time.time()
        self._e0 = self._t0

    def set_scale(self, scale: float) -> None:
        now = time.time()
        self._e0, self._t0, self.scale = self.time(), now, scale

    def time(self) -> float:
        return self._e0 + (time.time() - self._t0) * self.scale


def _manifest(root: Path, clip: Path, k: int) -> Path:
    import os

    videos = []
    for prov in PROVIDERS:
        for i in range(3 * k):
            p = root / "inputs" / f"{prov}-{i}.mp4"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(clip.read_bytes())
            os.utime(p, (1_600_000_000 + i, 1_600_000_000 + i))  # distinct fingerprints
            videos.append(f"  - {{url: {p}, provider: {prov}}}")
    text = textwrap.dedent(f"""\
        version: 1
        name: polls
        output: {root}/out/{{stem}}.{{ext}}
        defaults: {{operation: remove-background, format: webm, background: transparent}}
        limits: {{fal: {{concurrency: 50}}, scenario: {{concurrency: 50}}, removebgvideo: {{concurrency: 50}}}}
        videos:
        """) + "\n".join(videos) + "\n"
    path = root / "polls.yaml"
    path.write_text(text)
    return path


async def _job(ctx: Any, item: Any, clock: ScaledClock) -> dict[str, Any]:
    from vidbatch import pipeline

    staged, media = await pipeline.stage(ctx, item)
    sent = clock.time()  # the job cannot start before its submit is sent: delays are upper bounds
    handle = await pipeline.submit(ctx, item, staged)
    handle = dataclasses.replace(handle, submitted_at=sent)
    status = await pipeline.poll(ctx, item, handle, media)
    return {"id": handle.request_id, "provider": item.spec.provider, "detected": clock.time() - handle.submitted_at,
            "state": status.state.value}


async def measure(emulator: str, k: int = 3, durations: tuple[float, ...] = DURATIONS,
                  wall_per_job: float = 6.0) -> list[dict[str, Any]]:
    import httpx

    from vidbatch import inputs, pipeline, run
    from vidbatch.manifest import load_manifest
    from vidbatch.providers.base import Provider
    from vidbatch.synth import make_clip

    clock = ScaledClock()
    real_time = pipeline.time
    pipeline.time = types.SimpleNamespace(time=clock.time, perf_counter=time.perf_counter,  # type: ignore[assignment]
                                          monotonic=time.monotonic, sleep=time.sleep)
    real_wait = Provider.wait

    async def scaled_wait(self: Provider, handle: Any, seconds: float) -> None:
        await asyncio.sleep(seconds / clock.scale)

    Provider.wait = scaled_wait  # type: ignore[method-assign]
    root = Path(tempfile.mkdtemp(prefix="vidbatch-bench-polls-"))
    clip = Path(make_clip(str(root / "clip.mp4"), width=64, height=64, seconds=1.0, fps=8))
    rows: list[dict[str, Any]] = []
    try:
        async with httpx.AsyncClient(base_url=emulator, timeout=30) as ctl:
            for d in durations:
                scale = max(1.0, d / wall_per_job)
                clock.set_scale(scale)
                await ctl.post("/_emulator/reset")
                await ctl.post("/_emulator/config", json={"job_seconds": d, "time_scale": scale, "instant": True,
                                                          "queue_seconds": 0.0, "max_running": None})
                sub = root / f"d{int(d)}"
                m = load_manifest(str(_manifest(sub, clip, k)))
                items = list(inputs.iter_items(m))
                for wave in (1, 2, 3):
                    if wave != 2:
                        # wave 1: a fresh state store (no pace); wave 3: the next run on it (pace saved by wave 1-2)
                        ctx = run.new_context(m, items, emulator=emulator)
                    chosen = [it for p in PROVIDERS
                              for it in [x for x in items if x.spec.provider == p][(wave - 1) * k: wave * k]]
                    try:
                        done = await asyncio.gather(*(_job(ctx, it, clock) for it in chosen))
                    finally:
                        if wave != 1:
                            await run.close_context(ctx)
                    jobs = {j["id"]: j for j in (await ctl.get("/_emulator/jobs")).json()["jobs"]}
                    for r in done:
                        j = jobs[r["id"]]
                        rows.append({"duration": d, "wave": wave, "provider": r["provider"], "polls": j["polls"],
                                     "delay": r["detected"] - (j["run_seconds"] or d / scale) * scale,  # wall -> emulated
                                     "state": r["state"], "detected": r["detected"], "run_wall": j["run_seconds"],
                                     "scale": scale})
    finally:
        pipeline.time = real_time  # type: ignore[assignment]
        Provider.wait = real_wait  # type: ignore[method-assign]
    return rows


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (duration, provider, wave): polls mean/max, delay mean/max, within target."""
    out = []
    keys = sorted({(r["duration"], r["provider"], r["wave"]) for r in rows},
                  key=lambda t: (t[0], PROVIDERS.index(t[1]), t[2]))
    for d, p, w in keys:
        rs = [r for r in rows if (r["duration"], r["provider"], r["wave"]) == (d, p, w)]
        polls = [r["polls"] for r in rs]
        delays = [r["delay"] for r in rs]
        bound = 0.05 * d + 1.0
        out.append({"duration": d, "provider": p, "wave": w, "jobs": len(rs),
                    "polls_mean": sum(polls) / len(polls), "polls_max": max(polls),
                    "delay_mean": sum(delays) / len(delays), "delay_max": max(delays), "bound": bound,
                    "ok": max(polls) <= 12 and max(delays) <= bound,
                    "failed": sum(1 for r in rs if r["state"] != "succeeded")})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.polls")
    ap.add_argument("--emulator", required=True)
    ap.add_argument("-k", type=int, default=3, help="jobs per provider per wave")
    ap.add_argument("--durations", default=",".join(str(int(d)) for d in DURATIONS))
    ap.add_argument("--wall-per-job", type=float, default=6.0, help="wall seconds an emulated job may take")
    args = ap.parse_args(argv)
    durations = tuple(float(x) for x in args.durations.split(","))
    rows = asyncio.run(measure(args.emulator, args.k, durations, args.wall_per_job))
    sys.stdout.write("\n" + json.dumps({"rows": rows, "summary": summarize(rows)}) + "\n")


if __name__ == "__main__":
    main()
