"""fal.ai: BiRefNet v2 (video and image) and SeedVR2 video upscale, via the queue API.

Protocol (``/work/shared/providers/fal.md``)::

    POST {queue}/{endpoint}            -> {request_id, status_url, response_url, cancel_url}
    GET  {status_url}?logs=1           -> 202 IN_QUEUE / IN_PROGRESS, 200 COMPLETED
    GET  {status_url}/stream?logs=0    -> text/event-stream of the same bodies, closed after
                                          COMPLETED (``watch``: how the poll loop waits; its
                                          COMPLETED body answers the next ``poll``)
    GET  {response_url}                -> 200 model output | 4xx/5xx model error (detail)
    PUT  {cancel_url}                  -> 202 CANCELLATION_REQUESTED | 400 ALREADY_COMPLETED | 404

The four returned fields are kept in ``JobHandle.urls`` (status/result URLs drop
the endpoint's subpath; never rebuild them by hand unless they are missing, and
then only from the app's owner/alias).

Endpoints and normalized -> native mapping:

=====================  ====================================  ============================
vidbatch               fal-ai/birefnet/v2/video              fal-ai/seedvr/upscale/video
=====================  ====================================  ============================
model                  ``model`` (6 values, default Light)   ``seedvr2`` (only one)
format webm/mov/       ``video_output_type`` VP9 (.webm) /   ``output_format`` (same enum)
mp4/gif                PRORES4444 (.mov) / X264 (.mp4) /
                       GIF (.gif)
format webp,           refused (not offered for video)       refused
png_sequence
background transparent needs webm/mov/gif (mp4: refused)     -
background colour/img refused (fal returns cut-outs only;   -
                       use removebgvideo or composite later)
mask: true             ``output_mask: true`` -> mask_video   -
factor: F              -                                     upscale_mode factor, upscale_factor F (1-10)
target: 1080p          -                                     upscale_mode target, target_resolution
=====================  ====================================  ============================

Image inputs go to ``fal-ai/birefnet/v2`` (``image_url``; ``output_format``
png/webp/gif; no Dynamic model, no 2304x2304). The image endpoint is chosen when
``params.input_kind`` is ``image``, or when it is ``auto`` (the default) and the
staged input's MIME type is ``image/*``. Normalized formats for images: ``webp``
-> ``webp``, ``gif`` -> ``gif`` (vidbatch has no single-PNG format).

Inputs: http(s) URLs pass as is; ``s3://`` (and any store that can presign) gets
a presigned GET URL valid for ``settings.queue_wait_seconds`` + 1 h (the job may
queue that long before fal fetches it); local paths and ``memory://`` go up
through fal storage (CDN token, then one streamed POST, or a multipart upload of
10 MiB parts above 100 MiB), streamed from the input store.

Choices where the docs say UNKNOWN:

* birefnet video price: unpublished -> ``estimate`` returns ``usd=None``. Image:
  $0.00111/compute s, estimated at 3 s per image. SeedVR2: $0.001 per output MP.
* result of a cancelled request: COMPLETED whose status ``error`` or result error
  mentions "cancel" -> ``CANCELED``; any other result error -> ``FAILED``.
* account locked for low balance (HTTP code unknown): any error whose body
  speaks of balance/credits/locked -> ``QuotaError``.
* a 5xx on the result fetch: retryable (``X-Fal-Retryable: true``, or a gateway
  page without ``x-fal-request-id``) -> ``TransientError`` (fetch again); a model
  error with a JSON body -> the job ``FAILED`` with fal's message.
* no idempotency key exists: ``can_recheck_submit`` is False; a transport error
  after the submit was sent raises ``SubmitUncertainError``.
* ``X-Fal-Request-Timeout`` is sent on submit (``settings.queue_wait_seconds``,
  override with ``options.start_timeout``; 0 disables) so a job that cannot start
  before its presigned input expires fails fast (504 user -> permanent).

Credentials: ``FAL_KEY`` (``key_id:key_secret``), or ``FAL_KEY_ID`` + ``FAL_KEY_SECRET``.
URLs: ``options.queue_url``/``rest_url``/``cdn_url`` > ``base_url`` (+ ``/fal/queue``,
``/fal/rest``, ``/fal/cdn``) > ``VIDBATCH_FAL_QUEUE_URL``/``VIDBATCH_FAL_REST_URL``/
``VIDBATCH_FAL_CDN_URL`` > production. Uploads go to the CDN ``base_url`` the
storage token names (falling back to the CDN URL above).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import posixpath
import time
from typing import Any, Callable, Mapping

import httpx
from httpx_sse import SSEError, aconnect_sse

from vidbatch import storage
from vidbatch.errors import (
    AuthError,
    ConfigError,
    CredentialsError,
    JobGoneError,
    PermanentError,
    ProviderError,
    QuotaError,
    ResultError,
    StorageError,
    SubmitUncertainError,
    TransientError,
)
from vidbatch.providers.base import OperationInfo
from vidbatch.providers.http import (
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
    transport_error,
    utc_iso_to_epoch,
    with_retries,
)
from vidbatch.providers.params import (
    BIREFNET_IMAGE_MODELS,
    BIREFNET_VIDEO_MODELS,
    DYNAMIC,
    VIDEO_OUTPUT_TYPE,
    FalBirefnetImage,
    FalBirefnetVideo,
    FalSeedvrVideo,
    merge,
    native,
)
from vidbatch.redact import redact, register_secret
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

PROVIDER = "fal"
QUEUE_URL = "https://queue.fal.run"
REST_URL = "https://rest.fal.ai"
CDN_URL = "https://v3.fal.media"

BIREFNET_VIDEO = "fal-ai/birefnet/v2/video"
BIREFNET_IMAGE = "fal-ai/birefnet/v2"
SEEDVR_VIDEO = "fal-ai/seedvr/upscale/video"
SEEDVR_MODEL = "seedvr2"

#: fal_client's thresholds (client.py MULTIPART_THRESHOLD / MULTIPART_CHUNK_SIZE)
MULTIPART_THRESHOLD = 100 * 1024 * 1024
MULTIPART_CHUNK = 10 * 1024 * 1024
#: presigned input URLs outlive the expected queue wait by this much
PRESIGN_MARGIN = 3600

PRICE_SEEDVR_PER_MP = 0.001
PRICE_IMAGE_PER_SECOND = 0.00111
IMAGE_SECONDS_ESTIMATE = 3.0

VIDEO_FORMATS = ("webm", "mov", "mp4", "gif")
IMAGE_FORMATS = {"webp": "webp", "gif": "gif"}
INPUT_KINDS = ("auto", "video", "image")


# --------------------------------------------------------------------------- errors


def format_detail(detail: Any) -> str:
    """fal's ``detail``: a string, or a list of pydantic-style ``{loc, msg, type}``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for d in detail[:5]:
            if not isinstance(d, dict):
                parts.append(str(d))
                continue
            loc = [str(x) for x in d.get("loc") or () if x != "body"]
            where = ".".join(loc)
            text = f"{where}: {d.get('msg', '')}" if where else str(d.get("msg", ""))
            if d.get("type"):
                text += f" ({d['type']})"
            parts.append(text.strip())
        return "; ".join(parts)
    if isinstance(detail, dict):
        return str(detail.get("msg") or detail.get("message") or detail)
    return "" if detail is None else str(detail)


