"""storage.py against real stores: local files, memory:// and S3 (moto's server over HTTP)."""

from __future__ import annotations

import asyncio
import os
import textwrap
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import AsyncIterator

import fsspec
import httpx
import pytest

from tests.s3 import SECRET_KEY, s3, s3_server  # noqa: F401  (pytest fixtures)
from vidbatch import inputs, storage
from vidbatch.errors import ConfigError, StorageError
from vidbatch.manifest import load_manifest
from vidbatch.redact import redact

MB = 1024 * 1024


def _mem(name: str) -> str:
    return f"memory://vb-{uuid.uuid4().hex[:8]}/{name}"


# -- options ------------------------------------------------------------------------
def test_env_options_reach_s3fs(s3) -> None:
    fs, path = storage.fs_for("s3://vb-in/a.bin")
    assert fs.endpoint_url == s3.url and path == "vb-in/a.bin"
    assert storage.merged_options("s3://vb-in/a", None)["client_kwargs"] == {"region_name": "us-east-1"}
    fs.pipe_file("vb-in/a.bin", b"abc")
    assert s3.client().get_object(Bucket="vb-in", Key="a.bin")["Body"].read() == b"abc"

    # the manifest wins over the environment, wherever it puts the endpoint
    # (s3fs fails on an endpoint both at top level and in client_kwargs)
    for opts in ({"endpoint_url": "http://127.0.0.1:1"}, {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}):
        merged = storage.merged_options("s3://vb-in/a", opts)
        assert merged["endpoint_url"] == "http://127.0.0.1:1"
        assert "endpoint_url" not in merged.get("client_kwargs", {})
    # explicit credentials: no profile lookup from AWS_PROFILE
    os.environ["AWS_PROFILE"] = "nope"
    try:
        assert "profile" not in storage.merged_options("s3://x/y", {"key": "k", "secret": "s3cr3t-value"})
        assert storage.merged_options("s3://x/y", None)["profile"] == "nope"
    finally:
        del os.environ["AWS_PROFILE"]
    # local and memory stores get nothing S3-ish
    assert storage.merged_options("/tmp/x", None) == {}
    assert storage.merged_options("memory://x", None) == {}


def test_secret_options_are_redacted(s3) -> None:
    storage.merged_options("s3://vb-in/x", {"key": "AKIAEXAMPLE", "secret": "manifest-secret-9f8e7d"})
    assert "manifest-secret-9f8e7d" not in redact("boom: manifest-secret-9f8e7d")
    assert SECRET_KEY not in redact(f"env {SECRET_KEY}")  # the environment's secret too


# -- fingerprints ---------------------------------------------------------------------
def _fp(url: str) -> str:
    fs, path = storage.fs_for(url)
    return storage.fingerprint(fs.info(path), fs, path)


def test_fingerprint_changes_with_content_everywhere(s3, tmp_path: Path) -> None:
    local = tmp_path / "a.mp4"
    local.write_bytes(b"A" * 100)
    os.utime(local, (1_000_000, 1_000_000))
    before = _fp(str(local))
    local.write_bytes(b"B" * 100)  # same size, new content, new mtime
    assert before.startswith("mtime:") and _fp(str(local)) != before

    mem = _mem("a.mp4")
    fsspec.filesystem("memory").pipe_file(mem, b"A" * 100)
    before = _fp(mem)
    fsspec.filesystem("memory").pipe_file(mem, b"B" * 100)  # memory has no ETag: hashed
    assert before.startswith("sha256:") and _fp(mem) != before

    s3.client().put_object(Bucket="vb-in", Key="a.mp4", Body=b"A" * 100)
    before = _fp("s3://vb-in/a.mp4")
    assert before.startswith("etag:")
    assert _fp("s3://vb-in/a.mp4") == before  # stable while unchanged
    s3.client().put_object(Bucket="vb-in", Key="a.mp4", Body=b"B" * 100)
    assert _fp("s3://vb-in/a.mp4") != before


