"""Per-provider limits hold exactly: in one process, across processes, after a crash.

* one ``vidbatch run`` (ephemeral Prefect, process-local slots), ``concurrency: 3``,
  30 items: the emulator's ``max_in_flight`` is exactly 3;
* two ``vidbatch run`` processes sharing one ``prefect server`` (global limit
  ``vidbatch-removebgvideo``), 15 items each with ``concurrency: 3``: the
  emulator's ``max_in_flight`` is exactly 3 over both;
* one of them SIGKILLed while it holds all 3 slots: its rerun does not wait for the
  server's lease repossession (~80 s); it releases the dead holder's leases from
  the lease registry on the state store at start-up and finishes promptly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.reliability import (
    EmulatorProcess,
    StateDir,
    VidbatchProcess,
    free_port,
    kill_group,
    make_clips,
    reap,  # noqa: F401  (autouse: no run outlives its test)
    subprocess_env,
    wait_until,
    write_manifest,
)

pytestmark = pytest.mark.slow


def _manifest(tmp: Path, name: str, inputs: str, state: Path | None = None, concurrency: int = 3) -> str:
    return write_manifest(tmp / f"{name}.yaml", f"""\
        version: 1
        name: {name}
        output: {tmp}/{name}/{{stem}}.{{ext}}
        {f"state: {state}" if state else ""}
        defaults:
          provider: removebgvideo
          format: webm
        limits:
          removebgvideo: {{concurrency: {concurrency}}}
        videos:
          - {inputs}
        """)


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``prefect server start`` in its own home and process group; yields its API URL."""
    home = tmp_path_factory.mktemp("prefect-server-home")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ENABLED="false")
    log = open(home / "server.log", "wb")  # noqa: SIM115
    prefect = str(Path(sys.executable).with_name("prefect"))
    proc = subprocess.Popen([prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    api = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    try:
        while True:
            try:
                if httpx.get(f"{api}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((home / "server.log").read_text()[-3000:])
            time.sleep(0.3)
        yield api
    finally:
        kill_group(proc, 15)
        log.close()


def _active_slots(api: str, name: str) -> int:
    resp = httpx.get(f"{api}/v2/concurrency_limits/{name}", timeout=10)
    resp.raise_for_status()
    return int(resp.json()["active_slots"])


def test_concurrency_3_holds_exactly_in_one_ephemeral_process(tmp_path: Path) -> None:
    make_clips(tmp_path / "in", 30, seed0=2000)
    manifest = _manifest(tmp_path, "one", f"{tmp_path}/in/*.mp4")
    with EmulatorProcess(tmp_path, instant=True, job_seconds=1) as emu:
        run = VidbatchProcess(manifest, tmp_path, subprocess_env(tmp_path / "prefect"), "--emulator", emu.url,
                              "--json", tag="one")
        assert run.wait(300) == 0, run.stderr[-3000:]
        stats = emu.stats()
    assert run.summary()["verified"] == 30
    assert stats["submissions"]["removebgvideo"] == 30
    assert stats["max_in_flight"]["removebgvideo"] == 3


def test_two_processes_share_one_global_limit_and_a_crash_does_not_strand_slots(
        tmp_path: Path, prefect_server: str) -> None:
    make_clips(tmp_path / "a", 15, seed0=3000)
    make_clips(tmp_path / "b", 15, seed0=4000)
    state = tmp_path / "state"  # one state store: the lease registry every process of this batch sees
    ma = _manifest(tmp_path, "parta", f"{tmp_path}/a/*.mp4", state)
    mb = _manifest(tmp_path, "partb", f"{tmp_path}/b/*.mp4", state)
    env = subprocess_env(tmp_path / "prefect-client", PREFECT_API_URL=prefect_server)
    timings: dict[str, Any] = {}
    with EmulatorProcess(tmp_path, instant=True, job_seconds=1) as emu:
        a = VidbatchProcess(ma, tmp_path, env, "--emulator", emu.url, "--json", tag="a")
        b = VidbatchProcess(mb, tmp_path, env, "--emulator", emu.url, "--json", tag="b")
        assert a.wait(300) == 0, a.stderr[-3000:]
        assert b.wait(300) == 0, b.stderr[-3000:]
        stats = emu.stats()
        assert a.summary()["verified"] == 15 and b.summary()["verified"] == 15
        assert stats["submissions"]["removebgvideo"] == 30
        assert stats["max_in_flight"]["removebgvideo"] == 3, stats["max_in_flight"]
        assert _active_slots(prefect_server, "vidbatch-removebgvideo") == 0

        # -- a crash while holding every slot -------------------------------------------------
        emu.reset()
        emu.configure(job_seconds=20)
        make_clips(tmp_path / "c", 6, seed0=5000)
        mc = _manifest(tmp_path, "partc", f"{tmp_path}/c/*.mp4", state)
        c = VidbatchProcess(mc, tmp_path, env, "--emulator", emu.url, "--json", tag="c")
        wait_until(lambda: emu.stats()["in_flight"]["removebgvideo"] == 3, 120, "three jobs in flight", proc=c)
        assert _active_slots(prefect_server, "vidbatch-removebgvideo") == 3
        c.kill()
        assert _active_slots(prefect_server, "vidbatch-removebgvideo") == 3  # the server still counts them
        emu.configure(job_seconds=0)
        t0 = time.monotonic()
        rerun = VidbatchProcess(mc, tmp_path, env, "--emulator", emu.url, "--json", tag="c2")
        assert rerun.wait(300) == 0, rerun.stderr[-3000:]
        timings["rerun_seconds"] = round(time.monotonic() - t0, 1)
        stats = emu.stats()
    assert rerun.summary()["verified"] == 6
    # the lease registry: the 3 slots covered jobs still in flight, so they were not freed for
    # anyone to take (the limit would be exceeded) but adopted by the rerun that re-attached to them
    assert "kept 3 slot(s) of crashed vidbatch processes whose jobs may still run" in rerun.stderr
    # the server would have returned the slots after ~80 s; the rerun did not wait for that
    assert timings["rerun_seconds"] < 50, timings
    # the 3 jobs in flight at the kill were re-attached, the 3 others submitted: one job per input
    assert stats["submissions"]["removebgvideo"] == 6
    assert sorted(stats["submissions_by_content"]["removebgvideo"].values()) == [1] * 6
    assert stats["max_in_flight"]["removebgvideo"] <= 3
    assert _active_slots(prefect_server, "vidbatch-removebgvideo") == 0
    assert StateDir(state).count("handles") == 0
    print("limits:", timings)


async def test_a_dead_holders_idle_leases_are_released_and_live_jobs_leases_adopted(
        tmp_path: Path, prefect_server: str) -> None:
    """``leases.reclaim_dead_holders`` on a real server: of a crashed holder's three leases, the
    idle one and the finished job's are released; the running job's is kept, and the run that
    re-attaches to that job adopts it (renews it) instead of acquiring a new slot."""
    import json
    import socket
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from vidbatch import leases

    name = "vidbatch-reclaimtest"
    httpx.post(f"{prefect_server}/v2/concurrency_limits/", json={"name": name, "limit": 5}, timeout=10).raise_for_status()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs on this host
    with temporary_settings(updates={PREFECT_API_URL: prefect_server}):
        async with get_client() as client:
            ids = []
            for _ in range(3):
                resp = await client.increment_concurrency_slots_with_lease(
                    names=[name], slots=1, mode="concurrency", lease_duration=leases.LEASE_SECONDS)
                ids.append(resp.json()["lease_id"])
        assert _active_slots(prefect_server, name) == 3
        running, done, idle = ids
        doc = {"holder": "x", "host": socket.gethostname(), "pid": dead.pid, "heartbeat": time.time(),
               "leases": {name: ids}, "jobs": {running: "k-running", done: "k-done"}}
        (tmp_path / "leases").mkdir()
        (tmp_path / "leases" / "x.json").write_text(json.dumps(doc))

        orphans = await leases.reclaim_dead_holders(str(tmp_path), {}, live=lambda key: key == "k-running")
        assert orphans == {name: {"k-running": running}}
        assert _active_slots(prefect_server, name) == 1  # only the running job's slot is still held
        kept = json.loads((tmp_path / "leases" / "x.json").read_text())  # for whoever re-attaches
        assert kept["leases"] == {name: [running]} and kept["jobs"] == {running: "k-running"}

        registry = leases.LeaseRegistry(str(tmp_path), {})
        slots = leases.GlobalSlots(name, registry, orphans=orphans[name])
        try:
            async with slots.slot("k-running"):
                assert _active_slots(prefect_server, name) == 1  # adopted, not acquired anew
                assert registry.jobs == {running: "k-running"}
                assert set(slots._held) == {UUID(running)}
        finally:
            await slots.close()
            registry.close()
        assert _active_slots(prefect_server, name) == 0
