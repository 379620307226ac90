"""removebgvideo.com: video background removal with colour/image backgrounds.

Protocol (``/work/shared/providers/removebgvideo.md``)::

    POST /v1/uploads   multipart field ``file`` (<= 500 MB; mp4/mov/webm/avi) -> video_url
    POST /v1/jobs      {video_url, model, bg_type, output_format, auto_start, ...} -> {id, status}
    GET  /v1/jobs/{id} -> status created/pending/processing -> completed (output_url) / failed (error)
    GET  /api/download/{id} -> {download_url}  (fallback when a completed job lacks output_url)
    GET  /v1/jobs?limit=&offset=  (list: used to re-check an uncertain submit)

Normalized -> native mapping (``model``, ``bg_type`` and ``output_format`` are
always sent: the official Python SDK defaults ``bg_type`` to green):

=========================  =======================================================
vidbatch                   removebgvideo ``POST /v1/jobs``
=========================  =======================================================
model                      ``model``: original (default) / light / pro / human
format                     ``output_format``: webm, mov, mp4, gif, webp, png_sequence
background transparent     ``bg_type: "transparent"`` (+ ``background {"type":"transparent"}``);
                           needs an alpha format (mp4 refused)
background ``#rrggbb``     ``bg_type: "custom"``, ``bg_color: [r, g, b]``,
                           ``background {"type": "color", "color": "#rrggbb"}``
background image URL       ``bg_type: "image"``, ``background {"type": "image", "image_url": ...}``
                           (http(s) as is; s3:// presigned at submit; local paths refused)
mask: true                 refused (no mask output is offered)
upscale                    not offered
=========================  =======================================================

Native extras allowed in ``params``: ``text_prompt`` (model pro only),
``composition``, ``preview_duration``, ``webhook_url``, ``metadata`` (merged with
vidbatch's tag).

Choices where the docs say UNKNOWN:

* ``insufficient_credits`` HTTP status: the error *code* decides (any status ->
  ``QuotaError``; a bare 402 too).
* Billing rounding: credits = rate/min x ceil(duration s) / 60. USD per credit:
  ``options.usd_per_credit`` if set, else ``usd=None`` (units are credits).
* Cancel: no endpoint exists -> ``cancel`` returns False; the job runs on.
* Result URL lifetime ("time-bound"): a 403/404/410 on download re-reads the
  job (``GET /v1/jobs/{id}``, then ``/api/download/{id}``) for a fresh URL.
* Re-check after an uncertain submit: every job is created with
  ``metadata.vidbatch_token`` = sha256(spec, staged input)[:24]; ``recheck_submit``
  pages ``GET /v1/jobs`` (up to 5 x 100) for a job created since the submit with
  that token (or, if the list omits metadata, the same ``video_url``, which is
  unique per upload).
* List response shape: ``jobs`` / ``data`` / ``items`` or a bare list accepted.
* Upload limit: 500 MB read as 500,000,000 bytes (the stricter reading).

Credential: ``REMOVEBGVIDEO_API_KEY`` (``X-Api-Key``).
URL: ``options.api_url`` > ``base_url`` + ``/removebgvideo`` > ``VIDBATCH_REMOVEBGVIDEO_URL``
> ``https://api.removebgvideo.com``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import posixpath
import time
from typing import Any, Mapping

import httpx

from vidbatch import storage
from vidbatch.errors import (
    AuthError,
    ConfigError,
    InputError,
    JobGoneError,
    PermanentError,
    ProviderError,
    QuotaError,
    RateLimitedError,
    ResultError,
    StorageError,
    SubmitUncertainError,
    TransientError,
)
from vidbatch.providers.base import OperationInfo
from vidbatch.providers.http import (
    HostedProvider,
    MultipartForm,
    absolute,
    body_text,
    classify,
    guess_type,
    json_of,
    parse_json,
    parse_retry_after,
    request,
    resolve_url,
    utc_iso_to_epoch,
)
from vidbatch.providers.params import RBV_MODELS, RbvJob, merge, native
from vidbatch.spec import (
    ALPHA_FORMATS,
    Artifact,
    Cost,
    Item,
    JobHandle,
    JobSpec,
    JobState,
    JobStatus,
    MediaInfo,
    StagedInput,
    canonical_json,
)

PROVIDER = "removebgvideo"
API_URL = "https://api.removebgvideo.com"
FORMATS = ("webm", "mov", "mp4", "gif", "webp", "png_sequence")
#: credits per minute of billed video (/docs/getting-started/credits/)
CREDITS_PER_MINUTE = {"original": 60, "light": 45, "pro": 180, "human": 45}
MAX_UPLOAD = 500_000_000
UPLOAD_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".avi": "video/x-msvideo",
}
#: what a probe reports as the container (PyAV format names)
CONTAINERS = ("mp4", "mov", "quicktime", "webm", "matroska", "avi")
OUTPUT_TYPES = {
    "webm": "video/webm",
    "mov": "video/quicktime",
    "mp4": "video/mp4",
    "gif": "image/gif",
    "webp": "image/webp",
    "png_sequence": "application/zip",
}
PRESIGN_MARGIN = 3600

QUEUED = {"created", "pending", "queued"}
RUNNING = {"processing", "running", "started", "in_progress"}
SUCCEEDED = {"completed", "succeeded", "success", "done"}
FAILED = {"failed", "failure", "error"}
CANCELED = {"canceled", "cancelled"}


# --------------------------------------------------------------------------- errors


def error_info(resp: httpx.Response) -> tuple[str, str]:
    """(code, message) of ``{"error": {"code", "message", "request_id"}}`` (or a top-level message)."""
    data = parse_json(resp)
    code, message = "", ""
    if isinstance(data, dict):
        err = data.get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or "")
            message = str(err.get("message") or "")
            if err.get("request_id"):
                message += f" (request_id {err['request_id']})"
        elif isinstance(err, str):
            message = err
        code = code or str(data.get("code") or "")
        message = message or str(data.get("message") or data.get("detail") or "")
    return code, message or body_text(resp, 200)


def map_error(resp: httpx.Response, what: str, *, job: bool = False) -> ProviderError:
    """removebgvideo's codes and statuses -> the vidbatch error tree (once, here)."""
    status = resp.status_code
    code, message = error_info(resp)
    text = f"{what}: HTTP {status}" + (f" {code}" if code else "") + (f": {message}" if message else "")
    retry_after = parse_retry_after(resp.headers)
    if code == "insufficient_credits" or status == 402:
        return QuotaError(text + " (buy credits at removebgvideo.com)", provider=PROVIDER, status=status)
    if code in ("missing_api_key", "invalid_api_key") or status in (401, 403):
        return AuthError(text + " (check REMOVEBGVIDEO_API_KEY)", provider=PROVIDER, status=status)
    if code == "rate_limited" or status == 429:
        return RateLimitedError(text, provider=PROVIDER, status=status, retry_after=retry_after)
    if code in ("internal_error", "timeout"):
        return TransientError(text, provider=PROVIDER, status=status, retry_after=retry_after)
    if code == "not_found" and job:
        return JobGoneError(text, provider=PROVIDER, status=status)
    if code == "invalid_request" and status < 500:
        return PermanentError(text, provider=PROVIDER, status=status)
    return classify(status, text, provider=PROVIDER, retry_after=retry_after, job=job)


