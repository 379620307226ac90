"""``vidbatch status``: what the runs of a manifest have left, read from the shared state.

Nothing is run or written. Each planned item is, in this order of precedence:

* **done**         its record exists (``records/``: written last, after verify)
* **in flight**    a job handle exists (``handles/``): submitted, or a submit in progress
                   (``submitting``: the write-ahead intent of a submit that has not returned)
* **failed**       the last report (or a running backfill's shard report) says failed
* **not started**  none of these

Expanding the manifest stats every input (as ``vidbatch plan`` does); the state
folders are listed once, not probed item by item, so 100k items cost two listings.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Mapping

from vidbatch import handoff, inputs, storage
from vidbatch.manifest import Manifest
from vidbatch.state import StateStore

STATES = ("done", "in_flight", "failed", "not_started")


@dataclass
class ItemStatus:
    input: str
    key: str
    state: str
    provider: str
    detail: str = ""
    request_id: str | None = None
    age_seconds: float | None = None


@dataclass
class Status:
    manifest: str
    state_root: str
    report: str
    report_found: bool
    counts: dict[str, int] = field(default_factory=lambda: {s: 0 for s in STATES})
    items: list[ItemStatus] = field(default_factory=list)
    backfill: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _keys_under(url: str, opts: Mapping[str, Any]) -> set[str]:
    """Item keys of the ``<k2>/<key>.json`` files under ``url`` (temp files of atomic writes skipped)."""
    fs, path = storage.fs_for(url, opts)
    try:
        found = fs.find(path)
    except (FileNotFoundError, OSError):
        return set()
    keys = set()
    for p in found:
        name = posixpath.basename(p)
        if name.endswith(".json") and not name.startswith(".vidbatch-tmp-"):
            keys.add(name[: -len(".json")])
    return keys


def _report_rows(url: str, opts: Mapping[str, Any]) -> Iterable[dict[str, Any]]:
    data = storage.read_bytes(url, opts)
    for line in (data or b"").splitlines():
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def latest_backfill(state_root: str, opts: Mapping[str, Any]) -> dict[str, Any] | None:
    """The newest ``shards/<run>/plan.json`` (run ids sort by time), if any."""
    fs, path = storage.fs_for(storage.join(state_root, "shards"), opts)
    try:
        runs = sorted(p for p in fs.ls(path, detail=False))
    except (FileNotFoundError, OSError):
        return None
    for run in reversed(runs):
        data = storage.read_bytes(storage.join(state_root, "shards", posixpath.basename(run), "plan.json"), opts)
        if data:
            try:
                return json.loads(data)
            except json.JSONDecodeError:
                continue
    return None


def compute(m: Manifest, *, list_items: bool = True) -> Status:
    opts = dict(m.storage_options)
    root = inputs.state_root(m)
    store = StateStore(root, opts)
    report = handoff.report_base(m) + ".jsonl"
    st = Status(manifest=m.name, state_root=root, report=report, report_found=storage.exists(report, opts))

    done = _keys_under(store.records_url(), opts)
    handles = _keys_under(store.handles_url(), opts)
    failed: dict[str, str] = {}
    for row in _report_rows(report, opts):
        if row.get("status") in ("failed", "skipped") and row.get("key"):
            failed[row["key"]] = row.get("error") or row.get("status", "")
    bf = latest_backfill(root, opts)
    if bf:
        merged = 0
        for shard in bf.get("shards", []):
            rows = list(_report_rows(shard.get("report", ""), opts)) if shard.get("report") else []
            merged += not rows
            for row in rows:  # a shard report exists only until the backfill merges it
                if row.get("status") in ("failed", "skipped") and row.get("key"):
                    failed[row["key"]] = row.get("error") or row.get("status", "")
        st.backfill = {"run": bf.get("run"), "created_at": bf.get("created_at"), "items": bf.get("items"),
                       "shards": len(bf.get("shards", []))}

    now = time.time()
    for item in inputs.iter_items(m):
        provider = item.spec.provider
        if item.key in done:
            state, detail, rid, age = "done", "", None, None
        elif item.key in handles:
            h = store.read_handle(item.key) or {}
            state = "in_flight"
            rid = (h.get("handle") or {}).get("request_id")
            detail = "submitted" if h.get("state") == "submitted" else "submitting (unconfirmed)"
            age = round(now - float(h["at"]), 1) if h.get("at") else None
        elif item.key in failed:
            state, detail, rid, age = "failed", failed[item.key], None, None
        else:
            state, detail, rid, age = "not_started", "", None, None
        st.counts[state] += 1
        if list_items and state != "done":
            st.items.append(ItemStatus(item.url, item.key, state, provider, detail, rid, age))
    return st
