"""A real Prefect server, two process workers, the backfill deployment, the emulator.

Everything runs on loopback: ``prefect server start`` (SQLite, its own
``PREFECT_HOME``), ``prefect worker start --pool vidbatch`` twice (as an operator
would, from the repository root), ``prefect deploy --all --prefect-file
deployments/prefect.yaml``, and the provider emulator in this process.

1. A backfill of 64 items (a listing file) in shards of 8 with ``concurrency: 4``:
   every item verified, both workers ran shards, the emulator never saw more
   than (and reached exactly) 4 jobs at once although three shard
   processes competed, and each input was submitted once.
2. A backfill of 24 items (a glob): one worker is killed (with its flow runs)
   while its shard has jobs in flight. The heartbeat automation marks that run
   Crashed, the backfill runs the shard again, the other worker completes it by
   re-attaching to the jobs already submitted: every item verified, still one
   submission per input.

Takes a few minutes (process start-ups, the 90 s heartbeat grace). Marked
``server``: ``pytest -m "not server"`` skips it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest

pytestmark = [pytest.mark.server]

REPO = Path(__file__).resolve().parents[1]
PROVIDER = "removebgvideo"  # can re-check an interrupted submit: a kill can never force a second one
FINAL = {"COMPLETED", "FAILED", "CANCELLED", "CRASHED"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


@dataclass
class Cluster:
    api: str
    env: dict[str, str]
    logs: Path
    server: subprocess.Popen[bytes]
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=30))

    # -- processes ------------------------------------------------------------
    def prefect(self, *args: str, timeout: float = 180) -> str:
        res = subprocess.run([sys.executable, "-m", "prefect", *args], cwd=REPO, env=self.env,
                             capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, f"prefect {' '.join(args)} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
        return res.stdout

    def start_worker(self, name: str) -> None:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the worker
        # started like an operator would: from the repository root, PWD set by the shell
        env = {**self.env, "PWD": str(REPO), "PREFECT_WORKER_QUERY_SECONDS": "2", "PREFECT_LOGGING_LEVEL": "INFO"}
        self.workers[name] = subprocess.Popen(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", "vidbatch", "--name", name, "--limit", "2"],
            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.wait(lambda: f"Worker '{name}' started" in (self.logs / f"{name}.log").read_text(errors="replace"),
                  90, f"worker {name} did not start")

    def kill_worker(self, name: str) -> None:
        """SIGKILL a worker and every process under it, as if its machine died."""
        import psutil

        proc = psutil.Process(self.workers[name].pid)
        victims = [proc, *proc.children(recursive=True)]
        for p in victims:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=10)
        self.workers[name].wait(10)

    def runs_of_worker(self, name: str) -> set[str]:
        """Flow runs this worker started (both workers may try to claim a run; one is told to abort)."""
        text = (self.logs / f"{name}.log").read_text(errors="replace")
        tried = set(re.findall(r"submitting flow run '([0-9a-f-]{36})'", text))
        return tried - set(re.findall(r"Aborted submission of flow run '([0-9a-f-]{36})'", text))

    # -- API ------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One API call; retried for up to 3 min (SQLite's 'database is locked' can stall the server)."""
        deadline = time.time() + 180
        while True:
            try:
                r = self.http.request(method, self.api + path, json=body)
                if r.status_code < 500:
                    r.raise_for_status()
                    return r.json()
                problem = f"HTTP {r.status_code}"
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                problem = repr(exc)
            if time.time() > deadline:
                pytest.fail(f"{method} {path}: {problem}\n" + self.explain())
            time.sleep(2)

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def flow_run(self, run_id: str) -> dict[str, Any]:
        return self.get(f"/flow_runs/{run_id}")

    def shard_runs(self, since: float) -> list[dict[str, Any]]:
        dep = self.get("/deployments/name/process-manifest/shard")
        runs = self.post("/flow_runs/filter", {"deployments": {"id": {"any_": [dep["id"]]}}, "limit": 200})
        return [r for r in runs if _ts(r["created"]) >= since - 1]

    def run_backfill(self, manifest: Path, emulator: str, shard_size: int) -> str:
        out = self.prefect("deployment", "run", "backfill-manifest/backfill", "--param", f"manifest={manifest}",
                           "--param", f"emulator={emulator}", "--param", f"shard_size={shard_size}")
        found = re.search(r"UUID: ([0-9a-f-]{36})", out)
        assert found, out
        return found.group(1)

    def wait_final(self, run_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            run = self.flow_run(run_id)
            if (run.get("state_type") or "") in FINAL:
                return run
            time.sleep(2)
        pytest.fail(f"flow run {run_id} not finished after {timeout} s: {self.flow_run(run_id)['state_type']}\n"
                    + self.explain())

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if cond():
                return
            time.sleep(0.5)
        pytest.fail(f"{what} (after {timeout} s)\n" + self.explain())

    def explain(self) -> str:
        parts = [f"--- {p.name} ---\n{_tail(p)}" for p in sorted(self.logs.glob("*.log"))]
        return "\n".join(parts)


def _ts(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    logs = tmp_path_factory.mktemp("server-logs")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update({
        "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "false",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
        # a denied slot is retried after at most 5 s (default 30 s): short jobs keep the slots busy
        "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "5",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    })
    server_log = open(logs / "server.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        cwd=REPO, env=env, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    c = Cluster(api=api, env=env, logs=logs, server=server)

    def healthy() -> bool:
        try:
            return c.http.get(api + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        c.wait(healthy, 180, "the Prefect server did not become healthy")
        c.prefect("work-pool", "create", "vidbatch", "--type", "process")
        c.prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml", timeout=300)
        names = {d["name"] for d in c.post("/deployments/filter", {"limit": 50})}
        assert names >= {"nightly", "backfill", "shard"}, names
        for name in ("w1", "w2"):
            c.start_worker(name)
        yield c
    finally:
        for proc in c.workers.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)  # workers stop on SIGINT (notes/prefect.md §6)
                except ProcessLookupError:
                    pass
        for name, proc in c.workers.items():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                c.kill_worker(name)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(server.pid, sig)
                server.wait(20)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        c.http.close()


@pytest.fixture(scope="module")
def emulator():
    from vidbatch.emulator import EmulatorServer

    with EmulatorServer(job_seconds=1, instant=True) as server:
        yield server


def _clips(folder: Path, n: int, seed0: int) -> list[str]:
    from vidbatch.synth import make_clip

    clips = [make_clip(str(folder / f"clip{i:03d}.mp4"), width=64, height=36, seconds=0.5, fps=8, seed=seed0 + i)
             for i in range(n)]
    # local fingerprints are mtime + size: files written in the same clock tick with equal sizes
    # would share an item key, so give each its own mtime
    base = time.time() - 10 * n
    for i, clip in enumerate(clips):
        os.utime(clip, (base + i, base + i))
    return clips


def _manifest(path: Path, name: str, out: Path, videos: str) -> Path:
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: {name}
        output: {out}/{{stem}}.{{ext}}
        defaults:
          provider: {PROVIDER}
          format: webm
        limits:
          {PROVIDER}: {{concurrency: 4}}
        videos:
          - {videos}
        """))
    return path


def _report(out: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / f"{name}.report.jsonl").read_text().splitlines() if x.strip()]


def _one_submission_each(stats: dict[str, Any], clips: list[str]) -> None:
    import hashlib

    by_content = stats["submissions_by_content"][PROVIDER]
    want = {hashlib.sha256(Path(c).read_bytes()).hexdigest() for c in clips}
    assert len(want) == len(clips), "test clips must differ"
    assert set(by_content) == want, f"inputs seen {len(by_content)}, expected {len(want)}"
    dupes = {k[:12]: v for k, v in by_content.items() if v != 1}
    assert not dupes, f"inputs submitted more than once: {dupes}"
    assert stats["submissions"][PROVIDER] == len(clips)


@pytest.mark.timeout(900)
def test_backfill_shards_across_two_workers_with_a_global_limit(cluster: Cluster, emulator: Any,
                                                                 tmp_path: Path) -> None:
    from vidbatch.manifest import load_manifest
    from vidbatch.status import compute

    clips = _clips(tmp_path / "clips", 64, seed0=100)
    listing = tmp_path / "library.txt"
    listing.write_text("\n".join(clips) + "\n")
    out = tmp_path / "out"
    manifest = _manifest(tmp_path / "library.yaml", "e2e-library", out, f"list: {listing}")
    emulator.reset()
    started = time.time()

    run_id = cluster.run_backfill(manifest, emulator.base_url, shard_size=8)
    run = cluster.wait_final(run_id, 600)
    assert run["state_type"] == "COMPLETED", f"backfill ended {run['state_type']}: {run['state']}\n{cluster.explain()}"

    rows = _report(out, "e2e-library")
    assert len(rows) == 64 and {r["status"] for r in rows} == {"verified"}, [r["error"] for r in rows if r["error"]]
    assert sorted(r["input"] for r in rows) == sorted(clips)
    assert (out / "e2e-library.report.parquet").exists() and (out / "e2e-library.report.html").exists()
    assert not list(out.glob("*--shard-*")), "shard reports are merged, then removed"

    shards = cluster.shard_runs(started)
    assert len(shards) == 8 and {s["state_type"] for s in shards} == {"COMPLETED"}, \
        [(s["name"], s["state_type"]) for s in shards]
    per_worker = {w: cluster.runs_of_worker(w) & {s["id"] for s in shards} for w in cluster.workers}
    assert all(per_worker.values()), f"shards per worker: { {w: len(r) for w, r in per_worker.items()} }"

    stats = emulator.stats()
    # three shard processes at a time, each allowed 4 jobs locally: only the global limit keeps it at 4
    assert stats["max_in_flight"][PROVIDER] == 4, stats["max_in_flight"]
    _one_submission_each(stats, clips)

    limit = cluster.get(f"/v2/concurrency_limits/vidbatch-{PROVIDER}")
    assert limit["limit"] == 4
    st = compute(load_manifest(str(manifest)))
    assert st.counts == {"done": 64, "in_flight": 0, "failed": 0, "not_started": 0}
    assert st.backfill and st.backfill["shards"] == 8 and st.backfill["items"] == 64

    from typer.testing import CliRunner

    from vidbatch.cli import app

    res = CliRunner().invoke(app, ["status", str(manifest), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["counts"]["done"] == 64


def test_limits_are_created_from_the_manifest_idempotently(cluster: Cluster, tmp_path: Path) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from vidbatch import gcl
    from vidbatch.manifest import load_manifest

    def manifest(fal: int) -> Any:
        path = tmp_path / f"limits-{fal}.yaml"
        path.write_text(textwrap.dedent(f"""\
            version: 1
            name: limits
            output: {tmp_path}/out/{{stem}}.{{ext}}
            defaults: {{provider: fal, operation: upscale, format: mp4}}
            limits:
              fal: {{concurrency: {fal}, requests_per_second: 2.5}}
            videos:
              - {tmp_path}/a.mp4
              - {{url: {tmp_path}/b.mp4, provider: scenario}}
            """))
        return load_manifest(str(path))

    with temporary_settings(updates={PREFECT_API_URL: cluster.api}):
        first = gcl.ensure_limits(manifest(3))
        again = gcl.ensure_limits(manifest(3))
        changed = gcl.ensure_limits(manifest(5))
        import asyncio

        limits = asyncio.run(gcl.read_limits())
    # scenario has no limits: entry: it gets the default a run would use (4 jobs in flight)
    assert first == {"vidbatch-fal": "created", "vidbatch-fal-rps": "created", "vidbatch-scenario": "created"}
    assert set(again.values()) == {"unchanged"}
    assert changed["vidbatch-fal"] == "updated" and changed["vidbatch-scenario"] == "unchanged"
    assert limits["vidbatch-fal"]["limit"] == 5 and limits["vidbatch-scenario"]["limit"] == 4
    assert limits["vidbatch-fal-rps"] == {"limit": 2, "active_slots": 0, "slot_decay_per_second": 2.5}


@pytest.mark.timeout(1200)
def test_a_killed_workers_shard_completes_elsewhere_without_resubmitting(cluster: Cluster, emulator: Any,
                                                                          tmp_path: Path) -> None:
    from vidbatch import inputs
    from vidbatch.manifest import load_manifest
    from vidbatch.state import StateStore

    clips = _clips(tmp_path / "clips", 24, seed0=500)
    out = tmp_path / "out"
    manifest = _manifest(tmp_path / "glob.yaml", "e2e-glob", out, f"{tmp_path}/clips/*.mp4")
    emulator.reset()
    emulator.configure(job_seconds=4)  # long enough to be caught mid-shard
    started = time.time()
    run_id = cluster.run_backfill(manifest, emulator.base_url, shard_size=6)

    # the parent's worker stays; the other one dies once its shard has jobs in flight
    cluster.wait(lambda: cluster.flow_run(run_id)["state_type"] == "RUNNING", 180, "the backfill did not start")
    owners = [w for w in cluster.workers if run_id in cluster.runs_of_worker(w)]
    assert len(owners) == 1, f"backfill claimed by {owners}\n{cluster.explain()}"
    parent_worker = owners[0]
    victim = next(w for w in cluster.workers if w != parent_worker)
    survivor = parent_worker
    found: dict[str, Any] = {}

    def victim_mid_shard() -> bool:
        mine = cluster.runs_of_worker(victim)
        runs = [r for r in cluster.shard_runs(started) if r["id"] in mine]
        if not runs or any(r["state_type"] in ("PENDING", "SCHEDULED") for r in runs):
            return False  # wait until everything it claimed has started (no run stuck Pending)
        for r in runs:
            if r["state_type"] != "RUNNING":
                continue
            sm = load_manifest(r["parameters"]["manifest"])
            store = StateStore(inputs.state_root(sm), {})
            items = inputs.plan_items(sm)
            submitted = [i for i in items if (store.read_handle(i.key) or {}).get("state") == "submitted"]
            done = [i for i in items if store.read_record(i.key)]
            if submitted and len(done) < len(items):
                found.update(run=r, manifest=r["parameters"]["manifest"], submitted=len(submitted))
                return True
        return False

    cluster.wait(victim_mid_shard, 300, f"worker {victim} never had a shard with jobs in flight")
    cluster.kill_worker(victim)
    killed_at = time.time()

    run = cluster.wait_final(run_id, 900)
    assert run["state_type"] == "COMPLETED", f"backfill ended {run['state_type']}: {run['state']}\n{cluster.explain()}"
    rows = _report(out, "e2e-glob")
    assert len(rows) == 24 and {r["status"] for r in rows} == {"verified"}, [r["error"] for r in rows if r["error"]]

    again = [r for r in cluster.shard_runs(started) if r["parameters"]["manifest"] == found["manifest"]]
    states = {r["id"]: r["state_type"] for r in again}
    assert states[found["run"]["id"]] == "CRASHED", states  # marked by the heartbeat automation
    rerun = [r for r in again if r["id"] != found["run"]["id"] and r["state_type"] == "COMPLETED"]
    assert rerun, f"the killed shard was not run again: {states}"
    assert rerun[-1]["id"] in cluster.runs_of_worker(survivor), "the rerun did not happen on the surviving worker"

    stats = emulator.stats()
    _one_submission_each(stats, clips)  # the rerun re-attached to the dead run's jobs
    assert stats["max_in_flight"][PROVIDER] <= 4, stats["max_in_flight"]
    print(f"killed {victim} with {found['submitted']} job(s) in flight; backfill done "
          f"{time.time() - killed_at:.0f} s later")
