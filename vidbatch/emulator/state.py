"""The emulator's in-memory state: clock, files and download grants, jobs, stats.

Everything here is mutated on the event-loop thread only (handlers and job
tasks); engine threads hand results back through futures. No locks needed.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import shutil
import tempfile
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from vidbatch.emulator.config import PROVIDERS, EmulatorConfig
from vidbatch.emulator.faults import FaultInjector
from vidbatch.emulator.media import MediaInfo, Produced, TemplateCache, Work


def key_id(credential: str) -> str:
    """How a credential appears in stats: ``k_`` + 12 hex chars of its sha256."""
    return "k_" + hashlib.sha256(credential.encode()).hexdigest()[:12]


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_token(n: int = 18) -> str:
    return secrets.token_urlsafe(n).replace("-", "x").replace("_", "y")


class Clock:
    """Wall clock plus the emulated clock (``time_scale`` times faster)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config

    @property
    def scale(self) -> float:
        return float(self.config.time_scale)

    @staticmethod
    def mono() -> float:
        return time.monotonic()

    @staticmethod
    def wall() -> float:
        return time.time()

    def real(self, emulated_seconds: float) -> float:
        return max(0.0, emulated_seconds) / self.scale

    def emulated(self, real_seconds: float) -> float:
        return real_seconds * self.scale

    async def sleep(self, emulated_seconds: float) -> None:
        if emulated_seconds > 0:
            await asyncio.sleep(self.real(emulated_seconds))


@dataclass
class StoredFile:
    id: str
    path: Path
    name: str
    content_type: str
    size: int
    sha256: str | None
    created: float
    owner: str | None = None  # key id
    provider: str | None = None
    info: MediaInfo | None = None
    shared: bool = False  # a cached template; not deleted on reset


@dataclass
class Grant:
    """A download capability: token -> file, until ``expires`` (wall clock)."""

    token: str
    file_id: str
    provider: str
    expires: float | None


@dataclass
class Output:
    """One result file of a job and its current download grant."""

    kind: str  # video | mask
    file: StoredFile
    grant: Grant | None = None
    mints: int = 0


@dataclass
class Job:
    id: str
    provider: str
    app: str  # fal app id / Scenario model id / removebgvideo model
    owner: str  # key id
    work: Work | None
    request: dict[str, Any]
    created: float  # wall
    created_mono: float
    state: str = "queued"  # draft | queued | running | succeeded | failed | canceled
    phase: str = ""  # fetching | processing | finalizing (while running)
    input_url: str | None = None
    input_file: StoredFile | None = None
    input_info: MediaInfo | None = None
    fault: str | None = None
    started_mono: float | None = None
    engine_done_mono: float | None = None
    finished_mono: float | None = None
    finished: float | None = None  # wall
    outputs: list[Output] = field(default_factory=list)
    error: str | None = None
    error_type: str | None = None  # fal error type
    error_status: int | None = None  # fal result HTTP status for a failed job
    cancel_requested: bool = False
    polls: int = 0
    logs: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    counted: bool = False  # in the in-flight gauges
    generation: int = 0  # EmulatorState.generation at creation; stale after a reset

    @property
    def terminal(self) -> bool:
        return self.state in ("succeeded", "failed", "canceled")

    def log(self, message: str, level: str = "INFO") -> None:
        self.logs.append({"message": message, "level": level, "source": "user", "timestamp": iso(time.time())})


