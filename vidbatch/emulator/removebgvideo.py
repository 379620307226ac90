"""removebgvideo.com (api.removebgvideo.com) with its upload CDN.

URL layout::

    POST {base}/removebgvideo/v1/uploads            multipart field "file"  (removebgvideo:upload)
    POST {base}/removebgvideo/api/upload            legacy alias            (removebgvideo:upload)
    POST {base}/removebgvideo/v1/jobs                                       (removebgvideo:submit)
    POST {base}/removebgvideo/v1/jobs/{id}/start                            (removebgvideo:start)
    GET  {base}/removebgvideo/v1/jobs/{id}                                  (removebgvideo:status)
    GET  {base}/removebgvideo/v1/jobs?limit=&offset=&status=                (removebgvideo:list)
    GET  {base}/removebgvideo/api/download/{id}                             (removebgvideo:download_url)
    GET  {base}/removebgvideo/api/pricing                 no key needed     (removebgvideo:pricing)
    GET  {base}/removebgvideo/v1/usage/summary?days=N                       (removebgvideo:usage)
    GET  {base}/removebgvideo/v1/usage/events?limit=N                       (removebgvideo:usage)
    GET  {base}/removebgvideo/health                      no key needed     (removebgvideo:health)
    GET  {base}/removebgvideo/cdn/{token}/{name}?expires=&signature=        (removebgvideo:download)

Choices where the reference is silent:

* ``insufficient_credits`` is HTTP **402** (only with ``removebgvideo_credits``
  set: creating or starting a job with a balance <= 0). Credits are deducted
  on completion: credits/minute of the model x input duration.
* Errors are ``{"error": {"code", "message", "request_id"}}``; validation is
  400 ``invalid_request``; upload problems are 400 ``invalid_request`` with
  "Invalid file type" / "File too large"; another key's job is 404
  ``not_found`` "Job not found".
* Statuses: draft ``created``; started but waiting ``pending``; running
  ``processing``; ``completed`` / ``failed``. The create response carries
  the status at that instant (``pending`` when auto-started).
* ``billing_status``: ``pending`` until terminal, then ``charged`` or
  ``not_charged`` (failed). ``webhook_url`` is stored, never called.
* ``transparent`` with a format without alpha (mp4) is composited on black;
  bg_type ``green`` #00ff00, ``blue`` #0000ff, ``white``, ``black``;
  ``custom``/``color`` need ``bg_color`` [r, g, b] (or ``background.color``,
  hex or 0-1 floats); ``image`` needs ``background.image_url``.
* Output URLs expire after ``url_ttl`` (403 XML); ``GET /v1/jobs/{id}`` or
  ``/api/download/{id}`` again returns a fresh one. ``/api/*`` accepts a
  missing key (as the docs' examples do); with a key, ownership is checked.
* ``/api/download`` on another key's job, or an unknown id: 404.
"""

from __future__ import annotations

import hashlib
import hmac
import mimetypes
import secrets
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vidbatch.emulator import media, schema
from vidbatch.emulator.media import Work
from vidbatch.emulator.runner import Runner, new_job
from vidbatch.emulator.state import EmulatorState, Job, iso
from vidbatch.emulator.web import BodyTooLarge, Ctx, guarded, json_response, read_json, save_multipart, serve_file

PROVIDER = "removebgvideo"
CREDITS_PER_MINUTE = {"original": 60, "light": 45, "pro": 180, "human": 45}
UPLOAD_TYPES = {"video/mp4", "video/quicktime", "video/webm", "video/x-msvideo"}
BG_COLORS = {"green": "#00ff00", "white": "#ffffff", "black": "#000000", "blue": "#0000ff"}
F = schema.Field
JOB_SCHEMA = [
    F("video_url", "str", required=True),
    F("model", "enum", "original", list(CREDITS_PER_MINUTE)),
    F("bg_type", "enum", "transparent", ["transparent", "color", "image", "green", "white", "black", "blue", "custom"]),
    F("bg_color", "list", None),
    F("output_format", "enum", "webm", ["webm", "mov", "mp4", "gif", "webp", "png_sequence"]),
    F("text_prompt", "str", None),
    F("webhook_url", "str", None),
    F("auto_start", "bool", True),
    F("preview_duration", "number", None, ge=0),
]
OVERRIDABLE = ("model", "bg_type", "bg_color", "output_format", "text_prompt", "webhook_url", "background",
               "composition", "preview_duration")


def error(status: int, code: str, message: str) -> Response:
    return json_response({"error": {"code": code, "message": message, "request_id": "req_" + secrets.token_hex(8)}},
                         status)