# -- presign ----------------------------------------------------------------------------
def test_presigned_get_works_and_expires(s3) -> None:
    s3.client().put_object(Bucket="vb-in", Key="clips/a b.mp4", Body=b"video-bytes")
    url = storage.presign("s3://vb-in/clips/a b.mp4", None, expires=900)
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Amz-Expires"] == ["900"] and query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert SECRET_KEY not in url
    assert "X-Amz-Signature=***" in redact(url)
    resp = httpx.get(url)
    assert resp.status_code == 200 and resp.content == b"video-bytes"
    # each call signs afresh (a resubmission gets a new validity window)
    later = storage.presign("s3://vb-in/clips/a b.mp4", None, expires=10 * 24 * 3600)
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(later).query)["X-Amz-Expires"] == [str(7 * 24 * 3600)]
    # (moto does not enforce expiry; X-Amz-Expires is what AWS checks)
    with pytest.raises(StorageError, match="cannot presign"):
        storage.presign(_mem("x.mp4"))


# -- atomic writes ------------------------------------------------------------------------
def test_open_atomic_s3_final_key_appears_only_when_complete(s3) -> None:
    url = "s3://vb-out/deep/out.bin"
    with storage.open_atomic(url) as fh:
        for _ in range(3):
            fh.write(os.urandom(5 * MB))  # parts go up as we write...
        assert s3.uploads("vb-out"), "a multipart upload is in progress"
        assert s3.keys("vb-out") == []  # ...but nothing is visible yet, under any name
    assert s3.keys("vb-out") == ["deep/out.bin"]
    assert s3.uploads("vb-out") == []
    assert storage.fs_for(url)[0].info("vb-out/deep/out.bin")["size"] == 15 * MB


def test_open_atomic_s3_failure_leaves_nothing(s3) -> None:
    s3.client().put_object(Bucket="vb-out", Key="out.bin", Body=b"old")
    with pytest.raises(RuntimeError, match="network"):
        with storage.open_atomic("s3://vb-out/out.bin") as fh:
            fh.write(os.urandom(9 * MB))
            raise RuntimeError("network dropped")
    # the old object is untouched, no partial object, no orphaned upload
    assert s3.client().get_object(Bucket="vb-out", Key="out.bin")["Body"].read() == b"old"
    assert s3.keys("vb-out") == ["out.bin"] and s3.uploads("vb-out") == []


@pytest.mark.parametrize("store", ["local", "memory", "s3"])
def test_astream_into_every_store(s3, tmp_path: Path, store: str) -> None:
    base = {"local": str(tmp_path / "o"), "memory": _mem("o"), "s3": "s3://vb-out/o"}[store]
    payload = [os.urandom(3 * MB) for _ in range(4)]

    async def chunks(fail: bool = False) -> AsyncIterator[bytes]:
        for c in payload:
            yield c
        if fail:
            raise ConnectionError("truncated")

    async def empty() -> AsyncIterator[bytes]:
        if False:  # pragma: no cover
            yield b""

    url = storage.join(base, "a/b/result.webm")
    assert asyncio.run(storage.astream_into(chunks(), url, None, "k" * 16)) == 12 * MB
    assert storage.read_bytes(url) == b"".join(payload)
    with pytest.raises(ConnectionError):
        asyncio.run(storage.astream_into(chunks(fail=True), storage.join(base, "a/b/broken.webm")))
    with pytest.raises(StorageError, match="empty"):
        asyncio.run(storage.astream_into(empty(), storage.join(base, "a/b/empty.webm")))
    fs, root = storage.fs_for(base)
    assert sorted(p.rsplit("/", 1)[1] for p in fs.find(root)) == ["result.webm"]  # no temp, no partial
    if store == "s3":
        assert s3.uploads("vb-out") == []


def test_promote_s3_is_copy_then_delete(s3) -> None:
    final = "s3://vb-out/x/final.mp4"
    tmp = storage.tmp_url_for(final, "abc")
    assert tmp.startswith("s3://vb-out/x/.vidbatch-tmp-abc")
    fs, tmp_path = storage.fs_for(tmp)
    fs.pipe_file(tmp_path, b"payload")
    assert s3.keys("vb-out") == [tmp_path.split("/", 1)[1]]  # the final name is not there while writing
    storage.promote(tmp, final)
    assert s3.keys("vb-out") == ["x/final.mp4"]
    assert storage.read_bytes(final) == b"payload"