class Account:
    """Per (provider, key) concurrency: FIFO admission up to ``limit`` running."""

    def __init__(self, state: "EmulatorState", provider: str) -> None:
        self.state = state
        self.provider = provider
        self.running = 0
        self.waiters: deque[tuple[Job, asyncio.Future[None]]] = deque()
        self.queued: OrderedDict[str, Job] = OrderedDict()

    def limit(self) -> int | None:
        return self.state.config.running_limit(self.provider)

    def _has_room(self) -> bool:
        limit = self.limit()
        return limit is None or self.running < limit

    async def acquire(self, job: Job) -> None:
        if not self.waiters and self._has_room():
            self.running += 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (job, fut)
        self.waiters.append(entry)
        try:
            await fut
        except asyncio.CancelledError:
            if entry in self.waiters:
                self.waiters.remove(entry)
            elif fut.done() and not fut.cancelled():
                self.release()  # admitted and cancelled in the same tick: give it back
            raise

    def release(self) -> None:
        self.running = max(0, self.running - 1)
        self.wake()

    def wake(self) -> None:
        while self.waiters and self._has_room():
            _, fut = self.waiters.popleft()
            if not fut.done():
                self.running += 1
                fut.set_result(None)

    def position(self, job: Job) -> int:
        for i, jid in enumerate(self.queued):
            if jid == job.id:
                return i
        return 0


class Stats:
    def __init__(self) -> None:
        self.started = time.time()
        self.requests: Counter[str] = Counter()
        self.responses: dict[str, Counter[str]] = {}
        self.submissions: Counter[str] = Counter({p: 0 for p in PROVIDERS})
        self.submissions_by_content: dict[str, Counter[str]] = {p: Counter() for p in PROVIDERS}
        self.submissions_by_key: dict[str, Counter[str]] = {p: Counter() for p in PROVIDERS}
        self.in_flight: Counter[str] = Counter({p: 0 for p in PROVIDERS})
        self.max_in_flight: Counter[str] = Counter({p: 0 for p in PROVIDERS})
        self.running: Counter[str] = Counter({p: 0 for p in PROVIDERS})
        self.max_running: Counter[str] = Counter({p: 0 for p in PROVIDERS})
        self.uploads: Counter[str] = Counter()
        self.upload_bytes: Counter[str] = Counter()
        self.downloads: Counter[str] = Counter()
        self.download_bytes: Counter[str] = Counter()
        self.engine_calls: Counter[str] = Counter()
        self.validation_errors: Counter[str] = Counter()

    def response(self, route: str, status: int) -> None:
        self.responses.setdefault(route, Counter())[str(status)] += 1


