"""Cross-process limits on a Prefect server: leased slots, handed out locally.

A Prefect global concurrency limit per provider (``vidbatch-<provider>``) holds
exactly; but acquiring through ``concurrency()`` costs 70-260 ms and kept only
half the slots busy for short holds (notes/prefect.md §3). So each process keeps
the slots it leased: a finished job hands its slot straight to the next local
waiter (no API call), and a slot goes back to the server only when the local
queue has drained (or the slot has been held for ``hold_max`` seconds, so other
processes get their turn). One background acquirer per limit polls the server
for new slots while anyone waits.

Crashes: every lease id this process holds is written, with a heartbeat and the
item key of the job it covers, to ``{state_root}/leases/<host>-<pid>.json``. A
later run looks at the leases of a holder whose heartbeat is stale (or whose pid
is dead on this host) at start-up, instead of waiting for the server's ~80 s
lease repossession:

* a lease that covered no job, or a job whose handle is gone (done), is released;
* a lease whose job still has a handle is *not* released: that job may still be
  running at the provider, and freeing its slot would let the limit be exceeded.
  The run that re-attaches to the job adopts the lease (renews it and holds it
  for that job), so it does not wait either; a lease nobody adopts expires on
  the server within ``LEASE_SECONDS`` of the crash.

``requests_per_second`` uses a global rate limit (``vidbatch-<provider>-rps``,
slot decay = rps): tokens are taken from the server in small blocks and spent
locally, so the global rate holds at one API call per block.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable
from uuid import UUID

from vidbatch import storage

log = logging.getLogger("vidbatch.leases")

LEASE_SECONDS = 60.0  # the server's minimum; renewed every LEASE_SECONDS / 3
HEARTBEAT_SECONDS = 5.0
STALE_SECONDS = 30.0


def limit_name(provider: str) -> str:
    return f"vidbatch-{provider}"


def rate_name(provider: str) -> str:
    return f"vidbatch-{provider}-rps"


def server_mode() -> bool:
    """Global limits only make sense against a shared Prefect server."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


@dataclass
class LeaseRegistry:
    """This process's lease ids on the shared state store, with a heartbeat."""

    root: str
    options: dict[str, Any]
    holder: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    leases: dict[str, set[str]] = field(default_factory=dict)
    #: lease id -> the item key of the job holding it (written before that job is submitted)
    jobs: dict[str, str] = field(default_factory=dict)
    _dirty: bool = field(default=False, init=False)

    @property
    def url(self) -> str:
        return storage.join(self.root, "leases", f"{self.holder}.json")

    def add(self, limit: str, lease: UUID) -> None:
        self.leases.setdefault(limit, set()).add(str(lease))
        self._dirty = True

    def remove(self, limit: str, lease: UUID) -> None:
        self.leases.get(limit, set()).discard(str(lease))
        self.jobs.pop(str(lease), None)
        self._dirty = True

    def bind(self, lease: UUID, key: str | None) -> None:
        """The lease now covers the job of item ``key`` (None: no particular job)."""
        if key is None:
            self.jobs.pop(str(lease), None)
        else:
            self.jobs[str(lease)] = key
        self._dirty = True

    def flush(self, force: bool = False) -> None:
        if not (self._dirty or force):
            return
        self._dirty = False
        body = {
            "holder": self.holder, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(),
            "leases": {k: sorted(v) for k, v in self.leases.items() if v},
            "jobs": dict(self.jobs),
        }
        storage.write_bytes_atomic(self.url, json.dumps(body).encode(), self.options)

    def close(self) -> None:
        storage.delete(self.url, self.options)


def _dead(doc: dict[str, Any]) -> bool:
    if time.time() - float(doc.get("heartbeat", 0)) > STALE_SECONDS:
        return True
    if doc.get("host") == socket.gethostname():
        pid = int(doc.get("pid", 0))
        if pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


#: the item keys of a dead holder's jobs still in flight, with their leases: limit -> key -> lease id
Orphans = dict[str, dict[str, str]]


