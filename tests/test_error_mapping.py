"""Every documented status code and error body of each provider -> its error class.

The mapping functions are pure (``map_error(response, what)``); documented
bodies are fed in as ``httpx.Response`` objects. The transport-level rules and
the fal result rules ("COMPLETED is not success") are exercised through
``httpx.MockTransport``, which tests the same pure translation without a server.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any, Callable

import httpx
import pytest

from vidbatch.errors import (
    AuthError,
    JobGoneError,
    PermanentError,
    QuotaError,
    RateLimitedError,
    SubmitUncertainError,
    TransientError,
    is_transient,
)
from vidbatch.providers import fal, removebgvideo, scenario
from vidbatch.providers.base import ArtifactExpiredError, ProviderSettings
from vidbatch.providers.http import MAX_RETRY_AFTER, parse_retry_after, request, stream_download
from vidbatch.spec import JobHandle, JobState

REQ = httpx.Request("GET", "https://api.example.invalid/x")


def resp(status: int, body: Any = None, headers: dict[str, str] | None = None, text: str | None = None) -> httpx.Response:
    if text is not None:
        return httpx.Response(status, text=text, headers=headers, request=REQ)
    if body is None:
        return httpx.Response(status, headers=headers, request=REQ)
    return httpx.Response(status, json=body, headers=headers, request=REQ)


def exact(err: Exception, cls: type) -> bool:
    return type(err) is cls


# --------------------------------------------------------------------------- fal

FAL_CASES = [
    # (status, body, headers, job, expected class)
    (400, {"detail": "Bad request", "error_type": "bad_request"}, {}, False, PermanentError),
    (401, {"detail": "Unauthorized"}, {}, False, AuthError),
    (403, {"detail": "Forbidden: key lacks scope"}, {}, False, AuthError),
    (403, {"detail": "User is locked. Reason: Exhausted balance. Top up your balance at fal.ai/dashboard/billing."}, {}, False, QuotaError),
    (402, {"detail": "Payment required"}, {}, False, QuotaError),
    (404, {"detail": "Request not found"}, {}, True, JobGoneError),
    (404, {"detail": "Application not found"}, {}, False, PermanentError),
    (408, {"detail": "timeout"}, {}, False, TransientError),
    (409, {"detail": "conflict"}, {}, False, TransientError),
    (422, {"detail": [{"loc": ["body", "video_url"], "msg": "could not download", "type": "file_download_error"}]}, {}, False, PermanentError),
    (422, {"detail": [{"loc": ["body", "model"], "msg": "Input should be ...", "type": "one_of"}]}, {}, False, PermanentError),
    (429, {"detail": "Too many requests"}, {"Retry-After": "7"}, False, RateLimitedError),
    (499, {"detail": "Client disconnected", "error_type": "client_disconnected"}, {}, False, TransientError),
    (500, {"detail": "Internal error", "error_type": "internal_error"}, {}, False, TransientError),
    (500, {"detail": "Runner error", "error_type": "runner_server_error"}, {"X-Fal-Retryable": "false"}, False, PermanentError),
    (500, {"detail": "Runner error", "error_type": "runner_server_error"}, {"X-Fal-Retryable": "true"}, False, TransientError),
    (502, {"detail": "Incomplete", "error_type": "runner_incomplete_response"}, {}, False, TransientError),
    (503, {"detail": "No runner", "error_type": "runner_scheduling_failure"}, {}, False, TransientError),
    (503, {"detail": "Disconnected", "error_type": "runner_disconnected"}, {"X-Fal-Retryable": "true"}, False, TransientError),
    (504, {"detail": "Timed out", "error_type": "request_timeout"}, {}, False, TransientError),
    (504, {"detail": "Startup timed out", "error_type": "startup_timeout"}, {}, False, TransientError),
    (504, {"detail": "Request timed out", "error_type": "request_timeout"}, {"X-Fal-Request-Timeout-Type": "user"}, False, PermanentError),
]


@pytest.mark.parametrize("status,body,headers,job,cls", FAL_CASES)
def test_fal_map_error(status: int, body: Any, headers: dict[str, str], job: bool, cls: type) -> None:
    err = fal.map_error(resp(status, body, headers), "call", job=job)
    assert exact(err, cls), (status, body, type(err), str(err))
    assert err.status == status
    assert str(err).startswith("fal: call: HTTP")
    assert "\n" not in str(err)


def test_fal_messages_carry_detail_and_type() -> None:
    err = fal.map_error(resp(422, FAL_CASES[9][1]), "result")
    assert "video_url: could not download (file_download_error)" in str(err)
    err = fal.map_error(resp(503, {"detail": "x"}, {"X-Fal-Error-Type": "runner_disconnected"}), "status")
    assert "runner_disconnected" in str(err)
    err = fal.map_error(resp(429, {"detail": "slow down"}, {"Retry-After": "7"}), "submit")
    assert isinstance(err, RateLimitedError) and err.retry_after == 7
    err = fal.map_error(resp(502, text="<html><center>nginx</center></html>"), "status")
    assert isinstance(err, TransientError)
    assert fal.is_ingress(resp(502, text="<html><center>nginx</center></html>"))
    assert not fal.is_ingress(resp(502, text="nginx", headers={"x-fal-request-id": "r1"}))


# --------------------------------------------------------------------------- Scenario

SCENARIO_CASES = [
    (400, {"message": "Invalid parameter operatingResolution", "traceId": "t-1"}, {}, False, PermanentError),
    (400, {"reason": "Unknown asset asset_x"}, {}, False, PermanentError),
    (400, {"error": "Prompt too long"}, {}, False, PermanentError),
    (400, {"detail": "bad enum"}, {}, False, PermanentError),
    (400, {"reason": "Not enough creative units to run this job"}, {}, False, QuotaError),
    (401, {"message": "Unauthorized"}, {}, False, AuthError),
    (402, {"message": "Payment required"}, {}, False, QuotaError),
    (403, {"name": "ModelAccessRestrictedError", "message": "Model access restricted", "modelId": "model_x", "requiredPlan": "pro"}, {}, False, AuthError),
    (403, {"message": "Forbidden"}, {}, False, AuthError),
    (404, {"message": "Job not found"}, {}, True, JobGoneError),
    (404, {"message": "Not found"}, {}, False, PermanentError),
    (408, {"message": "timeout"}, {}, False, TransientError),
    (409, {"message": "conflict"}, {}, False, TransientError),
    (429, {"message": "Too many concurrent jobs", "actionName": "generate", "actionLimit": 5, "remainingSeconds": 12}, {}, False, RateLimitedError),
    (429, {"message": "Too many requests"}, {"Retry-After": "3"}, False, RateLimitedError),
    (500, {"message": "Internal error", "traceId": "t-2"}, {}, False, TransientError),
    (502, None, {}, False, TransientError),
    (503, {"message": "unavailable"}, {}, False, TransientError),
    (504, {"message": "gateway timeout"}, {}, False, TransientError),
]


@pytest.mark.parametrize("status,body,headers,job,cls", SCENARIO_CASES)
def test_scenario_map_error(status: int, body: Any, headers: dict[str, str], job: bool, cls: type) -> None:
    err = scenario.map_error(resp(status, body, headers), "call", job=job)
    assert exact(err, cls), (status, body, type(err), str(err))
    assert str(err).startswith("scenario: call: HTTP")


def test_scenario_details() -> None:
    err = scenario.map_error(resp(*SCENARIO_CASES[13][:3]), "submit")
    assert isinstance(err, RateLimitedError) and err.retry_after == 12
    assert "generate" in str(err)
    err = scenario.map_error(resp(*SCENARIO_CASES[14][:3]), "submit")
    assert err.retry_after == 3
    err = scenario.map_error(resp(*SCENARIO_CASES[7][:3]), "submit")
    assert "pro" in str(err) and "ModelAccessRestrictedError" in str(err)
    err = scenario.map_error(resp(*SCENARIO_CASES[0][:3]), "submit")
    assert "t-1" in str(err) and "operatingResolution" in str(err)
    # a huge hint is capped: a worker never sleeps a day on one 429
    err = scenario.map_error(resp(429, {"remainingSeconds": 10**9}), "poll")
    assert err.retry_after == MAX_RETRY_AFTER


# --------------------------------------------------------------------------- removebgvideo


def rbv_err(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "request_id": "req_123456"}}


RBV_CASES = [
    (400, rbv_err("invalid_request", "bg_type must be one of ..."), {}, False, PermanentError),
    (400, rbv_err("invalid_request", "Invalid file type"), {}, False, PermanentError),
    (400, rbv_err("invalid_request", "File too large"), {}, False, PermanentError),
    (400, {"success": False, "message": "Job not completed"}, {}, True, PermanentError),
    (401, rbv_err("missing_api_key", "Missing API key"), {}, False, AuthError),
    (401, rbv_err("invalid_api_key", "Invalid API key"), {}, False, AuthError),
    (403, {"message": "forbidden"}, {}, False, AuthError),
    (404, rbv_err("not_found", "Job not found"), {}, True, JobGoneError),
    (404, rbv_err("not_found", "Job not found"), {}, False, PermanentError),
    (429, rbv_err("rate_limited", "Too many requests"), {"Retry-After": "2"}, False, RateLimitedError),
    (402, rbv_err("insufficient_credits", "Not enough credits to process this video"), {}, False, QuotaError),
    (400, rbv_err("insufficient_credits", "Not enough credits to process this video"), {}, False, QuotaError),
    (403, rbv_err("insufficient_credits", "Not enough credits to process this video"), {}, False, QuotaError),
    (500, rbv_err("internal_error", "Processing failed"), {}, False, TransientError),
    (500, {"message": "Processing failed"}, {}, False, TransientError),
    (504, rbv_err("timeout", "Upstream timeout"), {}, False, TransientError),
    (503, None, {}, False, TransientError),
]


@pytest.mark.parametrize("status,body,headers,job,cls", RBV_CASES)
def test_removebgvideo_map_error(status: int, body: Any, headers: dict[str, str], job: bool, cls: type) -> None:
    err = removebgvideo.map_error(resp(status, body, headers), "call", job=job)
    assert exact(err, cls), (status, body, type(err), str(err))
    assert str(err).startswith("removebgvideo: call: HTTP")


def test_removebgvideo_details() -> None:
    err = removebgvideo.map_error(resp(*RBV_CASES[9][:3]), "submit")
    assert err.retry_after == 2
    err = removebgvideo.map_error(resp(*RBV_CASES[10][:3]), "submit")
    assert "insufficient_credits" in str(err) and "req_123456" in str(err)


# --------------------------------------------------------------------------- Retry-After


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after": "5"}) == 5
    assert parse_retry_after({"retry-after": "0.5"}) == 0.5
    assert parse_retry_after({"retry-after-ms": "1500"}) == 1.5
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 <= (parse_retry_after({"retry-after": date}) or 0) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "99999"}) == MAX_RETRY_AFTER
    assert parse_retry_after({"retry-after": "-3"}) == 0


# --------------------------------------------------------------------------- transport


def client_raising(exc: Exception) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


@pytest.mark.parametrize(
    "exc,uncertain,cls",
    [
        (httpx.ConnectError("refused"), True, TransientError),  # never left: safe to resend
        (httpx.ConnectTimeout("connect"), True, TransientError),
        (httpx.PoolTimeout("pool"), True, TransientError),
        (httpx.ReadTimeout("read"), True, SubmitUncertainError),  # sent; the job may exist
        (httpx.WriteTimeout("write"), True, SubmitUncertainError),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), True, SubmitUncertainError),
        (httpx.ReadError("connection reset"), True, SubmitUncertainError),
        (httpx.ReadTimeout("read"), False, TransientError),
        (httpx.RemoteProtocolError("Server disconnected"), False, TransientError),
    ],
)
async def test_transport_errors(exc: Exception, uncertain: bool, cls: type) -> None:
    async with client_raising(exc) as client:
        with pytest.raises(TransientError) as info:
            await request(client, "POST", "https://x.invalid/submit", provider="fal", what="submit",
                          mapper=fal.map_error, uncertain=uncertain)
    assert type(info.value) is cls
    assert is_transient(info.value)


async def test_garbled_submit_response_is_uncertain() -> None:
    client = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200, text="<html>")))
    p = fal.FalProvider(ProviderSettings(credentials={"FAL_KEY": "kid:secret-abc"}))
    p.use_client(client)
    from vidbatch.spec import JobSpec, StagedInput

    spec = JobSpec("fal", "remove-background", "General Use (Light)", format="webm")
    with pytest.raises(SubmitUncertainError):
        await p.submit(spec, StagedInput(url="https://cdn.invalid/in.mp4", content_type="video/mp4"))
    await client.aclose()


async def test_stream_download_checks_length_and_expiry() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/short":
            return httpx.Response(200, content=b"x" * 10, headers={"Content-Length": "25"})
        if request.url.path == "/gone":
            return httpx.Response(403, text="<Error>AccessDenied: Request has expired</Error>")
        if request.url.path == "/busy":
            return httpx.Response(503, text="busy", headers={"Retry-After": "4"})
        return httpx.Response(200, content=b"y" * (3 << 20))

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        async def read(path: str) -> list[bytes]:
            return [c async for c in stream_download(client, f"https://cdn.invalid{path}?Signature=abc", provider="scenario")]

        with pytest.raises(TransientError, match="truncated: received 10 of 25"):
            await read("/short")
        with pytest.raises(ArtifactExpiredError) as info:
            await read("/gone")
        assert "abc" not in str(info.value)  # the URL signature is masked
        with pytest.raises(TransientError) as busy:
            await read("/busy")
        assert busy.value.retry_after == 4
        chunks = await read("/ok")
        assert sum(map(len, chunks)) == 3 << 20 and all(len(c) >= 1 << 20 for c in chunks)


async def test_downloads_follow_redirects_api_calls_do_not() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}{request.url.path}")
        if request.url.path == "/moved":
            return httpx.Response(302, headers={"Location": "https://other.invalid/file.webm"})
        if request.url.host == "other.invalid":
            assert "x-api-key" not in request.headers
            return httpx.Response(200, content=b"v" * 100)
        return httpx.Response(307, headers={"Location": "https://other.invalid/v1/jobs"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        data = b"".join([c async for c in stream_download(client, "https://cdn.invalid/moved", provider="removebgvideo")])
        assert data == b"v" * 100
        # an API call never carries its key to wherever a redirect points
        with pytest.raises(PermanentError):
            await request(client, "POST", "https://api.invalid/v1/jobs", provider="removebgvideo", what="submit",
                          mapper=removebgvideo.map_error, headers={"X-Api-Key": "rbv-secret-key"})
    assert seen == ["cdn.invalid/moved", "other.invalid/file.webm", "api.invalid/v1/jobs"]


# --------------------------------------------------------------------------- fal results


def fal_with(handler: Callable[[httpx.Request], httpx.Response]) -> fal.FalProvider:
    p = fal.FalProvider(ProviderSettings(credentials={"FAL_KEY": "kid:secret-abc"}))
    p.use_client(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    return p


HANDLE = JobHandle(
    provider="fal",
    request_id="r1",
    urls={
        "status_url": "https://q.invalid/fal-ai/birefnet/requests/r1/status",
        "response_url": "https://q.invalid/fal-ai/birefnet/requests/r1",
        "cancel_url": "https://q.invalid/fal-ai/birefnet/requests/r1/cancel",
    },
    extra={"endpoint": "fal-ai/birefnet/v2/video", "kind": "video"},
)


def completed_then(result: httpx.Response, status_body: dict[str, Any] | None = None):
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == "Key kid:secret-abc"
        if request.url.path.endswith("/status"):
            assert request.url.params["logs"] == "1"
            return httpx.Response(200, json=status_body or {"status": "COMPLETED", "logs": []})
        return result

    return handler


@pytest.mark.parametrize(
    "result,state,needle",
    [
        (httpx.Response(200, json={"video": {"url": "https://cdn.invalid/o.webm"}}), JobState.SUCCEEDED, ""),
        (httpx.Response(422, json={"detail": [{"loc": ["body", "video_url"], "msg": "File could not be downloaded", "type": "file_download_error"}]}),
         JobState.FAILED, "file_download_error"),
        (httpx.Response(400, json={"detail": "downstream failed", "error_type": "downstream_service_error"}), JobState.FAILED, "downstream"),
        (httpx.Response(500, json={"detail": "CUDA out of memory", "error_type": "runner_server_error"}), JobState.FAILED, "CUDA"),
        (httpx.Response(400, json={"detail": "Request was cancelled by the user"}), JobState.CANCELED, "cancel"),
    ],
)
async def test_fal_completed_is_decided_by_the_result(result: httpx.Response, state: JobState, needle: str) -> None:
    p = fal_with(completed_then(result))
    status = await p.poll(HANDLE)
    assert status.state == state
    assert needle in status.message
    await p.aclose()


@pytest.mark.parametrize(
    "result,cls",
    [
        (httpx.Response(404, json={"detail": "Request not found"}), JobGoneError),
        (httpx.Response(502, text="<html><center>nginx</center></html>"), TransientError),
        (httpx.Response(503, json={"detail": "x"}, headers={"X-Fal-Retryable": "true"}), TransientError),
        (httpx.Response(429, json={"detail": "slow"}, headers={"Retry-After": "2"}), RateLimitedError),
        (httpx.Response(401, json={"detail": "Unauthorized"}), AuthError),
    ],
)
async def test_fal_result_fetch_errors(result: httpx.Response, cls: type) -> None:
    p = fal_with(completed_then(result))
    with pytest.raises(cls):
        await p.poll(HANDLE)
    await p.aclose()


async def test_fal_status_error_and_queue() -> None:
    p = fal_with(completed_then(httpx.Response(500), {"status": "COMPLETED", "error": "boom", "error_type": "runner_server_error"}))
    st = await p.poll(HANDLE)
    assert st.state == JobState.FAILED and "boom" in st.message and "runner_server_error" in st.message
    p = fal_with(completed_then(httpx.Response(500), {"status": "IN_QUEUE", "queue_position": 3}))
    st = await p.poll(HANDLE)
    assert st.state == JobState.QUEUED and st.queue_position == 3
    p = fal_with(completed_then(httpx.Response(500), {"status": "IN_PROGRESS", "logs": [{"message": "frame 3/9", "level": "INFO"}]}))
    st = await p.poll(HANDLE)
    assert st.state == JobState.RUNNING and st.logs == ("INFO frame 3/9",)
    p = fal_with(completed_then(httpx.Response(500), {"status": "SOMETHING_NEW"}))
    assert (await p.poll(HANDLE)).state == JobState.RUNNING


@pytest.mark.parametrize("code,body,accepted", [(202, {"status": "CANCELLATION_REQUESTED"}, True), (200, {"status": "OK"}, True),
                                                (400, {"status": "ALREADY_COMPLETED"}, False), (404, {"status": "NOT_FOUND"}, False)])
async def test_fal_cancel_answers(code: int, body: dict[str, Any], accepted: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.method == "PUT" and request.url.path.endswith("/cancel")
        return httpx.Response(code, json=body)

    p = fal_with(handler)
    assert await p.cancel(HANDLE) is accepted
    await p.aclose()


async def test_scenario_cancel_refused_is_false() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"message": "Cannot cancel this type of job"})

    p = scenario.ScenarioProvider(ProviderSettings(credentials={"SCENARIO_SDK_API_KEY": "k", "SCENARIO_SDK_API_SECRET": "s"}))
    p.use_client(httpx.AsyncClient(transport=httpx.MockTransport(handler)))
    assert await p.cancel(JobHandle(provider="scenario", request_id="job_1")) is False
    await p.aclose()
