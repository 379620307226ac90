"""fsspec helpers: open, stream, presign, fingerprint and promote atomically.

Every path vidbatch touches is an fsspec URL plus ``storage_options``. Bytes move
in bounded chunks (``CHUNK``); nothing reads a whole media file into memory.

Options come from three layers, later ones winning: vidbatch's per-protocol
defaults (bounded part sizes, SigV4 presigning), the environment
(``AWS_ENDPOINT_URL``, ``AWS_REGION``, ``AWS_PROFILE``, ``VIDBATCH_S3_ANON``) and
the manifest (global ``storage_options`` and per ``videos:`` entry).

Atomic writes, per store:

- local paths: write a hidden temp file in the target folder, ``os.replace``.
- S3: no rename exists, but an object only becomes visible when its upload
  completes. ``open_atomic`` writes the *final* key as a multipart upload that is
  completed on success and aborted on failure, so the bytes cross the wire once
  (a temp key + server-side copy would move a 1 GB result twice). ``promote``
  still works for temp keys written by other code: server-side copy, then
  delete. Killed runs leave incomplete multipart uploads (and possibly temp
  keys); ``cleanup_temp`` removes them at the start of the next run.
- anything else (memory://, gcs://...): temp key + ``fs.mv``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import hashlib
import logging
import os
import posixpath
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any, AsyncIterator, Callable, Iterator, Mapping, TypeVar

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from vidbatch.errors import InputError, StorageError

log = logging.getLogger("vidbatch")
T = TypeVar("T")

#: bytes per read / per write call when streaming
CHUNK = 8 * 1024 * 1024
#: part size for S3 writes and read-ahead size for S3 reads. s3fs defaults to
#: 50 MiB, and a writer holds up to ~2 parts plus a copy of one while it uploads
#: (>100 MB resident for one download). 8 MiB keeps a 1 GB transfer well under
#: 64 MB of growth; it allows objects up to 10,000 parts x 8 MiB (~80 GB), and the
#: part grows with the write size if a caller writes bigger chunks.
OBJECT_BLOCK = 8 * 1024 * 1024
#: SigV4 presigned URLs are valid for at most 7 days
MAX_PRESIGN_SECONDS = 7 * 24 * 3600
#: basename prefix of temporary keys (see ``tmp_url_for``); cleanup matches it
TEMP_PREFIX = ".vidbatch-tmp-"
#: leftovers younger than this may belong to a run still in progress elsewhere
DEFAULT_TEMP_AGE = 6 * 3600

S3_PROTOCOLS = ("s3", "s3a")
#: storage option names whose values are secrets (masked by vidbatch.redact)
SECRET_OPTION_NAMES = frozenset({
    "secret", "token", "password", "aws_secret_access_key", "aws_session_token", "session_token",
    "account_key", "sas_token", "client_secret", "credential", "credentials",
})


# -- options --------------------------------------------------------------------
def env_storage_options(protocol: str) -> dict[str, Any]:
    """Options taken from the environment for a protocol (S3 endpoint, profile...).

    botocore reads most of these itself; passing them explicitly makes them
    visible to fsspec's instance cache and lets the manifest override them.
    """
    opts: dict[str, Any] = {}
    if protocol in S3_PROTOCOLS:
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            opts.setdefault("client_kwargs", {})["region_name"] = region
        if os.environ.get("AWS_PROFILE"):
            opts["profile"] = os.environ["AWS_PROFILE"]
        if os.environ.get("VIDBATCH_S3_ANON", "").lower() in ("1", "true", "yes"):
            opts["anon"] = True
    return opts


def _protocol_defaults(protocol: str) -> dict[str, Any]:
    if protocol in S3_PROTOCOLS:
        return {
            "default_block_size": OBJECT_BLOCK,
            # presigned URLs with SigV4 (botocore may otherwise sign GETs with the
            # legacy SigV2 scheme, which newer AWS regions reject)
            "config_kwargs": {"signature_version": "s3v4"},
            # s3fs caches listings forever per instance, and instances are cached
            # per process: a worker serving a second run would glob stale ETags and
            # miss changed inputs. Every listing goes to the server.
            "use_listings_cache": False,
        }
    return {}


def protocol_of(url: str) -> str:
    if "://" not in url:
        return "file"
    return url.split("://", 1)[0].lower()


def _deep_merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def merged_options(url: str, storage_options: Mapping[str, Any] | None) -> dict[str, Any]:
    """Defaults < environment < manifest options, normalised for the protocol."""
    proto = protocol_of(url)
    user = dict(storage_options or {})
    env = env_storage_options(proto)
    if proto in S3_PROTOCOLS:
        if user.get("anon") or user.get("key") or user.get("secret"):
            env.pop("profile", None)  # explicit credentials / anonymous: no profile lookup
        user_endpoint = user.get("endpoint_url") or (user.get("client_kwargs") or {}).get("endpoint_url")
        if user_endpoint:
            env.pop("endpoint_url", None)
    opts = _deep_merge(_deep_merge(_protocol_defaults(proto), env), user)
    if proto in S3_PROTOCOLS:
        # one endpoint, top level: s3fs raises on an endpoint both at top level and in client_kwargs
        ck = dict(opts.get("client_kwargs") or {})
        nested = ck.pop("endpoint_url", None)
        if nested and not opts.get("endpoint_url"):
            opts["endpoint_url"] = nested
        if ck:
            opts["client_kwargs"] = ck
        else:
            opts.pop("client_kwargs", None)
        if opts.get("endpoint_url"):
            # S3-compatible servers (MinIO, Ceph, R2, moto...) often reject the
            # CRC32 trailers botocore >= 1.36 adds to every upload by default
            cfg = dict(opts.get("config_kwargs") or {})
            cfg.setdefault("request_checksum_calculation", "when_required")
            cfg.setdefault("response_checksum_validation", "when_required")
            opts["config_kwargs"] = cfg
    _register_secrets(proto, opts)
    return opts


#: option values that name a method, not a secret (gcsfs ``token``): masking them
#: would blank ordinary words in reports
_NOT_SECRETS = frozenset({"anon", "cloud", "google_default", "browser", "cache"})


def _looks_secret(value: str) -> bool:
    return len(value) >= 8 and value not in _NOT_SECRETS and not os.path.isfile(value)


def _register_secrets(proto: str, opts: Mapping[str, Any]) -> None:
    """Secret option values (and the AWS secret from the environment) are masked everywhere."""
    from vidbatch.redact import register_secret

    def walk(value: Mapping[str, Any]) -> None:
        for k, v in value.items():
            if isinstance(v, Mapping):
                walk(v)
            elif isinstance(v, str) and k.lower() in SECRET_OPTION_NAMES and _looks_secret(v):
                register_secret(v)

    walk(opts)
    if proto in S3_PROTOCOLS:
        register_secret(os.environ.get("AWS_SECRET_ACCESS_KEY"))
        register_secret(os.environ.get("AWS_SESSION_TOKEN"))


def fs_for(url: str, storage_options: Mapping[str, Any] | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the in-filesystem path for ``url``."""
    try:
        return url_to_fs(url, **merged_options(url, storage_options))
    except (ImportError, ValueError, TypeError) as exc:
        raise StorageError(f"cannot open {url}: {exc}") from exc


