"""HTTP plumbing shared by the provider modules.

* ``guarded``: the one path every provider request takes -- count the route,
  inject request-level faults, authenticate with the provider's scheme, run
  the handler, count the response.
* ``FileResponse``: downloads with HTTP Range, HEAD, and the ``truncate``
  fault (Content-Length promises the whole body, half is sent, then the
  connection is closed).
* ``save_body`` / ``save_multipart``: stream request bodies to disk with a
  size cap and a running sha256, never holding a video in memory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from vidbatch.emulator.faults import DropConnection
from vidbatch.emulator.state import EmulatorState, StoredFile, key_id

CHUNK = 256 * 1024


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(data, separators=(",", ":"), default=str).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def base_url(request: Request, state: EmulatorState) -> str:
    if state.config.public_url:
        return state.config.public_url.rstrip("/")
    return str(request.base_url).rstrip("/")


@dataclass
class Ctx:
    state: EmulatorState
    route: str
    credential: str | None  # the raw credential, e.g. "key:secret"
    owner: str  # key id of the credential ("anonymous" on open routes)
    base: str


class ProviderHTTP(Protocol):
    """What ``guarded`` needs from a provider: its auth and its error shapes."""

    name: str

    def authenticate(self, request: Request, state: EmulatorState) -> tuple[str | None, Response | None]: ...

    def rate_limited(self, state: EmulatorState, route: str) -> Response: ...

    def server_error(self, state: EmulatorState, route: str) -> Response: ...


Handler = Callable[[Request, Ctx], Awaitable[Response]]


async def guarded(request: Request, state: EmulatorState, provider: ProviderHTTP, route: str,
                  handler: Handler, *, auth: bool = True, optional_auth: bool = False) -> Response:
    stats = state.stats
    stats.requests[route] += 1
    state.note_host(request.headers.get("host"))
    credential: str | None = None
    if auth or (optional_auth and _has_credential(request)):
        credential, error = provider.authenticate(request, state)
        if error is not None:
            stats.response(route, error.status_code)
            return error
    # drawn after auth, so "faults_injected" counts only faults a client saw
    rule = state.faults.request_rule(route)
    fault = rule.fault if rule is not None else None
    if fault == "drop":
        raise DropConnection()
    if fault == "rate_limit":
        resp = provider.rate_limited(state, route)
    elif fault == "server_error":
        resp = provider.server_error(state, route)
    elif fault == "respond" and rule is not None:
        resp = canned_response(rule.status, rule.body, rule.headers)
    else:
        ctx = Ctx(state, route, credential, key_id(credential) if credential else "anonymous", base_url(request, state))
        resp = await handler(request, ctx)
        if fault == "lost_response":
            raise DropConnection()
        if fault == "delay" and rule is not None:
            await asyncio.sleep(rule.seconds)
    stats.response(route, resp.status_code)
    return resp


def canned_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    """The ``respond`` fault: a string body goes as is (e.g. not JSON), anything else as JSON."""
    if isinstance(body, str):
        return Response(body.encode(), status_code=status, headers=headers, media_type="text/html")
    return json_response(body if body is not None else {}, status, headers)


def _has_credential(request: Request) -> bool:
    return bool(request.headers.get("authorization") or request.headers.get("x-api-key"))


async def read_json(request: Request) -> tuple[Any, str | None]:
    """(body, None) or (None, error message). An empty body reads as ``{}``."""
    raw = await request.body()
    if not raw.strip():
        return {}, None
    try:
        return json.loads(raw), None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"Invalid JSON body: {exc}"


# ------------------------------------------------------------------ bodies to disk
class BodyTooLarge(Exception):
    pass


class _Sink:
    """A file written off the event loop, hashed as it goes.

    Past ``limit`` it stops writing but keeps counting, so the caller reads
    the whole body and can answer 400 (the client then sees our response, not
    a reset mid-upload); ``overflow`` tells.
    """

    def __init__(self, path: Path, limit: int | None) -> None:
        self.path, self.limit = path, limit
        self.overflow = False
        self.size = 0
        self.digest = hashlib.sha256()
        self.md5 = hashlib.md5()  # noqa: S324 - S3/CDN-style ETag, not security
        self.fh = open(path, "wb")  # noqa: SIM115 - closed in close()

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        if self.overflow:
            return
        if self.limit is not None and self.size > self.limit:
            self.overflow = True
            await anyio.to_thread.run_sync(self.fh.truncate, 0)
            return
        self.digest.update(data)
        self.md5.update(data)
        await anyio.to_thread.run_sync(self.fh.write, data)

    def close(self) -> None:
        self.fh.close()


@dataclass
class SavedBody:
    size: int
    sha256: str
    md5: str


async def save_body(request: Request, path: Path, limit: int | None = None) -> SavedBody:
    """Stream the raw request body to ``path``; return its size and digests."""
    sink = _Sink(path, limit)
    try:
        buf = bytearray()
        async for chunk in request.stream():
            buf += chunk
            if len(buf) >= CHUNK:
                await sink.write(bytes(buf))
                buf.clear()
        await sink.write(bytes(buf))
    except BaseException:
        sink.close()
        path.unlink(missing_ok=True)
        raise
    sink.close()
    if sink.overflow:
        path.unlink(missing_ok=True)
        raise BodyTooLarge()
    return SavedBody(sink.size, sink.digest.hexdigest(), sink.md5.hexdigest())


@dataclass
class UploadedPart:
    field: str
    filename: str | None
    content_type: str | None
    path: Path | None = None
    size: int = 0
    sha256: str = ""
    value: bytes = b""


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.I)
_DISPOSITION = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"|(\w+)=([^;\s]+)')


async def save_multipart(request: Request, new_path: Callable[[str], Path], limit: int | None = None) -> list[UploadedPart]:
    """Stream a multipart/form-data body: file parts to disk, fields in memory.

    Starlette's own parser needs the optional ``python-multipart`` package;
    this one streams without it. Raises ``ValueError`` on a malformed body and
    ``BodyTooLarge`` (after reading the whole body) when a file part exceeds
    ``limit``.
    """
    match = _BOUNDARY.search(request.headers.get("content-type", ""))
    if not match or "multipart/form-data" not in request.headers.get("content-type", "").lower():
        raise ValueError("Content-Type must be multipart/form-data with a boundary")
    delim = b"--" + match.group(1).encode()
    sep = b"\r\n" + delim
    parts: list[UploadedPart] = []
    buf = bytearray()
    state = "preamble"
    part: UploadedPart | None = None
    sink: _Sink | None = None
    too_large = False

    async def emit(data: bytes) -> None:
        assert part is not None
        if sink is not None:
            await sink.write(data)
        else:
            part.value += data
            if len(part.value) > 1 << 20:
                raise ValueError("form field too large")

    try:
        async for chunk in request.stream():
            buf += chunk
            while True:
                if state == "preamble":
                    idx = buf.find(delim)
                    if idx < 0:
                        del buf[: max(0, len(buf) - len(delim))]
                        break
                    del buf[: idx + len(delim)]
                    state = "after_delim"
                elif state == "after_delim":
                    if len(buf) < 2:
                        break
                    if buf[:2] == b"--":
                        state = "done"
                        break
                    if buf[:2] != b"\r\n":
                        raise ValueError("malformed multipart body")
                    del buf[:2]
                    state = "headers"
                elif state == "headers":
                    idx = buf.find(b"\r\n\r\n")
                    if idx < 0:
                        if len(buf) > 16384:
                            raise ValueError("multipart headers too long")
                        break
                    part = _parse_part_headers(bytes(buf[:idx]))
                    del buf[: idx + 4]
                    if part.filename is not None:
                        part.path = new_path(Path(part.filename).suffix[:8])
                        sink = _Sink(part.path, limit)
                    state = "body"
                elif state == "body":
                    idx = buf.find(sep)
                    if idx < 0:
                        keep = len(sep) + 1
                        if len(buf) > keep + CHUNK:
                            await emit(bytes(buf[: len(buf) - keep]))
                            del buf[: len(buf) - keep]
                        break
                    await emit(bytes(buf[:idx]))
                    del buf[: idx + len(sep)]
                    assert part is not None
                    if sink is not None:
                        sink.close()
                        part.size, part.sha256 = sink.size, sink.digest.hexdigest()
                        too_large = too_large or sink.overflow
                        sink = None
                    else:
                        part.size = len(part.value)
                    parts.append(part)
                    part = None
                    state = "after_delim"
                else:  # done: ignore the epilogue
                    buf.clear()
                    break
    except BaseException:
        if sink is not None:
            sink.close()
        for p in parts + ([part] if part is not None else []):
            if p.path is not None:
                p.path.unlink(missing_ok=True)
        raise
    if state != "done" or too_large:
        if sink is not None:
            sink.close()
        for p in parts:
            if p.path is not None:
                p.path.unlink(missing_ok=True)
        if too_large:
            raise BodyTooLarge()
        raise ValueError("truncated multipart body")
    return parts


def _parse_part_headers(raw: bytes) -> UploadedPart:
    headers: dict[str, str] = {}
    for line in raw.decode("utf-8", "replace").split("\r\n"):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    params: dict[str, str] = {}
    for m in _DISPOSITION.finditer(headers.get("content-disposition", "")):
        if m.group(1):
            params[m.group(1).lower()] = m.group(2).replace('\\"', '"')
        else:
            params[m.group(3).lower()] = m.group(4)
    return UploadedPart(field=params.get("name", ""), filename=params.get("filename"),
                        content_type=headers.get("content-type"))


# ------------------------------------------------------------------ downloads
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class FileResponse(Response):
    """Serve a stored file: Range (one range), HEAD, optional truncation fault."""

    def __init__(self, request: Request, sf: StoredFile, *, truncate: bool = False,
                 headers: dict[str, str] | None = None, on_bytes: Callable[[int], None] | None = None) -> None:
        self.sf, self.truncate, self.on_bytes = sf, truncate, on_bytes
        self.head = request.method == "HEAD"
        size = sf.size
        start, end = 0, size - 1
        status = 200
        extra = dict(headers or {})
        extra.update({"accept-ranges": "bytes", "content-type": sf.content_type,
                      "content-disposition": f'inline; filename="{sf.name}"',
                      "etag": f'"{sf.id}"'})
        rng = request.headers.get("range")
        self.invalid_range = False
        if rng:
            m = _RANGE.match(rng.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                else:
                    start = max(0, size - int(m.group(2)))
                if start >= size or start > end:
                    self.invalid_range = True
                else:
                    status = 206
                    extra["content-range"] = f"bytes {start}-{end}/{size}"
        if self.invalid_range:
            status, start, end = 416, 0, -1
            extra["content-range"] = f"bytes */{size}"
        self.start, self.end = start, end
        self.length = max(0, end - start + 1)
        extra["content-length"] = str(self.length)
        super().__init__(None, status_code=status, headers=extra)

    def init_headers(self, headers: Any = None) -> None:  # noqa: D401 - keep our explicit content-length
        raw = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
        self.raw_headers = raw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        if self.head or self.length == 0:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        to_send = self.length // 2 if self.truncate else self.length
        sent = 0
        async with await anyio.open_file(self.sf.path, "rb") as fh:
            await fh.seek(self.start)
            while sent < to_send:
                data = await fh.read(min(CHUNK, to_send - sent))
                if not data:
                    break
                sent += len(data)
                await send({"type": "http.response.body", "body": data, "more_body": True})
        if self.on_bytes is not None:
            self.on_bytes(sent)
        if self.truncate or sent < self.length:
            raise DropConnection()  # Content-Length promised more: close mid-body
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def serve_file(request: Request, state: EmulatorState, sf: StoredFile, provider: str, route: str) -> FileResponse:
    """A download of ``sf``, with the ``truncate`` fault and download counters."""
    truncate = request.method == "GET" and state.faults.truncate(route)

    def count(n: int) -> None:
        state.stats.downloads[provider] += 1
        state.stats.download_bytes[provider] += n

    return FileResponse(request, sf, truncate=truncate, on_bytes=count)
