"""Scenario (api.cloud.scenario.com): BiRefNet v2 video and SeedVR2 video upscale.

Protocol (``/work/shared/providers/scenario.md``)::

    POST /v1/uploads {fileName, contentType, kind: video, fileSize, parts}   -> upload.parts[].url
    PUT  <parts[i].url> (presigned, no auth)            one byte range per part (>= 5 MB but the last)
    POST /v1/uploads/{id}/action {"action": "complete"}
    GET  /v1/uploads/{id}                               until entityId (the asset id) / failed
    POST /v1/generate/custom/{modelId} {video: assetId, ...}   -> job.jobId   (?dryRun=true: HTTP 269 quote)
    GET  /v1/jobs/{jobId}                               -> job.status, job.metadata.assetIds, job.billing
    GET  /v1/assets/{assetId}                           -> asset.url (signed CDN URL, rolling expiry)
    POST /v1/jobs/{jobId}/action {"action": "cancel"}   400 for most generation jobs

Normalized -> native mapping:

=====================  ====================================  ==================================
vidbatch               model_birefnet-v2-video               model_seedvr-2-upscale-video
=====================  ====================================  ==================================
input                  ``video`` = asset id (upload first)   ``video`` = asset id
model                  ``model`` (5 values; no Dynamic)      ``seedvr2`` (only one)
format webm/mov/       ``videoOutputType`` VP9 (.webm)       mp4 only (no format parameter)
mp4/gif                (default, not sent) / PRORES4444
                       (.mov) / X264 (.mp4) / GIF (.gif)
format webp,           refused                               refused
png_sequence
background transparent needs webm/mov/gif (mp4 refused)      -
background colour/img refused (use removebgvideo)           -
mask: true             ``outputMask: true`` -> 2nd asset      -
factor: F              -                                     upscaleMode factor, upscaleFactor F (2-10)
target: 1080p          -                                     upscaleMode target, targetResolution
=====================  ====================================  ==================================

Inputs: local paths and ``memory://`` go through the multipart upload flow,
streamed part by part from the input store (8 MiB parts by default, at most
10,000); ``s3://`` (any store that can presign) and http(s) URLs use the upload
``{"url": ..., "kind": "video"}`` form so Scenario fetches the bytes itself.

Choices where the docs say UNKNOWN:

* Mask vs video asset: an asset is the mask when its ``metadata`` names it so
  (``type``/``kind``/``role``/``output``/``outputName``/``outputKey``/``name``
  containing "mask") or its name/file name does; otherwise, with ``outputMask``
  on and several assets, the last one is the mask (order of ``assetIds``). The
  emulator labels outputs ``metadata.type`` "video"/"mask" and
  ``metadata.outputKey`` "video"/"mask_video" (fal's output keys).
* Price: unpublished per model -> ``estimate`` (sync, no network) returns
  ``usd=None`` with basis "CU: use dryRun", unless CU rates are configured
  (``options.cu_per_second`` for background removal, ``options.cu_per_output_mp``
  for upscale) - then CU, and USD with ``options.cu_usd`` (USD per CU). The
  async ``quote(spec, staged)`` asks ``?dryRun=true`` for ``creativeUnitsCost``.
  The actual charge (``billing.cuCost``) is reported in ``JobStatus.cost`` (and
  ``cost_usd`` when ``cu_usd`` is set).
* Upscaler output container: mp4 assumed (no format parameter exists).
* ``projectId``: optional; sent on every call when ``options.project_id`` or
  ``SCENARIO_PROJECT_ID`` is set.
* Insufficient CU (body/shape unknown): HTTP 402, or any 4xx whose message speaks
  of credits/units/balance/quota -> ``QuotaError``. 403
  ``ModelAccessRestrictedError`` (plan) -> ``AuthError``.
* Re-check after an uncertain submit: ``GET /v1/jobs`` pages (newest first
  assumed, up to 5 pages of 100) are searched for a job created since the submit
  whose ``metadata.input.video`` is our uploaded asset id (each staging makes a
  fresh asset, so the id is a unique client token).

Credentials: ``SCENARIO_SDK_API_KEY`` + ``SCENARIO_SDK_API_SECRET`` (HTTP Basic).
URL: ``options.api_url`` > ``base_url`` + ``/scenario/v1`` > ``VIDBATCH_SCENARIO_URL`` >
``https://api.cloud.scenario.com/v1``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
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
    MAX_RETRY_AFTER,
    HostedProvider,
    absolute,
    body_text,
    chunked,
    classify,
    guess_type,
    json_of,
    looks_like_quota,
    parse_json,
    parse_retry_after,
    part_body,
    request,
    resolve_url,
    utc_iso_to_epoch,
    with_retries,
)
from vidbatch.providers.params import (
    BIREFNET_IMAGE_MODELS,
    DYNAMIC,
    VIDEO_OUTPUT_TYPE,
    ScenarioBirefnetVideo,
    ScenarioSeedvrVideo,
    merge,
    native,
)
from vidbatch.redact import register_secret
from vidbatch.spec import (
    Artifact,
    Cost,
    Item,
    JobHandle,
    JobSpec,
    JobState,
    JobStatus,
    MediaInfo,
    StagedInput,
    upscaled_size,
)

PROVIDER = "scenario"
API_URL = "https://api.cloud.scenario.com/v1"
BIREFNET = "model_birefnet-v2-video"
SEEDVR = "model_seedvr-2-upscale-video"
SEEDVR_MODEL = "seedvr2"

PART_SIZE = 8 * 1024 * 1024
MIN_PART = 5 * 1024 * 1024
MAX_PARTS = 10_000
PRESIGN_MARGIN = 3600

BIREFNET_FORMATS = ("webm", "mov", "mp4", "gif")
SEEDVR_FORMATS = ("mp4",)

QUEUED = {"pending", "queued"}
RUNNING = {"warming-up", "in-progress", "finalizing", "processing"}
SUCCEEDED = {"success", "succeeded", "completed"}
FAILED = {"failure", "failed", "error"}
CANCELED = {"canceled", "cancelled"}


# --------------------------------------------------------------------------- errors


def error_info(resp: httpx.Response) -> tuple[str, dict[str, Any]]:
    """(message, body) of a Scenario error: the key varies (reason/message/error/detail)."""
    data = parse_json(resp)
    body = data if isinstance(data, dict) else {}
    message = ""
    for key in ("reason", "message", "error", "detail"):
        value = body.get(key)
        if isinstance(value, dict):
            value = value.get("message") or value.get("reason") or value
        if value:
            message = str(value)
            break
    name = body.get("name") or body.get("errorName") or body.get("code") or body.get("type")
    if name and str(name) not in message:
        message = f"{name}: {message}" if message else str(name)
    trace = body.get("traceId") or body.get("trace_id")
    if trace:
        message += f" (traceId {trace})"
    return message or body_text(resp, 200), body


def map_error(resp: httpx.Response, what: str, *, job: bool = False) -> ProviderError:
    """Scenario's statuses and bodies -> the vidbatch error tree (once, here)."""
    status = resp.status_code
    message, body = error_info(resp)
    text = f"{what}: HTTP {status}" + (f": {message}" if message else "")
    if status == 429:
        hint = body.get("remainingSeconds")
        retry_after: float | None = None
        if isinstance(hint, (int, float)) and not isinstance(hint, bool):
            retry_after = max(0.0, min(float(hint), MAX_RETRY_AFTER))
        else:
            retry_after = parse_retry_after(resp.headers)
        limit = body.get("actionLimit")
        if body.get("actionName"):
            text += f" (limit {limit} on {body['actionName']}; lower concurrency for scenario)"
        return RateLimitedError(text, provider=PROVIDER, status=status, retry_after=retry_after)
    if status == 402 or (400 <= status < 500 and status != 401 and looks_like_quota(message.replace("ModelAccess", ""))):
        return QuotaError(text + " (top up the team's Compute Units)", provider=PROVIDER, status=status)
    if status == 403 and "ModelAccessRestricted" in message + str(body.get("name", "")):
        plan = body.get("requiredPlan")
        return AuthError(
            text + (f" (model needs plan {plan})" if plan else " (model not available on this plan)"),
            provider=PROVIDER,
            status=status,
        )
    if status in (401, 403):
        return AuthError(text + " (check SCENARIO_SDK_API_KEY / SCENARIO_SDK_API_SECRET)", provider=PROVIDER, status=status)
    return classify(status, text, provider=PROVIDER, retry_after=parse_retry_after(resp.headers), job=job)