def join(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts if p]])


def is_local(url: str) -> bool:
    return protocol_of(url) in ("file", "local")


def local_path(url: str) -> str:
    return url.split("://", 1)[1] if url.startswith(("file://", "local://")) else url


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    protos = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return any(p in S3_PROTOCOLS for p in protos)


class EmptySourceError(StorageError):
    """``astream_into`` got no byte at all: nothing was written."""


class _Worker:
    """One thread for all the blocking calls of one stream.

    Why not ``asyncio.to_thread``: chunk buffers allocated and freed on one thread
    stay in one malloc arena. Hopping over the default pool spreads a stream's
    multi-MB buffers over an arena per thread, and resident memory grows with the
    pool size (measured on a 512 MB S3 write: 55-64 MB growth on the pool, 37-40 MB
    on one thread). One thread also keeps the calls of a stream in order.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vidbatch-io")

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        self._pool.shutdown(wait=False)


# -- reading --------------------------------------------------------------------
def _open_read(fs: fsspec.AbstractFileSystem, path: str, chunk: int) -> IO[bytes]:
    if isinstance(fs, LocalFileSystem):
        return fs.open(path, "rb")
    try:
        # no read-ahead cache: each read(chunk) is one ranged GET of exactly
        # ``chunk`` bytes, so memory stays at one chunk whatever the file size
        return fs.open(path, "rb", block_size=chunk, cache_type="none")
    except TypeError:  # a filesystem whose files take no cache options
        return fs.open(path, "rb")


def iter_read(url: str, storage_options: Mapping[str, Any] | None = None, chunk: int = CHUNK) -> Iterator[bytes]:
    fs, path = fs_for(url, storage_options)
    try:
        with _open_read(fs, path, chunk) as fh:
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
    """Stream a file's bytes without blocking the event loop (one reader thread)."""
    it = iter_read(url, storage_options, chunk)
    worker = _Worker()
    sentinel = object()
    try:
        while True:
            data = await worker.run(next, it, sentinel)
            if data is sentinel:
                return
            yield data  # type: ignore[misc]
    finally:
        try:
            it.close()  # an abandoned stream closes its file now, not at GC
        except ValueError:
            pass  # cancelled while a read runs in the thread: that read finishes, then GC closes
        worker.close()


