"""Canaries: one job first, per settings group, before paying for the rest.

Before a group's other items are submitted, its first ``canary.items`` items
(default 1 for paid providers) must come back verified. If a canary fails for
a reason that says the group's results are no good (the job failed, the
result failed verification or a ``verify:`` threshold with ``on_fail: fail``,
the provider returned no usable file), the group stops: its other items are
skipped with reason ``canary`` and the canary's error, and the run exits 1
with one line per stopped group. A canary that fails for its own input (not
found, unreadable) or for a transient reason proves nothing: the next item
of the group takes its place.

Groups are independent (a failing Scenario group does not stop a healthy fal
group) and the wait overlaps other groups' work: the driver parks a waiting
item (``Decision.wait``) and goes on with the next one.

A group's outcome is remembered on the state store by settings hash::

    canary/<group key>.json   {"status": "passed" | "failed", "label", "keys", "tried", "reason", "run", "at"}

so later runs and every shard of a backfill do not canary again, while a
failed canary is tried again on the next run with the next item (the items
already tried are listed in ``tried``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from vidbatch import groups, storage
from vidbatch.errors import StorageError
from vidbatch.spec import Item
from vidbatch.state import StateStore

log = logging.getLogger("vidbatch")

#: report reasons of a canary that say the group's results are no good
STOPPING_REASONS = frozenset({"job-failed", "verify", "result"})


@dataclass(frozen=True)
class CanaryStore:
    """Group outcomes on the state store."""

    state: StateStore

    def url(self, group: str) -> str:
        return storage.join(self.state.root, "canary", f"{group}.json")

    def read(self, group: str) -> dict[str, Any]:
        url = self.url(group)
        try:
            data = storage.read_bytes(url, self.state.storage_options)
        except OSError as exc:
            raise StorageError(f"cannot read {url}: {exc}") from None
        if not data:
            return {}
        try:
            doc = json.loads(data)
        except ValueError:
            log.warning("%s is damaged; the group will run a canary again", url)
            return {}
        return doc if isinstance(doc, dict) else {}

    def write(self, group: str, doc: Mapping[str, Any]) -> None:
        storage.write_bytes_atomic(self.url(group), json.dumps(dict(doc), sort_keys=True).encode(),
                                   self.state.storage_options)


@dataclass(frozen=True)
class Decision:
    """What the gate says about one item: ``go`` (submit), ``canary`` (submit, as this
    group's canary), ``skip`` (with ``reason``), or ``wait`` (``until`` is set)."""

    action: str
    reason: str = ""
    until: asyncio.Event | None = None


GO = Decision("go")


@dataclass
class _Group:
    key: str
    label: str
    need: int
    status: str = "pending"  # pending | passed | failed
    doc: dict[str, Any] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    passed: list[str] = field(default_factory=list)
    reason: str = ""
    skipped: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass
class CanaryGate:
    """The canary state of one run: decides per item, learns from each finished canary."""

    store: CanaryStore
    run_id: str
    #: canaries a group of this item's provider needs (0: no canary)
    needed: Callable[[Item], int]
    groups: dict[str, _Group] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    #: set by the driver once every item was planned: items tried as canaries by an
    #: earlier run may serve again when no new item of their group is left
    exhausted: bool = False

    async def _group(self, item: Item) -> _Group:
        key = groups.group_key(item.spec)
        g = self.groups.get(key)
        if g is not None:
            return g
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if key in self.groups:
                return self.groups[key]
            need = self.needed(item)
            g = _Group(key, groups.group_label(item.spec), need)
            if need <= 0:
                g.status = "passed"
            else:
                g.doc = await asyncio.to_thread(self.store.read, key)
                if g.doc.get("status") == "passed":
                    g.status = "passed"
            self.groups[key] = g
            return g

    async def decide(self, item: Item) -> Decision:
        g = await self._group(item)
        if g.status == "passed":
            return GO
        if g.status == "failed":
            g.skipped += 1
            return Decision("skip", f"canary: not submitted because this group's canary failed ({g.label}): "
                                    f"{g.reason}")
        tried = set(g.doc.get("tried") or []) if not self.exhausted else set()
        if item.key in g.running:
            return Decision("canary")
        if len(g.running) + len(g.passed) < g.need and item.key not in tried:
            g.running.add(item.key)
            return Decision("canary")
        return Decision("wait", until=g.changed)

    def planned_all(self) -> None:
        """No item is left to plan: a group whose only candidates were tried before takes one of them."""
        if not self.exhausted:
            self.exhausted = True
            for g in self.groups.values():
                if g.status == "pending" and not g.running:
                    g.wake()

    def is_canary(self, item: Item) -> bool:
        g = self.groups.get(groups.group_key(item.spec))
        return bool(g and item.key in g.running)

    async def cached(self, item: Item, row: Any) -> None:
        """A cache hit proves its group, unless it was accepted by hand (its checks failed)."""
        if getattr(row, "status", "") != "verified" or getattr(row, "accepted", False):
            return
        g = await self._group(item)
        if g.status == "pending":
            await self._pass(g, item.key, proof="cached")

    async def finished(self, item: Item, row: Any) -> None:
        """A canary's row: passes, stops or releases its group."""
        g = self.groups.get(groups.group_key(item.spec))
        if g is None or item.key not in g.running:
            return
        g.running.discard(item.key)
        status, reason = getattr(row, "status", ""), getattr(row, "reason", "") or ""
        if status == "verified" and not getattr(row, "accepted", False):
            g.passed.append(item.key)
            if len(g.passed) >= g.need:
                await self._pass(g, item.key, proof="verified")
            return
        if status == "failed" and reason in STOPPING_REASONS and g.status == "pending":
            g.status, g.reason = "failed", getattr(row, "error", "") or reason
            doc = {**g.doc, "status": "failed", "label": g.label, "reason": g.reason, "run": self.run_id,
                   "at": time.time(), "tried": sorted({*(g.doc.get("tried") or []), item.key})}
            await asyncio.to_thread(self.store.write, g.key, doc)
            log.warning("canary failed for %s: %s; the group's other items are not submitted", g.label, g.reason)
        # passed, stopped, or released (the canary said nothing about the group): the waiters decide again
        g.wake()

    async def _pass(self, g: _Group, key: str, proof: str) -> None:
        g.status = "passed"
        doc = {"status": "passed", "label": g.label, "keys": [*g.passed] or [key], "proof": proof,
               "tried": g.doc.get("tried") or [], "run": self.run_id, "at": time.time()}
        await asyncio.to_thread(self.store.write, g.key, doc)
        g.wake()

    def stopped(self) -> list[dict[str, Any]]:
        """The groups this run stopped: one entry each, for the summary's one line per group."""
        return [{"group": g.key, "label": g.label, "reason": g.reason, "skipped": g.skipped}
                for g in self.groups.values() if g.status == "failed"]
