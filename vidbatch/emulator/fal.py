"""fal.ai: queue API (queue.fal.run), storage REST (rest.fal.ai), CDN (v3.fal.media).

URL layout (``{base}`` is the emulator's base URL)::

    POST {base}/fal/queue/{owner}/{alias}[/{subpath}]          submit  (fal:submit)
    GET  {base}/fal/queue/{owner}/{alias}/requests/{id}/status  status  (fal:status)
    GET  .../requests/{id}/status/stream                        SSE     (fal:status_stream)
    GET  {base}/fal/queue/{owner}/{alias}/requests/{id}         result  (fal:result)
    PUT  .../requests/{id}/cancel                               cancel  (fal:cancel)
    POST {base}/fal/rest/storage/auth/token?storage_type=fal-cdn-v3     (fal:token)
    POST {base}/fal/rest/storage/upload/initiate                (fal:upload_initiate)
    PUT  {base}/fal/cdn/presigned/{id}                          (fal:upload)
    POST {base}/fal/cdn/files/upload                            (fal:upload)
    POST {base}/fal/cdn/files/upload/multipart                  (fal:multipart_create)
    PUT  {access_url}/multipart/{uploadId}/{n}                  (fal:multipart_part)
    POST {access_url}/multipart/{uploadId}/complete             (fal:multipart_complete)
    GET  {base}/fal/cdn/files/{token}/{name}                    (fal:download; Range, HEAD)

Status/result/cancel URLs drop the subpath as fal does; a URL hand-built
with the subpath (``…/birefnet/v2/video/requests/{id}``) gets 405.

Choices where the reference is silent: missing/malformed ``Authorization:
Key`` -> 401 ``{"detail": ...}``; result of a cancelled request -> 499
``{"detail": "Request was cancelled", "error_type": "client_cancelled"}``;
a job failure (``job_failure`` fault, engine error) -> COMPLETED with
``error``/``error_type`` and a 500 result ``{"detail": [{... "type":
"internal_server_error"}]}``; input problems and ``completed_with_error`` ->
422 ``{"detail": [...]}``; result JSON expires ``fal_result_ttl`` after
completion (then 404); webhooks (``?fal_webhook=``) are accepted (the submit
response carries ``gateway_request_id``) but not delivered; output URLs are
``{base}/fal/cdn/files/{token}/{name}`` and stop working (404) when the grant
expires; fetching the result again re-mints an expired one.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from vidbatch.emulator import media, schema
from vidbatch.emulator.media import VIDEO_OUTPUT_TYPES, Work
from vidbatch.emulator.runner import Runner, new_job
from vidbatch.emulator.state import EmulatorState, Grant, Job, StoredFile, iso, new_token
from vidbatch.emulator.web import Ctx, guarded, json_response, read_json, save_body, serve_file

BIREFNET_MODELS = ["General Use (Light)", "General Use (Light 2K)", "General Use (Heavy)", "Matting", "Portrait"]
QUALITIES = ["low", "medium", "high", "maximum"]
WRITE_MODES = ["fast", "balanced", "small"]
TARGETS = ["720p", "1080p", "1440p", "2160p"]
#: status streams: how often a job is looked at (wall s), and the keep-alive ping
STREAM_TICK = 0.02
STREAM_PING_SECONDS = 15.0

F = schema.Field
VIDEO_SCHEMA = [
    F("video_url", "str", required=True),
    F("model", "enum", "General Use (Light)", BIREFNET_MODELS + ["General Use (Dynamic)"]),
    F("operating_resolution", "enum", "1024x1024", ["1024x1024", "2048x2048", "2304x2304"]),
    F("output_mask", "bool", False),
    F("refine_foreground", "bool", True),
    F("sync_mode", "bool", False),
    F("video_output_type", "enum", "X264 (.mp4)", list(VIDEO_OUTPUT_TYPES)),
    F("video_quality", "enum", "high", QUALITIES),
    F("video_write_mode", "enum", "balanced", WRITE_MODES),
]
IMAGE_SCHEMA = [
    F("image_url", "str", required=True),
    F("model", "enum", "General Use (Light)", BIREFNET_MODELS),
    F("operating_resolution", "enum", "1024x1024", ["1024x1024", "2048x2048"]),
    F("output_mask", "bool", False),
    F("refine_foreground", "bool", True),
    F("sync_mode", "bool", False),
    F("output_format", "enum", "png", ["png", "webp", "gif"]),
]
SEEDVR_SCHEMA = [
    F("video_url", "str", required=True),
    F("upscale_mode", "enum", "factor", ["factor", "target"]),
    F("upscale_factor", "number", 2.0, ge=1, le=10),
    F("target_resolution", "enum", "1080p", TARGETS),
    F("noise_scale", "number", 0.1, ge=0, le=1),
    F("output_format", "enum", "X264 (.mp4)", list(VIDEO_OUTPUT_TYPES)),
    F("output_quality", "enum", "high", QUALITIES),
    F("output_write_mode", "enum", "balanced", WRITE_MODES),
    F("seed", "int", None),
    F("sync_mode", "bool", False),
]


def _bg(fmt: str) -> str:
    # fal's birefnet writes RGBA; a container without alpha shows it on black
    return "transparent" if fmt in media.ALPHA_FORMATS else "#000000"


def _video_work(v: dict[str, Any]) -> Work:
    fmt = VIDEO_OUTPUT_TYPES[v["video_output_type"]]
    return Work(op="remove-background", fmt=fmt, background=_bg(fmt), mask=v["output_mask"])


def _image_work(v: dict[str, Any]) -> Work:
    return Work(op="remove-background-image", fmt=v["output_format"], mask=v["output_mask"])


def _seedvr_work(v: dict[str, Any]) -> Work:
    fmt = VIDEO_OUTPUT_TYPES[v["output_format"]]
    if v["upscale_mode"] == "target":
        return Work(op="upscale", fmt=fmt, target=v["target_resolution"])
    return Work(op="upscale", fmt=fmt, factor=float(v["upscale_factor"]))


def _video_extra_checks(v: dict[str, Any]) -> list[dict[str, Any]]:
    if v.get("operating_resolution") == "2304x2304" and v.get("model") != "General Use (Dynamic)":
        return [schema.error("operating_resolution",
                             "The '2304x2304' operating resolution is only available for the "
                             "'General Use (Dynamic)' model.", "feature_not_supported", "2304x2304")]
    return []


@dataclass(frozen=True)
class FalModel:
    app: str  # owner/alias: the part status/result URLs keep
    schema: list[schema.Field]
    input_field: str
    work: Callable[[dict[str, Any]], Work]
    output_stem: str
    checks: Callable[[dict[str, Any]], list[dict[str, Any]]] = lambda v: []


MODELS: dict[str, FalModel] = {
    "fal-ai/birefnet/v2/video": FalModel("fal-ai/birefnet", VIDEO_SCHEMA, "video_url", _video_work,
                                         "birefnet-video-output", _video_extra_checks),
    "fal-ai/birefnet/v2": FalModel("fal-ai/birefnet", IMAGE_SCHEMA, "image_url", _image_work, "birefnet-output"),
    "fal-ai/seedvr/upscale/video": FalModel("fal-ai/seedvr", SEEDVR_SCHEMA, "video_url", _seedvr_work,
                                            "seedvr-upscaled"),
}


def _split_app(path: str) -> tuple[str, list[str]]:
    """fal app = owner/alias (``workflows/`` and ``comfy/`` take one more part)."""
    parts = [p for p in path.split("/") if p]
    n = 3 if parts and parts[0] in ("workflows", "comfy") else 2
    return "/".join(parts[:n]), parts[n:]


class FalHTTP:
    name = "fal"

    def authenticate(self, request: Request, state: EmulatorState) -> tuple[str | None, Response | None]:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if not header:
            return None, json_response({"detail": "Missing authentication: send 'Authorization: Key <FAL_KEY>'"}, 401)
        if scheme.lower() != "key" or not value.strip():
            return None, json_response({"detail": "Invalid authentication scheme: expected 'Authorization: Key <FAL_KEY>'"}, 401)
        pinned = state.config.api_key
        if pinned is not None and value.strip() != pinned:
            return None, json_response({"detail": "Invalid API key"}, 401)
        return value.strip(), None

    def rate_limited(self, state: EmulatorState, route: str) -> Response:
        ra = state.faults.config.retry_after
        return json_response({"detail": "Too many requests, please retry later", "error_type": "rate_limited"}, 429,
                             {"retry-after": _retry_after(ra)})

    def server_error(self, state: EmulatorState, route: str) -> Response:
        # alternate between an ingress error (what fal's client retries) and a runner error
        if state.faults.rng.random() < 0.5:
            html = ("<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway"
                    "</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
            return Response(html, status_code=502, media_type="text/html")
        return json_response({"detail": "Runner scheduling failure", "error_type": "runner_scheduling_failure"}, 503,
                             {"x-fal-error-type": "runner_scheduling_failure", "x-fal-retryable": "true",
                              "x-fal-request-id": str(uuid.uuid4())})


class FalCDNHTTP(FalHTTP):
    """Uploads to the CDN authenticate with the storage token, not the key."""

    def authenticate(self, request: Request, state: EmulatorState) -> tuple[str | None, Response | None]:
        header = request.headers.get("authorization", "")
        _, _, token = header.partition(" ")
        info = state.table("fal.tokens").get(token.strip())
        if not header or info is None:
            return None, json_response({"detail": "Missing or invalid storage token"}, 401)
        if info["expires"] <= time.time():
            return None, json_response({"detail": "Storage token expired"}, 401)
        return info["key"], None


def _retry_after(seconds: float) -> str:
    return str(max(0, int(round(seconds))))


class Fal:
    def __init__(self, state: EmulatorState, runner: Runner) -> None:
        self.state, self.runner = state, runner
        self.http, self.cdn_http = FalHTTP(), FalCDNHTTP()

    def routes(self) -> list[Route]:
        return [
            Route("/fal/queue/{path:path}", self.queue, methods=["GET", "POST", "PUT"]),
            Route("/fal/rest/storage/auth/token", self.token, methods=["POST"]),
            Route("/fal/rest/storage/upload/initiate", self.initiate, methods=["POST"]),
            Route("/fal/cdn/presigned/{upload_id}", self.presigned_put, methods=["PUT"]),
            Route("/fal/cdn/files/{path:path}", self.cdn, methods=["GET", "HEAD", "POST", "PUT"]),
        ]

    # ------------------------------------------------------------------ queue
    async def queue(self, request: Request) -> Response:
        path = request.path_params["path"]
        app, rest = _split_app(path)
        method = request.method
        if "requests" in rest:
            i = rest.index("requests")
            if i != 0 or len(rest) < 2:  # subpath before /requests/: fal's URLs never have one
                return json_response({"detail": "Method Not Allowed"}, 405)
            rid, tail = rest[1], rest[2:]
            if method == "GET" and tail == []:
                return await self._g(request, "fal:result", lambda r, c: self.result(r, c, app, rid))
            if method == "GET" and tail == ["status"]:
                return await self._g(request, "fal:status", lambda r, c: self.status(r, c, app, rid))
            if method == "GET" and tail == ["status", "stream"]:
                return await self._g(request, "fal:status_stream", lambda r, c: self.stream(r, c, app, rid))
            if method == "PUT" and tail == ["cancel"]:
                return await self._g(request, "fal:cancel", lambda r, c: self.cancel(r, c, app, rid))
            return json_response({"detail": "Not Found"}, 404)
        if method != "POST":
            return json_response({"detail": "Method Not Allowed"}, 405)
        return await self._g(request, "fal:submit", lambda r, c: self.submit(r, c, path.strip("/")))

    async def _g(self, request: Request, route: str, handler: Any, **kw: Any) -> Response:
        return await guarded(request, self.state, self.http, route, handler, **kw)

    def _urls(self, ctx: Ctx, job: Job) -> dict[str, str]:
        root = f"{ctx.base}/fal/queue/{job.app}/requests/{job.id}"
        return {"response_url": root, "status_url": f"{root}/status", "cancel_url": f"{root}/cancel"}

    async def submit(self, request: Request, ctx: Ctx, model_id: str) -> Response:
        state = self.state
        model = MODELS.get(model_id)
        if model is None:
            return json_response({"detail": f"Application '{model_id}' not found"}, 404)
        body, err = await read_json(request)
        if err is not None:
            state.stats.validation_errors[ctx.route] += 1
            return json_response({"detail": [schema.error(None, err, "json_invalid")]}, 422)
        values, errors = schema.validate(body, model.schema)
        if not errors:
            errors = model.checks(values)
        deferred = bool(errors) and state.config.fal_deferred_validation
        if errors and not deferred:
            state.stats.validation_errors[ctx.route] += 1
            return json_response({"detail": errors}, 422)
        work = model.work(values) if not errors else Work(op="invalid", fmt="mp4")
        job = new_job(state, "fal", model.app, ctx.owner, work, body if isinstance(body, dict) else {})
        job.extra.update(model_id=model_id, output_stem=model.output_stem, values=values,
                         input_field=model.input_field)
        if errors:
            job.fault = "invalid"
            job.extra["validation_detail"] = errors
        else:
            job.fault = state.faults.job_fault("fal")
            job.input_url = values[model.input_field]
            local, _ = state.local_file_for_url(job.input_url)
            if local is not None:
                job.input_file = local
                if local.sha256:
                    state.record_content(job, local.sha256)
        state.add_job(job)
        state.record_submission(job)
        self.runner.start(job)
        data: dict[str, Any] = {"request_id": job.id, **self._urls(ctx, job), "status": "IN_QUEUE",
                                "queue_position": state.account("fal", job.owner).position(job)}
        if request.query_params.get("fal_webhook"):
            data["gateway_request_id"] = job.id
        return json_response(data, 200, {"x-fal-request-id": job.id})

    def _job(self, app: str, rid: str) -> Job | None:
        job = self.state.get_job("fal", rid)
        if job is None or job.app != app:
            return None
        return job

    def _status_body(self, ctx: Ctx, job: Job, logs: bool) -> tuple[int, dict[str, Any]]:
        urls = self._urls(ctx, job)
        base = {"request_id": job.id, **urls}
        if job.state in ("queued", "draft"):
            pos = self.state.account("fal", job.owner).position(job)
            return 202, {"status": "IN_QUEUE", "queue_position": pos, **base}
        if not job.terminal:
            return 202, {"status": "IN_PROGRESS", "logs": list(job.logs) if logs else None, **base}
        run = (job.finished_mono or 0) - (job.started_mono or job.finished_mono or 0)
        body: dict[str, Any] = {"status": "COMPLETED", "logs": list(job.logs) if logs else None,
                                "metrics": {"inference_time": round(self.state.clock.emulated(run), 3)}, **base}
        if job.state != "succeeded":
            body["error"] = job.error
            body["error_type"] = job.error_type
        return 200, body

    async def status(self, request: Request, ctx: Ctx, app: str, rid: str) -> Response:
        job = self._job(app, rid)
        if job is None:
            return json_response({"detail": "Request not found"}, 404)
        job.polls += 1
        logs = request.query_params.get("logs", "0").lower() in ("1", "true")
        code, body = self._status_body(ctx, job, logs)
        return json_response(body, code, {"x-fal-request-id": job.id})

    async def stream(self, request: Request, ctx: Ctx, app: str, rid: str) -> Response:
        job = self._job(app, rid)
        if job is None:
            return json_response({"detail": "Request not found"}, 404)
        job.polls += 1
        logs = request.query_params.get("logs", "0").lower() in ("1", "true")

        async def events() -> Any:
            # like fal: an event on every change (status, queue position, new logs), a
            # comment ping every ~15 s in between, closed after COMPLETED
            last: str | None = None
            pinged = time.monotonic()
            while True:
                _, body = self._status_body(ctx, job, logs)
                text = json.dumps(body)
                if text != last:
                    yield f"data: {text}\n\n".encode()
                    last, pinged = text, time.monotonic()
                    if body["status"] == "COMPLETED":
                        return
                elif time.monotonic() - pinged >= STREAM_PING_SECONDS:
                    yield b": ping\n\n"
                    pinged = time.monotonic()
                await asyncio.sleep(STREAM_TICK)

        return StreamingResponse(events(), media_type="text/event-stream", headers={"x-fal-request-id": job.id})

    async def result(self, request: Request, ctx: Ctx, app: str, rid: str) -> Response:
        state = self.state
        job = self._job(app, rid)
        if job is None:
            return json_response({"detail": "Request not found"}, 404)
        headers = {"x-fal-request-id": job.id}
        if not job.terminal:
            return json_response({"detail": "Request is still in progress"}, 400, headers)
        age = state.clock.emulated(state.clock.mono() - (job.finished_mono or 0))
        if age > state.config.fal_result_ttl:
            return json_response({"detail": "Request not found"}, 404)
        if job.state == "canceled":
            return json_response({"detail": "Request was cancelled", "error_type": "client_cancelled"}, 499, headers)
        if job.state == "failed":
            detail = job.extra.get("validation_detail") or [
                schema.error(job.extra.get("input_field") if job.error_status == 422 else None,
                             job.error or "failed", job.error_type or "internal_server_error", job.input_url)]
            return json_response({"detail": detail}, job.error_status or 500, headers)
        return json_response(await self._output(ctx, job), 200, headers)

    async def _output(self, ctx: Ctx, job: Job) -> dict[str, Any]:
        sync = bool(job.extra["values"].get("sync_mode"))
        files: dict[str, Any] = {}
        for out in job.outputs:
            sf = out.file
            if sync:
                data = await self.runner.io(sf.path.read_bytes)
                url = f"data:{sf.content_type};base64,{base64.b64encode(data).decode()}"
            else:
                grant = self.state.output_grant(out, "fal")
                url = f"{ctx.base}/fal/cdn/files/{grant.token}/{quote(sf.name)}"
            entry: dict[str, Any] = {"url": url, "content_type": sf.content_type, "file_name": sf.name,
                                     "file_size": sf.size}
            info = sf.info
            if info is not None:
                entry.update(width=info.width, height=info.height)
                if job.work is not None and job.work.op != "remove-background-image":
                    entry.update(fps=info.fps, duration=info.duration, num_frames=info.frames)
            image = job.work is not None and job.work.op == "remove-background-image"
            key = ("mask_image" if image else "mask_video") if out.kind == "mask" else ("image" if image else "video")
            files[key] = entry
        if job.extra.get("model_id") == "fal-ai/seedvr/upscale/video":
            seed = job.extra["values"].get("seed")
            if seed is None:
                seed = job.extra.setdefault("seed", self.state.faults.rng.randrange(2**31))
            files["seed"] = seed
        return files

    async def cancel(self, request: Request, ctx: Ctx, app: str, rid: str) -> Response:
        job = self._job(app, rid)
        if job is None:
            return json_response({"status": "NOT_FOUND"}, 404)
        if job.terminal:
            return json_response({"status": "ALREADY_COMPLETED"}, 400)
        self.runner.cancel(job)
        return json_response({"status": "CANCELLATION_REQUESTED"}, 202)

    # ------------------------------------------------------------------ storage
    async def token(self, request: Request) -> Response:
        async def handler(request: Request, ctx: Ctx) -> Response:
            if request.query_params.get("storage_type", "fal-cdn-v3") != "fal-cdn-v3":
                return json_response({"detail": "Unsupported storage_type"}, 400)
            tok = new_token(24)
            expires = time.time() + self.state.clock.real(self.state.config.token_ttl)
            self.state.table("fal.tokens")[tok] = {"key": ctx.credential, "expires": expires}
            return json_response({"token": tok, "token_type": "Bearer", "base_url": f"{ctx.base}/fal/cdn",
                                  "expires_at": iso(expires)})

        return await self._g(request, "fal:token", handler)

    async def initiate(self, request: Request) -> Response:
        async def handler(request: Request, ctx: Ctx) -> Response:
            body, err = await read_json(request)
            if err is not None or not isinstance(body, dict):
                return json_response({"detail": err or "Invalid body"}, 422)
            name = str(body.get("file_name") or "upload.bin")
            ctype = str(body.get("content_type") or "application/octet-stream")
            uid = new_token()
            tok = new_token()
            self.state.table("fal.presigned")[uid] = {"token": tok, "name": name, "content_type": ctype,
                                                      "owner": ctx.owner, "expires": time.time() + 3600}
            sig = hashlib.sha256(self.state.signing_key + uid.encode()).hexdigest()
            return json_response({"upload_url": f"{ctx.base}/fal/cdn/presigned/{uid}?X-Goog-Signature={sig}",
                                  "file_url": f"{ctx.base}/fal/cdn/files/{tok}/{quote(name)}"})

        return await self._g(request, "fal:upload_initiate", handler)

    async def presigned_put(self, request: Request) -> Response:
        async def handler(request: Request, ctx: Ctx) -> Response:
            entry = self.state.table("fal.presigned").get(request.path_params["upload_id"])
            if entry is None or entry["expires"] < time.time():
                return Response("<Error><Code>AccessDenied</Code></Error>", 403, media_type="application/xml")
            await self._store(request, entry["token"], entry["name"],
                              request.headers.get("content-type") or entry["content_type"], entry["owner"], None)
            return Response(status_code=200)

        return await guarded(request, self.state, self.http, "fal:upload", handler, auth=False)

    async def _store(self, request: Request, token: str, name: str, ctype: str, owner: str,
                     ttl: float | None) -> None:
        state = self.state
        path = state.new_path(Path(name).suffix[:8])
        saved = await save_body(request, path)
        sf = state.add_file(path, name, ctype, saved.size, saved.sha256, owner=owner, provider="fal")
        self._register(token, sf, ttl)
        state.stats.uploads["fal"] += 1
        state.stats.upload_bytes["fal"] += saved.size

    def _register(self, token: str, sf: StoredFile, ttl: float | None) -> None:
        expires = None if ttl is None else time.time() + self.state.clock.real(ttl)
        self.state.grants[token] = Grant(token, sf.id, "fal", expires)

    @staticmethod
    def _lifecycle_ttl(request: Request) -> float | None:
        raw = request.headers.get("x-fal-object-lifecycle")
        if not raw:
            return None
        try:
            value = json.loads(raw).get("expiration_duration_seconds")
            return float(value) if value is not None else None
        except (ValueError, AttributeError):
            return None

    async def cdn(self, request: Request) -> Response:
        segs = [unquote(s) for s in request.path_params["path"].split("/") if s]
        method = request.method
        if method == "POST" and segs == ["upload"]:
            return await guarded(request, self.state, self.cdn_http, "fal:upload", self.upload)
        if method == "POST" and segs == ["upload", "multipart"]:
            return await guarded(request, self.state, self.cdn_http, "fal:multipart_create", self.mp_create)
        if len(segs) == 5 and segs[2] == "multipart":
            token, uid, last = segs[0], segs[3], segs[4]
            if method == "PUT" and last.isdigit():
                return await guarded(request, self.state, self.cdn_http, "fal:multipart_part",
                                     lambda r, c: self.mp_part(r, c, token, uid, int(last)))
            if method == "POST" and last == "complete":
                return await guarded(request, self.state, self.cdn_http, "fal:multipart_complete",
                                     lambda r, c: self.mp_complete(r, c, token, uid))
        if method in ("GET", "HEAD") and len(segs) >= 2:
            return await guarded(request, self.state, self.http, "fal:download",
                                 lambda r, c: self.download(r, c, segs[0]), auth=False)
        return json_response({"detail": "Not Found"}, 404)

    async def upload(self, request: Request, ctx: Ctx) -> Response:
        name = request.headers.get("x-fal-file-name") or "upload" + _guess_ext(request.headers.get("content-type"))
        tok = new_token()
        ctype = request.headers.get("content-type") or "application/octet-stream"
        await self._store(request, tok, name, ctype, ctx.owner, self._lifecycle_ttl(request))
        return json_response({"access_url": f"{ctx.base}/fal/cdn/files/{tok}/{quote(name)}"})

    async def mp_create(self, request: Request, ctx: Ctx) -> Response:
        name = request.headers.get("x-fal-file-name") or "upload" + _guess_ext(request.headers.get("content-type"))
        tok, uid = new_token(), new_token()
        self.state.table("fal.multipart")[uid] = {
            "token": tok, "name": name, "owner": ctx.owner, "parts": {}, "ttl": self._lifecycle_ttl(request),
            "content_type": request.headers.get("content-type") or "application/octet-stream"}
        return json_response({"access_url": f"{ctx.base}/fal/cdn/files/{tok}/{quote(name)}", "uploadId": uid})

    async def mp_part(self, request: Request, ctx: Ctx, token: str, uid: str, number: int) -> Response:
        entry = self.state.table("fal.multipart").get(uid)
        if entry is None or entry["token"] != token:
            return json_response({"detail": "Upload not found"}, 404)
        path = self.state.new_path(".part")
        saved = await save_body(request, path)
        etag = saved.md5
        old = entry["parts"].get(number)
        if old is not None:
            Path(old["path"]).unlink(missing_ok=True)
        entry["parts"][number] = {"path": path, "etag": etag, "size": saved.size}
        return Response(status_code=200, headers={"etag": f'"{etag}"'})

    async def mp_complete(self, request: Request, ctx: Ctx, token: str, uid: str) -> Response:
        state = self.state
        entry = state.table("fal.multipart").get(uid)
        if entry is None or entry["token"] != token:
            return json_response({"detail": "Upload not found"}, 404)
        body, err = await read_json(request)
        listed = body.get("parts") if isinstance(body, dict) else None
        if err is not None or not isinstance(listed, list) or not listed:
            return json_response({"detail": "Body must be {\"parts\": [{\"partNumber\", \"etag\"}]}"}, 400)
        order: list[Any] = []
        for item in sorted(listed, key=lambda p: int(p.get("partNumber", 0))):
            part = entry["parts"].get(int(item.get("partNumber", 0)))
            if part is None or str(item.get("etag", "")).strip('"') != part["etag"]:
                return json_response({"detail": f"Invalid part {item.get('partNumber')}"}, 400)
            order.append(part)
        path = state.new_path(Path(entry["name"]).suffix[:8])
        size, sha = await self.runner.io(media.concat_files, [p["path"] for p in order], path)
        sf = state.add_file(path, entry["name"], entry["content_type"], size, sha, owner=entry["owner"], provider="fal")
        self._register(token, sf, entry["ttl"])
        state.table("fal.multipart").pop(uid, None)
        state.stats.uploads["fal"] += 1
        state.stats.upload_bytes["fal"] += size
        return json_response({"access_url": f"{ctx.base}/fal/cdn/files/{token}/{quote(entry['name'])}"})

    async def download(self, request: Request, ctx: Ctx, token: str) -> Response:
        state = self.state
        sf, grant = state.resolve_grant(token)
        if sf is None or grant is None or not state.grant_valid(grant):
            return json_response({"detail": "Not Found"}, 404)
        return serve_file(request, state, sf, "fal", ctx.route)


def _guess_ext(ctype: str | None) -> str:
    ctype = (ctype or "").split(";")[0].strip().lower()
    for fmt, ct in media.CONTENT_TYPES.items():
        if ct == ctype:
            return "." + media.ext_for(fmt)
    return {"image/jpeg": ".jpg"}.get(ctype, ".bin")
