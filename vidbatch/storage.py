"""fsspec helpers: open, stream, presign, fingerprint and promote atomically.

Every path vidbatch touches is an fsspec URL plus ``storage_options``. Bytes move
in bounded chunks (``CHUNK``); nothing reads a whole file into memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import posixpath
import uuid
from typing import Any, AsyncIterator, Iterator, Mapping

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from vidbatch.errors import InputError, StorageError

CHUNK = 8 * 1024 * 1024


def env_storage_options(protocol: str) -> dict[str, Any]:
    """Options taken from the environment for a protocol (S3 endpoint, profile...)."""
    opts: dict[str, Any] = {}
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts.setdefault("client_kwargs", {})["endpoint_url"] = endpoint
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            opts.setdefault("client_kwargs", {})["region_name"] = region
        if os.environ.get("AWS_PROFILE"):
            opts["profile"] = os.environ["AWS_PROFILE"]
        if os.environ.get("VIDBATCH_S3_ANON", "").lower() in ("1", "true", "yes"):
            opts["anon"] = True
    return opts


def protocol_of(url: str) -> str:
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0].lower()


def merged_options(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    opts = env_storage_options(protocol_of(url))
    for k, v in (storage_options or {}).items():
        if isinstance(v, dict) and isinstance(opts.get(k), dict):
            opts[k] = {**opts[k], **v}
        else:
            opts[k] = v
    return opts


def fs_for(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the in-filesystem path for ``url``."""
    try:
        return url_to_fs(url, **merged_options(url, storage_options))
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open {url}: {exc}") from exc


def join(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts if p]])


def is_local(url: str) -> bool:
    return protocol_of(url) in ("file", "local")


def local_path(url: str) -> str:
    return url.split("://", 1)[1] if url.startswith(("file://", "local://")) else url


def iter_read(url: str, storage_options: Mapping[str, Any] | None = None, chunk: int = CHUNK) -> Iterator[bytes]:
    fs, path = fs_for(url, storage_options)
    try:
        with fs.open(path, "rb") as fh:
            while True:
                data = fh.read(chunk)
                if not data:
                    return
                yield data
    except FileNotFoundError as exc:
        raise InputError(f"input not found: {url}") from exc


async def aiter_read(
    url: str, storage_options: Mapping[str, Any] | None = None, chunk: int = CHUNK
) -> AsyncIterator[bytes]:
    """Stream a file's bytes without blocking the event loop."""
    it = iter_read(url, storage_options, chunk)
    sentinel = object()
    while True:
        data = await asyncio.to_thread(next, it, sentinel)
        if data is sentinel:
            return
        yield data  # type: ignore[misc]


def presign(url: str, storage_options: Mapping[str, Any] | None = None, expires: int = 6 * 3600) -> str:
    """A presigned GET URL for an object (S3 and any store whose fs implements sign)."""
    fs, path = fs_for(url, storage_options)
    try:
        return fs.sign(path, expiration=int(expires))
    except NotImplementedError as exc:
        raise StorageError(f"store of {url} cannot presign URLs; use s3://, http(s):// or a local path") from exc


def fingerprint(info: Mapping[str, Any], fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A content fingerprint from what the store offers (ETag/size/mtime), else a hash."""
    size = int(info.get("size") or 0)
    for key in ("ETag", "etag", "md5", "checksum", "crc32c"):
        if info.get(key):
            return f"{key.lower()}:{str(info[key]).strip(chr(34))}:{size}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    if mtime is not None and protocol_of(path) != "memory" and not isinstance(fs, _memory_types()):
        ts = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)
        return f"mtime:{ts:.6f}:{size}"
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}:{size}"


def _memory_types() -> tuple[type, ...]:
    from fsspec.implementations.memory import MemoryFileSystem

    return (MemoryFileSystem,)


def tmp_url_for(final_url: str, key: str = "") -> str:
    """A temporary sibling key for ``final_url`` (same store, same folder)."""
    head, tail = posixpath.split(final_url)
    return f"{head}/.vidbatch-tmp-{(key or uuid.uuid4().hex)[:12]}-{uuid.uuid4().hex[:6]}-{tail}"


def promote(tmp_url: str, final_url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Move a fully written temp object to its final key.

    Local stores rename atomically; object stores copy server-side and delete the
    temp key, so the final key appears only once complete.
    """
    fs, tmp_path = fs_for(tmp_url, storage_options)
    _, final_path = fs_for(final_url, storage_options)
    try:
        parent = posixpath.dirname(final_path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp_path, final_path)  # atomic rename
        else:
            fs.mv(tmp_path, final_path)
    except OSError as exc:
        raise StorageError(f"cannot write {final_url}: {exc}") from exc


def write_bytes_atomic(url: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    tmp = tmp_url_for(url)
    fs, path = fs_for(tmp, storage_options)
    try:
        parent = posixpath.dirname(path)
        if parent:
            fs.makedirs(parent, exist_ok=True)
        with fs.open(path, "wb") as fh:
            fh.write(data)
    except OSError as exc:
        raise StorageError(f"cannot write {url}: {exc}") from exc
    promote(tmp, url, storage_options)


def read_bytes(url: str, storage_options: Mapping[str, Any] | None = None) -> bytes | None:
    fs, path = fs_for(url, storage_options)
    try:
        with fs.open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        return None


def exists(url: str, storage_options: Mapping[str, Any] | None = None) -> bool:
    fs, path = fs_for(url, storage_options)
    try:
        return bool(fs.exists(path))
    except OSError:
        return False


def delete(url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    fs, path = fs_for(url, storage_options)
    try:
        fs.rm(path)
    except FileNotFoundError:
        pass


def copy_atomic(src: str, dst: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Stream ``src`` to ``dst`` through a temp key (bounded memory, atomic)."""
    tmp = tmp_url_for(dst)
    fs_out, tmp_path = fs_for(tmp, storage_options)
    parent = posixpath.dirname(tmp_path)
    if parent:
        fs_out.makedirs(parent, exist_ok=True)
    with fs_out.open(tmp_path, "wb") as out:
        for block in iter_read(src, storage_options):
            out.write(block)
    promote(tmp, dst, storage_options)