def _mapper(job: bool = False) -> Any:
    return functools.partial(map_error, job=job)


def client_token(spec: JobSpec, staged: StagedInput) -> str:
    """The tag put in a job's metadata so ``recheck_submit`` can find it again."""
    raw = canonical_json({"spec": spec.canonical(), "input": staged.url or staged.asset_id or ""})
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- provider


class RemoveBgVideoProvider(HostedProvider):
    """removebgvideo.com client (see module docstring for the mapping and choices)."""

    name = PROVIDER
    operations = {
        "remove-background": OperationInfo(default_model="original", models=RBV_MODELS, formats=FORMATS),
    }
    credential_names = ("REMOVEBGVIDEO_API_KEY",)
    can_recheck_submit = True
    #: docs: start at 2 s, back off to 5-10 s
    min_poll_interval = 2.0

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        s = self.settings
        self.api_url = resolve_url(
            s, option="api_url", env="VIDBATCH_REMOVEBGVIDEO_URL", emulator_suffix="/removebgvideo", default=API_URL
        )
        rate = s.options.get("usd_per_credit")
        self.usd_per_credit = float(rate) if rate is not None else None

    # -- plumbing ---------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        key = self.settings.credential("REMOVEBGVIDEO_API_KEY")
        if not key:
            self.check_credentials()
        return {"X-Api-Key": str(key)}

    async def _json(
        self, method: str, path: str, *, what: str, job: bool = False, uncertain: bool = False, **kwargs: Any
    ) -> Any:
        headers = {**self._auth(), "Accept": "application/json", **kwargs.pop("headers", {})}
        resp = await request(
            self.client,
            method,
            f"{self.api_url}{path}",
            headers=headers,
            provider=PROVIDER,
            what=what,
            mapper=_mapper(job),
            uncertain=uncertain,
            **kwargs,
        )
        return json_of(resp, provider=PROVIDER, what=what, uncertain=uncertain)

    # -- validation / mapping ---------------------------------------------
    def validate(self, spec: JobSpec) -> None:
        super().validate(spec)  # operation, model, format
        self._body(spec, StagedInput(url="https://example.invalid/input.mp4"), check_only=True)

    def _body(self, spec: JobSpec, staged: StagedInput, *, check_only: bool = False) -> dict[str, Any]:
        where = "removebgvideo"
        if spec.mask:
            raise ConfigError(
                f"{where}: mask output is not offered; set mask: false, or use provider fal or scenario for a mask"
            )
        derived: dict[str, Any] = {
            "video_url": staged.url,
            "model": spec.model,
            "output_format": spec.format,
            "auto_start": True,
        }
        bg = spec.background
        if bg == "transparent":
            if spec.format not in ALPHA_FORMATS:
                raise ConfigError(
                    f"{where}: format {spec.format} has no alpha channel, so background 'transparent' cannot be "
                    "kept; use format webm, mov, gif, webp or png_sequence, or a '#rrggbb' background"
                )
            derived.update(bg_type="transparent", background={"type": "transparent"})
        elif bg.startswith("#") and len(bg) == 7:
            try:
                rgb = [int(bg[i : i + 2], 16) for i in (1, 3, 5)]
            except ValueError:
                raise ConfigError(f"{where}: background {bg!r} is not a '#rrggbb' colour") from None
            derived.update(bg_type="custom", bg_color=rgb, background={"type": "color", "color": bg.lower()})
        else:
            proto = storage.protocol_of(bg)
            if proto in ("http", "https"):
                image_url = bg
            elif proto in ("file", "local", "memory"):
                raise ConfigError(
                    f"{where}: background image {bg!r} must be an http(s) or s3:// URL removebgvideo can fetch; "
                    "upload it somewhere public"
                )
            elif check_only:
                image_url = bg
            else:
                expires = int(self.settings.queue_wait_seconds + PRESIGN_MARGIN)
                image_url = storage.presign(bg, None, expires=expires)
            derived.update(bg_type="image", background={"type": "image", "image_url": image_url})
        params = dict(spec.params or {})
        user_meta = params.pop("metadata", None)
        if user_meta is not None and not isinstance(user_meta, dict):
            raise ConfigError(f"{where}: params.metadata must be a mapping")
        derived["metadata"] = {**(user_meta or {}), "vidbatch_token": client_token(spec, staged)}
        owned = {
            "model": "model:",
            "output_format": "format:",
            "bg_type": "background:",
            "bg_color": "background:",
            "background": "background:",
            "auto_start": "vidbatch (jobs always start)",
        }
        body = merge(derived, params, owned=owned, inputs=RbvJob.input_fields, where=where)
        return native(RbvJob, body, where=where).body()

    def check_input(self, spec: JobSpec, media: MediaInfo) -> None:
        if media.size and media.size > MAX_UPLOAD:
            raise InputError(
                f"removebgvideo: input is {media.size / 1e6:.0f} MB; uploads are limited to 500 MB - "
                "trim or re-encode it, or use another provider"
            )
        container = (media.container or "").lower()
        if container and not any(c in container for c in CONTAINERS):
            raise InputError(
                f"removebgvideo: container {media.container!r} is not accepted; uploads take mp4, mov, webm or avi"
            )

    # -- staging ----------------------------------------------------------
    async def stage(self, item: Item) -> StagedInput:
        url = item.url
        proto = storage.protocol_of(url)
        if proto in ("http", "https"):
            return StagedInput(url=url, content_type=guess_type(url, "video/mp4"))
        if proto not in ("file", "local", "memory"):
            expires = int(self.settings.queue_wait_seconds + PRESIGN_MARGIN)
            try:
                signed = storage.presign(url, item.storage_options, expires=expires)
            except StorageError:
                pass
            else:
                return StagedInput(url=signed, expires_at=time.time() + expires, content_type=guess_type(url, "video/mp4"))
        video_url = await self.upload(url, item.storage_options, size=item.size or None)
        return StagedInput(
            url=video_url, local_path=url if proto in ("file", "local") else None, content_type=guess_type(url, "video/mp4")
        )

    async def upload(self, url: str, storage_options: Mapping[str, Any] | None = None, *, size: int | None = None) -> str:
        """``POST /v1/uploads`` (multipart field ``file``), streamed from any fsspec store."""
        name = posixpath.basename(url.split("?", 1)[0].split("://", 1)[-1]) or "input.mp4"
        ext = posixpath.splitext(name)[1].lower()
        ctype = UPLOAD_TYPES.get(ext)
        if ctype is None:
            raise InputError(
                f"removebgvideo: {name!r} is not an accepted upload type; uploads take .mp4, .mov, .webm or .avi"
            )
        if size is None:
            fs, path = storage.fs_for(url, storage_options)
            try:
                size = int(fs.info(path).get("size") or 0)
            except FileNotFoundError:
                raise InputError(f"input not found: {url}") from None
        if size > MAX_UPLOAD:
            raise InputError(f"removebgvideo: {name} is {size / 1e6:.0f} MB; uploads are limited to 500 MB")
        form = MultipartForm("file", name, ctype, size, storage.aiter_read(url, storage_options))
        data = await self._json(
            "POST",
            "/v1/uploads",
            what="upload",
            content=form.body(),
            headers=form.headers,
            timeout=httpx.Timeout(connect=15.0, read=300.0, write=300.0, pool=60.0),
        )
        video_url = data.get("video_url") if isinstance(data, dict) else None
        if not video_url:
            raise TransientError("upload: response has no video_url", provider=PROVIDER)
        return absolute(self.api_url, str(video_url))

    # -- jobs -------------------------------------------------------------
    async def submit(self, spec: JobSpec, staged: StagedInput) -> JobHandle:
        if not staged.url:
            raise ConfigError("removebgvideo: the staged input has no URL; stage it with the removebgvideo provider")
        body = self._body(spec, staged)
        data = await self._json("POST", "/v1/jobs", what="submit", json=body, uncertain=True)
        job_id = (data.get("id") or data.get("job_id")) if isinstance(data, dict) else None
        if not job_id and isinstance(data, dict) and isinstance(data.get("job"), dict):
            job_id = data["job"].get("id")
        if not job_id:
            raise SubmitUncertainError("submit: response has no job id; the job may exist", provider=PROVIDER)
        return JobHandle(
            provider=PROVIDER,
            request_id=str(job_id),
            urls={"job_url": f"{self.api_url}/v1/jobs/{job_id}"},
            submitted_at=time.time(),
            extra={"model": spec.model, "output_format": spec.format, "token": body["metadata"]["vidbatch_token"]},
        )

    def submit_hint(self, spec: JobSpec, staged: StagedInput) -> dict[str, Any]:
        # the token is a hash of (spec, input URL): safe to persist, unlike the URL
        return {"token": client_token(spec, staged)}

    async def recheck_submit(
        self, spec: JobSpec, staged: StagedInput, since: float, hint: Mapping[str, Any] | None = None
    ) -> JobHandle | None:
        token = str((hint or {}).get("token") or client_token(spec, staged))
        matches: list[tuple[float, dict[str, Any]]] = []
        limit = 100
        for page in range(5):
            data = await self._json("GET", "/v1/jobs", what="list jobs", params={"limit": limit, "offset": page * limit})
            jobs = data if isinstance(data, list) else next(
                (data[k] for k in ("jobs", "data", "items", "results") if isinstance(data.get(k), list)), []
            )
            oldest = math.inf
            for job in jobs:
                if not isinstance(job, dict):
                    continue
                created = utc_iso_to_epoch(job.get("created_at") or job.get("createdAt")) or 0.0
                oldest = min(oldest, created or math.inf)
                meta = job.get("metadata") if isinstance(job.get("metadata"), dict) else None
                if meta is not None and meta.get("vidbatch_token") is not None:
                    if meta.get("vidbatch_token") != token:
                        continue
                elif job.get("video_url") != staged.url or not staged.url:
                    continue
                if created and created < since - 300:
                    continue
                matches.append((created, job))
            if len(jobs) < limit or oldest < since - 300:
                break
        if not matches:
            return None
        created, job = min(matches, key=lambda m: m[0])
        job_id = str(job.get("id") or job.get("job_id"))
        return JobHandle(
            provider=PROVIDER,
            request_id=job_id,
            urls={"job_url": f"{self.api_url}/v1/jobs/{job_id}"},
            submitted_at=created or since,
            extra={"model": spec.model, "output_format": spec.format, "token": token, "rechecked": True},
        )

    async def _job(self, job_id: str) -> dict[str, Any]:
        data = await self._json("GET", f"/v1/jobs/{job_id}", what="job status", job=True)
        if isinstance(data, dict) and isinstance(data.get("job"), dict):
            data = data["job"]
        if not isinstance(data, dict):
            raise TransientError("job status: unexpected response", provider=PROVIDER)
        return data

    async def poll(self, handle: JobHandle) -> JobStatus:
        job = await self._job(handle.request_id)
        status = str(job.get("status") or "").lower()
        progress = job.get("progress")
        prog = float(progress) / 100.0 if isinstance(progress, (int, float)) and not isinstance(progress, bool) else None
        if status in SUCCEEDED:
            cost = self._actual_cost(handle, job)
            return JobStatus(JobState.SUCCEEDED, progress=1.0, cost_usd=cost.usd if cost else None, cost=cost)
        if status in FAILED:
            return JobStatus(JobState.FAILED, message=str(job.get("error") or "job failed (no reason given)"))
        if status in CANCELED:
            return JobStatus(JobState.CANCELED, message=str(job.get("error") or "canceled"))
        if status in QUEUED:
            return JobStatus(JobState.QUEUED, progress=prog, message=status)
        return JobStatus(JobState.RUNNING, progress=prog, message=status)

    def _actual_cost(self, handle: JobHandle, job: Mapping[str, Any]) -> Cost | None:
        secs = job.get("duration_seconds")
        if not isinstance(secs, (int, float)) or isinstance(secs, bool):
            return None
        model = str(job.get("model") or handle.extra.get("model") or "original")
        return self._cost(model, float(secs), basis=f"{model}: billed duration {secs} s")

    async def results(self, handle: JobHandle) -> list[Artifact]:
        job = await self._job(handle.request_id)
        status = str(job.get("status") or "").lower()
        if status not in SUCCEEDED:
            raise PermanentError(f"results: job {handle.request_id} is {status or 'unknown'}, not completed", provider=PROVIDER)
        fmt = str(job.get("output_format") or handle.extra.get("output_format") or "")
        return [await self._artifact(handle.request_id, job, fmt)]

    async def _artifact(self, job_id: str, job: Mapping[str, Any], fmt: str) -> Artifact:
        url = job.get("output_url")
        if not url:
            data = await self._json("GET", f"/api/download/{job_id}", what="download url", job=True)
            url = data.get("download_url") if isinstance(data, dict) else None
            fmt = fmt or str((data or {}).get("output_format") or "")
        if not url:
            raise ResultError(f"results: job {job_id} completed without an output URL", provider=PROVIDER)
        url = absolute(self.api_url, str(url))
        meta: dict[str, Any] = {"job_id": job_id, "output_format": fmt}
        if job.get("duration_seconds") is not None:
            meta["duration"] = job["duration_seconds"]
        return Artifact(url=url, kind="video", content_type=OUTPUT_TYPES.get(fmt) or guess_type(url, ""), meta=meta)

    async def _refresh_from_meta(self, artifact: Artifact) -> Artifact | None:
        job_id = artifact.meta.get("job_id")
        if not job_id:
            return None
        # the job's output_url is time-bound; re-reading the job (or the legacy
        # download route) hands out a current one
        job = await self._job(str(job_id))
        fresh = await self._artifact(str(job_id), job, str(artifact.meta.get("output_format") or ""))
        if fresh.url == artifact.url:
            data = await self._json("GET", f"/api/download/{job_id}", what="download url", job=True)
            alt = data.get("download_url") if isinstance(data, dict) else None
            if alt:
                fresh = Artifact(url=absolute(self.api_url, str(alt)), kind="video", content_type=fresh.content_type, meta=fresh.meta)
        return fresh

    async def cancel(self, handle: JobHandle) -> bool:
        # no cancel or delete endpoint exists (removebgvideo.md 2): the job runs on
        return False

    # -- cost -------------------------------------------------------------
    def _cost(self, model: str, seconds: float, *, basis: str) -> Cost:
        rate = CREDITS_PER_MINUTE.get(model, CREDITS_PER_MINUTE["original"])
        credits = rate * math.ceil(max(seconds, 0.0)) / 60.0
        usd = credits * self.usd_per_credit if self.usd_per_credit is not None else None
        return Cost(usd=usd, units=credits, unit="credits", basis=f"{basis}; {rate} credits/min, whole seconds")

    def estimate(self, spec: JobSpec, media: MediaInfo) -> Cost:
        return self._cost(spec.model, media.duration, basis=f"{spec.model}: {media.duration:.2f} s of video")
