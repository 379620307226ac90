"""Settings groups, ``--sample`` selection and the canary gate's decisions (state on a local store)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from vidbatch.canary import CanaryGate, CanaryStore
from vidbatch.groups import group_key, group_label, sample
from vidbatch.report import ReportRow
from vidbatch.spec import Item, JobSpec
from vidbatch.state import StateStore

FAL = JobSpec(provider="fal", operation="remove-background", model="General Use (Light)", format="webm")
FAL_GREEN = JobSpec(provider="fal", operation="remove-background", model="General Use (Light)", format="webm",
                    background="#00ff00")
FAL_BLUE = JobSpec(provider="fal", operation="remove-background", model="General Use (Light)", format="webm",
                   background="#0000ff")
SCN = JobSpec(provider="scenario", operation="remove-background", model="General Use (Light)", format="webm")


def _item(i: int, spec: JobSpec) -> Item:
    return Item(url=f"in/{i}.mp4", fingerprint=str(i), size=1, spec=spec, key=f"{i:02d}" + "k" * 62,
                output=f"out/{i}.webm", index=i)


def _row(item: Item, status: str, reason: str | None = None, accepted: bool = False) -> ReportRow:
    return ReportRow(input=item.url, key=item.key, status=status, provider=item.spec.provider,
                     operation=item.spec.operation, model=item.spec.model, reason=reason,
                     error=f"{reason} happened" if reason else None, accepted=accepted)


def test_group_key_by_settings():
    assert group_key(FAL_GREEN) == group_key(FAL_BLUE)  # the background kind, not its colour
    assert group_key(FAL) != group_key(FAL_GREEN) != group_key(SCN)
    assert "fal remove-background 'General Use (Light)' webm transparent" == group_label(FAL)


def test_sample_spreads_over_groups():
    items = [_item(i, FAL) for i in range(5)] + [_item(5 + i, SCN) for i in range(2)]
    assert [i.index for i in sample(items, 2)] == [0, 5]
    assert [i.index for i in sample(items, 3)] == [0, 1, 5]
    assert [i.index for i in sample(items, 5)] == [0, 1, 2, 5, 6]
    assert sample(items, 0) == []
    assert len(sample(items, 100)) == 7


@pytest.fixture()
def store(tmp_path: Path) -> CanaryStore:
    return CanaryStore(StateStore(str(tmp_path / ".vidbatch"), {}))


def _gate(store: CanaryStore, need: int = 1, run: str = "r1") -> CanaryGate:
    return CanaryGate(store, run, lambda item: 0 if item.spec.provider == "local" else need)


async def test_one_canary_then_the_rest(store):
    gate = _gate(store)
    a, b, c = (_item(i, FAL) for i in range(3))
    assert (await gate.decide(a)).action == "canary"
    waiting = await gate.decide(b)
    assert waiting.action == "wait" and waiting.until is not None and not waiting.until.is_set()
    other = await gate.decide(_item(9, SCN))  # another group is not held up
    assert other.action == "canary"
    await gate.finished(a, _row(a, "verified"))
    assert waiting.until.is_set()
    assert (await gate.decide(b)).action == "go" and (await gate.decide(c)).action == "go"
    assert store.read(group_key(FAL))["status"] == "passed"
    # a later run (or another shard) reads the passed group: no canary again
    assert (await _gate(store, run="r2").decide(_item(4, FAL))).action == "go"


async def test_failed_canary_stops_its_group_only(store):
    gate = _gate(store)
    a, b = _item(0, FAL), _item(1, FAL)
    s = _item(5, SCN)
    assert (await gate.decide(a)).action == "canary"
    assert (await gate.decide(s)).action == "canary"
    waiting = await gate.decide(b)
    await gate.finished(a, _row(a, "failed", "verify"))
    assert waiting.until.is_set()
    skip = await gate.decide(b)
    assert skip.action == "skip" and skip.reason.startswith("canary:") and "verify happened" in skip.reason
    await gate.finished(s, _row(s, "verified"))
    assert (await gate.decide(_item(6, SCN))).action == "go"
    assert gate.stopped() == [{"group": group_key(FAL), "label": group_label(FAL), "reason": "verify happened",
                               "skipped": 1}]
    doc = store.read(group_key(FAL))
    assert doc["status"] == "failed" and doc["tried"] == [a.key]
    # the next run tries again, with the next item; the one tried waits
    gate2 = _gate(store, run="r2")
    assert (await gate2.decide(a)).action == "wait"
    assert (await gate2.decide(b)).action == "canary"


async def test_tried_item_serves_when_nothing_else_is_left(store):
    a = _item(0, FAL)
    gate = _gate(store)
    assert (await gate.decide(a)).action == "canary"
    await gate.finished(a, _row(a, "failed", "job-failed"))
    gate2 = _gate(store, run="r2")
    waiting = await gate2.decide(a)
    assert waiting.action == "wait"
    gate2.planned_all()
    assert waiting.until.is_set() and (await gate2.decide(a)).action == "canary"


async def test_a_canary_that_proves_nothing_hands_over(store):
    gate = _gate(store)
    a, b = _item(0, FAL), _item(1, FAL)
    await gate.decide(a)
    waiting = await gate.decide(b)
    await gate.finished(a, _row(a, "failed", "input"))  # its own input was unreadable
    assert waiting.until.is_set()
    assert (await gate.decide(b)).action == "canary"
    assert store.read(group_key(FAL)) == {}


async def test_free_providers_and_cache_hits(store):
    gate = _gate(store)
    assert (await gate.decide(_item(0, JobSpec(provider="local", operation="upscale", model="lanczos",
                                                 format="mp4")))).action == "go"
    a = _item(1, FAL)
    await gate.cached(a, _row(a, "verified", accepted=True))  # accepted by hand proves nothing
    assert (await gate.decide(_item(2, FAL))).action == "canary"
    gate2 = _gate(store, run="r2")
    await gate2.cached(a, _row(a, "verified"))
    assert (await gate2.decide(_item(3, FAL))).action == "go"


async def test_two_canaries_when_asked(store):
    gate = _gate(store, need=2)
    items = [_item(i, FAL) for i in range(4)]
    assert [(await gate.decide(i)).action for i in items] == ["canary", "canary", "wait", "wait"]
    await gate.finished(items[0], _row(items[0], "verified"))
    assert (await gate.decide(items[2])).action == "wait"
    await gate.finished(items[1], _row(items[1], "verified"))
    assert (await gate.decide(items[2])).action == "go"


def test_manifest_canary_settings(tmp_path):
    from vidbatch.manifest import Manifest

    def m(**kw):  # noqa: ANN003
        return Manifest.model_validate({"version": 1, "name": "t", "output": "o/{stem}.{ext}", "videos": ["a"], **kw})

    assert m().canary_items("fal", paid=True) == 1 and m().canary_items("local", paid=False) == 0
    assert m(canary=False).canary_items("fal", True) == 0
    assert m(canary={"items": 3}).canary_items("fal", True) == 3
    assert m(canary=True).canary_items("local", False) == 1
    over = m(canary={"items": 2}, providers={"fal": {"canary": False}, "scenario": {"canary": True}})
    assert over.canary_items("fal", True) == 0 and over.canary_items("scenario", True) == 2