async def reclaim_dead_holders(root: str, options: dict[str, Any],
                               live: Callable[[str], bool] = lambda key: False) -> Orphans:
    """Release the idle leases of crashed processes that used this state root.

    ``live(key)``: whether item ``key`` still has a job handle (its job may be in
    flight). Such leases are kept, not released, and returned for adoption by
    whoever re-attaches to the job (``GlobalSlots.slot``).
    """
    from prefect.client.orchestration import get_client

    fs, path = storage.fs_for(storage.join(root, "leases"), options)
    try:
        files = await asyncio.to_thread(fs.ls, path, detail=False)
    except (FileNotFoundError, OSError):
        return {}
    released = 0
    orphans: Orphans = {}
    async with get_client() as client:
        for f in files:
            url = f if "://" in f or storage.is_local(root) else fs.unstrip_protocol(f)
            raw = await asyncio.to_thread(storage.read_bytes, url, options)
            try:
                doc = json.loads(raw or b"{}")
            except json.JSONDecodeError:
                continue
            if not _dead(doc):
                continue
            jobs = doc.get("jobs") or {}
            # past one lease period without renewal the server has repossessed them all
            fresh = time.time() - float(doc.get("heartbeat", 0)) < LEASE_SECONDS
            kept: dict[str, list[str]] = {}
            for limit, ids in (doc.get("leases") or {}).items():
                for lease in ids:
                    key = jobs.get(lease)
                    if fresh and key and await asyncio.to_thread(live, key):
                        orphans.setdefault(limit, {})[key] = lease
                        kept.setdefault(limit, []).append(lease)
                        continue
                    with contextlib.suppress(Exception):  # already expired or repossessed: fine
                        await client.release_concurrency_slots_with_lease(UUID(lease))
                        released += 1
            if kept:
                # a later run (the one that re-attaches) may still adopt them
                doc.update(leases=kept, jobs={lease: jobs[lease] for ids in kept.values() for lease in ids})
                await asyncio.to_thread(storage.write_bytes_atomic, url, json.dumps(doc).encode(), options)
            else:
                await asyncio.to_thread(storage.delete, url, options)
    if released:
        log.warning("released %d slot(s) held by crashed vidbatch processes", released)
    if orphans:
        log.warning("kept %d slot(s) of crashed vidbatch processes whose jobs may still run; "
                    "they go to the run that re-attaches", sum(len(v) for v in orphans.values()))
    return orphans


