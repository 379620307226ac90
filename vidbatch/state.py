"""Run state on the output store: item records, durable job handles, temp cleanup.

Layout under the state root (``{output root}/.vidbatch`` unless ``state:`` says
otherwise), shared by every process and worker that runs the manifest::

    records/<k2>/<key>.json   written LAST, after verify: its presence means done
    handles/<k2>/<key>.json   the provider's job handle, written before submit
                              returns (a write-ahead "submitting" intent first),
                              deleted after the record (a kill in between is
                              swept at the next run's start)
    pace.json                 learned job times per provider/operation, so the
                              first jobs of the next run poll economically

Every write is atomic (temp key + promote), so a reader never sees half a file.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Mapping

from vidbatch import storage
from vidbatch.errors import StorageError


@dataclass(frozen=True)
class StateStore:
    root: str
    storage_options: Mapping[str, Any]

    def _url(self, kind: str, key: str) -> str:
        return storage.join(self.root, kind, key[:2], f"{key}.json")

    def _read(self, url: str) -> dict[str, Any] | None:
        try:
            data = storage.read_bytes(url, self.storage_options)
        except OSError as exc:  # e.g. a file where the state folder should be, no permission
            raise StorageError(f"cannot read run state {url}: {exc}") from None
        if not data:
            return None
        try:
            value = json.loads(data)
        except json.JSONDecodeError:
            return None  # a torn write cannot happen (atomic), but never crash on junk
        return value if isinstance(value, dict) else None

    def _delete(self, url: str) -> None:
        try:
            storage.delete(url, self.storage_options)
        except OSError as exc:
            raise StorageError(f"cannot delete run state {url}: {exc}") from None

    def _write(self, url: str, value: Mapping[str, Any]) -> None:
        storage.write_bytes_atomic(url, json.dumps(value, sort_keys=True, default=str).encode(), self.storage_options)

    # -- records: the item is done -----------------------------------------
    def read_record(self, key: str) -> dict[str, Any] | None:
        return self._read(self._url("records", key))

    def write_record(self, key: str, record: Mapping[str, Any]) -> None:
        self._write(self._url("records", key), record)

    def delete_record(self, key: str) -> None:
        self._delete(self._url("records", key))

    # -- handles: a paid job exists ------------------------------------------
    def read_handle(self, key: str) -> dict[str, Any] | None:
        return self._read(self._url("handles", key))

    def write_intent(self, key: str, provider: str, attempt: int, note: str = "",
                     hint: Mapping[str, Any] | None = None) -> None:
        """Write-ahead: we are about to send a submit for this item.

        ``hint`` (``Provider.submit_hint``: never a secret) lets a later run find
        the job this submit may have created, although it stages the input anew.
        """
        body: dict[str, Any] = {"state": "submitting", "provider": provider, "at": time.time(),
                                "attempt": attempt, "note": note}
        if hint:
            body["hint"] = dict(hint)
        self._write(self._url("handles", key), body)

    def write_handle(self, key: str, handle: Mapping[str, Any], attempt: int, note: str = "") -> None:
        self._write(
            self._url("handles", key),
            {"state": "submitted", "handle": dict(handle), "at": time.time(), "attempt": attempt, "note": note},
        )

    def delete_handle(self, key: str) -> None:
        self._delete(self._url("handles", key))

    def sweep_done_handles(self) -> int:
        """Delete the handles of jobs whose item is done; returns how many.

        The record is written before the handle is deleted (its presence means
        done), so a kill between the two leaves a handle that a rerun never
        looks at again (the item is a cache hit). A handle goes only when the
        verified record names the same job; intents and other jobs stay. Handles
        are few (jobs in flight), so this is one listing and a read or two each.
        """
        fs, path = storage.fs_for(self.handles_url(), self.storage_options)
        try:
            files = fs.find(path)
        except (FileNotFoundError, OSError):
            return 0
        swept = 0
        for f in files:
            name = f.rsplit("/", 1)[-1]
            if not name.endswith(".json") or name.startswith("."):
                continue
            key = name[: -len(".json")]
            handle, record = self.read_handle(key), self.read_record(key)
            if not handle or not record or handle.get("state") != "submitted" or record.get("status") != "verified":
                continue
            job = (handle.get("handle") or {}).get("request_id")
            if job and job == record.get("request_id"):
                self.delete_handle(key)
                swept += 1
        return swept

    # -- pace: learned job times, a hint for the next run's poll schedule -------
    def read_pace(self) -> dict[str, Any]:
        """``{"<provider>/<operation>": {"pace": s per s of video, "spread": rel., "n": k}}`` (may be empty)."""
        return self._read(storage.join(self.root, "pace.json")) or {}

    def write_pace(self, pace: Mapping[str, Any]) -> None:
        self._write(storage.join(self.root, "pace.json"), pace)

    def handles_url(self) -> str:
        return storage.join(self.root, "handles")

    def records_url(self) -> str:
        return storage.join(self.root, "records")
