"""Write beside, verify, promote -- and quarantine a paid result that fails.

A result never goes straight to its final path. It is downloaded to a staging
key beside the final one (``staging_url``), verified there, and then either

- promoted (``promote_outputs``): an atomic rename (local) or a server-side
  copy (S3) over the final path, so an earlier good output is replaced only by
  a verified one; or
- quarantined (``quarantine_outputs``): moved to the state store, kept with
  the facts and the reason it failed, and the earlier output (if any) is left
  as it was. The user paid for it, so it is never deleted by vidbatch:
  ``vidbatch accept`` promotes it as is, ``vidbatch reject`` deletes it so the
  next run submits again.

Layout under the state root (next to ``records/`` and ``handles/``)::

    quarantine/<key>/<output file name>     the result as the provider returned it (video, mask)
    quarantine/<key>/quarantine.json        what it is: final paths, facts, reason, the job

The document is written after the files are in place and is the quarantine's
truth: a rerun that finds it reports the item as quarantined without
downloading the same result again. The job's handle moves into it (the job is
done), so nothing re-attaches to a result already judged.
"""

from __future__ import annotations

import json
import posixpath
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from vidbatch import storage
from vidbatch.errors import ConfigError, StorageError
from vidbatch.state import StateStore

DOC_NAME = "quarantine.json"


def staging_url(final_url: str, key: str) -> str:
    """Where a result is written before it is verified: a hidden sibling of its final path."""
    return storage.tmp_url_for(final_url, key)


def _move(src: str, dst: str, options: Mapping[str, Any]) -> None:
    """Move one file within a store (atomic rename / server-side copy), or across stores."""
    if storage.protocol_of(src) == storage.protocol_of(dst):
        storage.promote(src, dst, options)
        return
    storage.copy_atomic(src, dst, options)
    storage.delete(src, options)


def promote_outputs(staged: Iterable[str], finals: Iterable[str], options: Mapping[str, Any]) -> list[str]:
    """Make verified results final: each staged file replaces its final path atomically.

    The one step that turns a verified result into the output readers see (and
    what a cache hit later trusts); returns the final URLs.
    """
    done: list[str] = []
    for src, dst in zip(staged, finals):
        _move(src, dst, options)
        done.append(dst)
    return done


def discard_staged(staged: Iterable[str], options: Mapping[str, Any]) -> None:
    """Remove staging keys of a result that was never verified (a download that failed halfway)."""
    for url in staged:
        try:
            storage.delete(url, options)
        except OSError:
            pass