class EmulatorState:
    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.clock = Clock(config)
        self.faults = FaultInjector(config.faults)
        self._own_tmp = config.data_dir is None
        self.root = Path(config.data_dir or tempfile.mkdtemp(prefix="vidbatch-emulator-"))
        self.root.mkdir(parents=True, exist_ok=True)
        shared = Path(tempfile.gettempdir()) / "vidbatch-emulator-templates"
        self.templates = TemplateCache(self.root / "templates" if config.data_dir else shared)
        self.signing_key = secrets.token_bytes(32)
        self.hosts: set[str] = set()
        self.probe_cache: dict[str, MediaInfo] = {}
        #: bumped by reset(): jobs of an older generation no longer touch stats
        self.generation = 0
        self._init_dynamic()

    def _init_dynamic(self) -> None:
        self.stats = Stats()
        self.files: dict[str, StoredFile] = {}
        self.grants: dict[str, Grant] = {}
        self.jobs: dict[str, dict[str, Job]] = {p: {} for p in PROVIDERS}
        self.accounts: dict[tuple[str, str], Account] = {}
        #: provider-owned tables (uploads, assets, tokens...), cleared on reset
        self.tables: dict[str, dict[str, Any]] = {}
        self.files_dir = self.root / "files"
        self.files_dir.mkdir(parents=True, exist_ok=True)

    def table(self, name: str) -> dict[str, Any]:
        return self.tables.setdefault(name, {})

    # -- lifecycle -------------------------------------------------------
    def reset(self) -> None:
        for jobs in self.jobs.values():
            for job in jobs.values():
                if job.task is not None and not job.task.done():
                    job.task.cancel()
        self.generation += 1
        shutil.rmtree(self.files_dir, ignore_errors=True)
        self.faults.configure(type(self.config.faults)())
        self.faults.injected.clear()
        self._init_dynamic()

    def close(self) -> None:
        if self._own_tmp:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- accounts and gauges ---------------------------------------------
    def account(self, provider: str, owner: str) -> Account:
        acct = self.accounts.get((provider, owner))
        if acct is None:
            acct = self.accounts[(provider, owner)] = Account(self, provider)
        return acct

    def wake_accounts(self) -> None:
        for acct in self.accounts.values():
            acct.wake()

    def record_submission(self, job: Job) -> None:
        self.stats.submissions[job.provider] += 1
        self.stats.submissions_by_key[job.provider][job.owner] += 1

    def record_content(self, job: Job, sha256: str) -> None:
        if not job.extra.get("content_counted"):
            job.extra["content_counted"] = True
            self.stats.submissions_by_content[job.provider][sha256] += 1

    def current(self, job: Job) -> bool:
        return job.generation == self.generation

    def enter_flight(self, job: Job) -> None:
        if job.counted or not self.current(job):
            return
        job.counted = True
        s = self.stats
        s.in_flight[job.provider] += 1
        s.max_in_flight[job.provider] = max(s.max_in_flight[job.provider], s.in_flight[job.provider])

    def leave_flight(self, job: Job) -> None:
        if job.counted and self.current(job):
            job.counted = False
            self.stats.in_flight[job.provider] -= 1

    def enter_running(self, job: Job) -> None:
        if not self.current(job):
            return
        s = self.stats
        s.running[job.provider] += 1
        s.max_running[job.provider] = max(s.max_running[job.provider], s.running[job.provider])

    def leave_running(self, job: Job) -> None:
        if self.current(job):
            self.stats.running[job.provider] -= 1

    # -- files and grants ------------------------------------------------
    def new_path(self, suffix: str = "") -> Path:
        return self.files_dir / f"{uuid.uuid4().hex}{suffix}"

    def add_file(self, path: Path, name: str, content_type: str, size: int, sha256: str | None, *,
                 owner: str | None = None, provider: str | None = None, info: MediaInfo | None = None,
                 shared: bool = False) -> StoredFile:
        fid = uuid.uuid4().hex
        sf = StoredFile(fid, path, name, content_type, size, sha256, time.time(), owner, provider, info, shared)
        self.files[fid] = sf
        return sf

    def add_produced(self, produced: Produced, name: str, owner: str, provider: str) -> StoredFile:
        size = os.path.getsize(produced.path)
        return self.add_file(produced.path, name, produced.content_type, size, None, owner=owner,
                             provider=provider, info=produced.info, shared=produced.shared)

    def grant(self, sf: StoredFile, provider: str, ttl: float | None, *, expired: bool = False) -> Grant:
        if expired:
            expires: float | None = time.time() - 1.0
        elif ttl is None:
            expires = None
        else:
            expires = time.time() + self.clock.real(ttl)
        g = Grant(new_token(), sf.id, provider, expires)
        self.grants[g.token] = g
        return g

    def output_grant(self, out: Output, provider: str) -> Grant:
        """The output's current grant, minted anew when missing or expired.

        The first mint may come out already expired (``expired_urls`` fault);
        any later mint is valid, so refreshing a URL always repairs it.
        """
        g = out.grant
        if g is not None and (g.expires is None or g.expires > time.time()):
            return g
        expired = out.mints == 0 and self.faults.expire_first_url(provider)
        out.mints += 1
        out.grant = self.grant(out.file, provider, self.config.provider_url_ttl(provider), expired=expired)
        return out.grant

    def resolve_grant(self, token: str) -> tuple[StoredFile | None, Grant | None]:
        g = self.grants.get(token)
        if g is None:
            return None, None
        return self.files.get(g.file_id), g

    @staticmethod
    def grant_valid(g: Grant) -> bool:
        return g.expires is None or g.expires > time.time()

    # -- own URLs ----------------------------------------------------------
    def note_host(self, host: str | None) -> None:
        if host and host not in self.hosts:
            self.hosts.add(host)
            if ":" in host:
                name, port = host.rsplit(":", 1)
                for alias in ("127.0.0.1", "localhost"):
                    if name in ("127.0.0.1", "localhost"):
                        self.hosts.add(f"{alias}:{port}")

    def local_file_for_url(self, url: str) -> tuple[StoredFile | None, str | None]:
        """Resolve one of our own download URLs to its file, without HTTP.

        Returns (file, None), (None, reason) for our URL that does not work
        (unknown or expired), or (None, None) for a foreign URL.
        """
        parts = urlsplit(url)
        if parts.netloc not in self.hosts:
            return None, None
        segs = [s for s in parts.path.split("/") if s]
        token = None
        if len(segs) >= 4 and segs[:3] == ["fal", "cdn", "files"]:
            token = segs[3]
        elif len(segs) >= 3 and segs[0] in ("scenario", "removebgvideo") and segs[1] == "cdn":
            token = segs[2]
        if token is None:
            return None, None
        sf, g = self.resolve_grant(token)
        if sf is None or g is None:
            return None, "HTTP 404 (not found)"
        if not self.grant_valid(g):
            return None, "HTTP 403 (URL expired)"
        return sf, None

    # -- jobs ----------------------------------------------------------------
    def add_job(self, job: Job) -> Job:
        job.generation = self.generation
        self.jobs[job.provider][job.id] = job
        return job

    def get_job(self, provider: str, job_id: str) -> Job | None:
        return self.jobs[provider].get(job_id)

    # -- reporting -----------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        s = self.stats
        polls: dict[str, Any] = {}
        states: dict[str, Counter[str]] = {}
        for provider, jobs in self.jobs.items():
            counts = [j.polls for j in jobs.values() if j.work is not None]
            states[provider] = Counter(j.state for j in jobs.values() if j.work is not None)
            polls[provider] = {
                "jobs": len(counts),
                "total": sum(counts),
                "mean": round(sum(counts) / len(counts), 3) if counts else 0.0,
                "max": max(counts) if counts else 0,
                "min": min(counts) if counts else 0,
            }
        return {
            "uptime_seconds": round(time.time() - s.started, 3),
            "submissions": dict(s.submissions),
            "submissions_by_content": {p: dict(c) for p, c in s.submissions_by_content.items()},
            "submissions_by_key": {p: dict(c) for p, c in s.submissions_by_key.items()},
            "in_flight": dict(s.in_flight),
            "max_in_flight": dict(s.max_in_flight),
            "running": dict(s.running),
            "max_running": dict(s.max_running),
            "jobs": {p: dict(c) for p, c in states.items()},
            "requests": dict(s.requests),
            "responses": {r: dict(c) for r, c in s.responses.items()},
            "polls_per_job": polls,
            "faults_injected": dict(self.faults.injected),
            "validation_errors": dict(s.validation_errors),
            "uploads": dict(s.uploads),
            "upload_bytes": dict(s.upload_bytes),
            "downloads": dict(s.downloads),
            "download_bytes": dict(s.download_bytes),
            "engine_calls": dict(s.engine_calls),
        }

    def job_summaries(self, provider: str | None = None) -> list[dict[str, Any]]:
        rows = []
        for prov, jobs in self.jobs.items():
            if provider and prov != provider:
                continue
            for job in jobs.values():
                if job.work is None:
                    continue
                rows.append({
                    "provider": prov,
                    "id": job.id,
                    "app": job.app,
                    "owner": job.owner,
                    "state": job.state,
                    "polls": job.polls,
                    "input_sha256": job.input_file.sha256 if job.input_file else None,
                    "fault": job.fault,
                    "error": job.error,
                    "created": iso(job.created),
                    "run_seconds": round(job.finished_mono - job.started_mono, 3)
                    if job.finished_mono and job.started_mono else None,
                })
        return rows
