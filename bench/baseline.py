"""The drivers vidbatch is measured against: the same work, no framework.

Both do, per input, what vidbatch does against the fal protocol: upload the
clip to the CDN (one storage token per run), submit the BiRefNet video job,
poll its status until COMPLETED, fetch the result JSON, download the output
video to a file. Jobs in flight are bounded by ``concurrency``.

* ``bare``: a minimal asyncio + httpx script. One ``AsyncClient`` (keep-alive),
  ``asyncio.gather`` over all inputs, an ``asyncio.Semaphore(c)`` held for an
  item's whole life (upload .. download written), status polled every
  ``interval``. (Uploading outside the slot made it slower: hundreds of
  uploads queue for the connection pool ahead of the polls.)
* ``official``: the official client's style (``fal_client.subscribe``): a
  thread pool of ``c`` workers, each running upload -> submit -> status every
  ``interval`` (fal_client's ``DEFAULT_QUEUE_POLL_INTERVAL`` is 0.1 s) ->
  result -> download with one shared sync ``httpx.Client``.

Run in its own process (``python -m bench.baseline ...``) so that its CPU time
is its own; prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

KEY = "emulator-key:emulator-secret"
APP = "fal-ai/birefnet/v2/video"
BODY = {"model": "General Use (Light)", "video_output_type": "VP9 (.webm)", "output_mask": False}


def _urls(base: str) -> tuple[str, str]:
    return f"{base}/fal/queue", f"{base}/fal/rest"


# -- bare asyncio -------------------------------------------------------------------
async def run_bare(base: str, inputs: list[Path], outdir: Path, concurrency: int, interval: float) -> dict[str, Any]:
    queue, rest = _urls(base)
    auth = {"Authorization": f"Key {KEY}"}
    sem = asyncio.Semaphore(concurrency)
    polls = 0
    limits = httpx.Limits(max_connections=concurrency * 2 + 8, max_keepalive_connections=concurrency * 2 + 8)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        tok = (await client.post(f"{rest}/storage/auth/token", params={"storage_type": "fal-cdn-v3"},
                                 json={}, headers=auth)).json()
        cdn_auth = {"Authorization": f"{tok['token_type']} {tok['token']}"}

        async def one(path: Path) -> None:
            nonlocal polls
            async with sem:
                up = await client.post(f"{tok['base_url']}/files/upload", content=path.read_bytes(),
                                       headers={**cdn_auth, "Content-Type": "video/mp4", "X-Fal-File-Name": path.name})
                url = up.json()["access_url"]
                sub = (await client.post(f"{queue}/{APP}", json={**BODY, "video_url": url}, headers=auth)).json()
                while True:
                    polls += 1
                    st = await client.get(sub["status_url"], headers=auth)
                    if st.json()["status"] == "COMPLETED":
                        break
                    await asyncio.sleep(interval)
                res = (await client.get(sub["response_url"], headers=auth)).json()
                async with client.stream("GET", res["video"]["url"]) as resp:
                    with open(outdir / f"{path.stem}.webm", "wb") as fh:
                        async for chunk in resp.aiter_bytes():
                            fh.write(chunk)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(p) for p in inputs))
        wall = time.perf_counter() - t0
    return {"wall": wall, "polls": polls}


# -- official-client style: threads, fixed-interval polling ---------------------------
def run_official(base: str, inputs: list[Path], outdir: Path, concurrency: int, interval: float) -> dict[str, Any]:
    queue, rest = _urls(base)
    auth = {"Authorization": f"Key {KEY}"}
    client = httpx.Client(timeout=httpx.Timeout(120, connect=30),
                          limits=httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4))
    lock = threading.Lock()
    token: dict[str, str] = {}
    polls = [0]

    def cdn_token() -> dict[str, str]:
        with lock:  # fal_client caches its CDN token behind a lock
            if not token:
                token.update(client.post(f"{rest}/storage/auth/token", params={"storage_type": "fal-cdn-v3"},
                                         json={}, headers=auth).json())
            return token

    def one(path: Path) -> None:
        tok = cdn_token()
        up = client.post(f"{tok['base_url']}/files/upload", content=path.read_bytes(),
                         headers={"Authorization": f"{tok['token_type']} {tok['token']}",
                                  "Content-Type": "video/mp4", "X-Fal-File-Name": path.name})
        sub = client.post(f"{queue}/{APP}", json={**BODY, "video_url": up.json()["access_url"]}, headers=auth).json()
        n = 0
        while True:  # fal_client: handle.iter_events(interval=0.1), then handle.get()
            n += 1
            if client.get(sub["status_url"], params={"logs": "1"}, headers=auth).json()["status"] == "COMPLETED":
                break
            time.sleep(interval)
        with lock:
            polls[0] += n
        res = client.get(sub["response_url"], headers=auth).json()
        with client.stream("GET", res["video"]["url"]) as resp, open(outdir / f"{path.stem}.webm", "wb") as fh:
            for chunk in resp.iter_bytes():
                fh.write(chunk)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for fut in [pool.submit(one, p) for p in inputs]:
            fut.result()
    wall = time.perf_counter() - t0
    client.close()
    return {"wall": wall, "polls": polls[0]}


def main(argv: list[str] | None = None) -> None:
    import psutil

    ap = argparse.ArgumentParser(prog="python -m bench.baseline")
    ap.add_argument("--style", choices=("bare", "official"), required=True)
    ap.add_argument("--emulator", required=True)
    ap.add_argument("--inputs", required=True, help="a file with one input path per line")
    ap.add_argument("--outdir", required=True)
    ap.add_argument("-c", "--concurrency", type=int, default=10)
    ap.add_argument("--interval", type=float, default=0.1, help="fixed status-poll interval (s)")
    args = ap.parse_args(argv)
    inputs = [Path(p) for p in Path(args.inputs).read_text().split()]
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    me = psutil.Process()
    cpu0 = sum(me.cpu_times()[:2])
    if args.style == "bare":
        res = asyncio.run(run_bare(args.emulator, inputs, outdir, args.concurrency, args.interval))
    else:
        res = run_official(args.emulator, inputs, outdir, args.concurrency, args.interval)
    res["cpu"] = sum(me.cpu_times()[:2]) - cpu0
    res["items"] = len(inputs)
    res["done"] = sum(1 for _ in outdir.glob("*.webm"))
    json.dump(res, sys.stdout)


if __name__ == "__main__":
    main()