@contextlib.contextmanager
def local_file(url: str, storage_options: Mapping[str, Any] | None = None,
               workdir: str | None = None) -> Iterator[str]:
    """A local path holding ``url``'s bytes, for code that needs a real file (PyAV probe).

    A local URL is yielded as is; anything else is streamed (bounded memory) into
    a temp file in ``workdir`` that is removed on exit.
    """
    if is_local(url):
        yield local_path(url)
        return
    suffix = posixpath.splitext(url.split("?", 1)[0])[1][:8]
    fd, path = tempfile.mkstemp(prefix="vidbatch-in-", suffix=suffix, dir=workdir)
    try:
        with os.fdopen(fd, "wb") as out:
            for block in iter_read(url, storage_options):
                out.write(block)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.remove(path)


# -- presign, fingerprint ---------------------------------------------------------
def presign(url: str, storage_options: Mapping[str, Any] | None = None, expires: int = 6 * 3600) -> str:
    """A presigned GET URL for an object (S3 and any store whose fs implements sign).

    ``expires`` should cover the provider's expected queue wait; it is capped at
    7 days (SigV4's limit). Temporary credentials (SSO, STS) end a URL's life
    when they expire, whatever ``expires`` says. Call again for a resubmission:
    each call signs afresh.
    """
    fs, path = fs_for(url, storage_options)
    seconds = max(1, min(int(expires), MAX_PRESIGN_SECONDS))
    if seconds < int(expires):
        log.warning("presigned URL expiry capped at 7 days (asked %d s)", int(expires))
    try:
        return fs.sign(path, expiration=seconds)
    except NotImplementedError as exc:
        raise StorageError(f"store of {url} cannot presign URLs; use s3://, http(s):// or a local path") from exc
    except OSError as exc:
        raise StorageError(f"cannot presign {url}: {exc}") from exc


#: info fields that change with the content, best first (S3/R2/MinIO: ETag;
#: GCS: md5Hash/crc32c; Azure: etag)
_CONTENT_FIELDS = ("ETag", "etag", "md5Hash", "md5", "checksum", "crc32c", "content_md5")