def error_info(resp: httpx.Response) -> tuple[str, str]:
    """(message, error_type) of a fal error response."""
    data = parse_json(resp)
    message, etype = "", ""
    if isinstance(data, dict):
        message = format_detail(data.get("detail")) or str(data.get("error") or data.get("message") or "")
        etype = str(data.get("error_type") or "")
        if not etype and isinstance(data.get("detail"), list) and data["detail"]:
            first = data["detail"][0]
            etype = str(first.get("type") or "") if isinstance(first, dict) else ""
    etype = etype or resp.headers.get("x-fal-error-type", "")
    return message or body_text(resp, 200), etype


def is_ingress(resp: httpx.Response) -> bool:
    """A gateway error page (fal_client's retry rule: no request id, nginx body)."""
    return "x-fal-request-id" not in resp.headers and "nginx" in body_text(resp, 2000).lower()


def map_error(resp: httpx.Response, what: str, *, job: bool = False) -> ProviderError:
    """fal's status codes, headers and bodies -> the vidbatch error tree (once, here)."""
    status = resp.status_code
    message, etype = error_info(resp)
    text = f"{what}: HTTP {status}" + (f" {etype}" if etype else "") + (f": {message}" if message else "")
    retry_after = parse_retry_after(resp.headers)
    retryable = (resp.headers.get("x-fal-retryable") or resp.headers.get("x-fal-needs-retry") or "").lower()
    if status == 504 and resp.headers.get("x-fal-request-timeout-type", "").lower() == "user":
        return PermanentError(
            text + " (the request could not start before its X-Fal-Request-Timeout; raise "
            "queue_wait_seconds or lower concurrency)",
            provider=PROVIDER,
            status=status,
        )
    if status in (400, 401, 402, 403) and looks_like_quota(message, etype, "locked" if "locked" in message.lower() else ""):
        return QuotaError(text + " (top up the fal account balance)", provider=PROVIDER, status=status)
    if status in (401, 403):
        return AuthError(text + " (check FAL_KEY)", provider=PROVIDER, status=status)
    if retryable == "true" and status != 429:
        return TransientError(text, provider=PROVIDER, status=status, retry_after=retry_after)
    if retryable == "false" and status >= 500:
        return PermanentError(text, provider=PROVIDER, status=status)
    if status == 499:
        return TransientError(text, provider=PROVIDER, status=status)
    return classify(status, text, provider=PROVIDER, retry_after=retry_after, job=job)


