"""Write beside, verify, promote; quarantine, accept, reject -- on a local store and on S3 (moto)."""

from __future__ import annotations

import json
import posixpath
from pathlib import Path

import pytest

from tests.s3 import s3, s3_server  # noqa: F401  (fixtures)
from vidbatch import storage
from vidbatch.errors import ConfigError
from vidbatch.quarantine import Quarantine, promote_outputs, staging_url
from vidbatch.state import StateStore

KEY = "ab12cd34" + "0" * 56


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "out")
    request.getfixturevalue("s3")
    return "s3://vb-out/run"


def _put(url: str, data: bytes) -> None:
    storage.write_bytes_atomic(url, data, {})


def _get(url: str) -> bytes | None:
    return storage.read_bytes(url, {})


def _quarantined(root: str) -> tuple[Quarantine, list[str], list[str]]:
    """An earlier good output at the final paths, and a new result staged beside them, quarantined."""
    state = StateStore(storage.join(root, ".vidbatch"), {})
    q = Quarantine(state)
    finals = [storage.join(root, "c00.webm"), storage.join(root, "c00.mask.webm")]
    for final in finals:
        _put(final, b"old good " + final.encode())
    staged = [staging_url(f, KEY) for f in finals]
    for url in staged:
        _put(url, b"new paid " + url.encode())
    state.write_handle(KEY, {"provider": "fal", "request_id": "req-1"}, 1)
    q.put(KEY, staged, finals, reason="output failed verification: alpha: no transparency",
          facts={"output": {"ok": False}}, row={"input": "in.mp4", "key": KEY, "status": "failed", "cost_usd": 0.1},
          handle={"provider": "fal", "request_id": "req-1"})
    state.delete_handle(KEY)
    return q, finals, staged


def test_quarantine_keeps_the_old_output_and_the_new_result(root):
    q, finals, staged = _quarantined(root)
    for final in finals:
        assert _get(final) == b"old good " + final.encode()  # untouched
    for url in staged:
        assert not storage.exists(url, {})  # moved, not copied
    doc = q.read(KEY)
    assert doc is not None and doc["reason"].startswith("output failed verification")
    assert [f["final"] for f in doc["files"]] == finals
    for f, url in zip(doc["files"], staged):
        assert f["url"].startswith(storage.join(q.state.root, "quarantine", KEY) + "/")
        assert _get(f["url"]) == b"new paid " + url.encode()
    assert q.keys() == [KEY]
    assert q.resolve([KEY[:8]]) == [KEY]
    with pytest.raises(ConfigError, match="not quarantined"):
        q.resolve(["ffffffff"])
    with pytest.raises(ConfigError, match="at least 8"):
        q.resolve(["ab12"])


def test_accept_promotes_and_records_without_a_provider(root):
    q, finals, staged = _quarantined(root)
    record = q.accept(KEY)
    for final, url in zip(finals, staged):
        assert _get(final) == b"new paid " + url.encode()
    stored = q.state.read_record(KEY)
    assert stored is not None and stored["accepted"] is True and stored["status"] == "verified"
    assert stored["outputs"] == finals and record["outputs"] == finals
    assert any("accepted although verification failed" in w for w in stored["warnings"])
    assert q.read(KEY) is None and q.keys() == []
    assert q.state.read_handle(KEY) is None


def test_reject_deletes_the_result_and_the_handle(root):
    q, finals, _ = _quarantined(root)
    q.state.write_handle(KEY, {"provider": "fal", "request_id": "req-1"}, 1)  # as a kill could leave it
    doc = q.reject(KEY)
    assert len(doc["files"]) == 2
    for f in doc["files"]:
        assert not storage.exists(f["url"], {})
    for final in finals:
        assert _get(final) == b"old good " + final.encode()
    assert q.read(KEY) is None and q.state.read_handle(KEY) is None and q.state.read_record(KEY) is None


def test_promote_replaces_the_final_path(root):
    final = storage.join(root, "a.mp4")
    _put(final, b"old")
    staged = staging_url(final, KEY)
    assert posixpath.dirname(staged) == posixpath.dirname(final)  # beside it, on the same store
    assert posixpath.basename(staged).startswith(storage.TEMP_PREFIX)
    _put(staged, b"new verified")
    assert promote_outputs([staged], [final], {}) == [final]
    assert _get(final) == b"new verified" and not storage.exists(staged, {})


def test_damaged_quarantine_document_is_an_error(tmp_path):
    state = StateStore(str(tmp_path / ".vidbatch"), {})
    q = Quarantine(state)
    _put(q.doc_url(KEY), b"{not json")
    with pytest.raises(Exception, match="damaged"):
        q.read(KEY)
    _put(q.doc_url(KEY), json.dumps({"files": []}).encode())
    assert q.read(KEY) == {"files": []}