def test_promote_local_and_memory(tmp_path: Path) -> None:
    for final in (str(tmp_path / "sub" / "f.bin"), _mem("sub/f.bin")):
        tmp = storage.tmp_url_for(final)
        fs, p = storage.fs_for(tmp)
        fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        fs.pipe_file(p, b"data")
        storage.promote(tmp, final)
        assert storage.read_bytes(final) == b"data" and not storage.exists(tmp)


def test_write_bytes_atomic_and_copy_atomic(s3, tmp_path: Path) -> None:
    storage.write_bytes_atomic("s3://vb-out/state/r.json", b"{}")
    assert s3.keys("vb-out") == ["state/r.json"]
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MB))
    mem = _mem("m.bin")
    fsspec.filesystem("memory").pipe_file(mem, b"memory-bytes")
    storage.copy_atomic(str(big), "s3://vb-out/c/local.bin")                 # local -> S3, streamed
    storage.copy_atomic("s3://vb-out/c/local.bin", "s3://vb-out/c/s3.bin")  # S3 -> S3, server-side
    storage.copy_atomic("s3://vb-out/c/s3.bin", str(tmp_path / "back.bin"))  # S3 -> local
    storage.copy_atomic(mem, "s3://vb-out/c/mem.bin")                       # memory -> S3
    assert (tmp_path / "back.bin").read_bytes() == big.read_bytes()
    assert storage.read_bytes("s3://vb-out/c/mem.bin") == b"memory-bytes"
    assert s3.keys("vb-out", "c/") == ["c/local.bin", "c/mem.bin", "c/s3.bin"]
    assert not [p for p in os.listdir(tmp_path) if p.startswith(storage.TEMP_PREFIX)]


def test_iter_read_is_bounded_on_s3(s3) -> None:
    s3.client().put_object(Bucket="vb-in", Key="v.bin", Body=b"x" * (5 * MB + 7))
    sizes = [len(c) for c in storage.iter_read("s3://vb-in/v.bin", chunk=MB)]
    assert sizes == [MB] * 5 + [7]


# -- cleanup after a killed run ---------------------------------------------------------------
def test_cleanup_temp_aborts_uploads_and_removes_temp_keys(s3, tmp_path: Path) -> None:
    client = s3.client()
    # what a killed run leaves: an incomplete multipart upload and a temp key
    up = client.create_multipart_upload(Bucket="vb-out", Key="run/a/out.webm")
    client.upload_part(Bucket="vb-out", Key="run/a/out.webm", UploadId=up["UploadId"], PartNumber=1, Body=b"x" * MB)
    client.put_object(Bucket="vb-out", Key="run/a/.vidbatch-tmp-123-456-out.webm", Body=b"partial")
    client.put_object(Bucket="vb-out", Key="run/a/kept.webm", Body=b"done")
    other = client.create_multipart_upload(Bucket="vb-out", Key="elsewhere/x.webm")  # not under the prefix

    # the flow's per-run call: uploads only, no listing of the outputs
    assert storage.cleanup_temp("s3://vb-out/run", None, older_than_seconds=0, temp_keys=False) == {
        "temp_files": 0, "multipart_uploads": 1}
    client.create_multipart_upload(Bucket="vb-out", Key="run/a/again.webm")
    counts = storage.cleanup_temp("s3://vb-out/run", None, older_than_seconds=0)
    assert counts == {"temp_files": 1, "multipart_uploads": 1}
    assert s3.keys("vb-out") == ["run/a/kept.webm"]
    assert [u["UploadId"] for u in s3.uploads("vb-out")] == [other["UploadId"]]
    assert storage.cleanup_temp("s3://vb-out/missing/prefix", None, 0) == {"temp_files": 0, "multipart_uploads": 0}

    # local: a fresh temp file may belong to a run in progress, an old one does not
    (tmp_path / "o").mkdir()
    fresh = tmp_path / "o" / ".vidbatch-tmp-aaa-bbb-x.webm"
    fresh.write_bytes(b"x")
    assert storage.cleanup_temp(str(tmp_path), None, older_than_seconds=3600)["temp_files"] == 0
    os.utime(fresh, (time.time() - 7200, time.time() - 7200))
    assert storage.cleanup_temp(str(tmp_path), None, older_than_seconds=3600)["temp_files"] == 1
    assert not fresh.exists()


