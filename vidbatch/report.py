"""The per-item report: one row per item, versioned schema, JSONL next to the outputs.

Schema version 1 (``REPORT_SCHEMA_VERSION``); every row has every field:

| field        | type            | meaning                                                  |
|--------------|-----------------|----------------------------------------------------------|
| schema       | int             | report schema version (1)                                |
| run_id       | str             | the run that wrote the row                               |
| manifest     | str             | the manifest's ``name``                                  |
| input        | str             | input URL (signatures redacted)                          |
| key          | str             | item key (sha256 of settings + input fingerprint)        |
| status       | str             | ``verified`` / ``failed`` / ``skipped``                  |
| cached       | bool            | true when a previous run's verified record was reused     |
| outputs      | list[str]       | output URLs (video first, then mask)                     |
| provider     | str             | provider name                                            |
| operation    | str             | ``remove-background`` / ``upscale``                      |
| model        | str             | model as the provider names it                           |
| params       | dict            | normalized settings + native params                      |
| request_id   | str or null     | the provider's job id                                    |
| error        | str or null     | one-line reason when failed / skipped                    |
| reason       | str or null     | machine-readable reason class (e.g. ``budget``, ``auth``)|
| cost_usd     | float or null   | actual cost where reported, else the estimate            |
| timings      | dict[str,float] | seconds per stage (stage, submit, poll, download, verify, total) |
| verify       | dict            | the facts checked (frames, fps, size, alpha, ...)        |
| metrics      | dict[str,float] | quality metrics                                          |
| warnings     | list[str]       | thresholds crossed with ``on_fail: warn``; notes          |
| finished_at  | str             | ISO-8601 UTC                                              |
| accepted     | bool            | verified by the user's acceptance, not by its checks      |
| quarantine   | dict or null    | a paid result held back: urls, outputs, reason, facts     |
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, Iterable, Literal

from pydantic import BaseModel, Field

from vidbatch import storage
from vidbatch.redact import redact, redact_url

REPORT_SCHEMA_VERSION = 1
Status = Literal["verified", "failed", "skipped"]


class ReportRow(BaseModel):
    schema_: int = Field(default=REPORT_SCHEMA_VERSION, alias="schema")
    run_id: str = ""
    manifest: str = ""
    input: str
    key: str
    status: Status
    cached: bool = False
    outputs: list[str] = Field(default_factory=list)
    provider: str
    operation: str
    model: str
    params: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = None
    error: str | None = None
    reason: str | None = None
    cost_usd: float | None = None
    timings: dict[str, float] = Field(default_factory=dict)
    verify: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    finished_at: str = Field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    accepted: bool = False
    quarantine: dict[str, Any] | None = None

    model_config = {"populate_by_name": True, "protected_namespaces": ()}

    def safe(self) -> dict[str, Any]:
        """The row as JSON-ready data, with every secret and signature removed."""
        data = self.model_dump(by_alias=True, mode="json")
        data["input"] = redact_url(data["input"])
        data["outputs"] = [redact_url(o) for o in data["outputs"]]
        if data["error"]:
            data["error"] = redact(data["error"])
        if data["quarantine"]:
            q = data["quarantine"]
            q["urls"] = [redact_url(u) for u in q.get("urls") or []]
            q["outputs"] = [redact_url(u) for u in q.get("outputs") or []]
        return json.loads(redact(json.dumps(data)))


def to_jsonl(rows: Iterable[ReportRow]) -> bytes:
    return b"".join(json.dumps(r.safe(), sort_keys=True).encode() + b"\n" for r in rows)


def write_jsonl(url: str, rows: Iterable[ReportRow], storage_options: dict[str, Any] | None = None) -> None:
    storage.write_bytes_atomic(url, to_jsonl(rows), storage_options)


def read_jsonl(url: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    data = storage.read_bytes(url, storage_options) or b""
    return [json.loads(line) for line in data.splitlines() if line.strip()]


def summarize(rows: Iterable[ReportRow]) -> dict[str, Any]:
    total = verified = failed = skipped = cached = quarantined = 0
    cost = 0.0
    for r in rows:
        total += 1
        verified += r.status == "verified"
        failed += r.status == "failed"
        skipped += r.status == "skipped"
        cached += r.cached
        quarantined += r.quarantine is not None
        cost += r.cost_usd or 0.0
    return {
        "items": total, "verified": verified, "failed": failed, "skipped": skipped,
        "cached": cached, "quarantined": quarantined, "cost_usd": round(cost, 4),
    }
