"""The manifest's ``limits:`` as Prefect global concurrency limits, created up front.

Two limits per provider, named as ``vidbatch.leases`` acquires them (that module
holds and hands out the slots at run time; this one only makes sure the limits
exist with the manifest's values before anything runs, notes/prefect.md §3: a
limit must exist before it is acquired, and acquisition is strict):

* ``vidbatch-<provider>``      jobs in flight: ``limit = concurrency``
* ``vidbatch-<provider>-rps``  requests per second (only when the manifest sets
                               ``requests_per_second``): ``limit = max(1, int(rps))``,
                               ``slot_decay_per_second = rps``

The values are the ones a run uses (``run.make_limiters``: the manifest's, else
the defaults), computed the same way as ``run.start_global_limits``, so the
backfill creating them first and each shard upserting them again never disagree.
``local`` gets none here: the embedded engine is bounded by each machine's CPUs.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Mapping

from vidbatch.leases import limit_name, rate_name

if TYPE_CHECKING:
    from vidbatch.manifest import Manifest

PREFIX = "vidbatch-"
#: providers limited per machine, never globally from here
LOCAL_PROVIDERS = frozenset({"local"})


@dataclass(frozen=True)
class LimitSpec:
    name: str
    limit: int
    slot_decay_per_second: float = 0.0


def manifest_providers(m: Manifest) -> set[str]:
    """Providers named in the manifest itself (defaults and video entries)."""
    names = {m.defaults.provider or "local"}
    for entry in m.videos:
        if not isinstance(entry, str) and entry.provider:
            names.add(entry.provider)
    return names


def limit_specs(m: Manifest, providers: Iterable[str] = ()) -> list[LimitSpec]:
    """The limits a manifest needs: every provider it names or ``providers`` adds.

    Providers that appear only inside listing files are not visible without
    expanding the manifest; the backfill passes those it planned.
    """
    from vidbatch.run import make_limiters

    names = sorted((set(m.limits) | manifest_providers(m) | set(providers)) - LOCAL_PROVIDERS)
    specs: list[LimitSpec] = []
    for name, lim in make_limiters(m, names).items():
        specs.append(LimitSpec(limit_name(name), int(lim.concurrency)))
        if lim.requests_per_second:
            rate = float(lim.requests_per_second)
            specs.append(LimitSpec(rate_name(name), max(1, int(rate)), rate))
    return specs


async def _upsert(client: object, spec: LimitSpec) -> str:
    """Create or update one limit (and make it active); 'created', 'updated' or 'unchanged'."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    try:
        current = await client.read_global_concurrency_limit_by_name(spec.name)  # type: ignore[attr-defined]
    except ObjectNotFound:
        try:
            await client.create_global_concurrency_limit(  # type: ignore[attr-defined]
                GlobalConcurrencyLimitCreate(
                    name=spec.name, limit=spec.limit, slot_decay_per_second=spec.slot_decay_per_second, active=True
                )
            )
            return "created"
        except ObjectAlreadyExists:  # another process created it a moment ago: compare with that
            current = await client.read_global_concurrency_limit_by_name(spec.name)  # type: ignore[attr-defined]
    same = (
        current.limit == spec.limit
        and abs(float(current.slot_decay_per_second or 0.0) - spec.slot_decay_per_second) < 1e-9
        and current.active
    )
    if same:
        return "unchanged"
    await client.update_global_concurrency_limit(  # type: ignore[attr-defined]
        spec.name,
        GlobalConcurrencyLimitUpdate(limit=spec.limit, slot_decay_per_second=spec.slot_decay_per_second, active=True),
    )
    return "updated"


async def aensure_limits(m: Manifest, providers: Iterable[str] = ()) -> dict[str, str]:
    """Create or update the manifest's global limits (idempotent). Returns name -> what was done."""
    from prefect.client.orchestration import get_client

    done: dict[str, str] = {}
    async with get_client() as client:
        for spec in limit_specs(m, providers):
            done[spec.name] = await _upsert(client, spec)
    return done


def ensure_limits(m: Manifest, providers: Iterable[str] = ()) -> dict[str, str]:
    """``aensure_limits`` for synchronous callers (not from inside a running event loop)."""
    return asyncio.run(aensure_limits(m, providers))


async def read_limits(prefix: str = PREFIX) -> Mapping[str, dict[str, float]]:
    """name -> {limit, active_slots, slot_decay_per_second} of vidbatch's limits (status, tests)."""
    from prefect.client.orchestration import get_client

    out: dict[str, dict[str, float]] = {}
    async with get_client() as client:
        offset = 0
        while True:
            page = await client.read_global_concurrency_limits(limit=200, offset=offset)
            for lim in page:
                if lim.name.startswith(prefix):
                    out[lim.name] = {
                        "limit": lim.limit,
                        "active_slots": lim.active_slots,
                        "slot_decay_per_second": float(lim.slot_decay_per_second or 0.0),
                    }
            if len(page) < 200:
                return out
            offset += 200