# -- output templates ---------------------------------------------------------------------------
def _put_tree(s3) -> None:
    client = s3.client()
    for key in ("lib/2026/a/clip.mp4", "lib/2026/b/clip.mp4", "lib/2026/b/c/deep.mp4", "lib/2026/notes.txt"):
        client.put_object(Bucket="vb-in", Key=key, Body=f"fake video {key}".encode())


def _manifest(tmp_path: Path, output: str, videos: str = "s3://vb-in/lib/2026/**/*.mp4") -> str:
    path = tmp_path / f"m-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: tree
        output: {output}
        defaults: {{provider: local, format: webm}}
        videos:
          - {videos}
        """))
    return str(path)


def test_rel_and_parent_templates_on_s3(s3, tmp_path: Path) -> None:
    _put_tree(s3)
    m = load_manifest(_manifest(tmp_path, "s3://vb-out/mirror/{rel}.{ext}"))
    assert [i.output for i in inputs.plan_items(m)] == [
        "s3://vb-out/mirror/a/clip.webm", "s3://vb-out/mirror/b/c/deep.webm", "s3://vb-out/mirror/b/clip.webm",
    ]
    assert inputs.state_root(m) == "s3://vb-out/mirror/.vidbatch"
    m = load_manifest(_manifest(tmp_path, "s3://vb-out/by-folder/{parent}-{stem}.{ext}"))
    assert sorted(i.output for i in inputs.plan_items(m)) == [
        "s3://vb-out/by-folder/a-clip.webm", "s3://vb-out/by-folder/b-clip.webm", "s3://vb-out/by-folder/c-deep.webm",
    ]


def test_colliding_or_escaping_templates_are_refused_at_validate(s3, tmp_path: Path) -> None:
    _put_tree(s3)
    m = load_manifest(_manifest(tmp_path, "s3://vb-out/flat/{stem}.{ext}"))
    with pytest.raises(ConfigError, match=r"two inputs would write s3://vb-out/flat/clip.webm"):
        inputs.plan_items(m)
    with pytest.raises(ConfigError, match=r"\.\."):
        load_manifest(_manifest(tmp_path, "s3://vb-out/flat/{parent}/../../{stem}.{ext}"))
    with pytest.raises(ConfigError, match=r"\.\."):
        load_manifest(_manifest(tmp_path, str(tmp_path / "out" / ".." / "{stem}.{ext}")))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_handle_left_after_its_record_is_swept_and_nothing_else(where: str, request: pytest.FixtureRequest,
                                                                  tmp_path: Path) -> None:
    """A kill between the record write and the handle delete leaves a handle the next run sweeps."""
    from vidbatch.state import StateStore

    if where == "s3":
        request.getfixturevalue("s3")
        root = "s3://vb-out/sweep/.vidbatch"
    else:
        root = str(tmp_path / ".vidbatch")
    store = StateStore(root, {})
    job = {"provider": "fal", "request_id": "req-1", "urls": {}, "submitted_at": 1.0, "extra": {}}
    store.write_handle("aa11", job, 1)  # done: its record names the same job -> swept
    store.write_record("aa11", {"status": "verified", "request_id": "req-1"})
    store.write_handle("bb22", {**job, "request_id": "req-2"}, 1)  # a rerun (--force) of a done item: kept
    store.write_record("bb22", {"status": "verified", "request_id": "req-old"})
    store.write_intent("cc33", "fal", 1)  # an intent: may have created a job -> kept
    store.write_record("cc33", {"status": "verified", "request_id": "req-3"})
    store.write_handle("dd44", {**job, "request_id": "req-4"}, 1)  # in flight, no record: kept
    assert store.sweep_done_handles() == 1
    assert store.read_handle("aa11") is None
    assert all(store.read_handle(k) for k in ("bb22", "cc33", "dd44"))
    assert store.sweep_done_handles() == 0