def _mapper(job: bool = False) -> Any:
    return functools.partial(map_error, job=job)


# --------------------------------------------------------------------------- provider


class ScenarioProvider(HostedProvider):
    """Scenario client (see module docstring for the mapping and choices)."""

    name = PROVIDER
    operations = {
        "remove-background": OperationInfo(
            default_model="General Use (Light)", models=BIREFNET_IMAGE_MODELS, formats=BIREFNET_FORMATS
        ),
        "upscale": OperationInfo(default_model=SEEDVR_MODEL, models=(SEEDVR_MODEL,), formats=SEEDVR_FORMATS),
    }
    credential_names = ("SCENARIO_SDK_API_KEY", "SCENARIO_SDK_API_SECRET")
    can_recheck_submit = True
    #: the SDK polls every 3 s
    min_poll_interval = 3.0

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        s = self.settings
        self.api_url = resolve_url(s, option="api_url", env="VIDBATCH_SCENARIO_URL", emulator_suffix="/scenario/v1", default=API_URL)
        self.project_id = s.options.get("project_id") or s.credential("SCENARIO_PROJECT_ID")
        self.part_size = max(MIN_PART, int(s.options.get("part_size", PART_SIZE)))
        self.part_retries = int(s.options.get("part_retries", 3))
        self.upload_timeout = float(s.options.get("upload_timeout", 600.0))
        self.upload_poll = float(s.options.get("upload_poll_interval", 1.0))
        self.cu_usd = _float_option(s.options, "cu_usd")
        #: optional CU rates for offline estimates (Scenario publishes none)
        self.cu_per_second = _float_option(s.options, "cu_per_second")
        self.cu_per_output_mp = _float_option(s.options, "cu_per_output_mp")

    # -- plumbing ---------------------------------------------------------
    def _auth(self) -> dict[str, str]:
        key = self.settings.credential("SCENARIO_SDK_API_KEY")
        secret = self.settings.credential("SCENARIO_SDK_API_SECRET")
        if not key or not secret:
            self.check_credentials()
        token = base64.b64encode(f"{key}:{secret}".encode()).decode()
        register_secret(token)  # the header value is as secret as the key
        return {"Authorization": f"Basic {token}"}

    def _params(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        params = dict(extra or {})
        if self.project_id:
            params["projectId"] = self.project_id
        return params

    async def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        job: bool = False,
        uncertain: bool = False,
        params: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        return await request(
            self.client,
            method,
            f"{self.api_url}{path}",
            params=self._params(params),
            headers={**self._auth(), "Accept": "application/json"},
            provider=PROVIDER,
            what=what,
            mapper=_mapper(job),
            uncertain=uncertain,
            **kwargs,
        )

    async def _json(self, method: str, path: str, *, what: str, **kwargs: Any) -> dict[str, Any]:
        resp = await self._call(method, path, what=what, **kwargs)
        data = json_of(resp, provider=PROVIDER, what=what, uncertain=bool(kwargs.get("uncertain")))
        if not isinstance(data, dict):
            cls = SubmitUncertainError if kwargs.get("uncertain") else TransientError
            raise cls(f"{what}: unexpected response {body_text(resp, 120)!r}", provider=PROVIDER)
        return data

    # -- validation / mapping ---------------------------------------------
    def validate(self, spec: JobSpec) -> None:
        self._native(spec, "asset_placeholder")

    def _native(self, spec: JobSpec, asset_id: str) -> tuple[str, dict[str, Any]]:
        info = self.operation_info(spec.operation)
        params = dict(spec.params or {})
        if spec.operation == "upscale":
            return SEEDVR, self._seedvr(spec, params, asset_id, info)
        where = f"scenario {BIREFNET}"
        if spec.model not in info.models:
            hint = f" ({DYNAMIC} is fal-only)" if spec.model == DYNAMIC else ""
            raise ConfigError(f"{where}: unknown model {spec.model!r}{hint}; choose one of: {', '.join(info.models)}")
        if spec.format not in BIREFNET_FORMATS:
            raise ConfigError(
                f"{where}: format {spec.format!r} is not offered; choose one of: {', '.join(BIREFNET_FORMATS)} "
                "(removebgvideo writes webp and png_sequence)"
            )
        if spec.background != "transparent":
            raise ConfigError(
                f"{where}: background {spec.background!r} is not offered (Scenario returns the cut-out with "
                "alpha only); use provider removebgvideo for a colour/image background, or composite later"
            )
        if spec.format == "mp4":
            raise ConfigError(
                f"{where}: format mp4 (X264) has no alpha channel, so background 'transparent' cannot be "
                "kept; use format webm, mov or gif"
            )
        derived = {
            "video": asset_id,
            "model": spec.model,
            "videoOutputType": VIDEO_OUTPUT_TYPE[spec.format],
            "outputMask": bool(spec.mask),
        }
        owned = {"model": "model:", "videoOutputType": "format:", "outputMask": "mask:"}
        body = merge(derived, params, owned=owned, inputs=ScenarioBirefnetVideo.input_fields, where=where)
        return BIREFNET, native(ScenarioBirefnetVideo, body, where=where).body()

    def _seedvr(self, spec: JobSpec, params: dict[str, Any], asset_id: str, info: OperationInfo) -> dict[str, Any]:
        where = f"scenario {SEEDVR}"
        if spec.model not in info.models:
            raise ConfigError(f"{where}: unknown model {spec.model!r}; choose one of: {', '.join(info.models)}")
        if spec.format not in SEEDVR_FORMATS:
            raise ConfigError(
                f"{where}: format {spec.format!r} is not offered (the upscaler has no format parameter and "
                "writes mp4); use format mp4, or provider fal for webm/mov/gif"
            )
        if spec.factor is not None and spec.target is not None:
            raise ConfigError(f"{where}: set either factor or target, not both")
        derived: dict[str, Any] = {"video": asset_id}
        if spec.target is not None:
            derived.update(upscaleMode="target", targetResolution=spec.target)
        else:
            factor = 2.0 if spec.factor is None else float(spec.factor)
            if not 2 <= factor <= 10:
                raise ConfigError(
                    f"{where}: factor {factor:g} is outside Scenario's 2-10; use a factor in 2-10, a target, "
                    "or provider fal (1-10)"
                )
            derived.update(upscaleMode="factor", upscaleFactor=factor)
        owned = {"upscaleMode": "factor:/target:", "upscaleFactor": "factor:", "targetResolution": "target:"}
        body = merge(derived, params, owned=owned, inputs=ScenarioSeedvrVideo.input_fields, where=where)
        out = native(ScenarioSeedvrVideo, body, where=where).body()
        out.pop("targetResolution" if out["upscaleMode"] == "factor" else "upscaleFactor", None)
        return out

    # -- staging ----------------------------------------------------------
    async def stage(self, item: Item) -> StagedInput:
        url = item.url
        proto = storage.protocol_of(url)
        ctype = guess_type(url, "video/mp4")
        name = posixpath.basename(url.split("?", 1)[0].split("://", 1)[-1]) or "input.mp4"
        if proto in ("http", "https"):
            asset = await self._upload_url(url, name)
        elif proto in ("file", "local", "memory"):
            asset = await self._upload_bytes(url, item.storage_options, item.size or None, name, ctype)
        else:
            expires = int(self.settings.queue_wait_seconds + PRESIGN_MARGIN)
            try:
                signed = storage.presign(url, item.storage_options, expires=expires)
            except StorageError:
                asset = await self._upload_bytes(url, item.storage_options, item.size or None, name, ctype)
            else:
                asset = await self._upload_url(signed, name)
        return StagedInput(asset_id=asset, local_path=url if proto in ("file", "local") else None, content_type=ctype)

    async def _upload_url(self, url: str, name: str) -> str:
        data = await self._json(
            "POST", "/uploads", what="upload", json={"url": url, "kind": "video", "fileName": name}
        )
        upload = data.get("upload") if isinstance(data.get("upload"), dict) else data
        return await self._wait_upload(upload)

    async def _upload_bytes(
        self, url: str, storage_options: Mapping[str, Any] | None, size: int | None, name: str, ctype: str
    ) -> str:
        if size is None:
            fs, path = storage.fs_for(url, storage_options)
            try:
                size = int(fs.info(path).get("size") or 0)
            except FileNotFoundError:
                raise InputError(f"input not found: {url}") from None
        if size <= 0:
            raise InputError(f"input is empty: {url}")
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        nparts = max(1, math.ceil(size / part_size))
        data = await self._json(
            "POST",
            "/uploads",
            what="upload",
            json={"fileName": name, "contentType": ctype, "kind": "video", "fileSize": size, "parts": nparts},
        )
        upload = data.get("upload") if isinstance(data.get("upload"), dict) else data
        upload_id = upload.get("id") or upload.get("uploadId")
        part_urls = {int(p.get("number") or i + 1): str(p["url"]) for i, p in enumerate(upload.get("parts") or []) if p.get("url")}
        if not upload_id or len(part_urls) < nparts:
            raise TransientError(f"upload: expected {nparts} part URL(s), got {len(part_urls)}", provider=PROVIDER)
        number = 0
        async for payload in chunked(storage.aiter_read(url, storage_options, chunk=part_size), part_size):
            number += 1
            part_url = absolute(self.api_url, part_urls[number])

            async def put(u: str = part_url, data: bytes = payload, n: int = number) -> httpx.Response:
                # presigned: no Authorization header (it would also leak the key)
                body, length = part_body(data)
                return await request(
                    self.client,
                    "PUT",
                    u,
                    content=body,
                    headers={**length, "Content-Type": ctype},
                    timeout=httpx.Timeout(connect=15.0, read=300.0, write=300.0, pool=60.0),
                    provider=PROVIDER,
                    what=f"upload part {n}",
                    mapper=_mapper(),
                )

            await with_retries(put, attempts=self.part_retries)
        if number != nparts:
            raise TransientError(f"upload: read {number} part(s) of {nparts}; the input changed", provider=PROVIDER)
        done = await self._json("POST", f"/uploads/{upload_id}/action", what="upload complete", json={"action": "complete"})
        upload = done.get("upload") if isinstance(done.get("upload"), dict) else {"id": upload_id, **done}
        upload.setdefault("id", upload_id)
        return await self._wait_upload(upload)

    async def _wait_upload(self, upload: Mapping[str, Any]) -> str:
        """Poll ``GET /uploads/{id}`` until the asset exists (``entityId``) or the import failed."""
        upload_id = upload.get("id") or upload.get("uploadId")
        if not upload_id:
            raise TransientError("upload: response has no upload id", provider=PROVIDER)
        deadline = time.monotonic() + self.upload_timeout
        delay = self.upload_poll
        current: Mapping[str, Any] = upload
        while True:
            status = str(current.get("status") or "")
            if current.get("entityId"):
                return str(current["entityId"])
            if status == "failed":
                reason = current.get("errorMessage") or "no reason given"
                raise PermanentError(f"upload {upload_id} failed: {reason}", provider=PROVIDER)
            if time.monotonic() > deadline:
                raise TransientError(
                    f"upload {upload_id}: still {status or 'pending'} after {self.upload_timeout:.0f} s",
                    provider=PROVIDER,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)
            data = await self._json("GET", f"/uploads/{upload_id}", what="upload status")
            current = data.get("upload") if isinstance(data.get("upload"), dict) else data

    # -- jobs -------------------------------------------------------------
    async def submit(self, spec: JobSpec, staged: StagedInput) -> JobHandle:
        if not staged.asset_id:
            raise ConfigError("scenario: the staged input has no asset id; stage it with the scenario provider")
        model_id, body = self._native(spec, staged.asset_id)
        data = await self._json(
            "POST", f"/generate/custom/{model_id}", what=f"submit {model_id}", json=body, uncertain=True
        )
        job = data.get("job") if isinstance(data.get("job"), dict) else {}
        job_id = job.get("jobId") or job.get("id")
        if not job_id:
            raise SubmitUncertainError(f"submit {model_id}: response has no job.jobId; the job may exist", provider=PROVIDER)
        extra: dict[str, Any] = {"model_id": model_id, "mask": bool(body.get("outputMask")), "asset_id": staged.asset_id}
        if isinstance(data.get("creativeUnitsCost"), (int, float)):
            extra["cu_quote"] = data["creativeUnitsCost"]
        return JobHandle(
            provider=PROVIDER,
            request_id=str(job_id),
            urls={"job_url": f"{self.api_url}/jobs/{job_id}"},
            submitted_at=time.time(),
            extra=extra,
        )

    def submit_hint(self, spec: JobSpec, staged: StagedInput) -> dict[str, Any]:
        # asset ids are not secret; a re-staged input gets a new one, so keep this one
        return {"asset_id": staged.asset_id} if staged.asset_id else {}

    async def recheck_submit(
        self, spec: JobSpec, staged: StagedInput, since: float, hint: Mapping[str, Any] | None = None
    ) -> JobHandle | None:
        asset_id = str((hint or {}).get("asset_id") or staged.asset_id or "")
        if not asset_id:
            return None
        staged = StagedInput(asset_id=asset_id, local_path=staged.local_path, content_type=staged.content_type)
        model_id, _ = self._native(spec, staged.asset_id)
        token: str | None = None
        matches: list[tuple[float, dict[str, Any]]] = []
        for _page in range(5):
            params: dict[str, Any] = {"pageSize": 100}
            if token:
                params["paginationToken"] = token
            data = await self._json("GET", "/jobs", what="list jobs", params=params)
            jobs = data.get("jobs") or data.get("items") or data.get("data") or []
            oldest = math.inf
            for job in jobs if isinstance(jobs, list) else []:
                if not isinstance(job, dict):
                    continue
                created = utc_iso_to_epoch(job.get("createdAt")) or 0.0
                oldest = min(oldest, created)
                meta = job.get("metadata") if isinstance(job.get("metadata"), dict) else {}
                inputs = meta.get("input") if isinstance(meta.get("input"), dict) else {}
                if inputs.get("video") != staged.asset_id:
                    continue
                job_model = job.get("modelId") or inputs.get("modelId") or meta.get("modelId")
                if job_model and job_model != model_id:
                    continue
                if created and created < since - 300:
                    continue
                matches.append((created, job))
            token = data.get("nextPaginationToken")
            if not token or oldest < since - 300:
                break
        if not matches:
            return None
        created, job = min(matches, key=lambda m: m[0])  # the first submit since ``since``
        job_id = str(job.get("jobId") or job.get("id"))
        return JobHandle(
            provider=PROVIDER,
            request_id=job_id,
            urls={"job_url": f"{self.api_url}/jobs/{job_id}"},
            submitted_at=created or since,
            extra={"model_id": model_id, "mask": bool(spec.mask), "asset_id": staged.asset_id, "rechecked": True},
        )

    async def _job(self, handle: JobHandle) -> dict[str, Any]:
        data = await self._json("GET", f"/jobs/{handle.request_id}", what="job status", job=True)
        job = data.get("job") if isinstance(data.get("job"), dict) else data
        return job

    async def poll(self, handle: JobHandle) -> JobStatus:
        job = await self._job(handle)
        status = str(job.get("status") or "").lower()
        meta = job.get("metadata") if isinstance(job.get("metadata"), dict) else {}
        progress = job.get("progress")
        prog = None
        if isinstance(progress, (int, float)) and not isinstance(progress, bool):
            prog = float(progress) / (100.0 if progress > 1 else 1.0)
        cost = self._cost_of(job)
        usd = cost.usd if cost else None
        if status in SUCCEEDED:
            return JobStatus(JobState.SUCCEEDED, progress=1.0, cost_usd=usd, cost=cost)
        if status in FAILED:
            reason = str(meta.get("error") or job.get("error") or "job failed (no reason given)")
            if meta.get("hint"):
                reason += f" (hint: {meta['hint']})"
            return JobStatus(JobState.FAILED, message=reason, cost_usd=usd, cost=cost)
        if status in CANCELED:
            return JobStatus(JobState.CANCELED, message=str(meta.get("error") or "canceled"), cost_usd=usd, cost=cost)
        if status in QUEUED:
            return JobStatus(JobState.QUEUED, progress=prog, message=status)
        # warming-up / in-progress / finalizing, and anything unknown: still running
        return JobStatus(JobState.RUNNING, progress=prog, message=status)

    def _cost_of(self, job: Mapping[str, Any]) -> Cost | None:
        billing = job.get("billing") if isinstance(job.get("billing"), dict) else {}
        cu = billing.get("cuCost")
        if not isinstance(cu, (int, float)) or isinstance(cu, bool):
            return None
        usd = cu * self.cu_usd if self.cu_usd is not None else None
        return Cost(usd=usd, units=float(cu), unit="CU", basis="Scenario billing.cuCost")

    async def results(self, handle: JobHandle) -> list[Artifact]:
        job = await self._job(handle)
        status = str(job.get("status") or "").lower()
        meta = job.get("metadata") if isinstance(job.get("metadata"), dict) else {}
        if status not in SUCCEEDED:
            raise PermanentError(f"results: job {handle.request_id} is {status or 'unknown'}, not success", provider=PROVIDER)
        ids = [str(a) for a in meta.get("assetIds") or [] if a]
        if not ids:
            raise ResultError(f"results: job {handle.request_id} succeeded without assetIds", provider=PROVIDER)
        assets = [await self._asset(i) for i in ids]
        flagged = [_is_mask(a) for a in assets]
        if handle.extra.get("mask") and len(assets) > 1 and not any(flagged):
            flagged[-1] = True  # unknown order (scenario.md 2.3): assume the mask comes last
        arts = [self._artifact(a, "mask" if m else "video", handle.request_id) for a, m in zip(assets, flagged, strict=True)]
        arts.sort(key=lambda a: a.kind != "video")
        if not any(a.kind == "video" for a in arts):
            raise ResultError(f"results: job {handle.request_id} has no video asset", provider=PROVIDER)
        return arts

    async def _asset(self, asset_id: str) -> dict[str, Any]:
        data = await self._json("GET", f"/assets/{asset_id}", what=f"asset {asset_id}", job=True)
        asset = data.get("asset") if isinstance(data.get("asset"), dict) else data
        if not asset.get("url"):
            raise ResultError(f"asset {asset_id} has no url", provider=PROVIDER)
        asset.setdefault("id", asset_id)
        return asset

    def _artifact(self, asset: Mapping[str, Any], kind: str, job_id: str) -> Artifact:
        props = asset.get("properties") if isinstance(asset.get("properties"), dict) else {}
        size = props.get("size")
        meta: dict[str, Any] = {"asset_id": asset["id"], "job_id": job_id}
        for k in ("width", "height", "duration", "fps", "frameRate"):
            if props.get(k) is not None:
                meta[k] = props[k]
        url = str(asset["url"])
        return Artifact(
            url=absolute(self.api_url, url),
            kind=kind,  # type: ignore[arg-type]
            content_type=str(asset.get("mimeType") or guess_type(url, "")),
            size=int(size) if isinstance(size, (int, float)) and not isinstance(size, bool) else None,
            meta=meta,
        )

    async def _refresh_from_meta(self, artifact: Artifact) -> Artifact | None:
        asset_id = artifact.meta.get("asset_id")
        if not asset_id:
            return None
        # re-fetching the asset signs a fresh CDN URL (scenario.md 2.3)
        asset = await self._asset(str(asset_id))
        return self._artifact(asset, artifact.kind, str(artifact.meta.get("job_id", "")))

    async def cancel(self, handle: JobHandle) -> bool:
        resp = await self._call(
            "POST",
            f"/jobs/{handle.request_id}/action",
            what="cancel",
            job=True,
            json={"action": "cancel"},
            ok=lambda r: r.is_success or r.status_code in (400, 404, 409),
        )
        # most generation jobs refuse with 400 "Cannot cancel this type of job"
        return resp.is_success

    # -- cost -------------------------------------------------------------
    def estimate(self, spec: JobSpec, media: MediaInfo) -> Cost:
        """No network here: CU only from configured rates, else "use dryRun" (``quote``)."""
        if spec.operation == "upscale":
            rate, unit_name = self.cu_per_output_mp, "output MP"
            w, h = upscaled_size(media.width, media.height, spec.factor, spec.target)
            amount = w * h * max(media.frames, 1) / 1e6
        else:
            rate, unit_name = self.cu_per_second, "s"
            amount = float(math.ceil(max(media.duration, 0.0)))
        if rate is None:
            return Cost(usd=None, unit="CU", basis="CU: use dryRun (Scenario publishes no per-model price)")
        cu = rate * amount
        usd = cu * self.cu_usd if self.cu_usd is not None else None
        return Cost(usd=usd, units=cu, unit="CU", basis=f"configured {rate:g} CU per {unit_name} (estimate)")

    async def quote(self, spec: JobSpec, staged: StagedInput | None = None, media: MediaInfo | None = None) -> Cost:
        """Ask Scenario for the price with ``?dryRun=true`` (HTTP 269, ``creativeUnitsCost``).

        The quote is most faithful with the staged asset id (the price may depend
        on the video); without one the body carries no ``video`` and Scenario may
        refuse, in which case the basis says so and ``usd`` is None.
        """
        asset = staged.asset_id if staged and staged.asset_id else ""
        model_id, body = self._native(spec, asset or "asset_placeholder")
        if not asset:
            body.pop("video", None)
        try:
            data = await self._json(
                "POST", f"/generate/custom/{model_id}", what="dry run", params={"dryRun": "true"}, json=body
            )
        except PermanentError as exc:
            if isinstance(exc, (AuthError, QuotaError)) or asset:
                raise
            return Cost(usd=None, unit="CU", basis="CU: dryRun needs a staged input (stage first)")
        cu = data.get("creativeUnitsCost")
        if not isinstance(cu, (int, float)) or isinstance(cu, bool):
            return Cost(usd=None, unit="CU", basis="CU: dryRun returned no creativeUnitsCost")
        usd = cu * self.cu_usd if self.cu_usd is not None else None
        return Cost(usd=usd, units=float(cu), unit="CU", basis="Scenario dryRun creativeUnitsCost")


def _float_option(options: Mapping[str, Any], name: str) -> float | None:
    value = options.get(name)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"scenario: options.{name} must be a number, got {value!r}") from None


_MASK_KEYS = ("type", "kind", "role", "output", "outputName", "outputKey", "name", "label", "fileName")


def _is_mask(asset: Mapping[str, Any]) -> bool:
    """Whether an output asset is the mask video (by metadata; see module docstring)."""
    meta = asset.get("metadata") if isinstance(asset.get("metadata"), dict) else {}
    values = [meta.get(k) for k in _MASK_KEYS] + [asset.get(k) for k in ("name", "fileName", "description")]
    if meta.get("isMask") is True or meta.get("mask") is True:
        return True
    return any(isinstance(v, str) and "mask" in v.lower() for v in values)
