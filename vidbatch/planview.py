"""What ``vidbatch plan`` shows: per item, cache state and estimated cost; totals per provider."""

from __future__ import annotations

from typing import Any

from vidbatch import inputs, pipeline
from vidbatch.errors import InputError
from vidbatch.manifest import Manifest
from vidbatch.redact import redact_url
from vidbatch.run import provider_settings
from vidbatch.providers import registry
from vidbatch.spec import Item
from vidbatch.state import StateStore


def build_plan(m: Manifest, items: list[Item], *, emulator: str | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    state = StateStore(inputs.state_root(m), dict(m.storage_options))
    providers: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    totals: dict[str, dict[str, Any]] = {}
    for item in items:
        name = item.spec.provider
        if name not in providers:
            providers[name] = registry.create(name, provider_settings(m, name, emulator))
        provider = providers[name]
        rec = state.read_record(item.key)
        cached = bool(rec and rec.get("status") == "verified")
        usd: float | None = None
        note = ""
        try:
            media = pipeline.probe_input(item)
            cost = provider.estimate(item.spec, media)
            usd, note = cost.usd, cost.basis
        except InputError as exc:
            note = f"input problem: {exc}"
        t = totals.setdefault(name, {"items": 0, "to_run": 0, "cached": 0, "estimate_usd": 0.0, "note": ""})
        t["items"] += 1
        t["cached"] += cached
        t["to_run"] += not cached
        if not cached:
            if usd is None:
                t["estimate_usd"] = None if t["estimate_usd"] in (None, 0.0) else t["estimate_usd"]
                t["note"] = note or "no published price"
            elif t["estimate_usd"] is not None:
                t["estimate_usd"] = round(t["estimate_usd"] + usd, 6)
        rows.append({
            "input": redact_url(item.url), "key": item.key, "provider": name, "operation": item.spec.operation,
            "model": item.spec.model, "format": item.spec.format, "output": item.output, "mask": item.mask_output,
            "cached": cached, "estimate_usd": usd, "basis": note,
        })
    return rows, totals