class RemoveBgHTTP:
    name = PROVIDER

    def authenticate(self, request: Request, state: EmulatorState) -> tuple[str | None, Response | None]:
        key = request.headers.get("x-api-key")
        if key is None:
            return None, error(401, "missing_api_key", "Missing API key: send it in the X-Api-Key header")
        key = key.strip()
        if not key or (state.config.api_key is not None and key != state.config.api_key):
            return None, error(401, "invalid_api_key", "Invalid API key")
        return key, None

    def rate_limited(self, state: EmulatorState, route: str) -> Response:
        resp = error(429, "rate_limited", "Rate limit exceeded, retry later")
        resp.headers["retry-after"] = str(max(0, int(round(state.faults.config.retry_after))))
        return resp

    def server_error(self, state: EmulatorState, route: str) -> Response:
        return error(500, "internal_error", "Processing failed")


def _hex(color: Any) -> str | None:
    """[r, g, b] 0-255, [r, g, b] 0-1 floats, or "#rrggbb" -> "#rrggbb"."""
    if isinstance(color, str):
        text = color.strip().lstrip("#")
        if len(text) == 6 and all(c in "0123456789abcdefABCDEF" for c in text):
            return "#" + text.lower()
        return None
    if isinstance(color, list) and len(color) == 3 and all(
            isinstance(c, (int, float)) and not isinstance(c, bool) for c in color):
        if all(isinstance(c, float) and 0 <= c <= 1 for c in color):
            color = [round(c * 255) for c in color]
        if all(0 <= c <= 255 for c in color):
            return "#" + "".join(f"{int(c):02x}" for c in color)
    return None


def _work(values: dict[str, Any], background: Any) -> tuple[Work | None, str | None]:
    fmt = values["output_format"]
    bg_url = None
    if background is not None:
        if not isinstance(background, dict) or background.get("type") not in ("transparent", "color", "image"):
            return None, "background.type must be one of transparent, color, image"
        kind = background["type"]
        if kind == "color":
            bg = _hex(background.get("color"))
            if bg is None:
                return None, "background.color must be a hex colour or an RGB array"
        elif kind == "image":
            bg_url = background.get("image_url")
            if not isinstance(bg_url, str) or not bg_url:
                return None, "background.image_url is required for background type 'image'"
            bg = "transparent"
        else:
            bg = "transparent"
    else:
        kind = values["bg_type"]
        if kind in BG_COLORS:
            bg = BG_COLORS[kind]
        elif kind in ("custom", "color"):
            bg = _hex(values.get("bg_color"))
            if bg is None:
                return None, f"bg_color [r, g, b] is required for bg_type '{kind}'"
        elif kind == "image":
            return None, "bg_type 'image' requires background.image_url"
        else:
            bg = "transparent"
    if bg == "transparent" and bg_url is None and fmt not in media.ALPHA_FORMATS:
        bg = "#000000"  # mp4 has no alpha: composite on black
    return Work(op="remove-background", fmt=fmt, background=bg, background_url=bg_url), None