@dataclass(frozen=True)
class Quarantine:
    """The quarantine area of one state store."""

    state: StateStore

    @property
    def options(self) -> Mapping[str, Any]:
        return self.state.storage_options

    def folder(self, key: str) -> str:
        return storage.join(self.state.root, "quarantine", key)

    def doc_url(self, key: str) -> str:
        return storage.join(self.folder(key), DOC_NAME)

    def file_url(self, key: str, final_url: str) -> str:
        return storage.join(self.folder(key), posixpath.basename(final_url.split("?")[0]))

    # -- reading ------------------------------------------------------------------
    def read(self, key: str) -> dict[str, Any] | None:
        """The quarantine document of an item, or None when nothing of it is quarantined."""
        url = self.doc_url(key)
        try:
            data = storage.read_bytes(url, self.options)
        except OSError as exc:
            raise StorageError(f"cannot read {url}: {exc}") from None
        if data is None:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            raise StorageError(f"{url} is damaged (not JSON); inspect the folder, then remove the document "
                               "or run vidbatch reject for this item") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("files"), list):
            raise StorageError(f"{url} is damaged (no file list); inspect the folder, then remove the document")
        return doc

    def keys(self) -> list[str]:
        """Keys of every quarantined item (one listing of the quarantine folder)."""
        fs, path = storage.fs_for(storage.join(self.state.root, "quarantine"), self.options)
        try:
            found = fs.find(path)
        except (FileNotFoundError, OSError):
            return []
        out = set()
        for f in found:
            parts = f.rstrip("/").split("/")
            if len(parts) >= 2 and parts[-1] == DOC_NAME:
                out.add(parts[-2])
        return sorted(out)

    def resolve(self, given: Iterable[str]) -> list[str]:
        """Full keys for keys or key prefixes (at least 8 characters) of quarantined items."""
        known = self.keys()
        out: list[str] = []
        for k in given:
            k = k.strip()
            matches = [q for q in known if q.startswith(k)] if len(k) >= 8 else []
            if len(matches) != 1:
                why = "matches several quarantined items; give more of it" if matches else "is not quarantined"
                if len(k) < 8:
                    why = "is too short; give at least 8 characters of the key"
                raise ConfigError(f"key {k!r} {why} (see the report's quarantine column)")
            out.append(matches[0])
        return out

    # -- writing ------------------------------------------------------------------
    def put(self, key: str, staged: list[str], finals: list[str], *, reason: str, facts: Mapping[str, Any],
            row: Mapping[str, Any], handle: Mapping[str, Any] | None) -> dict[str, Any]:
        """Move a failed result from its staging keys into quarantine and describe it there.

        Any earlier quarantine of the item is replaced (the document last, so a
        reader sees the old document or the new one, never files without one).
        """
        files = []
        for src, final in zip(staged, finals):
            dst = self.file_url(key, final)
            _move(src, dst, self.options)
            files.append({"url": dst, "final": final})
        doc = {
            "key": key, "files": files, "reason": reason, "facts": dict(facts), "row": dict(row),
            "handle": dict(handle) if handle else None, "at": time.time(),
        }
        storage.write_bytes_atomic(self.doc_url(key), json.dumps(doc, sort_keys=True, default=str).encode(),
                                   self.options)
        return doc

    def accept(self, key: str) -> dict[str, Any]:
        """Promote a quarantined result to its final paths and record it as verified by acceptance.

        No provider call. Idempotent: a file already promoted by an interrupted
        accept is not looked for again. Returns the record written.
        """
        doc = self.read(key)
        if doc is None:
            raise ConfigError(f"item {key[:12]} is not quarantined")
        for f in doc["files"]:
            if storage.exists(f["url"], self.options):
                _move(f["url"], f["final"], self.options)
            elif not storage.exists(f["final"], self.options):
                raise StorageError(f"quarantined file {f['url']} is missing and was never promoted; "
                                   f"run vidbatch reject --key {key[:12]} to submit the item again")
        row = dict(doc.get("row") or {})
        record = {
            **row, "status": "verified", "accepted": True, "error": None, "reason": None,
            "outputs": [f["final"] for f in doc["files"]], "verify": doc.get("facts") or row.get("verify") or {},
            "warnings": [*(row.get("warnings") or []), f"accepted although verification failed: {doc.get('reason')}"],
            "accepted_at": time.time(),
        }
        self.state.write_record(key, record)  # the item is done from here on
        self._clear(key, doc)
        return record

    def reject(self, key: str) -> dict[str, Any]:
        """Delete a quarantined result and its job handle: the next run submits the item again."""
        doc = self.read(key)
        if doc is None:
            raise ConfigError(f"item {key[:12]} is not quarantined")
        for f in doc["files"]:
            storage.delete(f["url"], self.options)
        self._clear(key, doc)
        return doc

    def _clear(self, key: str, doc: Mapping[str, Any]) -> None:
        # a handle a kill left between quarantine and its delete must not re-attach later
        self.state.delete_handle(key)
        storage.delete(self.doc_url(key), self.options)
        fs, path = storage.fs_for(self.folder(key), self.options)
        try:
            fs.rm(path, recursive=True)
        except (FileNotFoundError, OSError):
            pass  # an empty local folder or a prefix with nothing left on S3


def summary_entry(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The report's ``quarantine`` value for an item: where the result is, why, and the facts."""
    return {
        "urls": [f["url"] for f in doc.get("files", [])],
        "outputs": [f["final"] for f in doc.get("files", [])],
        "reason": doc.get("reason"),
        "facts": doc.get("facts") or {},
    }


def select(m: Any, keys: Iterable[str] | None, every: bool) -> tuple[Quarantine, list[str]]:
    """The quarantine of a manifest's state store and the items a command names:
    ``keys`` (full keys or prefixes) or, with ``every``, each quarantined item the
    manifest plans now."""
    from vidbatch import inputs

    keys = list(keys or [])
    if bool(keys) == bool(every):
        raise ConfigError("name the items: --key KEY (repeatable; the report's key, 8 characters or more) or --all")
    q = Quarantine(StateStore(inputs.state_root(m), dict(m.storage_options)))
    if keys:
        return q, q.resolve(keys)
    held = set(q.keys())
    planned = [item.key for item in inputs.iter_items(m) if item.key in held] if held else []
    return q, planned
