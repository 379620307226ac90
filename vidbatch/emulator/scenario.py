"""Scenario (api.cloud.scenario.com/v1) with its S3 part uploads and signed CDN.

URL layout::

    POST {base}/scenario/v1/uploads                       (scenario:upload_create)
    PUT  {base}/scenario/s3/{uploadId}/{n}?X-Amz-...      (scenario:upload_part; presigned, no auth)
    POST {base}/scenario/v1/uploads/{id}/action           (scenario:upload_action)
    GET  {base}/scenario/v1/uploads/{id}                  (scenario:upload_status)
    POST {base}/scenario/v1/generate/custom/{modelId}     (scenario:submit; ?dryRun=true -> 269)
    GET  {base}/scenario/v1/jobs/{jobId}                  (scenario:status)
    GET  {base}/scenario/v1/jobs                          (scenario:jobs)
    POST {base}/scenario/v1/jobs/{jobId}/action           (scenario:cancel)
    GET  {base}/scenario/v1/assets/{assetId}              (scenario:asset)
    POST {base}/scenario/v1/assets/{assetId}/download     (scenario:asset_download)
    GET  {base}/scenario/cdn/{token}/{name}?Policy=&Signature=&Key-Pair-Id=   (scenario:download)

Choices where the reference is silent:

* Errors are ``{"reason": "<message>", "traceId": "<hex>"}`` (400 invalid
  parameters / unknown asset, 401 credentials, 404 unknown id, 429 adds
  ``remainingSeconds``, ``actionName``, ``actionLimit``; no Retry-After).
* Submit answers 200. Output assets: ``metadata.assetIds`` is ``[video]`` or
  ``[video, mask]``; the mask asset has ``metadata.type == "mask"`` (the
  video ``"video"``, an uploaded input ``"uploaded"``) and
  ``metadata.outputKey`` ``"mask_video"`` / ``"video"``.
* The upscaler has no container parameter: it writes MP4. Background
  removal honours ``videoOutputType`` (default ``VP9 (.webm)``).
* Accepted upload content types for ``kind: video``: video/mp4, video/webm,
  video/quicktime. Every part but the last must be >= 5 MiB
  (``scenario_min_part_size``), checked on ``complete`` (400).
* Upload statuses: pending -> (complete) validating -> validated ->
  imported (``entityId`` = asset id) or failed (``errorMessage``); each
  upload also has an ``upload`` job visible at ``GET /jobs/{jobId}``.
* Compute units (invented): background removal 1 CU per started second of
  input; upscale 1 CU per started 10 output megapixels; failed jobs are
  refunded (``billing.cuCost`` 0).
* CDN URLs carry a CloudFront-style ``Policy`` (base64 JSON with the expiry
  epoch), an HMAC ``Signature`` and ``Key-Pair-Id``; a changed query, or an
  expired policy, gets 403 ``AccessDenied`` XML. ``GET /assets/{id}`` again
  gives a fresh URL.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vidbatch.emulator import media, schema
from vidbatch.emulator.media import VIDEO_OUTPUT_TYPES, Work
from vidbatch.emulator.runner import Runner, new_job
from vidbatch.emulator.state import EmulatorState, Job, Output, StoredFile, iso
from vidbatch.emulator.web import Ctx, guarded, json_response, read_json, save_body, serve_file

PROVIDER = "scenario"
UPLOAD_KINDS = ["3d", "asset", "audio", "avatar", "image", "model", "video"]
VIDEO_TYPES = {"video/mp4", "video/webm", "video/quicktime"}
KEY_PAIR_ID = "K2EMULATORVIDBATCH"

F = schema.Field
BIREFNET = [
    F("video", "str", required=True),
    F("model", "enum", "General Use (Light)",
      ["General Use (Light)", "General Use (Light 2K)", "General Use (Heavy)", "Matting", "Portrait"]),
    F("operatingResolution", "enum", "1024x1024", ["1024x1024", "2048x2048"]),
    F("outputMask", "bool", False),
    F("refineForeground", "bool", True),
    F("videoQuality", "enum", "high", ["low", "medium", "high", "maximum"]),
    F("videoWriteMode", "enum", "balanced", ["fast", "balanced", "small"]),
    F("videoOutputType", "enum", "VP9 (.webm)", list(VIDEO_OUTPUT_TYPES)),
]
SEEDVR = [
    F("video", "str", required=True),
    F("upscaleMode", "enum", "factor", ["factor", "target"]),
    F("upscaleFactor", "number", 2.0, ge=2, le=10),
    F("targetResolution", "enum", "1080p", ["720p", "1080p", "1440p", "2160p"]),
    F("noiseScale", "number", 0.1, ge=0, le=1),
    F("outputQuality", "enum", "high", ["low", "medium", "high", "maximum"]),
    F("outputWriteMode", "enum", "balanced", ["fast", "balanced", "small"]),
    F("seed", "int", None),
]
MODELS = {"model_birefnet-v2-video": BIREFNET, "model_seedvr-2-upscale-video": SEEDVR}

_ALNUM = string.ascii_letters + string.digits


def _rid(prefix: str) -> str:
    return prefix + "".join(secrets.choice(_ALNUM) for _ in range(25))


def _b64(data: bytes) -> str:
    # CloudFront's URL-safe base64 variant
    return base64.b64encode(data).decode().replace("+", "-").replace("=", "_").replace("/", "~")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.replace("-", "+").replace("_", "=").replace("~", "/"))


def err(status: int, reason: str, **extra: Any) -> Response:
    return json_response({"reason": reason, **extra, "traceId": secrets.token_hex(16)}, status)


@dataclass
class Asset:
    id: str
    owner: str
    file: StoredFile
    kind: str
    metadata: dict[str, Any]
    holder: Output
    created: float
    job_id: str | None = None


@dataclass
class Upload:
    id: str
    owner: str
    kind: str
    file_name: str
    content_type: str
    file_size: int | None
    parts_count: int
    source: str  # multipart | url
    job: Job
    created: float
    updated: float
    status: str = "pending"
    url: str | None = None
    parts: dict[int, dict[str, Any]] = field(default_factory=dict)
    entity_id: str | None = None
    error: str | None = None
    asset_options: dict[str, Any] = field(default_factory=dict)


class ScenarioHTTP:
    name = PROVIDER

    def authenticate(self, request: Request, state: EmulatorState) -> tuple[str | None, Response | None]:
        header = request.headers.get("authorization", "")
        if not header:
            return None, err(401, "Missing Authorization header: use Basic base64(<API_KEY>:<API_SECRET>)")
        scheme, _, value = header.partition(" ")
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            decoded = ""
        key, sep, secret = decoded.partition(":")
        if scheme.lower() != "basic" or not sep or not key or not secret:
            return None, err(401, "Invalid Authorization header: expected Basic base64(<API_KEY>:<API_SECRET>)")
        pinned = state.config.api_key
        if pinned is not None and decoded != pinned:
            return None, err(401, "Invalid API key or secret")
        return decoded, None

    def rate_limited(self, state: EmulatorState, route: str) -> Response:
        ra = state.faults.config.retry_after
        return err(429, "Too many requests: concurrency limit reached, retry later",
                   remainingSeconds=int(ra) if float(ra).is_integer() else ra,
                   actionName=route.split(":", 1)[1], actionLimit=state.config.running_limit(PROVIDER) or 10)

    def server_error(self, state: EmulatorState, route: str) -> Response:
        status = state.faults.rng.choice([500, 502, 503])
        reason = {500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}[status]
        return err(status, reason)


class Scenario:
    def __init__(self, state: EmulatorState, runner: Runner) -> None:
        self.state, self.runner = state, runner
        self.http = ScenarioHTTP()

    @property
    def uploads(self) -> dict[str, Upload]:
        return self.state.table("scenario.uploads")

    @property
    def assets(self) -> dict[str, Asset]:
        return self.state.table("scenario.assets")

    def routes(self) -> list[Route]:
        g = self._wrap
        return [
            Route("/scenario/v1/uploads", g("scenario:upload_create", self.upload_create), methods=["POST"]),
            Route("/scenario/v1/uploads/{uid}", g("scenario:upload_status", self.upload_get), methods=["GET"]),
            Route("/scenario/v1/uploads/{uid}/action", g("scenario:upload_action", self.upload_action),
                  methods=["POST"]),
            Route("/scenario/s3/{uid}/{number:int}", g("scenario:upload_part", self.upload_part, auth=False),
                  methods=["PUT"]),
            Route("/scenario/v1/generate/custom/{model_id}", g("scenario:submit", self.generate), methods=["POST"]),
            Route("/scenario/v1/jobs", g("scenario:jobs", self.list_jobs), methods=["GET"]),
            Route("/scenario/v1/jobs/{job_id}", g("scenario:status", self.get_job), methods=["GET"]),
            Route("/scenario/v1/jobs/{job_id}/action", g("scenario:cancel", self.job_action), methods=["POST"]),
            Route("/scenario/v1/assets/{asset_id}", g("scenario:asset", self.get_asset), methods=["GET"]),
            Route("/scenario/v1/assets/{asset_id}/download", g("scenario:asset_download", self.asset_download),
                  methods=["POST"]),
            Route("/scenario/cdn/{token}/{name:path}", g("scenario:download", self.download, auth=False),
                  methods=["GET", "HEAD"]),
        ]

    def _wrap(self, route: str, handler: Any, auth: bool = True) -> Any:
        async def endpoint(request: Request) -> Response:
            return await guarded(request, self.state, self.http, route, handler, auth=auth)

        return endpoint

    # ------------------------------------------------------------------ uploads
    def _sign(self, text: str) -> str:
        return hmac.new(self.state.signing_key, text.encode(), hashlib.sha256).hexdigest()

    def _upload_json(self, ctx: Ctx, up: Upload) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": up.id, "status": up.status, "kind": up.kind, "fileName": up.file_name,
            "contentType": up.content_type, "fileSize": up.file_size, "partsCount": up.parts_count,
            "source": up.source, "jobId": up.job.id, "assetOptions": up.asset_options,
            "createdAt": iso(up.created), "updatedAt": iso(up.updated), "ownerId": "proj_emulator",
            "authorId": "user_" + up.owner,
        }
        if up.source == "multipart":
            expires = up.created + 3600
            data["parts"] = [
                {"number": n, "expires": iso(expires),
                 "url": f"{ctx.base}/scenario/s3/{up.id}/{n}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Expires=3600"
                        f"&X-Amz-Date={int(up.created)}&X-Amz-Signature={self._sign(f'{up.id}/{n}')}"}
                for n in range(1, up.parts_count + 1)
            ]
        else:
            data["url"] = up.url
        if up.entity_id:
            data["entityId"] = up.entity_id
        if up.error:
            data["errorMessage"] = up.error
        return data

    async def upload_create(self, request: Request, ctx: Ctx) -> Response:
        body, error = await read_json(request)
        if error is not None or not isinstance(body, dict):
            return err(400, error or "Body must be a JSON object")
        kind = body.get("kind")
        if kind not in UPLOAD_KINDS:
            return err(400, f"Invalid parameter 'kind': must be one of {', '.join(UPLOAD_KINDS)}")
        now = time.time()
        uid = _rid("upload_")
        job = new_job(self.state, PROVIDER, "upload", ctx.owner, None, {}, _rid("job_"))
        if body.get("url") is not None:
            url = body["url"]
            if not isinstance(url, str) or not url.startswith(("http://", "https://", "data:")):
                return err(400, "Invalid parameter 'url': must be an http(s) URL")
            job.extra["upload_id"] = uid
            up = Upload(uid, ctx.owner, kind, str(body.get("fileName") or Path(url.split("?")[0]).name or "upload"),
                        str(body.get("contentType") or ""), body.get("fileSize"), 0, "url", job, now, now, url=url)
            self.uploads[uid] = up
            self.state.add_job(job)
            asyncio.get_running_loop().create_task(self._import(up))
            return json_response({"upload": self._upload_json(ctx, up)})
        name, ctype, size, parts = (body.get(k) for k in ("fileName", "contentType", "fileSize", "parts"))
        if not isinstance(name, str) or not name:
            return err(400, "Invalid parameter 'fileName': required")
        if not isinstance(ctype, str) or not ctype:
            return err(400, "Invalid parameter 'contentType': required")
        if kind == "video" and ctype not in VIDEO_TYPES:
            return err(400, f"Invalid parameter 'contentType': unsupported video type '{ctype}'")
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            return err(400, "Invalid parameter 'fileSize': must be a positive integer")
        if isinstance(parts, bool) or not isinstance(parts, int) or not 1 <= parts <= 10000:
            return err(400, "Invalid parameter 'parts': must be an integer between 1 and 10000")
        job.extra["upload_id"] = uid
        up = Upload(uid, ctx.owner, kind, name, ctype, size, parts, "multipart", job, now, now,
                    asset_options=body.get("assetOptions") or {})
        self.uploads[uid] = up
        self.state.add_job(job)
        return json_response({"upload": self._upload_json(ctx, up)})

    def _own_upload(self, ctx: Ctx, uid: str) -> Upload | None:
        up = self.uploads.get(uid)
        return up if up is not None and up.owner == ctx.owner else None

    async def upload_get(self, request: Request, ctx: Ctx) -> Response:
        up = self._own_upload(ctx, request.path_params["uid"])
        if up is None:
            return err(404, "Upload not found")
        return json_response({"upload": self._upload_json(ctx, up)})

    async def upload_part(self, request: Request, ctx: Ctx) -> Response:
        uid, number = request.path_params["uid"], request.path_params["number"]
        up = self.uploads.get(uid)
        sig = request.query_params.get("X-Amz-Signature", "")
        if up is None or not hmac.compare_digest(sig, self._sign(f"{uid}/{number}")):
            return _s3_error("SignatureDoesNotMatch", "The request signature we calculated does not match")
        if time.time() > up.created + 3600:
            return _s3_error("AccessDenied", "Request has expired")
        if up.status != "pending" or not 1 <= number <= up.parts_count:
            return _s3_error("NoSuchUpload", "The specified upload does not exist", 404)
        path = self.state.new_path(".part")
        saved = await save_body(request, path)
        old = up.parts.pop(number, None)
        if old is not None:
            Path(old["path"]).unlink(missing_ok=True)
        up.parts[number] = {"path": path, "size": saved.size, "etag": saved.md5}
        up.updated = time.time()
        self.state.stats.upload_bytes[PROVIDER] += saved.size
        return Response(status_code=200, headers={"etag": f'"{saved.md5}"'})

    async def upload_action(self, request: Request, ctx: Ctx) -> Response:
        up = self._own_upload(ctx, request.path_params["uid"])
        if up is None:
            return err(404, "Upload not found")
        body, error = await read_json(request)
        action = body.get("action") if isinstance(body, dict) else None
        if action != "complete":
            return err(400, "Invalid parameter 'action': must be 'complete'")
        if up.source != "multipart" or up.status != "pending":
            return err(400, f"Upload cannot be completed in status '{up.status}'")
        missing = [n for n in range(1, up.parts_count + 1) if n not in up.parts]
        if missing:
            return err(400, f"Missing parts: {', '.join(map(str, missing[:10]))}")
        min_size = self.state.config.scenario_min_part_size
        for n in range(1, up.parts_count):
            if up.parts[n]["size"] < min_size:
                return err(400, f"Part {n} is smaller than the minimum allowed size ({min_size} bytes); "
                                "only the last part may be smaller")
        up.status, up.updated = "validating", time.time()
        asyncio.get_running_loop().create_task(self._import(up))
        return json_response({"upload": self._upload_json(ctx, up)})

    async def _import(self, up: Upload) -> None:
        """Assemble (or fetch), validate and import an upload as an asset."""
        state = self.state
        start = state.clock.mono()
        try:
            if up.source == "url":
                sf = await self.runner.fetch_url(up.url or "", "upload", up.owner, PROVIDER)
                up.status = "validating"
            else:
                paths = [up.parts[n]["path"] for n in range(1, up.parts_count + 1)]
                dst = state.new_path(Path(up.file_name).suffix[:8])
                size, sha = await self.runner.io(media.concat_files, paths, dst)
                sf = state.add_file(dst, up.file_name, up.content_type, size, sha, owner=up.owner, provider=PROVIDER)
            if up.kind == "video":
                sf.info = await self.runner.probe(sf)
            up.status, up.updated = "validated", time.time()
            remaining = state.clock.real(state.config.upload_import_seconds) - (state.clock.mono() - start)
            if remaining > 0:
                await asyncio.sleep(remaining)
            asset = self._new_asset(up.owner, sf, up.kind, {"type": "uploaded", "kind": up.kind}, mints=1)
            up.entity_id, up.status, up.updated = asset.id, "imported", time.time()
            state.stats.uploads[PROVIDER] += 1
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any import problem is the upload's failure
            up.status, up.error, up.updated = "failed", _short(exc), time.time()

    def _new_asset(self, owner: str, sf: StoredFile, kind: str, metadata: dict[str, Any], *, mints: int = 0,
                   job_id: str | None = None) -> Asset:
        aid = _rid("asset_")
        if sf.info is not None:
            metadata = {**metadata, "width": sf.info.width, "height": sf.info.height}
        asset = Asset(aid, owner, sf, kind, metadata, Output(kind, sf, mints=mints), time.time(), job_id)
        self.assets[aid] = asset
        return asset

    # ------------------------------------------------------------------ generate
    async def generate(self, request: Request, ctx: Ctx) -> Response:
        state = self.state
        model_id = request.path_params["model_id"]
        fields = MODELS.get(model_id)
        if fields is None:
            return err(404, f"Model not found: {model_id}")
        body, error = await read_json(request)
        if error is not None:
            state.stats.validation_errors[ctx.route] += 1
            return err(400, error)
        values, errors = schema.validate(body, fields)
        asset = None
        if not errors:
            asset = self.assets.get(values["video"])
            if asset is None or asset.owner != ctx.owner:
                errors = [schema.error("video", f"Asset not found: {values['video']}", "asset_not_found")]
            elif asset.kind != "video" or asset.file.info is None:
                errors = [schema.error("video", "Asset is not a video", "invalid_asset")]
        if errors:
            state.stats.validation_errors[ctx.route] += 1
            return err(400, schema.first_message(errors))
        assert asset is not None and asset.file.info is not None
        info = asset.file.info
        if model_id == "model_birefnet-v2-video":
            fmt = VIDEO_OUTPUT_TYPES[values["videoOutputType"]]
            work = Work(op="remove-background", fmt=fmt, mask=values["outputMask"],
                        background="transparent" if fmt in media.ALPHA_FORMATS else "#000000")
            cost = max(1, math.ceil(info.duration or info.frames / 24))
        elif values["upscaleMode"] == "target":
            work = Work(op="upscale", fmt="mp4", target=values["targetResolution"])
            cost = self._upscale_cost(info, None, values["targetResolution"])
        else:
            work = Work(op="upscale", fmt="mp4", factor=float(values["upscaleFactor"]))
            cost = self._upscale_cost(info, float(values["upscaleFactor"]), None)
        if request.query_params.get("dryRun", "").lower() == "true":
            return json_response({"creativeUnitsCost": cost, "creativeUnitsDiscount": 0,
                                  "costDetails": {"modelId": model_id, "baseCost": cost, "frames": info.frames}}, 269)
        job = new_job(state, PROVIDER, model_id, ctx.owner, work, body, _rid("job_"))
        job.input_file = asset.file
        job.fault = state.faults.job_fault(PROVIDER)
        job.extra.update(cost=cost, history=[], output_stem=model_id.removeprefix("model_"), model_id=model_id)
        job.extra["on_finish"] = self._on_finish
        if asset.file.sha256:
            state.record_content(job, asset.file.sha256)
        state.add_job(job)
        state.record_submission(job)
        self.runner.start(job)
        return json_response({"job": self._job_json(job), "creativeUnitsCost": cost})

    @staticmethod
    def _upscale_cost(info: media.MediaInfo, factor: float | None, target: str | None) -> int:
        from vidbatch.spec import upscaled_size

        w, h = upscaled_size(info.width, info.height, factor, target)
        return max(1, math.ceil(w * h * info.frames / 1e6 / 10))

    def _on_finish(self, job: Job) -> None:
        if job.state != "succeeded":
            return
        ids = []
        for out in job.outputs:
            kind = "mask" if out.kind == "mask" else "video"
            meta = {"type": kind, "outputKey": "mask_video" if kind == "mask" else "video",
                    "kind": "video", "modelId": job.app, "jobId": job.id}
            asset = self._new_asset(job.owner, out.file, "video", meta, job_id=job.id)
            asset.holder = out  # share the grant state (expired_urls applies to the first URL)
            ids.append(asset.id)
        job.extra["asset_ids"] = ids

    def _status(self, job: Job) -> tuple[str, float]:
        state = self.state
        if job.work is None:  # an upload's job
            up = self.uploads.get(job.extra.get("upload_id", ""))
            st = up.status if up else "failed"
            return {"pending": "pending", "validating": "in-progress", "validated": "finalizing",
                    "imported": "success", "failed": "failure"}.get(st, "in-progress"), 1.0 if st == "imported" else 0.5
        if job.state in ("queued", "draft"):
            return "queued", 0.0
        if job.state == "running":
            total = state.clock.real(state.config.job_seconds)
            elapsed = state.clock.mono() - (job.started_mono or state.clock.mono())
            frac = min(0.99, elapsed / total) if total > 0 else {"fetching": 0.05, "processing": 0.5}.get(job.phase, 0.9)
            if job.phase == "fetching":
                return "warming-up", round(frac, 3)
            if job.phase == "finalizing" and (total <= 0 or frac >= 0.9):
                return "finalizing", round(frac, 3)
            return "in-progress", round(frac, 3)
        return {"succeeded": "success", "failed": "failure", "canceled": "canceled"}[job.state], 1.0

    def _job_json(self, job: Job) -> dict[str, Any]:
        status, progress = self._status(job)
        history: list[dict[str, Any]] = job.extra.setdefault("history", [])
        if not history or history[-1]["status"] != status:
            history.append({"date": iso(time.time()), "status": status})
        metadata: dict[str, Any] = {"input": job.request, "assetIds": []}
        if job.work is None:
            up = self.uploads.get(job.extra.get("upload_id", ""))
            if up is not None and up.entity_id:
                metadata["assetIds"] = [up.entity_id]
            if up is not None and up.error:
                metadata["error"] = up.error
        else:
            metadata["modelId"] = job.app
            metadata["assetIds"] = list(job.extra.get("asset_ids", []))
            if job.state in ("failed", "canceled"):
                metadata["error"] = job.error
        cost = job.extra.get("cost", 0) if job.state != "failed" else 0
        return {
            "jobId": job.id, "jobType": "custom" if job.work is not None else "upload", "status": status,
            "progress": progress, "metadata": metadata, "statusHistory": list(history),
            "createdAt": iso(job.created), "updatedAt": iso(job.finished or time.time()),
            "authorId": "user_" + job.owner, "ownerId": "proj_emulator",
            "billing": {"cuCost": cost, "cuDiscount": 0},
        }

    def _own_job(self, ctx: Ctx, job_id: str) -> Job | None:
        job = self.state.get_job(PROVIDER, job_id)
        return job if job is not None and job.owner == ctx.owner else None

    async def get_job(self, request: Request, ctx: Ctx) -> Response:
        job = self._own_job(ctx, request.path_params["job_id"])
        if job is None:
            return err(404, "Job not found")
        job.polls += 1
        return json_response({"job": self._job_json(job)})

    async def list_jobs(self, request: Request, ctx: Ctx) -> Response:
        try:
            size = int(request.query_params.get("pageSize", "50"))
            offset = int(request.query_params.get("paginationToken") or 0)
        except ValueError:
            return err(400, "Invalid parameter 'pageSize' or 'paginationToken'")
        if not 1 <= size <= 200:
            return err(400, "Invalid parameter 'pageSize': must be between 1 and 200")
        want = request.query_params.get("status")
        rows = [self._job_json(j) for j in self.state.jobs[PROVIDER].values() if j.owner == ctx.owner]
        rows = [r for r in rows if not want or r["status"] == want]
        rows.sort(key=lambda r: r["createdAt"], reverse=True)
        page = rows[offset: offset + size]
        data: dict[str, Any] = {"jobs": page}
        if offset + size < len(rows):
            data["nextPaginationToken"] = str(offset + size)
        return json_response(data)

    async def job_action(self, request: Request, ctx: Ctx) -> Response:
        job = self._own_job(ctx, request.path_params["job_id"])
        if job is None:
            return err(404, "Job not found")
        body, _ = await read_json(request)
        if not isinstance(body, dict) or body.get("action") != "cancel":
            return err(400, "Invalid parameter 'action': must be 'cancel'")
        return err(400, "Cannot cancel this type of job")

    # ------------------------------------------------------------------ assets
    def _signed_url(self, ctx: Ctx, asset: Asset) -> str:
        grant = self.state.output_grant(asset.holder, PROVIDER)
        path = f"/scenario/cdn/{grant.token}/{quote(asset.file.name)}"
        expires = int(grant.expires or time.time() + 86400)
        policy = json.dumps({"Statement": [{"Resource": f"{ctx.base}{path}",
                                            "Condition": {"DateLessThan": {"AWS:EpochTime": expires}}}]},
                            separators=(",", ":"))
        p64 = _b64(policy.encode())
        sig = _b64(hmac.new(self.state.signing_key, p64.encode(), hashlib.sha256).digest())
        return f"{ctx.base}{path}?Policy={p64}&Signature={sig}&Key-Pair-Id={KEY_PAIR_ID}"

    def _asset_json(self, ctx: Ctx, asset: Asset) -> dict[str, Any]:
        sf, info = asset.file, asset.file.info
        props: dict[str, Any] = {"size": sf.size}
        if info is not None:
            props.update(width=info.width, height=info.height, duration=info.duration, frameRate=info.fps,
                         frames=info.frames)
        return {
            "id": asset.id, "url": self._signed_url(ctx, asset), "mimeType": sf.content_type, "kind": asset.kind,
            "metadata": dict(asset.metadata), "properties": props, "status": "success", "source": "emulator",
            "ownerId": "proj_emulator", "authorId": "user_" + asset.owner, "collectionIds": [], "tags": [],
            "createdAt": iso(asset.created), "updatedAt": iso(asset.created),
        }

    async def get_asset(self, request: Request, ctx: Ctx) -> Response:
        asset = self.assets.get(request.path_params["asset_id"])
        if asset is None or asset.owner != ctx.owner:
            return err(404, "Asset not found")
        return json_response({"asset": self._asset_json(ctx, asset)})

    async def asset_download(self, request: Request, ctx: Ctx) -> Response:
        asset = self.assets.get(request.path_params["asset_id"])
        if asset is None or asset.owner != ctx.owner:
            return err(404, "Asset not found")
        return json_response({"url": self._signed_url(ctx, asset)})

    async def download(self, request: Request, ctx: Ctx) -> Response:
        state = self.state
        token = request.path_params["token"]
        sf, grant = state.resolve_grant(token)
        policy = request.query_params.get("Policy", "")
        sig = request.query_params.get("Signature", "")
        good = _b64(hmac.new(state.signing_key, policy.encode(), hashlib.sha256).digest())
        if sf is None or grant is None or not policy or not hmac.compare_digest(sig, good) \
                or request.query_params.get("Key-Pair-Id") != KEY_PAIR_ID:
            return _s3_error("AccessDenied", "Access denied")
        try:
            stmt = json.loads(_unb64(policy))["Statement"][0]
            expires = float(stmt["Condition"]["DateLessThan"]["AWS:EpochTime"])
            resource = unquote(stmt["Resource"])
        except (ValueError, KeyError, IndexError, TypeError, binascii.Error):
            return _s3_error("AccessDenied", "Malformed policy")
        if not resource.endswith(unquote(request.url.path)) or expires <= time.time() or not state.grant_valid(grant):
            return _s3_error("AccessDenied", "Access denied")
        return serve_file(request, state, sf, PROVIDER, ctx.route)


def _s3_error(code: str, message: str, status: int = 403) -> Response:
    body = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message></Error>'
    return Response(body, status_code=status, media_type="application/xml")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


__all__ = ["Scenario"]
