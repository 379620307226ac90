"""Planning at backfill scale: expand and plan a 100k-item manifest.

``python -m bench.planning [--n 100000] [--dir /tmp/vidbatch-bench-planning] [--only listing glob shards flow]``

Makes ``n`` tiny local files once (the planner only stats them: fingerprints of
local files are mtime + size) and measures, each scenario in a fresh child
process so that peak RSS is its own:

* ``listing``   a ``.txt`` listing of every file -> ``inputs.iter_items`` to the end
* ``glob``      ``lib/*/*.mp4`` over the same files -> ``inputs.iter_items`` to the end
* ``shards``    ``flows/backfill.plan_shards`` (shard size 200): plan everything and
                write the shard listings and manifests, as the backfill does
* ``flow``      the ``process-manifest`` flow (ephemeral Prefect API) on the listing:
                how many items the planner had produced when the first item's task
                run started, and when the 40th did; then the stream is cut short so
                the run ends (the inputs are not videos; each fails at its stage).

Targets (issue 6): < 30 s and < 500 MB for 100k items; no task run per item up front.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TARGET_SECONDS = 30.0
TARGET_MB = 500.0


def make_library(root: Path, n: int) -> Path:
    """``n`` files of a few bytes in folders of 1000; a ``.txt`` listing of them. Reused when present."""
    lib = root / "lib"
    listing = root / f"library-{n}.txt"
    if listing.exists() and sum(1 for _ in listing.open()) == n:
        return listing
    lines = []
    for i in range(n):
        d = lib / f"{i // 1000:04d}"
        if i % 1000 == 0:
            d.mkdir(parents=True, exist_ok=True)
        p = d / f"clip{i:07d}.mp4"
        if not p.exists():
            p.write_bytes(b"x%d" % i)
        lines.append(str(p))
    listing.write_text("\n".join(lines) + "\n")
    return listing


def write_manifest(root: Path, name: str, videos: str) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(
        f"version: 1\nname: {name}\noutput: {root}/out/{name}/{{stem}}.{{ext}}\n"
        f"defaults: {{provider: local, format: webm}}\nlimits:\n  local: {{concurrency: 2}}\n"
        f"videos:\n  - {videos}\n"
    )
    return path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# --------------------------------------------------------------------------- child scenarios


def child_plan(manifest: str) -> dict[str, Any]:
    from vidbatch import inputs
    from vidbatch.manifest import load_manifest

    base = _peak_mb()
    t0 = time.perf_counter()
    m = load_manifest(manifest)
    first = None
    n = 0
    for _ in inputs.iter_items(m):
        if first is None:
            first = time.perf_counter() - t0
        n += 1
    return {"items": n, "seconds": round(time.perf_counter() - t0, 2), "first_item_s": round(first or 0, 3),
            "peak_mb": round(_peak_mb(), 1), "import_mb": round(base, 1)}


def child_shards(manifest: str) -> dict[str, Any]:
    from vidbatch.flows import backfill
    from vidbatch.manifest import load_manifest

    base = _peak_mb()
    t0 = time.perf_counter()
    m = load_manifest(manifest)
    plan = backfill.plan_shards(m, time.strftime("%Y%m%dT%H%M%SZ-bench0000"), 200, "2026-01-01")
    return {"items": plan.items, "shards": len(plan.shards), "seconds": round(time.perf_counter() - t0, 2),
            "peak_mb": round(_peak_mb(), 1), "import_mb": round(base, 1)}


def child_flow(manifest: str, stop_after: int = 40) -> dict[str, Any]:
    """Run process-manifest; record the planner's progress when the first task run starts.

    After ``stop_after`` items have started, the planner's stream is cut short so
    the run ends normally with the items already pulled (the inputs are not
    videos: each fails at its stage, which is all this needs).
    """
    import asyncio

    from vidbatch import inputs, run
    from vidbatch.flows import batch

    pulled = {"n": 0, "t0": 0.0, "stop": False}
    seen: dict[str, Any] = {}
    real_iter = inputs.iter_items

    def counting_iter(m: Any, **kw: Any) -> Any:
        pulled["t0"] = time.perf_counter()  # the flow body starts planning here
        for item in real_iter(m, **kw):
            if pulled["stop"]:
                return
            pulled["n"] += 1
            yield item

    calls = {"n": 0}
    real_stage = batch.STAGES.stage

    async def stage(*args: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:  # the first item's task run is running now
            seen.update(first_task_s=round(time.perf_counter() - pulled["t0"], 3), items_planned=pulled["n"])
        if calls["n"] == stop_after:
            seen["items_planned_at_stop"] = pulled["n"]
            pulled["stop"] = True
        return await real_stage(*args, **kw)

    inputs.iter_items = counting_iter  # type: ignore[assignment]
    batch.STAGES = run.Stages(stage=stage, submit=batch.STAGES.submit, poll=batch.STAGES.poll,
                              download=batch.STAGES.download, verify=batch.STAGES.verify)
    t0 = time.perf_counter()
    summary = asyncio.run(batch.process_manifest(manifest=manifest))
    seen.update(items_run=summary["items"], seconds_incl_prefect_start=round(time.perf_counter() - t0, 1),
                peak_mb=round(_peak_mb(), 1))
    return seen


# --------------------------------------------------------------------------- driver


def _child(kind: str, manifest: Path) -> dict[str, Any]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_LOGGING_LEVEL": "ERROR",
           "PREFECT_HOME": str(manifest.parent / "prefect-home")}
    env.pop("PREFECT_API_URL", None)
    res = subprocess.run([sys.executable, "-m", "bench.planning", "--child", kind, str(manifest)],
                         capture_output=True, text=True, env=env, cwd=Path(__file__).resolve().parents[1])
    if res.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dir", default="/tmp/vidbatch-bench-planning")
    ap.add_argument("--only", nargs="*", choices=("listing", "glob", "shards", "flow"), help="run these scenarios only")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "MANIFEST"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, manifest = args.child
        fn = {"plan": child_plan, "shards": child_shards, "flow": child_flow}[kind]
        print(json.dumps(fn(manifest)))
        return 0

    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    listing = make_library(root, args.n)
    made = time.perf_counter() - t0
    import shutil

    shutil.rmtree(root / "out", ignore_errors=True)  # shard files of an earlier run
    by_listing = write_manifest(root, "bench-listing", f"list: {listing}")
    by_glob = write_manifest(root, "bench-glob", f"{root}/lib/*/*.mp4")

    jobs = {"listing": ("plan", by_listing), "glob": ("plan", by_glob), "shards": ("shards", by_listing),
            "flow": ("flow", by_listing)}
    results = {name: _child(*job) for name, job in jobs.items() if not args.only or name in args.only}

    print(f"# planning {args.n} items ({os.cpu_count()} cores; library made in {made:.1f} s)\n")
    if set(results) - {"flow"}:
        print("| scenario | items | seconds | first item (s) | peak RSS (MB) | of which imports (MB) | target |")
        print("|---|---|---|---|---|---|---|")
    for name in ("listing", "glob", "shards"):
        if name not in results:
            continue
        r = results[name]
        ok = r["seconds"] < TARGET_SECONDS and r["peak_mb"] < TARGET_MB
        extra = f" ({r['shards']} shards)" if "shards" in r else ""
        print(f"| {name}{extra} | {r['items']} | {r['seconds']} | {r.get('first_item_s', '-')} | {r['peak_mb']} | "
              f"{r['import_mb']} | {'ok' if ok else 'MISSED'} |")
    if "flow" in results:
        f = results["flow"]
        print(f"\nprocess-manifest flow: the first item's task run started {f['first_task_s']} s after planning "
              f"began, when the planner had produced {f['items_planned']} of {args.n} items; when the 40th item "
              f"started it had produced {f.get('items_planned_at_stop', '?')} (peak RSS {f['peak_mb']} MB, "
              f"without the ephemeral API server's process).")
    print("\n" + json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
