"""vidbatch's ``process-manifest`` flow in a child process: wall time and CPU.

    python -m bench.orchestration --plan plan.json --emulator URL [--emulator-pid PID]

One process runs every vidbatch measurement of a suite, so Prefect's ephemeral
API server starts once. It first runs the flow on the plan's 2-item warm-up
manifest, so one-off costs (server start, imports, the first flow run) stay
out of the figures (reported as ``startup``). Then, per run of the plan, it
resets the emulator, sets its job time, runs the flow exactly as ``vidbatch
run`` does (same flow, quiet logging) and records:

    wall          the flow call, planning to report/artifacts included (the makespan)
    items_wall    flow call start -> last item's report row (the items phase only)
    cpu           CPU seconds (user+sys, all threads) of this process during the call
    cpu_items     the same until the last item's row (without the report/handoff tail)
    cpu_server    CPU seconds of Prefect's ephemeral API server subprocess, same span plus
                  the time it takes to go quiet after the run (it records events late)
    cpu_emulator  CPU seconds of the emulator process, same span (when its pid is given)
    head_s        flow call start -> the emulator's first job (planning, Prefect, first stage)
    tail_s        last item's row -> end of the flow call (report, handoff, artifacts)
    polls         the emulator's status requests per job (mean)
    max_in_flight the emulator's peak of concurrent jobs

``no_verify`` in a run replaces the body of ``pipeline.verify_item`` (decode +
quality metrics) with a stub returning empty facts and turns the HTML report's
thumbnails off; the verify stage still runs and the report is still written,
so orchestration stays whole and only the media work is left out.
Prints one JSON object: ``{"startup": s, "runs": [...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from typing import Any

from vidbatch import prefect_env


def _stub_verify(ctx: Any, item: Any, media_in: Any, outputs: list[str], input_local: Any) -> dict[str, Any]:
    return {"output": {"ok": True, "stubbed": True}, "metrics": {}, "warnings": []}


_THUMBS: dict[str, int] = {}


def _thumbnails(on: bool) -> None:
    """Orchestration only: no report thumbnails either (media decoding, like verify)."""
    from vidbatch import handoff

    _THUMBS.setdefault("n", handoff.MAX_THUMB_ITEMS)
    n = _THUMBS["n"] if on else 0
    handoff.MAX_THUMB_ITEMS = n
    handoff.render_html.__kwdefaults__["max_thumbs"] = n


def _cpu(proc: Any) -> float:
    try:
        t = proc.cpu_times()
    except Exception:  # noqa: BLE001 - a process that ended counts nothing
        return 0.0
    return float(t.user + t.system)


async def run_plan(plan: dict[str, Any], emulator: str, emulator_pid: int | None = None) -> dict[str, Any]:
    """Run the plan in this process (the child, or a test with its own Prefect backend)."""
    import psutil

    from vidbatch import pipeline
    from vidbatch.flows import batch

    real_verify = pipeline.verify_item
    t_start = time.perf_counter()
    await batch.process_manifest(manifest=plan["warmup"], emulator=emulator)
    startup = time.perf_counter() - t_start
    me = psutil.Process()
    emu = psutil.Process(emulator_pid) if emulator_pid else None
    rows: list[tuple[float, float]] = []

    def hook(item: Any, row: Any) -> None:
        rows.append((time.perf_counter(), time.process_time()))  # process_time: every thread

    batch.ROW_HOOKS.append(hook)
    try:
        return {"startup": startup, "runs": await _runs(plan, emulator, me, emu, rows, real_verify)}
    finally:
        batch.ROW_HOOKS.remove(hook)
        pipeline.verify_item = real_verify  # type: ignore[assignment]
        _thumbnails(True)


async def _runs(plan: dict[str, Any], emulator: str, me: Any, emu: Any, rows: list[tuple[float, float]],
                real_verify: Any) -> list[dict[str, Any]]:
    import httpx

    from vidbatch import pipeline
    from vidbatch.flows import batch

    out = []
    async with httpx.AsyncClient(base_url=emulator, timeout=30) as ctl:
        for spec in plan["runs"]:
            await ctl.post("/_emulator/reset")
            await ctl.post("/_emulator/config", json={"job_seconds": spec["job_seconds"], "time_scale": 1.0,
                                                      "queue_seconds": 0.0, "instant": True, "max_running": None})
            pipeline.verify_item = _stub_verify if spec.get("no_verify") else real_verify  # type: ignore[assignment]
            _thumbnails(not spec.get("no_verify"))
            profiler = None
            if spec.get("profile"):
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.001)
                profiler.start()
            # Prefect's ephemeral API server (in a test: whatever else this process started, not the emulator)
            children = [c for c in me.children(recursive=True) if emu is None or c.pid != emu.pid]
            await _settle(children)  # the server records events after a run: not billed to the next one
            rows.clear()
            cpu0, srv0, emu0 = _cpu(me), sum(_cpu(c) for c in children), _cpu(emu) if emu else 0.0
            pt0 = time.process_time()
            lags: list[float] = []
            monitor = asyncio.ensure_future(_lag_monitor(lags))
            t0, wall0 = time.perf_counter(), time.time()
            try:
                summary = await batch.process_manifest(manifest=spec["manifest"], emulator=emulator,
                                                       **spec.get("params", {}))
            finally:
                monitor.cancel()
            wall = time.perf_counter() - t0
            cpu = _cpu(me) - cpu0
            drain = await _settle(children)
            srv = sum(_cpu(c) for c in children) - srv0
            cpu_emu = (_cpu(emu) - emu0) if emu else None
            if profiler is not None:
                profiler.stop()
                with open(spec["profile"], "w") as fh:
                    fh.write(profiler.output_text(unicode=False, color=False))
            stats = (await ctl.get("/_emulator/stats")).json()
            jobs = (await ctl.get("/_emulator/jobs")).json()["jobs"]
            first_submit = min((_epoch(j["created"]) for j in jobs), default=wall0) - wall0
            out.append({
                "name": spec["name"], "wall": wall, "items_wall": (rows[-1][0] - t0) if rows else None,
                "cpu": cpu, "cpu_items": (rows[-1][1] - pt0) if rows else None,
                "cpu_server": srv, "server_drain_s": drain, "cpu_emulator": cpu_emu,
                "items": summary["items"], "verified": summary["verified"], "failed": summary["failed"],
                "errors": sorted({r["error"] for r in summary["rows"] if r.get("error")})[:3],
                "polls": stats["polls_per_job"]["fal"]["mean"], "max_in_flight": stats["max_in_flight"]["fal"],
                "requests": sum(stats["requests"].values()),
                "loop_lag_p50_ms": 1000 * _pct(lags, 0.5), "loop_lag_p99_ms": 1000 * _pct(lags, 0.99),
                "head_s": first_submit, "tail_s": (wall - (rows[-1][0] - t0)) if rows else None,
            })
    return out


async def _settle(procs: list[Any], every: float = 0.5, quiet: float = 0.03, limit: float = 90.0) -> float:
    """Wait until ``procs`` use < ``quiet`` CPU seconds per ``every``; returns the seconds waited."""
    t0 = time.perf_counter()
    last = sum(_cpu(p) for p in procs)
    while time.perf_counter() - t0 < limit:
        await asyncio.sleep(every)
        now = sum(_cpu(p) for p in procs)
        if now - last < quiet:
            break
        last = now
    return time.perf_counter() - t0


async def _lag_monitor(out: list[float], every: float = 0.01) -> None:
    """How late the event loop wakes a 10 ms sleep: the latency every await pays."""
    while True:
        t = time.perf_counter()
        await asyncio.sleep(every)
        out.append(max(0.0, time.perf_counter() - t - every))


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] if values else 0.0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.orchestration")
    ap.add_argument("--plan", required=True, help="JSON: {warmup: manifest, runs: [{name, manifest, job_seconds, "
                                                  "no_verify?, params?, profile?}]}")
    ap.add_argument("--emulator", required=True)
    ap.add_argument("--emulator-pid", type=int)
    args = ap.parse_args(argv)
    prefect_env.apply(quiet=True)  # as `vidbatch run` without --verbose
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    with open(args.plan) as fh:
        plan = json.load(fh)
    result = asyncio.run(run_plan(plan, args.emulator, args.emulator_pid))
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