def _mapper(job: bool = False) -> Any:
    return functools.partial(map_error, job=job)


# --------------------------------------------------------------------------- provider


#: a status stream that closes sooner than this without COMPLETED is not working here
STREAM_MIN_USEFUL = 5.0

class FalProvider(HostedProvider):
    """fal.ai queue client (see module docstring for the mapping and choices)."""

    name = PROVIDER
    operations = {
        "remove-background": OperationInfo(
            default_model="General Use (Light)", models=BIREFNET_VIDEO_MODELS, formats=VIDEO_FORMATS
        ),
        "upscale": OperationInfo(default_model=SEEDVR_MODEL, models=(SEEDVR_MODEL,), formats=VIDEO_FORMATS),
    }
    credential_names = ("FAL_KEY",)
    can_recheck_submit = False
    #: fal's Python client polls every 0.1 s (issue #573); seconds are plenty for video
    min_poll_interval = 2.0
    #: ``GET {status_url}/stream`` pushes status changes (``watch``); ``options.status_stream: false`` turns it off
    pushes_status = True

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        s = self.settings
        self.queue_url = resolve_url(s, option="queue_url", env="VIDBATCH_FAL_QUEUE_URL", emulator_suffix="/fal/queue", default=QUEUE_URL)
        self.rest_url = resolve_url(s, option="rest_url", env="VIDBATCH_FAL_REST_URL", emulator_suffix="/fal/rest", default=REST_URL)
        self.cdn_url = resolve_url(s, option="cdn_url", env="VIDBATCH_FAL_CDN_URL", emulator_suffix="/fal/cdn", default=CDN_URL)
        self.multipart_threshold = int(s.options.get("multipart_threshold", MULTIPART_THRESHOLD))
        self.part_size = int(s.options.get("part_size", MULTIPART_CHUNK))
        self.part_retries = int(s.options.get("part_retries", 3))
        self._token: tuple[str, str, str, float] | None = None  # token, type, base_url, expires
        #: result JSON by request id: fal keeps it 1 h (6 min if >= 10 KB), so the
        #: body fetched by ``poll`` to confirm success is reused by ``results``
        self._results: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        #: COMPLETED status bodies from ``watch``, read once by the next ``poll``
        self._streamed: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
        key = self._key()
        if key and ":" in key:
            register_secret(key.split(":", 1)[1])

    # -- credentials ------------------------------------------------------
    def secret_names(self) -> tuple[str, ...]:
        return ("FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET")

    def _key(self) -> str | None:
        key = self.settings.credential("FAL_KEY")
        if key:
            return key.strip()
        kid, secret = self.settings.credential("FAL_KEY_ID"), self.settings.credential("FAL_KEY_SECRET")
        if kid and secret:
            return f"{kid.strip()}:{secret.strip()}"
        return None

    def check_credentials(self) -> None:
        key = self._key()
        if not key:
            raise CredentialsError(
                "fal: missing credential FAL_KEY; set the environment variable FAL_KEY "
                "(or FAL_KEY_ID and FAL_KEY_SECRET), or name a Prefect Secret block under credentials.fal"
            )
        if any(c.isspace() for c in key):
            raise CredentialsError("fal: FAL_KEY contains whitespace; copy the key again from fal.ai/dashboard/keys")

    def _auth(self) -> dict[str, str]:
        key = self._key()
        if not key:
            self.check_credentials()
        return {"Authorization": f"Key {key}"}

    # -- validation / mapping ---------------------------------------------
    def validate(self, spec: JobSpec) -> None:
        self._native(spec, None)

    def _native(self, spec: JobSpec, staged: StagedInput | None) -> tuple[str, dict[str, Any]]:
        """(endpoint, request body) for ``spec``; ConfigError on anything impossible."""
        info = self.operation_info(spec.operation)
        params = dict(spec.params or {})
        kind = str(params.pop("input_kind", "auto"))
        if kind not in INPUT_KINDS:
            raise ConfigError(f"fal: params.input_kind {kind!r} is not allowed; choose one of: {', '.join(INPUT_KINDS)}")
        url = staged.url if staged and staged.url else "https://example.invalid/input"
        if spec.operation == "upscale":
            return SEEDVR_VIDEO, self._seedvr(spec, params, url, info)
        ctype = (staged.content_type if staged else None) or ""
        image = kind == "image" or (kind == "auto" and ctype.startswith("image/"))
        if spec.background != "transparent":
            raise ConfigError(
                f"fal {BIREFNET_VIDEO}: background {spec.background!r} is not offered (fal returns the cut-out "
                "with alpha only); use provider removebgvideo for a colour/image background, or keep "
                "background: transparent and composite later"
            )
        if image:
            return BIREFNET_IMAGE, self._birefnet_image(spec, params, url)
        return BIREFNET_VIDEO, self._birefnet_video(spec, params, url, info)

    def _birefnet_video(self, spec: JobSpec, params: dict[str, Any], url: str, info: OperationInfo) -> dict[str, Any]:
        where = f"fal {BIREFNET_VIDEO}"
        if spec.model not in info.models:
            raise ConfigError(f"{where}: unknown model {spec.model!r}; choose one of: {', '.join(info.models)}")
        if spec.format not in VIDEO_FORMATS:
            raise ConfigError(
                f"{where}: format {spec.format!r} is not offered for video; choose one of: "
                f"{', '.join(VIDEO_FORMATS)} (removebgvideo writes webp and png_sequence)"
            )
        if spec.format == "mp4":
            raise ConfigError(
                f"{where}: format mp4 (X264) has no alpha channel, so background 'transparent' cannot be "
                "kept; use format webm, mov or gif"
            )
        derived = {
            "video_url": url,
            "model": spec.model,
            "video_output_type": VIDEO_OUTPUT_TYPE[spec.format],
            "output_mask": bool(spec.mask),
        }
        owned = {"model": "model:", "video_output_type": "format:", "output_mask": "mask:"}
        body = merge(derived, params, owned=owned, inputs=FalBirefnetVideo.input_fields, where=where)
        return native(FalBirefnetVideo, body, where=where, extra_keys=("input_kind",)).body()

    def _birefnet_image(self, spec: JobSpec, params: dict[str, Any], url: str) -> dict[str, Any]:
        where = f"fal {BIREFNET_IMAGE}"
        if spec.model not in BIREFNET_IMAGE_MODELS:
            hint = f" ({DYNAMIC} is video-only)" if spec.model == DYNAMIC else ""
            raise ConfigError(
                f"{where}: unknown model {spec.model!r} for an image input{hint}; choose one of: "
                f"{', '.join(BIREFNET_IMAGE_MODELS)}"
            )
        if spec.format not in IMAGE_FORMATS:
            raise ConfigError(
                f"{where}: format {spec.format!r} is not offered for an image input; use format webp or gif"
            )
        derived = {
            "image_url": url,
            "model": spec.model,
            "output_format": IMAGE_FORMATS[spec.format],
            "output_mask": bool(spec.mask),
        }
        owned = {"model": "model:", "output_format": "format:", "output_mask": "mask:"}
        body = merge(derived, params, owned=owned, inputs=FalBirefnetImage.input_fields, where=where)
        return native(FalBirefnetImage, body, where=where, extra_keys=("input_kind",)).body()

    def _seedvr(self, spec: JobSpec, params: dict[str, Any], url: str, info: OperationInfo) -> dict[str, Any]:
        where = f"fal {SEEDVR_VIDEO}"
        if spec.model not in info.models:
            raise ConfigError(f"{where}: unknown model {spec.model!r}; choose one of: {', '.join(info.models)}")
        if spec.format not in VIDEO_FORMATS:
            raise ConfigError(
                f"{where}: format {spec.format!r} is not offered; choose one of: {', '.join(VIDEO_FORMATS)}"
            )
        if spec.factor is not None and spec.target is not None:
            raise ConfigError(f"{where}: set either factor or target, not both")
        derived: dict[str, Any] = {"video_url": url, "output_format": VIDEO_OUTPUT_TYPE[spec.format]}
        if spec.target is not None:
            derived.update(upscale_mode="target", target_resolution=spec.target)
        else:
            factor = 2.0 if spec.factor is None else float(spec.factor)
            if not 1 <= factor <= 10:
                raise ConfigError(f"{where}: factor {factor:g} is outside fal's 1-10; choose a factor in 1-10")
            derived.update(upscale_mode="factor", upscale_factor=factor)
        owned = {
            "upscale_mode": "factor:/target:",
            "upscale_factor": "factor:",
            "target_resolution": "target:",
            "output_format": "format:",
        }
        body = merge(derived, params, owned=owned, inputs=FalSeedvrVideo.input_fields, where=where)
        out = native(FalSeedvrVideo, body, where=where, extra_keys=("input_kind",)).body()
        # only the field of the chosen mode travels (the other would be ignored)
        out.pop("target_resolution" if out["upscale_mode"] == "factor" else "upscale_factor", None)
        return out

    def check_input(self, spec: JobSpec, media: MediaInfo) -> None:
        """An image input switches to ``fal-ai/birefnet/v2``: check its rules before anything runs."""
        container = (media.container or "").lower()
        image = any(k in container for k in ("png", "jpeg", "jpg", "webp_pipe", "image2", "bmp", "tiff")) or (
            media.frames <= 1 and media.duration <= 0
        )
        if spec.operation == "remove-background" and image:
            self._native(spec, StagedInput(url="https://example.invalid/input.png", content_type="image/png"))

    # -- staging ----------------------------------------------------------
    async def stage(self, item: Item) -> StagedInput:
        url = item.url
        proto = storage.protocol_of(url)
        ctype = guess_type(url, "video/mp4")
        if proto in ("http", "https"):
            return StagedInput(url=url, content_type=ctype)
        if proto not in ("file", "local", "memory"):
            expires = int(self.settings.queue_wait_seconds + PRESIGN_MARGIN)
            try:
                signed = storage.presign(url, item.storage_options, expires=expires)
            except StorageError:
                pass  # a store that cannot presign: upload its bytes instead
            else:
                return StagedInput(url=signed, expires_at=time.time() + expires, content_type=ctype)
        access = await self.upload(url, item.storage_options, size=item.size or None, content_type=ctype)
        return StagedInput(url=access, local_path=url if proto in ("file", "local") else None, content_type=ctype)

    async def _cdn_token(self) -> tuple[str, str, str]:
        now = time.time()
        if self._token and self._token[3] - 60 > now:
            return self._token[:3]
        resp = await request(
            self.client,
            "POST",
            f"{self.rest_url}/storage/auth/token",
            params={"storage_type": "fal-cdn-v3"},
            json={},
            headers={**self._auth(), "Accept": "application/json"},
            provider=PROVIDER,
            what="storage token",
            mapper=_mapper(),
        )
        data = json_of(resp, provider=PROVIDER, what="storage token")
        token = str(data.get("token") or "")
        if not token:
            raise TransientError("storage token: response has no token", provider=PROVIDER)
        register_secret(token)
        base = absolute(self.rest_url, str(data.get("base_url") or self.cdn_url)).rstrip("/")
        expires = utc_iso_to_epoch(data.get("expires_at")) or now + 600
        self._token = (token, str(data.get("token_type") or "Bearer"), base, expires)
        return self._token[:3]

    async def upload(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        *,
        size: int | None = None,
        content_type: str | None = None,
    ) -> str:
        """Upload a file from any fsspec store to fal's CDN; return its public URL."""
        if size is None:
            fs, path = storage.fs_for(url, storage_options)
            try:
                size = int(fs.info(path).get("size") or 0)
            except FileNotFoundError:
                from vidbatch.errors import InputError

                raise InputError(f"input not found: {url}") from None
        ctype = content_type or guess_type(url)
        name = posixpath.basename(url.split("://", 1)[-1]) or "input.bin"
        for attempt in (1, 2):
            token, ttype, base = await self._cdn_token()
            auth = {"Authorization": f"{ttype} {token}"}
            try:
                if size > self.multipart_threshold:
                    return await self._upload_multipart(url, storage_options, size, ctype, name, base, auth)
                return await self._upload_single(url, storage_options, size, ctype, name, base, auth)
            except AuthError:
                # the CDN token (not the key) was refused: it lapsed or was revoked
                # early; fetch a new one once (a bad key fails at the token call)
                self._token = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _upload_single(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None,
        size: int,
        ctype: str,
        name: str,
        base: str,
        auth: dict[str, str],
    ) -> str:
        resp = await request(
            self.client,
            "POST",
            f"{base}/files/upload",
            content=storage.aiter_read(url, storage_options),
            headers={**auth, "Content-Type": ctype, "X-Fal-File-Name": name, "Content-Length": str(size)},
            timeout=httpx.Timeout(connect=15.0, read=300.0, write=300.0, pool=60.0),
            provider=PROVIDER,
            what="upload",
            mapper=_mapper(),
        )
        data = json_of(resp, provider=PROVIDER, what="upload")
        if not data.get("access_url"):
            raise TransientError("upload: response has no access_url", provider=PROVIDER)
        return absolute(base, str(data["access_url"]))

    async def _upload_multipart(
        self,
        url: str,
        storage_options: Mapping[str, Any] | None,
        size: int,
        ctype: str,
        name: str,
        base: str,
        auth: dict[str, str],
    ) -> str:
        resp = await request(
            self.client,
            "POST",
            f"{base}/files/upload/multipart",
            headers={**auth, "Content-Type": ctype, "X-Fal-File-Name": name},
            provider=PROVIDER,
            what="multipart upload",
            mapper=_mapper(),
        )
        data = json_of(resp, provider=PROVIDER, what="multipart upload")
        access, upload_id = data.get("access_url"), data.get("uploadId") or data.get("upload_id")
        if not access or not upload_id:
            raise TransientError("multipart upload: response lacks access_url/uploadId", provider=PROVIDER)
        access = absolute(base, str(access))
        parts: list[dict[str, Any]] = []
        number = 0
        # parts go up one at a time: bounded memory (one part buffered) and the
        # order of the input stream; each part is retried on its own
        async for data_part in chunked(storage.aiter_read(url, storage_options, chunk=self.part_size), self.part_size):
            number += 1

            async def put(n: int = number, payload: bytes = data_part) -> httpx.Response:
                body, length = part_body(payload)
                return await request(
                    self.client,
                    "PUT",
                    f"{access}/multipart/{upload_id}/{n}",
                    content=body,
                    headers={**auth, **length, "Content-Type": ctype, "Accept-Encoding": "identity"},
                    timeout=httpx.Timeout(connect=15.0, read=300.0, write=300.0, pool=60.0),
                    provider=PROVIDER,
                    what=f"upload part {n}",
                    mapper=_mapper(),
                )

            part = await with_retries(put, attempts=self.part_retries)
            etag = part.headers.get("etag")
            if not etag:
                body = parse_json(part)
                etag = body.get("etag") if isinstance(body, dict) else None
            if not etag:
                raise TransientError(f"upload part {number}: no ETag in the response", provider=PROVIDER)
            parts.append({"partNumber": number, "etag": etag})
        await request(
            self.client,
            "POST",
            f"{access}/multipart/{upload_id}/complete",
            json={"parts": parts},
            headers=auth,
            provider=PROVIDER,
            what="multipart complete",
            mapper=_mapper(),
        )
        return access

    # -- jobs -------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = self._auth()
        start = self.settings.options.get("start_timeout", self.settings.queue_wait_seconds)
        if start and float(start) > 1:
            headers["X-Fal-Request-Timeout"] = str(int(float(start)))
        if self.settings.options.get("priority"):
            headers["X-Fal-Queue-Priority"] = str(self.settings.options["priority"])
        return headers

    async def submit(self, spec: JobSpec, staged: StagedInput) -> JobHandle:
        if not staged.url:
            raise ConfigError("fal: the staged input has no URL; stage it with the fal provider")
        endpoint, body = self._native(spec, staged)
        resp = await request(
            self.client,
            "POST",
            f"{self.queue_url}/{endpoint}",
            json=body,
            headers=self._headers(),
            provider=PROVIDER,
            what=f"submit {endpoint}",
            mapper=_mapper(),
            uncertain=True,
        )
        data = json_of(resp, provider=PROVIDER, what=f"submit {endpoint}", uncertain=True)
        request_id = data.get("request_id") if isinstance(data, dict) else None
        if not request_id:
            raise SubmitUncertainError(
                f"submit {endpoint}: HTTP {resp.status_code} without a request_id; the job may exist",
                provider=PROVIDER,
            )
        app = self._app_url(endpoint, str(request_id))
        urls = {
            "status_url": absolute(self.queue_url, str(data.get("status_url") or f"{app}/status")),
            "response_url": absolute(self.queue_url, str(data.get("response_url") or app)),
            "cancel_url": absolute(self.queue_url, str(data.get("cancel_url") or f"{app}/cancel")),
        }
        kind = "image" if endpoint == BIREFNET_IMAGE else "video"
        return JobHandle(
            provider=PROVIDER,
            request_id=str(request_id),
            urls=urls,
            submitted_at=time.time(),
            extra={"endpoint": endpoint, "kind": kind, "mask": bool(body.get("output_mask"))},
        )

    def _app_url(self, endpoint: str, request_id: str) -> str:
        # status/result URLs carry only owner/alias, never the subpath (fal.md 2.1)
        owner, alias = endpoint.split("/")[:2]
        return f"{self.queue_url}/{owner}/{alias}/requests/{request_id}"

    def _url(self, handle: JobHandle, key: str) -> str:
        url = handle.urls.get(key)
        if url:
            return url
        app = self._app_url(str(handle.extra.get("endpoint") or BIREFNET_VIDEO), handle.request_id)
        return {"status_url": f"{app}/status", "response_url": app, "cancel_url": f"{app}/cancel"}[key]

    async def poll(self, handle: JobHandle) -> JobStatus:
        # the COMPLETED body the status stream just delivered is the status request's answer
        data = self._streamed.pop(handle.request_id, None)
        if data is None:
            resp = await request(
                self.client,
                "GET",
                self._url(handle, "status_url"),
                params={"logs": "1"},
                headers=self._auth(),
                provider=PROVIDER,
                what="status",
                mapper=_mapper(job=True),
            )
            data = json_of(resp, provider=PROVIDER, what="status")
        pending = _pending_status(data)
        if pending is not None:
            return pending
        logs = _logs(data.get("logs"))
        if data.get("error"):
            message = f"{data.get('error_type') or 'error'}: {data['error']}"
            # the result carries the full detail (e.g. the 422's loc); prefer it
            try:
                detailed = await self._fetch_result(handle, cached=False)
            except ProviderError:
                detailed = None
            if isinstance(detailed, JobStatus) and detailed.state.terminal and detailed.message:
                message = detailed.message
            state = JobState.CANCELED if "cancel" in message.lower() else JobState.FAILED
            return JobStatus(state, message=message, logs=logs)
        # COMPLETED is not success until the result says so
        result = await self._fetch_result(handle)
        if isinstance(result, JobStatus):
            return JobStatus(result.state, message=result.message, logs=logs)
        metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
        cost = self._actual_cost(handle, result, metrics)
        return JobStatus(JobState.SUCCEEDED, progress=1.0, logs=logs, cost_usd=cost.usd if cost else None, cost=cost)

    async def watch(
        self, handle: JobHandle, timeout: float, on_status: Callable[[JobStatus], None] | None = None
    ) -> bool:
        """Follow ``GET {status_url}/stream`` (SSE) until fal says COMPLETED or ``timeout`` passes.

        fal reports no progress, so a poll schedule for a job of unknown length
        spends dozens of requests to see its end within 5 % (``vidbatch.polling``);
        the stream sees it the moment it happens, for one request. Anything
        unexpected (refused, not an event stream, closed at once) returns False
        and the caller polls instead. The stream's COMPLETED body answers the
        caller's next ``poll`` (no second status request); success is still
        decided by the result fetch, as for a polled COMPLETED.
        """
        if not self.settings.options.get("status_stream", True):
            return False
        url = httpx.URL(self._url(handle, "status_url"))
        url = url.copy_with(path=url.path.rstrip("/") + "/stream")
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                async with aconnect_sse(self.stream_client, "GET", str(url), params={"logs": "0"},
                                        headers=self._auth()) as source:
                    if not source.response.is_success:
                        return False
                    async for event in source.aiter_sse():
                        try:
                            data = event.json()
                        except ValueError:
                            continue  # a comment ping or a line we do not know
                        if not isinstance(data, dict):
                            continue
                        if data.get("status") == "COMPLETED":
                            self._streamed[handle.request_id] = data
                            while len(self._streamed) > 256:
                                self._streamed.popitem(last=False)
                            return True
                        pending = _pending_status(data)
                        if pending is not None and on_status is not None:
                            on_status(pending)
        except TimeoutError:
            return True
        except (httpx.HTTPError, SSEError):
            pass
        # closed without COMPLETED: after a while (a proxy's idle limit) following it
        # again is worth it; closed at once, the stream does not work here
        return time.monotonic() - started >= STREAM_MIN_USEFUL

    async def _fetch_result(self, handle: JobHandle, *, cached: bool = True) -> dict[str, Any] | JobStatus:
        """The result JSON, or a terminal/running ``JobStatus`` when fal reports an error."""
        if cached and handle.request_id in self._results:
            return self._results[handle.request_id]
        url = self._url(handle, "response_url")
        try:
            resp = await self.client.get(url, headers=self._auth())
        except httpx.HTTPError as exc:
            raise transport_error(exc, provider=PROVIDER, what="result") from None
        if resp.status_code == 202:
            return JobStatus(JobState.RUNNING)  # not a result yet (a race with COMPLETED)
        if resp.is_success:
            data = json_of(resp, provider=PROVIDER, what="result")
            self._results[handle.request_id] = data
            while len(self._results) > 256:
                self._results.popitem(last=False)
            return data
        status = resp.status_code
        low = body_text(resp).lower()
        if status == 400 and any(w in low for w in ("not completed", "in progress", "in_progress", "in queue", "in_queue")):
            return JobStatus(JobState.RUNNING)  # a race with COMPLETED
        if status in (404, 410):
            raise JobGoneError(
                f"result: HTTP {status}: the result of request {handle.request_id} is gone (fal keeps result "
                "JSON 1 h, 6 min if >= 10 KB); resubmit",
                provider=PROVIDER,
                status=status,
            )
        err = map_error(resp, "result", job=True)
        if isinstance(err, (AuthError, QuotaError)) or status in (408, 409, 429):
            raise err
        if status >= 500 and (
            (resp.headers.get("x-fal-retryable") or "").lower() == "true" or is_ingress(resp) or parse_json(resp) is None
        ):
            raise err  # the fetch failed, not the job: fetch again
        # the model's own error (422 validation, file_download_error, a runner
        # failure with a JSON body...): the job failed with fal's reason
        message, etype = error_info(resp)
        text = f"{etype}: {message}" if etype and message else (message or etype or "no detail")
        state = JobState.CANCELED if "cancel" in text.lower() else JobState.FAILED
        return JobStatus(state, message=redact(f"HTTP {status} {text}"))

    def _actual_cost(self, handle: JobHandle, result: Mapping[str, Any], metrics: Mapping[str, Any]) -> Cost | None:
        endpoint = handle.extra.get("endpoint")
        if endpoint == SEEDVR_VIDEO:
            video = result.get("video") if isinstance(result.get("video"), dict) else {}
            w, h, n = video.get("width"), video.get("height"), video.get("num_frames")
            if w and h and n:
                mp = float(w) * float(h) * float(n) / 1e6
                return Cost(usd=mp * PRICE_SEEDVR_PER_MP, units=mp, unit="MP", basis="fal SeedVR2 $0.001/output MP")
        if endpoint == BIREFNET_IMAGE and metrics.get("inference_time"):
            secs = float(metrics["inference_time"])
            return Cost(usd=secs * PRICE_IMAGE_PER_SECOND, units=secs, unit="compute s", basis="fal $0.00111/compute s")
        return None

    async def results(self, handle: JobHandle) -> list[Artifact]:
        return await self._results_of(handle, cached=True)

    async def _results_of(self, handle: JobHandle, *, cached: bool) -> list[Artifact]:
        result = await self._fetch_result(handle, cached=cached)
        if isinstance(result, JobStatus):
            if result.state == JobState.RUNNING:
                raise TransientError("result: the request has not completed yet", provider=PROVIDER)
            raise PermanentError(f"result: {result.message}", provider=PROVIDER)
        keys = (("image", "video"), ("mask_image", "mask")) if handle.extra.get("kind") == "image" else (
            ("video", "video"),
            ("mask_video", "mask"),
        )
        arts: list[Artifact] = []
        for key, kind in keys:
            f = result.get(key)
            if not f:
                continue
            if not isinstance(f, dict) or not f.get("url"):
                raise ResultError(f"result: {key} has no url", provider=PROVIDER)
            if str(f["url"]).startswith("data:"):
                raise ResultError(f"result: {key} came back as a data URI (sync_mode); not supported", provider=PROVIDER)
            meta = {k: f[k] for k in ("width", "height", "fps", "duration", "num_frames", "file_name") if f.get(k) is not None}
            meta.update(request_id=handle.request_id, response_url=self._url(handle, "response_url"), key=key)
            size = f.get("file_size")
            arts.append(
                Artifact(
                    url=absolute(self.queue_url, str(f["url"])),
                    kind=kind,  # type: ignore[arg-type]
                    content_type=str(f.get("content_type") or guess_type(str(f["url"]), "")),
                    size=int(size) if isinstance(size, (int, float)) else None,
                    meta=meta,
                )
            )
        if not arts:
            main = "image" if handle.extra.get("kind") == "image" else "video"
            raise ResultError(f"result: no {main!r} in fal's output", provider=PROVIDER)
        return arts

    async def refresh_artifact(self, handle: JobHandle, artifact: Artifact) -> Artifact:
        for art in await self._results_of(handle, cached=False):
            if art.kind == artifact.kind:
                return art
        return artifact

    async def _refresh_from_meta(self, artifact: Artifact) -> Artifact | None:
        rid, url = artifact.meta.get("request_id"), artifact.meta.get("response_url")
        if not rid or not url:
            return None
        kind = "image" if str(artifact.meta.get("key", "")).endswith("image") else "video"
        handle = JobHandle(provider=PROVIDER, request_id=str(rid), urls={"response_url": str(url)}, extra={"kind": kind})
        return await self.refresh_artifact(handle, artifact)

    async def cancel(self, handle: JobHandle) -> bool:
        resp = await request(
            self.client,
            "PUT",
            self._url(handle, "cancel_url"),
            headers=self._auth(),
            provider=PROVIDER,
            what="cancel",
            mapper=_mapper(job=True),
            ok=lambda r: r.is_success or r.status_code in (400, 404),
        )
        # 202 CANCELLATION_REQUESTED (or OK) / 400 ALREADY_COMPLETED / 404 NOT_FOUND
        return resp.is_success

    # -- cost -------------------------------------------------------------
    def estimate(self, spec: JobSpec, media: MediaInfo) -> Cost:
        if spec.operation == "upscale":
            w, h = upscaled_size(media.width, media.height, spec.factor, spec.target)
            mp = w * h * max(media.frames, 1) / 1e6
            return Cost(
                usd=mp * PRICE_SEEDVR_PER_MP,
                units=mp,
                unit="MP",
                basis=f"fal SeedVR2 $0.001 per output megapixel ({w}x{h} x {max(media.frames, 1)} frames)",
            )
        image = (spec.params or {}).get("input_kind") == "image" or (media.frames <= 1 and media.duration <= 0)
        if image:
            return Cost(
                usd=IMAGE_SECONDS_ESTIMATE * PRICE_IMAGE_PER_SECOND,
                units=IMAGE_SECONDS_ESTIMATE,
                unit="compute s",
                basis="fal birefnet/v2 $0.00111 per compute second, ~3 s per image (estimate)",
            )
        return Cost(usd=None, basis="fal birefnet/v2/video price is unpublished (UNKNOWN)")


def _pending_status(data: Mapping[str, Any]) -> JobStatus | None:
    """The status of a job fal has not finished (IN_QUEUE, IN_PROGRESS, anything new), else None."""
    status = str(data.get("status") or "")
    if status == "COMPLETED":
        return None
    logs = _logs(data.get("logs"))
    if status == "IN_QUEUE":
        pos = data.get("queue_position")
        return JobStatus(JobState.QUEUED, queue_position=int(pos) if isinstance(pos, (int, float)) else None, logs=logs)
    return JobStatus(JobState.RUNNING, logs=logs)


def _logs(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list):
        return ()
    out = []
    for entry in raw[-50:]:
        if isinstance(entry, dict):
            msg = str(entry.get("message", "")).strip()
            level = str(entry.get("level", "")).strip()
            out.append(redact(f"{level} {msg}".strip()))
        else:
            out.append(redact(str(entry)))
    return tuple(out)