class RemoveBgVideo:
    def __init__(self, state: EmulatorState, runner: Runner) -> None:
        self.state, self.runner = state, runner
        self.http = RemoveBgHTTP()

    def routes(self) -> list[Route]:
        g = self._wrap
        r = "/removebgvideo"
        return [
            Route(f"{r}/v1/uploads", g("removebgvideo:upload", self.upload), methods=["POST"]),
            Route(f"{r}/api/upload", g("removebgvideo:upload", self.upload), methods=["POST"]),
            Route(f"{r}/v1/jobs", g("removebgvideo:submit", self.create), methods=["POST"]),
            Route(f"{r}/v1/jobs", g("removebgvideo:list", self.list_jobs), methods=["GET"]),
            Route(f"{r}/v1/jobs/{{job_id}}", g("removebgvideo:status", self.get_job), methods=["GET"]),
            Route(f"{r}/v1/jobs/{{job_id}}/start", g("removebgvideo:start", self.start), methods=["POST"]),
            Route(f"{r}/api/download/{{job_id}}", g("removebgvideo:download_url", self.download_url, optional=True),
                  methods=["GET"]),
            Route(f"{r}/api/pricing", g("removebgvideo:pricing", self.pricing, optional=True), methods=["GET"]),
            Route(f"{r}/v1/usage/summary", g("removebgvideo:usage", self.usage_summary), methods=["GET"]),
            Route(f"{r}/v1/usage/events", g("removebgvideo:usage", self.usage_events), methods=["GET"]),
            Route(f"{r}/health", g("removebgvideo:health", self.health, optional=True), methods=["GET"]),
            Route(f"{r}/cdn/{{token}}/{{name:path}}", g("removebgvideo:download", self.download, optional=True,
                                                        open_=True), methods=["GET", "HEAD"]),
        ]

    def _wrap(self, route: str, handler: Any, optional: bool = False, open_: bool = False) -> Any:
        async def endpoint(request: Request) -> Response:
            return await guarded(request, self.state, self.http, route, handler, auth=not optional,
                                 optional_auth=optional and not open_)

        return endpoint

    @property
    def events(self) -> dict[str, list[dict[str, Any]]]:
        return self.state.table("removebgvideo.events")

    def _event(self, job: Job, kind: str) -> None:
        self.events.setdefault(job.owner, []).append(
            {"id": "evt_" + secrets.token_hex(8), "type": kind, "job_id": job.id, "created_at": iso(time.time())})

    # ------------------------------------------------------------------ upload
    async def upload(self, request: Request, ctx: Ctx) -> Response:
        state = self.state
        limit = state.config.removebgvideo_max_upload
        try:
            parts = await save_multipart(request, state.new_path, limit)
        except BodyTooLarge:
            return error(400, "invalid_request", "File too large")
        except ValueError as exc:
            return error(400, "invalid_request", f"Invalid multipart body: {exc}")
        files = [p for p in parts if p.field == "file" and p.path is not None]
        for p in parts:
            if p not in files[:1] and p.path is not None:
                p.path.unlink(missing_ok=True)
        if not files:
            return error(400, "invalid_request", "No file uploaded: send multipart field 'file'")
        part = files[0]
        assert part.path is not None
        ctype = (part.content_type or "").split(";")[0].strip().lower()
        if ctype not in UPLOAD_TYPES:
            ctype = (mimetypes.guess_type(part.filename or "")[0] or "").lower()
        if ctype not in UPLOAD_TYPES:
            part.path.unlink(missing_ok=True)
            return error(400, "invalid_request", "Invalid file type")
        name = Path(part.filename or "upload").name or "upload"
        sf = state.add_file(part.path, name, ctype, part.size, part.sha256, owner=ctx.owner, provider=PROVIDER)
        grant = state.grant(sf, PROVIDER, None)
        state.stats.uploads[PROVIDER] += 1
        state.stats.upload_bytes[PROVIDER] += part.size
        return json_response({"success": True, "video_id": "vid_" + sf.id[:16],
                              "video_url": f"{ctx.base}/removebgvideo/cdn/{grant.token}/{quote(name)}",
                              "filename": name, "size": part.size})

    # ------------------------------------------------------------------ jobs
    def _validate(self, body: Any) -> tuple[dict[str, Any], Work | None, str | None]:
        values, errors = schema.validate(body, JOB_SCHEMA)
        if errors:
            return values, None, schema.first_message(errors)
        work, problem = _work(values, body.get("background"))
        return values, work, problem

    def _credits_left(self, owner: str) -> float | None:
        total = self.state.config.removebgvideo_credits
        if total is None:
            return None
        return total - self.state.table("removebgvideo.spent").get(owner, 0.0)

    async def create(self, request: Request, ctx: Ctx) -> Response:
        state = self.state
        body, problem = await read_json(request)
        if problem is None and not isinstance(body, dict):
            problem = "Body must be a JSON object"
        values: dict[str, Any] = {}
        work = None
        if problem is None:
            values, work, problem = self._validate(body)
        if problem is not None or work is None:
            state.stats.validation_errors[ctx.route] += 1
            return error(400, "invalid_request", problem or "Invalid request")
        left = self._credits_left(ctx.owner)
        if values["auto_start"] and left is not None and left <= 0:
            return error(402, "insufficient_credits", "Not enough credits to process this video")
        job = new_job(state, PROVIDER, values["model"], ctx.owner, work, body, "job_" + secrets.token_hex(12))
        job.input_url = values["video_url"]
        job.extra.update(values=values, output_stem="output", on_finish=self._on_finish)
        local, _ = state.local_file_for_url(job.input_url)
        if local is not None:
            job.input_file = local
            if local.sha256:
                state.record_content(job, local.sha256)
        state.add_job(job)
        state.record_submission(job)
        self._event(job, "job.created")
        if values["auto_start"]:
            self._start(job)
            message = "Job created and processing started"
        else:
            job.state = "draft"
            message = "Job created; call /v1/jobs/{id}/start to process it"
        return json_response({"success": True, "id": job.id, "status": self._status(job), "message": message})

    def _start(self, job: Job) -> None:
        job.fault = self.state.faults.job_fault(PROVIDER)
        self._event(job, "job.started")
        self.runner.start(job)

    def _on_finish(self, job: Job) -> None:
        if job.state == "succeeded":
            info = job.input_info
            duration = info.duration if info else 0.0
            cost = round(CREDITS_PER_MINUTE[job.app] * duration / 60, 2)
            job.extra["credits"] = cost
            spent = self.state.table("removebgvideo.spent")
            spent[job.owner] = spent.get(job.owner, 0.0) + cost
            self._event(job, "job.completed")
        else:
            self._event(job, "job.failed")

    async def start(self, request: Request, ctx: Ctx) -> Response:
        job = self._own(ctx, request.path_params["job_id"])
        if job is None:
            return error(404, "not_found", "Job not found")
        body, problem = await read_json(request)
        if problem is not None or not isinstance(body, dict):
            return error(400, "invalid_request", problem or "Body must be a JSON object")
        if job.state != "draft":
            return error(400, "invalid_request", f"Job already started (status {self._status(job)})")
        merged = {**job.request, **{k: v for k, v in body.items() if k in OVERRIDABLE}}
        values, work, problem = self._validate(merged)
        if problem is not None or work is None:
            self.state.stats.validation_errors[ctx.route] += 1
            return error(400, "invalid_request", problem or "Invalid request")
        left = self._credits_left(ctx.owner)
        if left is not None and left <= 0:
            return error(402, "insufficient_credits", "Not enough credits to process this video")
        job.request, job.work, job.app = merged, work, values["model"]
        job.extra["values"] = values
        self._start(job)
        return json_response({"success": True, "id": job.id, "status": "processing", "message": "Job started"})

    def _own(self, ctx: Ctx, job_id: str) -> Job | None:
        job = self.state.get_job(PROVIDER, job_id)
        if job is None or (ctx.credential is not None and job.owner != ctx.owner):
            return None
        return job

    @staticmethod
    def _status(job: Job) -> str:
        return {"draft": "created", "queued": "pending", "running": "processing", "succeeded": "completed",
                "failed": "failed", "canceled": "failed"}[job.state]

    def _progress(self, job: Job) -> int:
        if job.state == "succeeded":
            return 100
        if job.state != "running":
            return 0
        state = self.state
        total = state.clock.real(state.config.job_seconds)
        elapsed = state.clock.mono() - (job.started_mono or state.clock.mono())
        if total > 0:
            return max(1, min(99, int(100 * elapsed / total)))
        return {"fetching": 5, "processing": 50}.get(job.phase, 95)

    def _output_url(self, ctx: Ctx, job: Job) -> str | None:
        if job.state != "succeeded" or not job.outputs:
            return None
        out = job.outputs[0]
        grant = self.state.output_grant(out, PROVIDER)
        expires = int(grant.expires or time.time() + 86400)
        sig = hmac.new(self.state.signing_key, f"{grant.token}:{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{ctx.base}/removebgvideo/cdn/{grant.token}/{quote(out.file.name)}?expires={expires}&signature={sig}"

    def _job_json(self, ctx: Ctx, job: Job) -> dict[str, Any]:
        values = job.extra.get("values", {})
        terminal_billing = "charged" if job.state == "succeeded" else "not_charged"
        return {
            "success": True, "id": job.id, "status": self._status(job), "progress": self._progress(job),
            "output_url": self._output_url(ctx, job),
            "error": job.error if job.state in ("failed", "canceled") else None,
            "created_at": iso(job.created),
            "duration_seconds": job.input_info.duration if job.input_info and job.state == "succeeded" else None,
            "billing_status": terminal_billing if job.terminal else "pending",
            "credits_used": job.extra.get("credits"),
            "webhook_url": values.get("webhook_url"), "webhook_events": {},
            "model": values.get("model"), "bg_type": values.get("bg_type"),
            "output_format": values.get("output_format"), "metadata": (job.request or {}).get("metadata"),
        }

    async def get_job(self, request: Request, ctx: Ctx) -> Response:
        job = self._own(ctx, request.path_params["job_id"])
        if job is None:
            return error(404, "not_found", "Job not found")
        job.polls += 1
        return json_response(self._job_json(ctx, job))

    async def list_jobs(self, request: Request, ctx: Ctx) -> Response:
        q = request.query_params
        try:
            limit, offset = int(q.get("limit", "20")), int(q.get("offset", "0"))
        except ValueError:
            return error(400, "invalid_request", "limit and offset must be integers")
        if not 1 <= limit <= 100 or offset < 0:
            return error(400, "invalid_request", "limit must be 1-100 and offset >= 0")
        jobs = [j for j in self.state.jobs[PROVIDER].values() if j.owner == ctx.owner]
        if q.get("status"):
            jobs = [j for j in jobs if self._status(j) == q["status"]]
        jobs.sort(key=lambda j: j.created, reverse=True)
        page = [self._job_json(ctx, j) for j in jobs[offset: offset + limit]]
        return json_response({"success": True, "jobs": page, "total": len(jobs), "limit": limit, "offset": offset})

    async def download_url(self, request: Request, ctx: Ctx) -> Response:
        job = self._own(ctx, request.path_params["job_id"])
        if job is None:
            return error(404, "not_found", "Job not found")
        if job.state != "succeeded":
            return error(400, "invalid_request", "Job not completed")
        return json_response({"success": True, "download_url": self._output_url(ctx, job),
                              "output_format": job.extra["values"]["output_format"]})

    async def download(self, request: Request, ctx: Ctx) -> Response:
        state = self.state
        sf, grant = state.resolve_grant(request.path_params["token"])
        if sf is None or grant is None:
            return _xml(404, "NoSuchKey", "The specified key does not exist.")
        if grant.expires is not None:  # output URLs are signed; uploads are plain
            q = request.query_params
            good = hmac.new(state.signing_key, f"{grant.token}:{q.get('expires', '')}".encode(),
                            hashlib.sha256).hexdigest()
            if not hmac.compare_digest(q.get("signature", ""), good):
                return _xml(403, "AccessDenied", "Invalid signature")
            if not state.grant_valid(grant) or float(q.get("expires", "0")) <= time.time():
                return _xml(403, "AccessDenied", "Request has expired")
        return serve_file(request, state, sf, PROVIDER, ctx.route)

    # ------------------------------------------------------------------ account
    async def pricing(self, request: Request, ctx: Ctx) -> Response:
        return json_response({
            "success": True, "model_pricing_credits_per_minute": CREDITS_PER_MINUTE, "price_per_second_cents": 1,
            "packages": [{"id": "starter", "name": "Starter", "credits": 600, "price_usd": 9.99},
                         {"id": "pro", "name": "Pro", "credits": 3000, "price_usd": 39.99},
                         {"id": "business", "name": "Business", "credits": 12000, "price_usd": 129.99}],
        })

    async def usage_summary(self, request: Request, ctx: Ctx) -> Response:
        try:
            days = int(request.query_params.get("days", "7"))
        except ValueError:
            days = 0
        if not 1 <= days <= 90:
            return error(400, "invalid_request", "days must be between 1 and 90")
        since = time.time() - days * 86400
        jobs = [j for j in self.state.jobs[PROVIDER].values() if j.owner == ctx.owner and j.created >= since]
        daily: dict[str, Counter[str]] = {}
        for j in jobs:
            day = datetime.fromtimestamp(j.created, timezone.utc).date().isoformat()
            c = daily.setdefault(day, Counter())
            c["jobs"] += 1
            c[self._status(j)] += 1
            c["credits_used"] += j.extra.get("credits") or 0
            c["duration_seconds"] += j.input_info.duration if j.input_info and j.state == "succeeded" else 0
        rows = [{"date": d, "jobs": c["jobs"], "completed": c["completed"], "failed": c["failed"],
                 "credits_used": round(c["credits_used"], 2), "duration_seconds": round(c["duration_seconds"], 3)}
                for d, c in sorted(daily.items())]
        totals = {k: round(sum(r[k] for r in rows), 3) for k in ("jobs", "completed", "failed", "credits_used",
                                                                    "duration_seconds")}
        left = self._credits_left(ctx.owner)
        return json_response({"success": True, "days": days, "totals": totals, "daily": rows,
                              "credits_remaining": None if left is None else round(left, 2)})

    async def usage_events(self, request: Request, ctx: Ctx) -> Response:
        try:
            limit = int(request.query_params.get("limit", "20"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 100:
            return error(400, "invalid_request", "limit must be between 1 and 100")
        events = self.events.get(ctx.owner, [])[-limit:][::-1]
        return json_response({"success": True, "events": events})

    async def health(self, request: Request, ctx: Ctx) -> Response:
        return json_response({"status": "ok", "time": iso(time.time())})


def _xml(status: int, code: str, message: str) -> Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Response(body, status_code=status, media_type="application/xml")


__all__ = ["RemoveBgVideo"]