class GlobalSlots:
    """Slots of one global concurrency limit, kept and handed out in this process."""

    def __init__(self, name: str, registry: LeaseRegistry | None = None, hold_max: float = 60.0,
                 idle_grace: float = 0.25, orphans: dict[str, str] | None = None) -> None:
        self.name = name
        #: item key -> lease of a crashed process's job still in flight (adopted on re-attach)
        self.orphans = dict(orphans or {})
        self.registry = registry
        self.hold_max = hold_max
        self.idle_grace = idle_grace
        self._waiters: deque[asyncio.Future[tuple[UUID, float]]] = deque()
        self._held: dict[UUID, float] = {}
        self._acquirer: asyncio.Task[None] | None = None
        self._renewer: asyncio.Task[None] | None = None
        self._client: Any = None
        self.api_calls = 0

    async def _api(self) -> Any:
        if self._client is None:
            from prefect.client.orchestration import get_client

            self._client = get_client()
            await self._client.__aenter__()
        return self._client

    async def _try_acquire(self) -> UUID | float:
        """A new lease id, or the seconds to wait before trying again."""
        import httpx

        client = await self._api()
        self.api_calls += 1
        try:
            resp = await client.increment_concurrency_slots_with_lease(
                names=[self.name], slots=1, mode="concurrency", lease_duration=LEASE_SECONDS
            )
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code == 423:
                retry = float(exc.response.headers.get("Retry-After", 1.0))
                # the server's hint scales with everyone's backlog; poll briskly instead
                return min(retry, 0.5) * (0.5 + random.random())
            if exc.response.status_code in (503, 429):
                return 1.0
            raise
        return UUID(resp.json()["lease_id"])

    async def _acquire_loop(self) -> None:
        try:
            while self._waiters:
                got = await self._try_acquire()
                if isinstance(got, float):
                    await asyncio.sleep(got)
                    continue
                self._held[got] = time.monotonic()
                if self.registry:
                    self.registry.add(self.name, got)
                    await asyncio.to_thread(self.registry.flush)
                # release only a lease nobody took: the last waiter served empties
                # the queue too, and releasing its lease would let other processes
                # take a slot it still uses (the limit would no longer hold)
                if not self._give(got, time.monotonic()):  # nobody wanted it after all
                    await self._release(got)
        finally:
            self._acquirer = None

    def _give(self, lease: UUID, since: float) -> bool:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result((lease, since))
                return True
        return False

    async def _release(self, lease: UUID) -> None:
        self._held.pop(lease, None)
        client = await self._api()
        self.api_calls += 1
        with contextlib.suppress(Exception):
            await client.release_concurrency_slots_with_lease(lease)
        if self.registry:
            self.registry.remove(self.name, lease)
            await asyncio.to_thread(self.registry.flush)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            client = await self._api()
            for lease in list(self._held):
                with contextlib.suppress(Exception):
                    await client.renew_concurrency_lease(lease, lease_duration=LEASE_SECONDS)
            if self.registry:
                await asyncio.to_thread(self.registry.flush, True)

    async def _adopt(self, key: str) -> UUID | None:
        """The crashed holder's lease for ``key``'s job, renewed and now ours; None if it expired."""
        raw = self.orphans.pop(key, None)
        if raw is None:
            return None
        lease = UUID(raw)
        client = await self._api()
        self.api_calls += 1
        try:
            await client.renew_concurrency_lease(lease, lease_duration=LEASE_SECONDS)
        except Exception:  # noqa: BLE001 - expired or repossessed: acquire like anyone
            return None
        self._held[lease] = time.monotonic()
        if self.registry:
            self.registry.add(self.name, lease)
        return lease

    @contextlib.asynccontextmanager
    async def slot(self, key: str | None = None) -> AsyncIterator[None]:
        """One slot for the job of item ``key``, bound to it on the lease registry
        (durably, before the caller submits) so a crash cannot free it early."""
        if self._renewer is None:
            self._renewer = asyncio.ensure_future(self._renew_loop())
        adopted = await self._adopt(key) if key is not None and key in self.orphans else None
        if adopted is not None:
            lease, since = adopted, time.monotonic()
        else:
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[tuple[UUID, float]] = loop.create_future()
            self._waiters.append(fut)
            if self._acquirer is None:
                self._acquirer = asyncio.ensure_future(self._acquire_loop())
            try:
                lease, since = await fut
            except BaseException:
                if fut.done() and not fut.cancelled():
                    await self._hand_back(*fut.result())
                raise
        try:
            if self.registry:
                self.registry.bind(lease, key)
                await asyncio.to_thread(self.registry.flush)
            yield
        finally:
            if self.registry:
                self.registry.bind(lease, None)  # flushed with the next change: a stale key is re-checked
            await self._hand_back(lease, since)

    async def _hand_back(self, lease: UUID, since: float) -> None:
        if time.monotonic() - since < self.hold_max and self._give(lease, since):
            return  # straight to the next local job: no API call
        if self._waiters and time.monotonic() - since >= self.hold_max:
            # held long enough: give other processes a turn, re-queue for a fresh one
            await self._release(lease)
            if self._acquirer is None:
                self._acquirer = asyncio.ensure_future(self._acquire_loop())
            return
        await asyncio.sleep(self.idle_grace)
        if self._give(lease, since):
            return
        await self._release(lease)

    async def close(self) -> None:
        for task in (self._acquirer, self._renewer):
            if task is not None:
                task.cancel()
        for lease in list(self._held):
            await self._release(lease)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
            self._client = None


class GlobalRate:
    """``requests_per_second`` across processes: tokens taken from a rate limit in blocks."""

    def __init__(self, name: str, rate: float) -> None:
        self.name = name
        self.block = max(1, int(rate // 4) or 1)
        self._tokens = 0
        self._lock = asyncio.Lock()
        self._client: Any = None

    async def take(self) -> None:
        import httpx

        async with self._lock:
            while self._tokens <= 0:
                if self._client is None:
                    from prefect.client.orchestration import get_client

                    self._client = get_client()
                    await self._client.__aenter__()
                try:
                    await self._client.increment_concurrency_slots(
                        names=[self.name], slots=self.block, mode="rate_limit"
                    )
                    self._tokens = self.block
                except httpx.HTTPStatusError as exc:
                    if exc.response.status_code not in (423, 503):
                        raise
                    await asyncio.sleep(min(float(exc.response.headers.get("Retry-After", 0.2)), 1.0))
            self._tokens -= 1

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