def fingerprint(info: Mapping[str, Any], fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A content fingerprint from what the store offers (ETag/size/mtime), else a hash.

    memory:// (and any store without ETag or mtime) is hashed: its ``created``
    stamp survives an overwrite in place, so it cannot tell a change.
    """
    size = int(info.get("size") or 0)
    for key in _CONTENT_FIELDS:
        value = info.get(key)
        if value:
            return f"{key.lower()}:{str(value).strip(chr(34))}:{size}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified")
    if mtime is not None and protocol_of(path) != "memory" and not isinstance(fs, _memory_types()):
        ts = mtime.timestamp() if hasattr(mtime, "timestamp") else float(mtime)
        # mtime + size say nothing about content: two files written in one clock
        # tick would collide, so the path is part of this fingerprint
        return f"mtime:{ts:.6f}:{size}:{path}"
    digest = hashlib.sha256()
    with _open_read(fs, path, CHUNK) as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}:{size}"


def _memory_types() -> tuple[type, ...]:
    from fsspec.implementations.memory import MemoryFileSystem

    return (MemoryFileSystem,)


# -- atomic writes ----------------------------------------------------------------
def tmp_url_for(final_url: str, key: str = "") -> str:
    """A temporary sibling key for ``final_url`` (same store, same folder)."""
    head, tail = posixpath.split(final_url)
    return f"{head}/{TEMP_PREFIX}{(key or uuid.uuid4().hex)[:12]}-{uuid.uuid4().hex[:6]}-{tail}"


def _makedirs_parent(fs: fsspec.AbstractFileSystem, path: str) -> None:
    parent = posixpath.dirname(path)
    if parent and not _is_s3(fs):  # S3 has no folders; makedirs would try to create the bucket
        fs.makedirs(parent, exist_ok=True)


def promote(tmp_url: str, final_url: str, storage_options: Mapping[str, Any] | None = None) -> None:
    """Move a fully written temp object to its final key.

    Local stores rename atomically; object stores copy server-side and delete the
    temp key, so the final key appears only once complete (a leftover temp key,
    if the delete fails, is removed by ``cleanup_temp``).
    """
    fs, tmp_path = fs_for(tmp_url, storage_options)
    _, final_path = fs_for(final_url, storage_options)
    try:
        _makedirs_parent(fs, final_path)
        if isinstance(fs, LocalFileSystem):
            os.replace(tmp_path, final_path)  # atomic rename
        elif _is_s3(fs):
            fs.copy(tmp_path, final_path)  # CopyObject (multipart copy > 5 GB): atomic
            fs.rm(tmp_path)
        else:
            fs.mv(tmp_path, final_path)
    except OSError as exc:
        raise StorageError(f"cannot write {final_url}: {exc}") from exc


def _discard(fh: Any) -> None:
    """Throw away an unfinished S3 write: abort its multipart upload, never commit."""
    try:
        fh.discard()  # aborts the multipart upload, if one was started
    except Exception:  # the abort is best effort: cleanup_temp catches the rest
        log.debug("aborting an upload failed", exc_info=True)
    finally:
        fh.closed = True  # close() would flush (upload) the rest


@contextlib.contextmanager
def open_atomic(url: str, storage_options: Mapping[str, Any] | None = None, key: str = "") -> Iterator[IO[bytes]]:
    """A binary file to write ``url`` through; ``url`` appears only if the block succeeds.

    On S3 the final key is written as a multipart upload (parts of
    ``OBJECT_BLOCK``), completed when the block exits cleanly and aborted if it
    raises: a reader never sees a partial object and the bytes are uploaded once.
    Elsewhere a temp sibling is written and promoted.
    """
    fs, path = fs_for(url, storage_options)
    try:
        _makedirs_parent(fs, path)
    except OSError as exc:
        raise StorageError(f"cannot write {url}: {exc}") from exc
    if _is_s3(fs):
        try:
            fh = fs.open(path, "wb", autocommit=False)
        except OSError as exc:
            raise StorageError(f"cannot write {url}: {exc}") from exc
        try:
            yield fh
            fh.close()  # uploads the last part
        except BaseException:
            _discard(fh)
            raise
        try:
            fh.commit()  # CompleteMultipartUpload: the object appears now, whole
        except OSError as exc:
            _discard(fh)
            raise StorageError(f"cannot write {url}: {exc}") from exc
        return
    # local: a hidden temp sibling (same filesystem, so promote's os.replace is
    # atomic); other stores: a temp key promoted with fs.mv
    tmp = tmp_url_for(url, key)
    _, tmp_path = fs_for(tmp, storage_options)
    try:
        with fs.open(tmp_path, "wb") as gfh:
            yield gfh
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp_path)
        raise
    promote(tmp, url, storage_options)


class AsyncAtomicFile:
    """The async face of an ``open_atomic`` file: writes run on the stream's own thread."""

    def __init__(self, fh: IO[bytes], worker: _Worker) -> None:
        self._fh, self._worker = fh, worker

    async def write(self, data: bytes) -> int:
        return await self._worker.run(self._fh.write, data)


@contextlib.asynccontextmanager
async def aopen_atomic(url: str, storage_options: Mapping[str, Any] | None = None,
                       key: str = "") -> AsyncIterator[AsyncAtomicFile]:
    """``open_atomic`` for async code: ``await fh.write(chunk)``; raising inside discards all."""
    worker = _Worker()
    cm = open_atomic(url, storage_options, key)
    try:
        fh = await worker.run(cm.__enter__)
        try:
            yield AsyncAtomicFile(fh, worker)
        except BaseException as exc:
            # on the same thread, after any write still running: never concurrent
            if not await worker.run(cm.__exit__, type(exc), exc, exc.__traceback__):
                raise
        else:
            await worker.run(cm.__exit__, None, None, None)
    finally:
        worker.close()


async def astream_into(chunks: AsyncIterator[bytes], url: str, storage_options: Mapping[str, Any] | None = None,
                       key: str = "") -> int:
    """Stream an async byte source into ``url`` atomically; returns the bytes written.

    This is the download path for provider results: bounded memory (one part
    buffered), and on S3 the bytes are uploaded once, straight to the final key.
    Nothing is written when the source raises, or yields no byte at all
    (``EmptySourceError``).
    """
    written = 0
    async with aopen_atomic(url, storage_options, key) as fh:
        async for chunk in chunks:
            if chunk:
                await fh.write(chunk)
                written += len(chunk)
        if written == 0:
            raise EmptySourceError(f"nothing to write to {url}: the source was empty")
    return written


def write_bytes_atomic(url: str, data: bytes, storage_options: Mapping[str, Any] | None = None) -> None:
    """Write small bytes (records, handles, reports) so a reader sees all or nothing."""
    fs, path = fs_for(url, storage_options)
    try:
        if _is_s3(fs):
            fs.pipe_file(path, data)  # one PutObject (multipart above 100 MB): atomic
            return
        with open_atomic(url, storage_options) as fh:
            fh.write(data)
    except OSError as exc:
        raise StorageError(f"cannot write {url}: {exc}") from exc


def read_bytes(url: str, storage_options: Mapping[str, Any] | None = None) -> bytes | None:
    """A small file's bytes (state records, listings), or None when it does not exist."""
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


def copy_atomic(src: str, dst: str, storage_options: Mapping[str, Any] | None = None,
                src_options: Mapping[str, Any] | None = None) -> None:
    """Copy ``src`` to ``dst`` atomically: server-side within one S3 store, else streamed.

    ``src_options`` defaults to ``storage_options`` (both on the output store).
    """
    src_opts = storage_options if src_options is None else src_options
    fs_in, src_path = fs_for(src, src_opts)
    fs_out, dst_path = fs_for(dst, storage_options)
    if fs_in is fs_out and _is_s3(fs_out):
        try:
            fs_out.copy(src_path, dst_path)  # CopyObject: appears whole, no bytes through us
            return
        except FileNotFoundError as exc:
            raise InputError(f"input not found: {src}") from exc
        except OSError as exc:
            raise StorageError(f"cannot copy {src} to {dst}: {exc}") from exc
    try:
        with open_atomic(dst, storage_options) as out:
            for block in iter_read(src, src_opts):
                out.write(block)
    except InputError:
        raise
    except OSError as exc:
        raise StorageError(f"cannot copy {src} to {dst}: {exc}") from exc


# -- cleanup after killed runs ------------------------------------------------------
def _age_seconds(info: Mapping[str, Any], now: float) -> float | None:
    stamp = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("created")
    if stamp is None:
        return None
    if isinstance(stamp, dt.datetime):
        return now - stamp.timestamp()
    try:
        return now - float(stamp)
    except (TypeError, ValueError):
        return None


def cleanup_temp(prefix_url: str, storage_options: Mapping[str, Any] | None = None,
                 older_than_seconds: float = DEFAULT_TEMP_AGE, *, temp_keys: bool = True) -> dict[str, int]:
    """Remove what killed runs left under ``prefix_url``; returns counts.

    - on S3, incomplete multipart uploads under the prefix initiated longer ago
      than ``older_than_seconds`` (invisible, but billed as storage until
      aborted); one cheap LIST of in-progress uploads;
    - with ``temp_keys``, ``.vidbatch-tmp-*`` files / keys older than that. This
      lists the whole prefix (one request per 1,000 keys on S3): a maintenance
      sweep, not something for the start of every run over a million outputs.

    The age guard leaves alone the uploads of a run still in progress on another
    worker. Failures are logged, never raised: cleanup must not stop a run.
    """
    counts = {"temp_files": 0, "multipart_uploads": 0}
    try:
        fs, root = fs_for(prefix_url, storage_options)
    except StorageError as exc:
        log.warning("cleanup of %s skipped: %s", prefix_url, exc)
        return counts
    now = time.time()
    found: dict[str, Any] = {}
    if temp_keys:
        try:
            found = fs.find(root, detail=True) if fs.exists(root) else {}
        except (OSError, ValueError) as exc:
            log.warning("cleanup of %s: cannot list: %s", prefix_url, exc)
    for path, info in found.items():
        if not posixpath.basename(path).startswith(TEMP_PREFIX):
            continue
        age = _age_seconds(info, now)
        if age is not None and age < older_than_seconds:
            continue
        try:
            fs.rm(path)
            counts["temp_files"] += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cleanup: cannot remove %s: %s", path, exc)
    if _is_s3(fs):
        counts["multipart_uploads"] = _abort_stale_uploads(fs, root, now - older_than_seconds)
    if any(counts.values()):
        log.info("cleaned up after earlier runs under %s: %s", prefix_url, counts)
    return counts


def _abort_stale_uploads(fs: Any, root: str, cutoff: float) -> int:
    bucket, _, prefix = root.strip("/").partition("/")
    prefix = f"{prefix.rstrip('/')}/" if prefix else ""
    aborted = 0
    marker: dict[str, str] = {}
    try:
        while True:
            page = fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix, **marker)
            for up in page.get("Uploads") or []:
                initiated = up.get("Initiated")
                if isinstance(initiated, dt.datetime) and initiated.timestamp() > cutoff:
                    continue
                fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
                aborted += 1
            if not page.get("IsTruncated"):
                return aborted
            marker = {"KeyMarker": page.get("NextKeyMarker", ""), "UploadIdMarker": page.get("NextUploadIdMarker", "")}
    except OSError as exc:  # e.g. no s3:ListBucketMultipartUploads permission
        log.warning("cleanup: cannot list or abort multipart uploads in s3://%s/%s: %s", bucket, prefix, exc)
        return aborted


async def acleanup_temp(prefix_url: str, storage_options: Mapping[str, Any] | None = None,
                        older_than_seconds: float = DEFAULT_TEMP_AGE, *, temp_keys: bool = True) -> dict[str, int]:
    """``cleanup_temp`` from async code (the flow), in a worker thread."""
    return await asyncio.to_thread(functools.partial(cleanup_temp, prefix_url, storage_options,
                                                     older_than_seconds, temp_keys=temp_keys))
