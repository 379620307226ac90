"""Shared httpx plumbing for the hosted providers.

One ``httpx.AsyncClient`` per provider instance (connection reuse), explicit
connect/read/write/pool timeouts, the translation of transport errors and HTTP
statuses into ``vidbatch.errors``, ``Retry-After`` parsing, and streaming
downloads that check the received byte count against ``Content-Length``.

Credentials are never client-wide default headers: each provider passes its auth
headers per API call, so a download from a public CDN or a presigned upload URL
never carries the API key to a third-party host.

The error translation happens once per provider: each provider module has a pure
``map_error(response, ...)`` that builds on ``classify`` below; ``request``
calls it for every non-2xx response, and ``transport_error`` turns httpx
exceptions into ``TransientError`` or, for a submit whose request may already
have reached the provider, ``SubmitUncertainError``.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import mimetypes
import os
import posixpath
import random
import time
import uuid
import weakref
from typing import Any, AsyncIterator, Callable, Mapping
from urllib.parse import urlsplit

import httpx

from vidbatch.errors import (
    AuthError,
    JobGoneError,
    PermanentError,
    ProviderError,
    QuotaError,
    RateLimitedError,
    SubmitUncertainError,
    TransientError,
)
from vidbatch.providers.base import ArtifactExpiredError, Provider, ProviderSettings
from vidbatch.redact import redact, redact_url, register_secret
from vidbatch.spec import Artifact, JobHandle

#: download chunk size: at least 1 MiB per read, bounded memory
DOWNLOAD_CHUNK = 1 << 20
#: the longest Retry-After / remainingSeconds hint honoured (a hostile or buggy
#: value must not park a worker); hints are clamped where they are parsed, so
#: nothing downstream caps them again
MAX_RETRY_AFTER = 120.0
#: statuses that mean "retry the same request later"
TRANSIENT_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

#: error mapper: (response, what) -> ProviderError, where ``what`` names the call
ErrorMapper = Callable[[httpx.Response, str], ProviderError]


# --------------------------------------------------------------------------- clients


def make_client(settings: ProviderSettings, *, connect: float = 15.0) -> httpx.AsyncClient:
    """The provider's HTTP client: explicit timeouts, keep-alive pool, no auth.

    ``settings.timeout`` bounds each read (poll and result calls hung on SSL reads
    in fal's own client before it set read timeouts); uploads and downloads pass
    their own, longer, write/read timeouts per request.
    """
    timeout = httpx.Timeout(connect=connect, read=settings.timeout, write=settings.timeout, pool=settings.timeout)
    # idle connections are dropped before common server keep-alive timeouts (uvicorn: 5 s)
    # so a submit is not sent on a socket the server is closing (a false "uncertain")
    # keep-alive pool as large as the pool: with more requests in flight than
    # keep-alive slots (32 workers vs 16 slots before) connections were closed
    # after each burst and reopened: 17 % of the flow's CPU in connect() (issue 8
    # profile). Not larger: httpcore checks every pooled connection (a poll and a
    # getpeername syscall each) on every request, so the pool's size costs CPU too.
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=4.0)
    return _client(timeout, limits)


#: open status streams per provider and event loop (one per job in flight)
MAX_STREAMS = 256
#: a status stream sends a comment ping about every 15 s: a minute of silence is a dead stream
STREAM_READ_TIMEOUT = 60.0


def make_stream_client(settings: ProviderSettings, *, connect: float = 15.0) -> httpx.AsyncClient:
    """A client for long-lived status streams (SSE), with a pool of its own.

    One stream is held open per job in flight; sharing the request pool would
    let them starve submits and downloads (64 connections) at high concurrency.
    """
    timeout = httpx.Timeout(connect=connect, read=STREAM_READ_TIMEOUT, write=settings.timeout, pool=5.0)
    # a stream that ended cleanly leaves its connection reusable for the next job's stream
    return _client(timeout, httpx.Limits(max_connections=MAX_STREAMS, max_keepalive_connections=64, keepalive_expiry=4.0))


def _client(timeout: httpx.Timeout, limits: httpx.Limits) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=timeout,
        limits=limits,
        # API calls never follow redirects: httpx strips Authorization across
        # origins but not X-Api-Key. Downloads (no credentials) opt in.
        follow_redirects=False,
        headers={"User-Agent": "vidbatch/0.1 (+httpx)"},
        trust_env=True,
    )


def resolve_url(
    settings: ProviderSettings,
    *,
    option: str,
    env: str,
    emulator_suffix: str,
    default: str,
) -> str:
    """A base URL: ``settings.options[option]`` > ``settings.base_url`` (+suffix) > env > production."""
    explicit = settings.options.get(option) if settings.options else None
    if explicit:
        return str(explicit).rstrip("/")
    if settings.base_url:
        return settings.base_url.rstrip("/") + emulator_suffix
    value = os.environ.get(env)
    if value:
        return value.rstrip("/")
    return default


def absolute(base: str, url: str) -> str:
    """``url`` as returned by a provider, made absolute against ``base`` if relative."""
    if urlsplit(url).scheme:
        return url
    parts = urlsplit(base)
    origin = f"{parts.scheme}://{parts.netloc}"
    return origin + (url if url.startswith("/") else "/" + url)


def guess_type(name: str, default: str = "application/octet-stream") -> str:
    ext = posixpath.splitext(name.split("?", 1)[0])[1].lower()
    return {
        ".mp4": "video/mp4",
        ".m4v": "video/mp4",
        ".mov": "video/quicktime",
        ".webm": "video/webm",
        ".mkv": "video/x-matroska",
        ".avi": "video/x-msvideo",
        ".gif": "image/gif",
        ".png": "image/png",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
        ".webp": "image/webp",
        ".zip": "application/zip",
    }.get(ext) or mimetypes.guess_type(name)[0] or default


# --------------------------------------------------------------------------- bodies


def parse_json(resp: httpx.Response) -> Any:
    """The JSON body, or None when the body is empty or not JSON."""
    try:
        return resp.json()
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError):
        return None


def body_text(resp: httpx.Response, limit: int = 300) -> str:
    try:
        text = resp.text
    except Exception:  # pragma: no cover - a streamed, unread body
        return ""
    text = " ".join(text.split())
    return text[:limit] + ("..." if len(text) > limit else "")


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds from ``Retry-After`` (delta-seconds or an HTTP date) or ``retry-after-ms``."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return _clamp(float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        return _clamp(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return _clamp(when.timestamp() - (time.time() if now is None else now))


def _clamp(seconds: float) -> float:
    return max(0.0, min(float(seconds), MAX_RETRY_AFTER))


QUOTA_WORDS = (
    "insufficient", "credit", "balance", "quota", "exhausted", "top up", "top-up", "payment",
    "creative unit", "compute unit",
)


def looks_like_quota(*texts: Any) -> bool:
    blob = " ".join(str(t) for t in texts if t).lower()
    return any(w in blob for w in QUOTA_WORDS)


def classify(
    status: int,
    message: str,
    *,
    provider: str,
    retry_after: float | None = None,
    job: bool = False,
) -> ProviderError:
    """The status-code part of every provider's mapping.

    ``job`` marks calls about one remote job (poll, result, cancel): there a 404
    means the job is unknown or expired (``JobGoneError``) rather than a bad URL.
    """
    if status in (401, 403):
        return AuthError(message, provider=provider, status=status)
    if status == 402:
        return QuotaError(message, provider=provider, status=status)
    if status == 429:
        return RateLimitedError(message, provider=provider, status=status, retry_after=retry_after)
    if status in TRANSIENT_STATUSES or status >= 500 and status not in (501, 505):
        return TransientError(message, provider=provider, status=status, retry_after=retry_after)
    if status in (404, 410) and job:
        return JobGoneError(message, provider=provider, status=status)
    return PermanentError(message, provider=provider, status=status)


# --------------------------------------------------------------------------- transport


def transport_error(exc: httpx.HTTPError, *, provider: str, what: str, uncertain: bool = False) -> TransientError:
    """Translate an httpx transport exception.

    Connect errors and pool timeouts happen before a byte of the request left:
    always plain ``TransientError``. Any later failure (write/read timeout, a
    connection dropped mid-request or mid-response) on a non-idempotent submit
    means the provider may have created (and will bill) the job, so the caller
    must not resubmit blindly: ``SubmitUncertainError``.
    """
    kind = type(exc).__name__
    detail = redact(str(exc)) or kind
    before_send = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol))
    if uncertain and not before_send:
        return SubmitUncertainError(
            f"{what}: {kind} after the request was sent ({detail}); the job may exist - "
            "re-check before submitting again",
            provider=provider,
        )
    return TransientError(f"{what}: network error {kind} ({detail})", provider=provider)


async def request(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    provider: str,
    what: str,
    mapper: ErrorMapper,
    uncertain: bool = False,
    ok: Callable[[httpx.Response], bool] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    """Send one request; return a 2xx response or raise the mapped error.

    ``ok`` lets a caller accept extra statuses (e.g. Scenario's dry-run 269 is
    2xx already; fal's cancel 400 is an answer, not an error).
    """
    try:
        resp = await client.request(method, url, **kwargs)
    except httpx.InvalidURL as exc:
        raise PermanentError(f"{what}: invalid URL {redact_url(url)} ({exc})", provider=provider) from None
    except httpx.HTTPError as exc:
        raise transport_error(exc, provider=provider, what=what, uncertain=uncertain) from None
    if (ok is not None and ok(resp)) or (ok is None and resp.is_success):
        return resp
    raise mapper(resp, what)


def json_of(resp: httpx.Response, *, provider: str, what: str, uncertain: bool = False) -> Any:
    """The JSON of a 2xx response; a garbled body is transient (or uncertain on submit)."""
    data = parse_json(resp)
    if data is None:
        msg = f"{what}: HTTP {resp.status_code} with a body that is not JSON: {body_text(resp, 120)!r}"
        if uncertain:
            raise SubmitUncertainError(msg + "; the job may exist", provider=provider, status=resp.status_code)
        raise TransientError(msg, provider=provider, status=resp.status_code)
    return data


def retry_delay(exc: TransientError, attempt: int, *, base: float = 0.5, cap: float = 30.0) -> float:
    """Seconds to wait before re-sending after failure ``attempt`` (0-based).

    The provider's hint when it gave one (never shortened: jitter only adds),
    else exponential backoff from ``base``, capped at ``cap``, with jitter.
    """
    if exc.retry_after is not None:
        return exc.retry_after * random.uniform(1.0, 1.25)
    return min(cap, base * 2**attempt) * random.uniform(0.75, 1.25)


async def with_retries(
    fn: Callable[[], Any],
    *,
    attempts: int,
    base: float = 0.5,
    cap: float = 8.0,
    retry_on: type[TransientError] = TransientError,
) -> Any:
    """Run ``fn`` (a coroutine factory safe to repeat) up to ``attempts`` times on ``retry_on``.

    For requests retried where they fail rather than by the stage's task retry:
    upload parts, uploads, GETs, and a submit the provider refused with a 429
    (``pipeline._api_call``). An uncertain submit is never retried here.
    """
    for attempt in range(attempts):
        try:
            return await fn()
        except retry_on as exc:
            if attempt == attempts - 1 or isinstance(exc, SubmitUncertainError):
                raise
            await asyncio.sleep(retry_delay(exc, attempt, base=base, cap=cap))
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- downloads


async def stream_download(
    client: httpx.AsyncClient,
    url: str,
    *,
    provider: str,
    headers: Mapping[str, str] | None = None,
    chunk_size: int = DOWNLOAD_CHUNK,
    read_timeout: float = 300.0,
) -> AsyncIterator[bytes]:
    """Yield the body of ``GET url`` in ``chunk_size`` pieces.

    403/404/410 before the first byte raise ``ArtifactExpiredError`` (signed or
    time-bound URLs that lapsed; the provider refreshes them), other statuses
    map through ``classify``. The received byte count is compared with
    ``Content-Length``: a short body raises ``TransientError`` (download again),
    never a silently truncated file.
    """
    timeout = httpx.Timeout(connect=15.0, read=read_timeout, write=60.0, pool=60.0)
    shown = redact_url(url)
    try:
        hdrs = {"Accept-Encoding": "identity", **dict(headers or {})}
        async with client.stream("GET", url, headers=hdrs, timeout=timeout, follow_redirects=True) as resp:
            if resp.status_code in (401, 403, 404, 410):
                await resp.aread()
                raise ArtifactExpiredError(
                    f"download of {shown}: HTTP {resp.status_code} (URL expired or revoked); refresh the artifact",
                    provider=provider,
                    status=resp.status_code,
                )
            if not resp.is_success:
                await resp.aread()
                raise classify(
                    resp.status_code,
                    f"download of {shown}: HTTP {resp.status_code} {body_text(resp, 120)}",
                    provider=provider,
                    retry_after=parse_retry_after(resp.headers),
                )
            expected = _content_length(resp)
            counted = 0
            async for chunk in resp.aiter_bytes(chunk_size):
                counted += len(chunk)
                yield chunk
            encoded = resp.headers.get("content-encoding", "identity").lower() not in ("", "identity")
            # Content-Length counts wire bytes: compare decoded bytes unless the
            # server compressed anyway (we ask for identity), then the wire count
            received = resp.num_bytes_downloaded if encoded else counted
            if expected is not None and received != expected:
                raise TransientError(
                    f"download of {shown} truncated: received {received} of {expected} bytes",
                    provider=provider,
                )
    except httpx.HTTPError as exc:
        # a connection closed mid-body (h11: "peer closed connection without
        # sending complete message body") is a truncated download: retry it
        raise transport_error(exc, provider=provider, what=f"download of {shown}") from None


def _content_length(resp: httpx.Response) -> int | None:
    value = resp.headers.get("content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


# --------------------------------------------------------------------------- uploads


async def chunked(source: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """Re-chunk a byte stream into pieces of exactly ``size`` bytes (last one shorter)."""
    buf = bytearray()
    async for data in source:
        if not buf and len(data) == size:
            yield data  # already a whole part (the reader's chunk is the part size): no copy
            continue
        buf += data
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


def part_body(data: bytes) -> tuple[AsyncIterator[bytes], dict[str, str]]:
    """``data`` as a request body that lets go of its bytes once sent, and its Content-Length.

    httpx keeps a request's body alive until the cyclic GC runs (a Response and
    its bound stream refer to each other), so upload parts passed as
    ``content=bytes`` piled up: +190-240 MB of RSS per 256 MB uploaded in 10 MiB
    parts (``bench.streaming --phases upload``). A one-chunk generator holds the
    bytes only until it has yielded them.
    """
    async def once(chunk: bytes) -> AsyncIterator[bytes]:
        yield chunk

    return once(data), {"Content-Length": str(len(data))}


class MultipartForm:
    """A streamed ``multipart/form-data`` body with one file field.

    httpx's own multipart encoder reads file objects synchronously; this one
    pulls from an async byte source (``storage.aiter_read``) so a 500 MB upload
    neither blocks the event loop nor sits in memory, and it announces an exact
    ``Content-Length`` (some upload endpoints refuse chunked bodies).
    """

    def __init__(
        self,
        field: str,
        filename: str,
        content_type: str,
        size: int,
        source: AsyncIterator[bytes],
        fields: Mapping[str, str] | None = None,
    ) -> None:
        self.boundary = "vidbatch-" + uuid.uuid4().hex
        safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        head = b""
        for name, value in (fields or {}).items():
            head += (
                f"--{self.boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            ).encode()
        head += (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{safe_name}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        self._head = head
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._size = size
        self._source = source

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Content-Type": f"multipart/form-data; boundary={self.boundary}",
            "Content-Length": str(len(self._head) + self._size + len(self._tail)),
        }

    async def body(self) -> AsyncIterator[bytes]:
        yield self._head
        sent = 0
        async for data in self._source:
            sent += len(data)
            yield data
        if sent != self._size:
            # the input changed under us; a short body would hang the server
            raise TransientError(f"input changed during upload ({sent} bytes read, {self._size} expected)")
        yield self._tail


# --------------------------------------------------------------------------- provider base


class HostedProvider(Provider):
    """What the three hosted clients share: the client, secrets, downloads.

    The ``httpx.AsyncClient`` is created lazily, one per event loop, and reused
    by every call made on that loop: Prefect may drive one provider object
    from several loops (task runs in worker threads), and an httpx connection
    pool must never cross loops.
    """

    #: chunk size of ``open_artifact`` (>= 1 MiB; bounded memory)
    download_chunk: int = DOWNLOAD_CHUNK

    def __init__(self, settings: ProviderSettings | None = None) -> None:
        super().__init__(settings)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._stream_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        for name in self.secret_names():
            register_secret(self.settings.credential(name))

    def secret_names(self) -> tuple[str, ...]:
        return self.credential_names

    @property
    def client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None or client.is_closed:
            client = self._clients[loop] = make_client(self.settings)
        return client

    @property
    def stream_client(self) -> httpx.AsyncClient:
        """This loop's client for status streams (``make_stream_client``)."""
        loop = asyncio.get_running_loop()
        client = self._stream_clients.get(loop)
        if client is None or client.is_closed:
            client = self._stream_clients[loop] = make_stream_client(self.settings)
        return client

    def use_client(self, client: httpx.AsyncClient) -> None:
        """Use ``client`` for calls on the running loop (custom transports, proxies, tests)."""
        self._clients[asyncio.get_running_loop()] = client

    async def aclose(self) -> None:
        """Close this loop's client (clients of other loops die with their loop)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # pragma: no cover - called outside a loop
            return
        for clients in (self._clients, self._stream_clients):
            client = clients.pop(loop, None)
            if client is not None and not client.is_closed:
                await client.aclose()

    # -- downloads --------------------------------------------------------
    async def open_artifact(self, artifact: Artifact) -> AsyncIterator[bytes]:  # type: ignore[override]
        """Stream the artifact; refresh an expired URL once (before any byte) and retry."""
        url = artifact.url
        for attempt in (0, 1):
            try:
                async for chunk in stream_download(
                    self.client, url, provider=self.name, chunk_size=self.download_chunk
                ):
                    yield chunk
                return
            except ArtifactExpiredError:
                # stream_download raises this only before the first byte
                fresh = await self._refresh_from_meta(artifact) if attempt == 0 else None
                if fresh is None or fresh.url == url:
                    raise
                url = fresh.url

    async def _refresh_from_meta(self, artifact: Artifact) -> Artifact | None:
        """A fresh artifact from what ``artifact.meta`` records (None: cannot)."""
        return None

    async def refresh_artifact(self, handle: JobHandle, artifact: Artifact) -> Artifact:
        fresh = await self._refresh_from_meta(artifact)
        return fresh if fresh is not None else await super().refresh_artifact(handle, artifact)


def utc_iso_to_epoch(value: Any) -> float | None:
    """``2025-01-01T00:00:00.000Z`` -> epoch seconds (None if unparsable)."""
    if not value:
        return None
    if isinstance(value, (int, float)):
        return float(value) / (1000.0 if value > 1e11 else 1.0)
    from datetime import datetime, timezone

    try:
        dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()
