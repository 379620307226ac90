"""The provider emulator over real HTTP: raw httpx against a running server.

Most tests run in ``instant`` mode (cached synthetic outputs: real files of the
right container, size and frame count); one runs the real local engine, one a
fake engine that records what the emulator asked of it.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

import av
import httpx
import numpy as np
import pytest
from PIL import Image

from vidbatch.emulator import EmulatorConfig, EmulatorServer, key_id
from vidbatch.emulator import media

FAL_KEY = {"Authorization": "Key test-id:test-secret"}
SCN_CRED = "sk_test:secret_test"
SCN_AUTH = {"Authorization": "Basic " + base64.b64encode(SCN_CRED.encode()).decode()}
RBV_KEY = {"X-Api-Key": "rbv-key-1"}
DEFAULTS = dict(job_seconds=0.0, queue_seconds=0.0, max_running=None, instant=True, time_scale=1.0, api_key=None,
                url_ttl=None, fal_deferred_validation=False, scenario_min_part_size=5 * 1024 * 1024,
                removebgvideo_max_upload=500_000_000, removebgvideo_credits=None, upload_import_seconds=0.05)


# ------------------------------------------------------------------ fixtures
def _clip(path: Path, seed: int, w: int = 160, h: int = 90, frames: int = 24) -> Path:
    try:
        from vidbatch.synth import make_clip

        make_clip(str(path), width=w, height=h, seconds=frames / 24, fps=24, seed=seed)
        return path
    except ImportError:  # synth not there: a plain moving square
        with av.open(str(path), "w") as out:
            s = out.add_stream("libx264", rate=24)
            s.width, s.height, s.pix_fmt = w, h, "yuv420p"
            for i in range(frames):
                arr = np.full((h, w, 3), 40 + seed * 50, np.uint8)
                arr[20:60, 10 + i * 3: 50 + i * 3] = 220
                for p in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                    out.mux(p)
            for p in s.encode():
                out.mux(p)
        return path


@pytest.fixture(scope="module")
def media_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("emu-media")
    png = d / "still.png"
    Image.fromarray(np.tile(np.arange(160, dtype=np.uint8), (90, 1))).convert("RGB").save(png)
    return {"a": _clip(d / "a.mp4", 0), "b": _clip(d / "b.mp4", 1), "png": png}


@pytest.fixture(scope="module")
def emu() -> Any:
    with EmulatorServer(EmulatorConfig(port=0, instant=True, upload_import_seconds=0.05)) as server:
        yield server


@pytest.fixture(autouse=True)
def clean(request: pytest.FixtureRequest) -> None:
    if "emu" in request.fixturenames:
        server = request.getfixturevalue("emu")
        server.reset()
        server.configure(**DEFAULTS)


@pytest.fixture()
def client() -> Any:
    with httpx.Client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def foreign(media_files: dict[str, Path]) -> Any:
    """Another loopback server (think presigned S3): query strings ignored."""
    root = media_files["a"].parent

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def wait(fn: Callable[[], Any], timeout: float = 20.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(every)


def decode(data: bytes, tmp_path: Path, suffix: str) -> dict[str, Any]:
    """Frames, size, and whether the decoded pixels carry alpha."""
    p = tmp_path / f"probe-{hashlib.md5(data).hexdigest()}{suffix}"  # noqa: S324
    p.write_bytes(data)
    if suffix in (".gif", ".webp", ".png"):
        with Image.open(p) as img:
            return {"frames": getattr(img, "n_frames", 1), "width": img.width, "height": img.height,
                    "alpha": img.mode in ("RGBA", "LA") or "transparency" in img.info}
    with av.open(str(p)) as c:
        s = c.streams.video[0]
        name = s.codec_context.name
        ctx = av.CodecContext.create("libvpx-vp9", "r") if name == "vp9" else None
        frames, fmt = 0, ""
        for pkt in c.demux(s):
            for f in (ctx.decode(pkt if pkt.size else None) if ctx else pkt.decode()):
                frames += 1
                fmt = f.format.name
        return {"frames": frames, "width": s.codec_context.width, "height": s.codec_context.height,
                "alpha": any(comp.is_alpha for comp in av.video.format.VideoFormat(fmt).components), "codec": name}


# ------------------------------------------------------------------ provider helpers
def fal_upload(c: httpx.Client, emu: EmulatorServer, path: Path) -> str:
    tok = c.post(emu.urls["fal_rest"] + "/storage/auth/token?storage_type=fal-cdn-v3", headers=FAL_KEY, json={})
    assert tok.status_code == 200, tok.text
    t = tok.json()
    assert t["base_url"] == emu.urls["fal_cdn"] and t["token_type"] and t["expires_at"]
    r = c.post(t["base_url"] + "/files/upload", content=path.read_bytes(),
               headers={"Authorization": f"{t['token_type']} {t['token']}", "Content-Type": "video/mp4",
                        "X-Fal-File-Name": path.name})
    assert r.status_code == 200, r.text
    return r.json()["access_url"]


def fal_submit(c: httpx.Client, emu: EmulatorServer, model: str, body: dict[str, Any]) -> dict[str, Any]:
    r = c.post(f"{emu.urls['fal_queue']}/{model}", headers=FAL_KEY, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def fal_wait(c: httpx.Client, sub: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    def done() -> Any:
        r = c.get(sub["status_url"], headers=FAL_KEY)
        assert r.status_code in (200, 202), r.text
        body = r.json()
        assert (r.status_code == 200) == (body["status"] == "COMPLETED")
        return body if body["status"] == "COMPLETED" else None

    return wait(done, timeout)


def scn_upload(c: httpx.Client, emu: EmulatorServer, path: Path, parts: int = 1) -> str:
    data = path.read_bytes()
    r = c.post(emu.urls["scenario"] + "/uploads", headers=SCN_AUTH,
               json={"fileName": path.name, "contentType": "video/mp4", "kind": "video", "fileSize": len(data),
                     "parts": parts})
    assert r.status_code == 200, r.text
    up = r.json()["upload"]
    assert up["status"] == "pending" and len(up["parts"]) == parts
    size = -(-len(data) // parts)
    for part in up["parts"]:
        chunk = data[(part["number"] - 1) * size: part["number"] * size]
        put = c.put(part["url"], content=chunk, headers={"Content-Type": "video/mp4"})  # presigned: no auth
        assert put.status_code == 200 and put.headers["etag"], put.text
    done = c.post(f"{emu.urls['scenario']}/uploads/{up['id']}/action", headers=SCN_AUTH, json={"action": "complete"})
    assert done.status_code == 200, done.text
    return scn_wait_upload(c, emu, up["id"])


def scn_wait_upload(c: httpx.Client, emu: EmulatorServer, uid: str) -> str:
    def imported() -> Any:
        u = c.get(f"{emu.urls['scenario']}/uploads/{uid}", headers=SCN_AUTH).json()["upload"]
        assert u["status"] != "failed", u
        return u.get("entityId") if u["status"] == "imported" else None

    return wait(imported)


def scn_wait_job(c: httpx.Client, emu: EmulatorServer, job_id: str) -> dict[str, Any]:
    def terminal() -> Any:
        job = c.get(f"{emu.urls['scenario']}/jobs/{job_id}", headers=SCN_AUTH).json()["job"]
        return job if job["status"] in ("success", "failure", "canceled") else None

    return wait(terminal)


def rbv_upload(c: httpx.Client, emu: EmulatorServer, path: Path, key: dict[str, str] = RBV_KEY) -> str:
    r = c.post(emu.urls["removebgvideo"] + "/v1/uploads", headers=key,
               files={"file": (path.name, path.read_bytes(), "video/mp4")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True and body["size"] == path.stat().st_size and body["filename"] == path.name
    return body["video_url"]


def rbv_wait(c: httpx.Client, emu: EmulatorServer, job_id: str, key: dict[str, str] = RBV_KEY) -> dict[str, Any]:
    def terminal() -> Any:
        job = c.get(f"{emu.urls['removebgvideo']}/v1/jobs/{job_id}", headers=key).json()
        return job if job["status"] in ("completed", "failed") else None

    return wait(terminal)


# ------------------------------------------------------------------ fal
def test_fal_happy_path(emu: EmulatorServer, client: httpx.Client, media_files: dict[str, Path], tmp_path: Path) -> None:
    emu.configure(job_seconds=0.4)
    url = fal_upload(client, emu, media_files["a"])
    sub = fal_submit(client, emu, "fal-ai/birefnet/v2/video",
                     {"video_url": url, "video_output_type": "VP9 (.webm)", "output_mask": True})
    root = f"{emu.urls['fal_queue']}/fal-ai/birefnet/requests/{sub['request_id']}"  # subpath dropped
    assert (sub["response_url"], sub["status_url"], sub["cancel_url"]) == (root, root + "/status", root + "/cancel")
    early = client.get(sub["status_url"] + "?logs=1", headers=FAL_KEY)
    assert early.status_code == 202 and early.json()["status"] in ("IN_QUEUE", "IN_PROGRESS")
    assert client.get(sub["response_url"], headers=FAL_KEY).status_code == 400  # not ready
    wait(lambda: client.get(sub["status_url"] + "?logs=1", headers=FAL_KEY).json()["status"] == "IN_PROGRESS")
    running = client.get(sub["status_url"] + "?logs=1", headers=FAL_KEY).json()
    assert isinstance(running["logs"], list) and running["logs"]
    assert client.get(sub["status_url"], headers=FAL_KEY).json()["logs"] is None  # logs off by default
    done = fal_wait(client, sub)
    assert "error" not in done and done["metrics"]["inference_time"] >= 0.4
    res = client.get(sub["response_url"], headers=FAL_KEY)
    assert res.status_code == 200
    out = res.json()
    video, mask = out["video"], out["mask_video"]
    assert video["content_type"] == "video/webm" and video["file_name"].endswith(".webm")
    assert (video["width"], video["height"], video["num_frames"], video["fps"]) == (160, 90, 24, 24.0)
    assert video["duration"] == pytest.approx(1.0)
    data = client.get(video["url"]).content
    assert len(data) == video["file_size"]
    info = decode(data, tmp_path, ".webm")
    assert (info["frames"], info["width"], info["height"], info["alpha"]) == (24, 160, 90, True)
    minfo = decode(client.get(mask["url"]).content, tmp_path, ".webm")
    assert minfo["frames"] == 24 and not minfo["alpha"]
    # Range requests on outputs
    part = client.get(video["url"], headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == data[:10]
    assert part.headers["content-range"] == f"bytes 0-9/{len(data)}"
    stats = emu.stats()
    assert stats["submissions"]["fal"] == 1
    assert stats["submissions_by_content"]["fal"] == {sha(media_files["a"]): 1}
    assert stats["submissions_by_key"]["fal"] == {key_id("test-id:test-secret"): 1}
    assert stats["max_in_flight"]["fal"] == 1 and stats["in_flight"]["fal"] == 0
    assert stats["requests"]["fal:status"] >= 3 and stats["polls_per_job"]["fal"]["max"] >= 3


def test_fal_multipart_upload_legacy_upload_and_data_uri(emu: EmulatorServer, client: httpx.Client,
                                                         media_files: dict[str, Path]) -> None:
    data = media_files["a"].read_bytes()
    t = client.post(emu.urls["fal_rest"] + "/storage/auth/token", headers=FAL_KEY, json={}).json()
    auth = {"Authorization": f"Bearer {t['token']}"}
    created = client.post(t["base_url"] + "/files/upload/multipart",
                          headers={**auth, "Content-Type": "video/mp4", "X-Fal-File-Name": "big.mp4"})
    assert created.status_code == 200
    access, uid = created.json()["access_url"], created.json()["uploadId"]
    half = len(data) // 2
    etags = []
    for n, chunk in ((1, data[:half]), (2, data[half:])):
        r = client.put(f"{access}/multipart/{uid}/{n}", content=chunk, headers={**auth, "Accept-Encoding": "identity"})
        assert r.status_code == 200 and r.headers["etag"]
        etags.append({"partNumber": n, "etag": r.headers["etag"]})
    assert client.get(access).status_code == 404  # not complete yet
    done = client.post(f"{access}/multipart/{uid}/complete", headers=auth, json={"parts": etags})
    assert done.status_code == 200, done.text
    assert client.get(access).content == data
    # legacy initiate + presigned PUT
    init = client.post(emu.urls["fal_rest"] + "/storage/upload/initiate?storage_type=gcs", headers=FAL_KEY,
                       json={"file_name": "x.mp4", "content_type": "video/mp4"}).json()
    assert client.put(init["upload_url"], content=data, headers={"Content-Type": "video/mp4"}).status_code == 200
    assert client.get(init["file_url"]).content == data
    # a data URI input counts by content like any other
    uri = "data:video/mp4;base64," + base64.b64encode(data).decode()
    sub = fal_submit(client, emu, "fal-ai/birefnet/v2/video", {"video_url": uri})
    assert client.get(fal_wait(client, sub)["response_url"], headers=FAL_KEY).status_code == 200
    assert emu.stats()["submissions_by_content"]["fal"] == {sha(media_files["a"]): 1}


def test_fal_validation_and_auth(emu: EmulatorServer, client: httpx.Client) -> None:
    q = emu.urls["fal_queue"]
    cases = [
        ("fal-ai/birefnet/v2/video", {"video_url": "http://x/v.mp4", "video_output_type": "webm"}, "one_of",
         "video_output_type"),
        ("fal-ai/birefnet/v2/video", {"video_url": "http://x/v.mp4", "operating_resolution": "2304x2304"},
         "feature_not_supported", "operating_resolution"),
        ("fal-ai/birefnet/v2/video", {}, "missing", "video_url"),
        ("fal-ai/birefnet/v2", {"image_url": "http://x/i.png", "model": "General Use (Dynamic)"}, "one_of", "model"),
        ("fal-ai/seedvr/upscale/video", {"video_url": "http://x/v.mp4", "upscale_factor": 11},
         "less_than_equal", "upscale_factor"),
        ("fal-ai/seedvr/upscale/video", {"video_url": "http://x/v.mp4", "noise_scale": "a"}, "float_type",
         "noise_scale"),
        ("fal-ai/birefnet/v2/video", {"video_url": "http://x/v.mp4", "output_mask": "yes"}, "bool_type",
         "output_mask"),
    ]
    for model, body, type_, field in cases:
        r = client.post(f"{q}/{model}", headers=FAL_KEY, json=body)
        assert r.status_code == 422, (model, body, r.text)
        detail = r.json()["detail"]
        assert detail[0]["type"] == type_ and detail[0]["loc"] == ["body", field], detail
    ok = client.post(f"{q}/fal-ai/birefnet/v2/video", headers=FAL_KEY,
                     json={"video_url": "http://x/v.mp4", "model": "General Use (Dynamic)",
                           "operating_resolution": "2304x2304"})
    assert ok.status_code == 200
    assert client.post(f"{q}/fal-ai/nope", headers=FAL_KEY, json={}).status_code == 404
    stats = emu.stats()
    assert stats["submissions"]["fal"] == 1 and stats["validation_errors"]["fal:submit"] == len(cases)
    # auth: missing, wrong scheme, pinned key
    for headers in ({}, {"Authorization": "Bearer abc"}, {"Authorization": "Key"}):
        r = client.post(f"{q}/fal-ai/birefnet/v2/video", headers=headers, json={"video_url": "http://x/v.mp4"})
        assert r.status_code == 401 and isinstance(r.json()["detail"], str)
    emu.configure(api_key="pinned:key")
    assert client.get(ok.json()["status_url"], headers=FAL_KEY).status_code == 401
    assert client.get(ok.json()["status_url"], headers={"Authorization": "Key pinned:key"}).status_code in (200, 202)
    emu.configure(api_key=None)
    # CDN upload needs the storage token, not the key
    r = client.post(emu.urls["fal_cdn"] + "/files/upload", content=b"x", headers=FAL_KEY)
    assert r.status_code == 401
    # deferred validation: submit 200, then COMPLETED with a 422 result
    emu.configure(fal_deferred_validation=True)
    sub = fal_submit(client, emu, "fal-ai/birefnet/v2/video", {"video_url": "http://x/v.mp4", "model": "Bogus"})
    status = fal_wait(client, sub)
    assert status["error"] and status["error_type"] == "one_of"
    res = client.get(sub["response_url"], headers=FAL_KEY)
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body", "model"]


def test_fal_cancel_unknown_and_wrong_urls(emu: EmulatorServer, client: httpx.Client,
                                          media_files: dict[str, Path]) -> None:
    emu.configure(job_seconds=30)
    url = fal_upload(client, emu, media_files["a"])
    sub = fal_submit(client, emu, "fal-ai/birefnet/v2/video", {"video_url": url})
    q = emu.urls["fal_queue"]
    bogus = f"{q}/fal-ai/birefnet/requests/00000000-0000-0000-0000-000000000000"
    assert client.get(bogus + "/status", headers=FAL_KEY).status_code == 404
    assert client.get(bogus, headers=FAL_KEY).status_code == 404
    assert client.put(bogus + "/cancel", headers=FAL_KEY).json() == {"status": "NOT_FOUND"}
    with_subpath = f"{q}/fal-ai/birefnet/v2/video/requests/{sub['request_id']}/status"
    assert client.get(with_subpath, headers=FAL_KEY).status_code == 405
    other_app = f"{q}/fal-ai/seedvr/requests/{sub['request_id']}/status"
    assert client.get(other_app, headers=FAL_KEY).status_code == 404
    r = client.put(sub["cancel_url"], headers=FAL_KEY)
    assert r.status_code == 202 and r.json() == {"status": "CANCELLATION_REQUESTED"}
    status = fal_wait(client, sub, timeout=5)
    assert status["error"] and status["error_type"] == "client_cancelled"
    assert client.put(sub["cancel_url"], headers=FAL_KEY).status_code == 400
    assert client.put(sub["cancel_url"], headers=FAL_KEY).json() == {"status": "ALREADY_COMPLETED"}
    assert client.get(sub["response_url"], headers=FAL_KEY).status_code == 499
    assert emu.stats()["in_flight"]["fal"] == 0


def test_fal_queue_positions_and_max_running(emu: EmulatorServer, client: httpx.Client,
                                             media_files: dict[str, Path]) -> None:
    emu.configure(job_seconds=0.5, max_running={"fal": 1})
    url = fal_upload(client, emu, media_files["a"])
    subs = [fal_submit(client, emu, "fal-ai/birefnet/v2/video", {"video_url": url}) for _ in range(3)]
    time.sleep(0.15)
    states = [client.get(s["status_url"], headers=FAL_KEY).json() for s in subs]
    assert [s["status"] for s in states] == ["IN_PROGRESS", "IN_QUEUE", "IN_QUEUE"]
    assert [s.get("queue_position") for s in states[1:]] == [0, 1]
    for s in subs:
        fal_wait(client, s)
    stats = emu.stats()
    assert stats["max_running"]["fal"] == 1 and stats["max_in_flight"]["fal"] == 3
    assert stats["submissions_by_content"]["fal"] == {sha(media_files["a"]): 3}


def test_fal_job_failures(emu: EmulatorServer, client: httpx.Client, media_files: dict[str, Path]) -> None:
    url = fal_upload(client, emu, media_files["a"])
    emu.set_faults(completed_with_error=1.0, failure_reason="model exploded")
    sub = fal_submit(client, emu, "fal-ai/birefnet/v2/video", {"video_url": url})
    status = fal_wait(client, sub)
    assert status["error"] == "model exploded" and status["error_type"]
    res = client.get(sub["response_url"], headers=FAL_KEY)
    assert res.status_code == 422 and res.json()["detail"][0]["msg"] == "model exploded"
    emu.set_faults(job_failure=1.0)
    sub = fal_submit(client, emu, "fal-ai/birefnet/v2/video", {"video_url": url})
    assert fal_wait(client, sub)["error_type"] == "internal_server_error"
    assert client.get(sub["response_url"], headers=FAL_KEY).status_code == 500
    emu.set_faults()
    sub = fal_submit(client, emu, "fal-ai/birefnet/v2/video", {"video_url": "http://127.0.0.1:9/missing.mp4"})
    assert fal_wait(client, sub)["error_type"] == "file_download_error"
    res = client.get(sub["response_url"], headers=FAL_KEY)
    assert res.status_code == 422 and res.json()["detail"][0]["loc"] == ["body", "video_url"]


def test_fal_upscale_image_and_foreign_input(emu: EmulatorServer, client: httpx.Client, foreign: str,
                                             media_files: dict[str, Path], tmp_path: Path) -> None:
    presigned = f"{foreign}/a.mp4?X-Amz-Signature=abc&X-Amz-Expires=600"
    t = fal_submit(client, emu, "fal-ai/seedvr/upscale/video",
                   {"video_url": presigned, "upscale_mode": "target", "target_resolution": "720p", "seed": 7})
    f = fal_submit(client, emu, "fal-ai/seedvr/upscale/video",
                   {"video_url": presigned, "upscale_factor": 2, "output_format": "PRORES4444 (.mov)"})
    png_url = fal_upload(client, emu, media_files["png"])
    img = fal_submit(client, emu, "fal-ai/birefnet/v2", {"image_url": png_url, "output_mask": True})
    for s in (t, f, img):
        fal_wait(client, s)
    out_t = client.get(t["response_url"], headers=FAL_KEY).json()
    assert out_t["seed"] == 7 and (out_t["video"]["width"], out_t["video"]["height"]) == (1280, 720)
    assert out_t["video"]["content_type"] == "video/mp4"
    info = decode(client.get(out_t["video"]["url"]).content, tmp_path, ".mp4")
    assert (info["width"], info["height"], info["frames"], info["codec"]) == (1280, 720, 24, "h264")
    out_f = client.get(f["response_url"], headers=FAL_KEY).json()
    assert (out_f["video"]["width"], out_f["video"]["height"]) == (320, 180) and isinstance(out_f["seed"], int)
    assert out_f["video"]["content_type"] == "video/quicktime"
    assert decode(client.get(out_f["video"]["url"]).content, tmp_path, ".mov")["codec"] == "prores"
    out_i = client.get(img["response_url"], headers=FAL_KEY).json()
    assert out_i["image"]["content_type"] == "image/png" and "mask_image" in out_i
    pic = decode(client.get(out_i["image"]["url"]).content, tmp_path, ".png")
    assert (pic["width"], pic["height"], pic["alpha"]) == (160, 90, True)
    assert emu.stats()["submissions_by_content"]["fal"][sha(media_files["a"])] == 2


# ------------------------------------------------------------------ Scenario
def test_scenario_happy_path(emu: EmulatorServer, client: httpx.Client, media_files: dict[str, Path],
                             tmp_path: Path) -> None:
    emu.configure(scenario_min_part_size=1000, job_seconds=0.3)
    s = emu.urls["scenario"]
    asset_id = scn_upload(client, emu, media_files["a"], parts=2)
    assert client.get(f"{s}/assets/{asset_id}", headers=SCN_AUTH).json()["asset"]["kind"] == "video"
    body = {"video": asset_id, "outputMask": True}
    quote = client.post(f"{s}/generate/custom/model_birefnet-v2-video?dryRun=true", headers=SCN_AUTH, json=body)
    assert quote.status_code == 269 and quote.json()["creativeUnitsCost"] >= 1
    assert set(quote.json()) >= {"creativeUnitsCost", "creativeUnitsDiscount", "costDetails"}
    r = client.post(f"{s}/generate/custom/model_birefnet-v2-video", headers=SCN_AUTH, json=body)
    assert r.status_code == 200, r.text
    job = r.json()["job"]
    assert job["jobId"].startswith("job_") and job["status"] in ("queued", "warming-up", "in-progress")
    assert r.json()["creativeUnitsCost"] >= 1
    done = scn_wait_job(client, emu, job["jobId"])
    assert done["status"] == "success" and done["billing"]["cuCost"] >= 1 and done["progress"] == 1
    seen = [h["status"] for h in done["statusHistory"]]
    assert seen[0] == "queued" and seen[-1] == "success" and "in-progress" in seen
    assert len(done["metadata"]["assetIds"]) == 2
    assets = [client.get(f"{s}/assets/{a}", headers=SCN_AUTH).json()["asset"] for a in done["metadata"]["assetIds"]]
    kinds = {a["metadata"]["type"]: a for a in assets}
    assert set(kinds) == {"video", "mask"}
    video = kinds["video"]
    assert video["mimeType"] == "video/webm" and video["properties"]["size"] > 0  # default VP9 webm
    for param in ("Policy=", "Signature=", "Key-Pair-Id="):
        assert param in video["url"]
    data = client.get(video["url"]).content  # signed CDN URL: no auth header
    assert len(data) == video["properties"]["size"]
    info = decode(data, tmp_path, ".webm")
    assert info["alpha"] and info["frames"] == 24
    assert not decode(client.get(kinds["mask"]["url"]).content, tmp_path, ".webm")["alpha"]
    tampered = video["url"].replace("Signature=", "Signature=x")
    assert client.get(tampered).status_code == 403
    stats = emu.stats()
    assert stats["submissions"]["scenario"] == 1
    assert stats["submissions_by_content"]["scenario"] == {sha(media_files["a"]): 1}


def test_scenario_url_upload_upscale_and_errors(emu: EmulatorServer, client: httpx.Client, foreign: str,
                                                media_files: dict[str, Path]) -> None:
    s = emu.urls["scenario"]
    r = client.post(f"{s}/uploads", headers=SCN_AUTH, json={"url": f"{foreign}/b.mp4?sig=1", "kind": "video"})
    assert r.status_code == 200
    up = r.json()["upload"]
    asset_id = scn_wait_upload(client, emu, up["id"])
    upload_job = client.get(f"{s}/jobs/{up['jobId']}", headers=SCN_AUTH).json()["job"]
    assert upload_job["status"] == "success" and upload_job["metadata"]["assetIds"] == [asset_id]
    bad = client.post(f"{s}/generate/custom/model_seedvr-2-upscale-video", headers=SCN_AUTH,
                      json={"video": asset_id, "upscaleFactor": 1})
    assert bad.status_code == 400 and "upscaleFactor" in bad.json()["reason"] and bad.json()["traceId"]
    bad = client.post(f"{s}/generate/custom/model_birefnet-v2-video", headers=SCN_AUTH,
                      json={"video": asset_id, "model": "General Use (Dynamic)"})
    assert bad.status_code == 400 and "model" in bad.json()["reason"]
    bad = client.post(f"{s}/generate/custom/model_birefnet-v2-video", headers=SCN_AUTH, json={"video": "asset_nope"})
    assert bad.status_code == 400
    assert client.post(f"{s}/generate/custom/model_nope", headers=SCN_AUTH, json={}).status_code == 404
    assert emu.stats()["submissions"]["scenario"] == 0
    r = client.post(f"{s}/generate/custom/model_seedvr-2-upscale-video", headers=SCN_AUTH,
                    json={"video": asset_id, "upscaleMode": "target", "targetResolution": "720p"})
    job = scn_wait_job(client, emu, r.json()["job"]["jobId"])
    assert job["status"] == "success" and len(job["metadata"]["assetIds"]) == 1
    asset = client.get(f"{s}/assets/{job['metadata']['assetIds'][0]}", headers=SCN_AUTH).json()["asset"]
    assert asset["mimeType"] == "video/mp4" and asset["properties"]["height"] == 720
    cancel = client.post(f"{s}/jobs/{job['jobId']}/action", headers=SCN_AUTH, json={"action": "cancel"})
    assert cancel.status_code == 400 and cancel.json()["reason"] == "Cannot cancel this type of job"
    assert client.get(f"{s}/jobs/job_unknown", headers=SCN_AUTH).status_code == 404
    listed = client.get(f"{s}/jobs?pageSize=1", headers=SCN_AUTH).json()
    assert len(listed["jobs"]) == 1 and listed["nextPaginationToken"]
    # auth: missing, not base64, no secret, other project
    for headers in ({}, {"Authorization": "Basic !!!"},
                    {"Authorization": "Basic " + base64.b64encode(b"onlykey").decode()}):
        r = client.get(f"{s}/jobs/{job['jobId']}", headers=headers)
        assert r.status_code == 401 and r.json()["reason"] and r.json()["traceId"]
    other = {"Authorization": "Basic " + base64.b64encode(b"other:project").decode()}
    assert client.get(f"{s}/jobs/{job['jobId']}", headers=other).status_code == 404
    # S3 rule: every part but the last >= 5 MiB
    data = media_files["a"].read_bytes()
    up = client.post(f"{s}/uploads", headers=SCN_AUTH, json={"fileName": "a.mp4", "contentType": "video/mp4",
                                                             "kind": "video", "fileSize": len(data), "parts": 2})
    parts = up.json()["upload"]["parts"]
    for p, chunk in zip(parts, (data[:100], data[100:])):
        assert client.put(p["url"], content=chunk).status_code == 200
    assert client.put(parts[0]["url"].replace("X-Amz-Signature=", "X-Amz-Signature=0"), content=b"x").status_code == 403
    r = client.post(f"{s}/uploads/{up.json()['upload']['id']}/action", headers=SCN_AUTH, json={"action": "complete"})
    assert r.status_code == 400 and "minimum" in r.json()["reason"]
    r = client.post(f"{s}/uploads", headers=SCN_AUTH, json={"fileName": "a.avi", "contentType": "video/avi",
                                                            "kind": "video", "fileSize": 10, "parts": 1})
    assert r.status_code == 400


# ------------------------------------------------------------------ removebgvideo
def test_removebgvideo_happy_path(emu: EmulatorServer, client: httpx.Client, media_files: dict[str, Path],
                                  tmp_path: Path) -> None:
    emu.configure(job_seconds=0.3)
    r = emu.urls["removebgvideo"]
    video_url = rbv_upload(client, emu, media_files["a"])
    created = client.post(f"{r}/v1/jobs", headers=RBV_KEY, json={
        "video_url": video_url, "model": "original", "bg_type": "transparent", "output_format": "mov"})
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["success"] is True and body["id"] and body["status"] in ("pending", "processing") and body["message"]
    mid = wait(lambda: client.get(f"{r}/v1/jobs/{body['id']}", headers=RBV_KEY).json()["status"] == "processing")
    assert mid
    job = rbv_wait(client, emu, body["id"])
    assert job["status"] == "completed" and job["progress"] == 100 and job["error"] is None
    assert job["duration_seconds"] == pytest.approx(1.0) and job["billing_status"] == "charged"
    info = decode(client.get(job["output_url"]).content, tmp_path, ".mov")
    assert info["alpha"] and info["frames"] == 24
    dl = client.get(f"{r}/api/download/{body['id']}", headers=RBV_KEY).json()
    assert dl["success"] and dl["output_format"] == "mov" and client.get(dl["download_url"]).status_code == 200
    # green background on mp4: opaque
    created = client.post(f"{r}/v1/jobs", headers=RBV_KEY, json={
        "video_url": video_url, "model": "light", "bg_type": "green", "output_format": "mp4"}).json()
    job = rbv_wait(client, emu, created["id"])
    assert not decode(client.get(job["output_url"]).content, tmp_path, ".mp4")["alpha"]
    listed = client.get(f"{r}/v1/jobs?limit=10", headers=RBV_KEY).json()
    assert listed["total"] == 2 and len(listed["jobs"]) == 2
    assert client.get(f"{r}/v1/jobs?status=completed", headers=RBV_KEY).json()["total"] == 2
    usage = client.get(f"{r}/v1/usage/summary?days=7", headers=RBV_KEY).json()
    assert usage["totals"]["jobs"] == 2 and usage["totals"]["credits_used"] == pytest.approx(1.75)
    assert client.get(f"{r}/v1/usage/events?limit=5", headers=RBV_KEY).json()["events"]
    assert client.get(f"{r}/api/pricing").json()["model_pricing_credits_per_minute"]["pro"] == 180
    assert client.get(f"{r}/health").json()["status"] == "ok"
    assert emu.stats()["submissions_by_content"]["removebgvideo"] == {sha(media_files["a"]): 2}


def test_removebgvideo_keys_drafts_and_errors(emu: EmulatorServer, client: httpx.Client,
                                              media_files: dict[str, Path]) -> None:
    r = emu.urls["removebgvideo"]
    video_url = rbv_upload(client, emu, media_files["a"])
    missing = client.get(f"{r}/v1/jobs")
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    draft = client.post(f"{r}/v1/jobs", headers=RBV_KEY, json={
        "video_url": video_url, "model": "original", "bg_type": "transparent", "output_format": "webm",
        "auto_start": False}).json()
    assert draft["status"] in ("created", "pending")
    other = {"X-Api-Key": "someone-else"}
    nf = client.get(f"{r}/v1/jobs/{draft['id']}", headers=other)
    assert nf.status_code == 404 and nf.json()["error"]["code"] == "not_found" and nf.json()["error"]["request_id"]
    assert client.post(f"{r}/v1/jobs/{draft['id']}/start", headers=other, json={}).status_code == 404
    assert client.get(f"{r}/v1/jobs", headers=other).json()["total"] == 0
    not_done = client.get(f"{r}/api/download/{draft['id']}", headers=RBV_KEY)
    assert not_done.status_code == 400 and not_done.json()["error"]["message"] == "Job not completed"
    assert emu.stats()["in_flight"]["removebgvideo"] == 0
    started = client.post(f"{r}/v1/jobs/{draft['id']}/start", headers=RBV_KEY,
                          json={"background": {"type": "color", "color": "#ff0000"}, "output_format": "mp4"})
    assert started.status_code == 200 and started.json()["status"] == "processing"
    assert client.post(f"{r}/v1/jobs/{draft['id']}/start", headers=RBV_KEY, json={}).status_code == 400
    assert rbv_wait(client, emu, draft["id"])["output_format"] == "mp4"
    bad_bodies = [
        {"video_url": video_url, "bg_type": "purple"},
        {"video_url": video_url, "bg_type": "custom"},
        {"video_url": video_url, "output_format": "avi"},
        {"model": "original"},
    ]
    for body in bad_bodies:
        resp = client.post(f"{r}/v1/jobs", headers=RBV_KEY, json=body)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_request", body
    custom = client.post(f"{r}/v1/jobs", headers=RBV_KEY,
                         json={"video_url": video_url, "bg_type": "custom", "bg_color": [0, 0, 255]})
    assert custom.status_code == 200
    bad_type = client.post(f"{r}/v1/uploads", headers=RBV_KEY, files={"file": ("notes.txt", b"hello", "text/plain")})
    assert bad_type.status_code == 400 and bad_type.json()["error"]["message"] == "Invalid file type"
    emu.configure(removebgvideo_max_upload=1000)
    big = client.post(f"{r}/v1/uploads", headers=RBV_KEY,
                      files={"file": ("a.mp4", media_files["a"].read_bytes(), "video/mp4")})
    assert big.status_code == 400 and big.json()["error"]["message"] == "File too large"
    emu.configure(removebgvideo_credits=0)
    broke = client.post(f"{r}/v1/jobs", headers=RBV_KEY, json={"video_url": video_url})
    assert broke.status_code == 402 and broke.json()["error"]["code"] == "insufficient_credits"
    emu.configure(api_key="pinned")
    wrong = client.get(f"{r}/v1/jobs", headers=RBV_KEY)
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
    assert client.get(f"{r}/v1/jobs", headers={"X-Api-Key": "pinned"}).status_code == 200
    assert emu.stats()["submissions"]["removebgvideo"] == 2


# ------------------------------------------------------------------ faults
def test_request_faults(emu: EmulatorServer, client: httpx.Client, media_files: dict[str, Path]) -> None:
    url = fal_upload(client, emu, media_files["a"])
    q = emu.urls["fal_queue"] + "/fal-ai/birefnet/v2/video"
    emu.set_faults(rules=[{"fault": "rate_limit", "p": 1, "routes": ["fal:submit"], "times": 2}], retry_after=3)
    for _ in range(2):
        r = client.post(q, headers=FAL_KEY, json={"video_url": url})
        assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert emu.stats()["submissions"]["fal"] == 0
    sub = client.post(q, headers=FAL_KEY, json={"video_url": url}).json()
    assert emu.faults()["rules"][0]["times"] == 0
    emu.set_faults(server_error=1.0, routes=["*:status"], seed=3)
    codes = {client.get(sub["status_url"], headers=FAL_KEY).status_code for _ in range(6)}
    assert codes <= {502, 503} and codes
    assert client.get(sub["response_url"], headers=FAL_KEY).status_code in (200, 400)  # only status targeted
    emu.set_faults(drop=1.0, routes=["fal:submit"])
    with pytest.raises(httpx.TransportError):
        client.post(q, headers=FAL_KEY, json={"video_url": url})
    assert emu.stats()["submissions"]["fal"] == 1  # dropped before processing
    emu.set_faults(lost_response=1.0, routes=["fal:submit"])
    with pytest.raises(httpx.TransportError):
        client.post(q, headers=FAL_KEY, json={"video_url": url})
    assert emu.stats()["submissions"]["fal"] == 2  # processed, response lost
    emu.set_faults()
    out = client.get(fal_wait(client, sub)["response_url"], headers=FAL_KEY).json()
    emu.set_faults(truncate=1.0)
    with pytest.raises(httpx.TransportError):
        client.get(out["video"]["url"])
    emu.set_faults()
    assert len(client.get(out["video"]["url"]).content) == out["video"]["file_size"]
    # Scenario's 429 puts the hint in the body
    emu.set_faults(rate_limit=1.0, routes=["scenario:*"], retry_after=2)
    r = client.get(emu.urls["scenario"] + "/jobs/job_x", headers=SCN_AUTH)
    assert r.status_code == 429 and r.json()["remainingSeconds"] == 2 and "retry-after" not in r.headers
    emu.set_faults(rate_limit=1.0, routes=["removebgvideo:*"])
    r = client.get(emu.urls["removebgvideo"] + "/v1/jobs", headers=RBV_KEY)
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited" and r.headers["retry-after"]
    injected = emu.stats()["faults_injected"]
    assert injected["fal:submit:rate_limit"] == 2 and injected["fal:submit:drop"] == 1
    assert injected["fal:download:truncate"] == 1


def test_expired_urls_refresh(emu: EmulatorServer, client: httpx.Client, media_files: dict[str, Path]) -> None:
    emu.set_faults(expired_urls=1.0)
    url = fal_upload(client, emu, media_files["a"])
    sub = fal_submit(client, emu, "fal-ai/birefnet/v2/video", {"video_url": url})
    fal_wait(client, sub)
    first = client.get(sub["response_url"], headers=FAL_KEY).json()["video"]["url"]
    assert client.get(first).status_code == 404
    again = client.get(sub["response_url"], headers=FAL_KEY).json()["video"]["url"]
    assert again != first and client.get(again).status_code == 200
    s = emu.urls["scenario"]
    emu.configure(scenario_min_part_size=1)
    asset = scn_upload(client, emu, media_files["a"])
    job = client.post(f"{s}/generate/custom/model_birefnet-v2-video", headers=SCN_AUTH, json={"video": asset}).json()
    out_id = scn_wait_job(client, emu, job["job"]["jobId"])["metadata"]["assetIds"][0]
    first = client.get(f"{s}/assets/{out_id}", headers=SCN_AUTH).json()["asset"]["url"]
    assert client.get(first).status_code == 403
    again = client.get(f"{s}/assets/{out_id}", headers=SCN_AUTH).json()["asset"]["url"]
    assert client.get(again).status_code == 200
    r = emu.urls["removebgvideo"]
    created = client.post(f"{r}/v1/jobs", headers=RBV_KEY, json={"video_url": rbv_upload(client, emu, media_files["a"])})
    first = rbv_wait(client, emu, created.json()["id"])["output_url"]
    assert client.get(first).status_code == 403
    again = client.get(f"{r}/v1/jobs/{created.json()['id']}", headers=RBV_KEY).json()["output_url"]
    assert client.get(again).status_code == 200
    # and plain time-based expiry (url_ttl, emulated seconds, here scaled 10x)
    emu.set_faults()
    emu.configure(url_ttl=2.0, time_scale=10.0)
    sub = fal_submit(client, emu, "fal-ai/birefnet/v2/video", {"video_url": url})
    fal_wait(client, sub)
    link = client.get(sub["response_url"], headers=FAL_KEY).json()["video"]["url"]
    assert client.get(link).status_code == 200
    time.sleep(0.3)
    assert client.get(link).status_code == 404


def test_fail_inputs_exactly_those_fail(emu: EmulatorServer, client: httpx.Client,
                                        media_files: dict[str, Path]) -> None:
    emu.set_faults(fail_inputs=[sha(media_files["b"])])
    emu.configure(scenario_min_part_size=1)
    fal_subs = {k: fal_submit(client, emu, "fal-ai/birefnet/v2/video", {"video_url": fal_upload(client, emu, p)})
                for k, p in (("a", media_files["a"]), ("b", media_files["b"]))}
    fal_codes = {k: client.get(fal_wait(client, s)["response_url"], headers=FAL_KEY).status_code
                 for k, s in fal_subs.items()}
    assert fal_codes == {"a": 200, "b": 422}
    s = emu.urls["scenario"]
    scn = {}
    for k in ("a", "b"):
        asset = scn_upload(client, emu, media_files[k])
        jid = client.post(f"{s}/generate/custom/model_birefnet-v2-video", headers=SCN_AUTH,
                          json={"video": asset}).json()["job"]["jobId"]
        scn[k] = scn_wait_job(client, emu, jid)
    assert scn["a"]["status"] == "success" and scn["b"]["status"] == "failure"
    assert scn["b"]["metadata"]["error"] and scn["b"]["billing"]["cuCost"] == 0
    emu.set_faults(fail_inputs=["b.mp4"])  # name substring
    r = emu.urls["removebgvideo"]
    rbv = {}
    for k in ("a", "b"):
        jid = client.post(f"{r}/v1/jobs", headers=RBV_KEY,
                          json={"video_url": rbv_upload(client, emu, media_files[k])}).json()["id"]
        rbv[k] = rbv_wait(client, emu, jid)
    assert rbv["a"]["status"] == "completed" and rbv["b"]["status"] == "failed" and rbv["b"]["error"]
    assert rbv["b"]["output_url"] is None


# ------------------------------------------------------------------ stats, timing, reset
def test_stats_time_scale_and_reset(emu: EmulatorServer, client: httpx.Client,
                                    media_files: dict[str, Path]) -> None:
    emu.configure(job_seconds=60, queue_seconds=30, time_scale=100)
    url_a, url_b = fal_upload(client, emu, media_files["a"]), fal_upload(client, emu, media_files["b"])
    t0 = time.monotonic()
    subs = [fal_submit(client, emu, "fal-ai/birefnet/v2/video", {"video_url": u}) for u in (url_a, url_a, url_b)]
    assert client.get(subs[0]["status_url"], headers=FAL_KEY).json()["status"] == "IN_QUEUE"
    statuses = [fal_wait(client, s) for s in subs]
    elapsed = time.monotonic() - t0
    assert 0.85 <= elapsed < 5, elapsed  # 90 emulated seconds at 100x
    assert statuses[0]["metrics"]["inference_time"] == pytest.approx(60, abs=10)
    stats = emu.stats()
    assert stats["submissions_by_content"]["fal"] == {sha(media_files["a"]): 2, sha(media_files["b"]): 1}
    assert stats["max_in_flight"]["fal"] == 3 and stats["jobs"]["fal"] == {"succeeded": 3}
    assert stats["polls_per_job"]["fal"]["jobs"] == 3 and stats["polls_per_job"]["fal"]["min"] >= 1
    rows = emu.jobs("fal")
    assert len(rows) == 3 and {r["input_sha256"] for r in rows} == {sha(media_files["a"]), sha(media_files["b"])}
    emu.reset()
    stats = emu.stats()
    assert stats["submissions"] == {"fal": 0, "scenario": 0, "removebgvideo": 0} and stats["requests"] == {}
    assert client.get(subs[0]["status_url"], headers=FAL_KEY).status_code == 404
    assert client.get(url_a).status_code == 404  # uploads are gone too


def test_many_concurrent_polls(emu: EmulatorServer, media_files: dict[str, Path]) -> None:
    import asyncio

    emu.configure(job_seconds=1.0)

    async def run() -> float:
        limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
        async with httpx.AsyncClient(timeout=30, limits=limits) as c:
            tok = (await c.post(emu.urls["fal_rest"] + "/storage/auth/token", headers=FAL_KEY, json={})).json()
            up = await c.post(tok["base_url"] + "/files/upload", content=media_files["a"].read_bytes(),
                              headers={"Authorization": f"Bearer {tok['token']}", "Content-Type": "video/mp4"})
            url = up.json()["access_url"]
            subs = await asyncio.gather(*[
                c.post(emu.urls["fal_queue"] + "/fal-ai/birefnet/v2/video", headers=FAL_KEY, json={"video_url": url})
                for _ in range(100)])
            status_urls = [s.json()["status_url"] for s in subs]
            t0 = time.monotonic()
            polls = await asyncio.gather(*[c.get(u, headers=FAL_KEY) for u in status_urls * 3])
            took = time.monotonic() - t0
            assert all(p.status_code in (200, 202) for p in polls)
            return took

    took = asyncio.run(run())
    assert took < 5, took
    stats = emu.stats()
    assert stats["submissions"]["fal"] == 100 and stats["max_in_flight"]["fal"] == 100
    assert stats["requests"]["fal:status"] == 300


# ------------------------------------------------------------------ engines
class FakeEngine:
    """Records the calls; writes a small real clip like the engine would."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def remove_background(self, src: str, dst: str, *, fmt: str, background: str, mask_dst: str | None = None,
                          **kw: Any) -> Any:
        self.calls.append(("remove-background", {"fmt": fmt, "background": background, "mask": mask_dst}))
        info = media.probe(src)
        media.write_clip(dst, fmt, info.width, info.height, info.rate or Fraction(24), info.frames,
                         alpha=background == "transparent")
        if mask_dst:
            mfmt = Path(mask_dst).suffix.lstrip(".")
            media.write_clip(mask_dst, mfmt, info.width, info.height, info.rate or Fraction(24), info.frames,
                             alpha=False, gray=True)
        return None

    def upscale(self, src: str, dst: str, *, fmt: str, factor: float | None = None, target: str | None = None) -> Any:
        self.calls.append(("upscale", {"fmt": fmt, "factor": factor, "target": target}))
        from vidbatch.spec import upscaled_size

        info = media.probe(src)
        w, h = upscaled_size(info.width, info.height, factor, target)
        media.write_clip(dst, fmt, w, h, info.rate or Fraction(24), info.frames, alpha=False)
        return None


def test_engine_parameter_mapping(media_files: dict[str, Path]) -> None:
    fake = FakeEngine()
    with EmulatorServer(EmulatorConfig(port=0, engine=fake, upload_import_seconds=0)) as emu, \
            httpx.Client(timeout=30) as c:
        url = fal_upload(c, emu, media_files["a"])
        for body in ({"video_url": url},
                     {"video_url": url, "video_output_type": "PRORES4444 (.mov)", "output_mask": True},
                     {"video_url": url, "video_output_type": "GIF (.gif)"}):
            fal_wait(c, fal_submit(c, emu, "fal-ai/birefnet/v2/video", body))
        fal_wait(c, fal_submit(c, emu, "fal-ai/seedvr/upscale/video", {"video_url": url, "upscale_factor": 1.5,
                                                                        "output_format": "VP9 (.webm)"}))
        r = emu.urls["removebgvideo"]
        for body in ({"bg_type": "blue", "output_format": "webm"}, {"output_format": "mp4"},
                     {"background": {"type": "color", "color": [1.0, 0.5, 0.0]}, "output_format": "gif"}):
            jid = c.post(f"{r}/v1/jobs", headers=RBV_KEY, json={"video_url": url, **body}).json()["id"]
            rbv_wait(c, emu, jid)
        emu.configure(scenario_min_part_size=1)
        asset = scn_upload(c, emu, media_files["a"])
        jid = c.post(emu.urls["scenario"] + "/generate/custom/model_birefnet-v2-video", headers=SCN_AUTH,
                     json={"video": asset}).json()["job"]["jobId"]
        assert scn_wait_job(c, emu, jid)["status"] == "success"
    ops = fake.calls
    assert ops[0] == ("remove-background", {"fmt": "mp4", "background": "#000000", "mask": None})
    assert ops[1][1]["fmt"] == "mov" and ops[1][1]["background"] == "transparent" and ops[1][1]["mask"].endswith(".mov")
    assert ops[2][1] == {"fmt": "gif", "background": "transparent", "mask": None}
    assert ops[3] == ("upscale", {"fmt": "webm", "factor": 1.5, "target": None})
    assert [o[1]["background"] for o in ops[4:7]] == ["#0000ff", "#000000", "#ff8000"]
    assert ops[7][1] == {"fmt": "webm", "background": "transparent", "mask": None}  # Scenario default VP9


def _engine_available() -> bool:
    try:
        import vidbatch.engine.pipeline  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.skipif(not _engine_available(), reason="vidbatch.engine not implemented yet")
def test_real_engine_end_to_end(media_files: dict[str, Path], tmp_path: Path) -> None:
    with EmulatorServer(EmulatorConfig(port=0)) as emu, httpx.Client(timeout=60) as c:
        url = fal_upload(c, emu, media_files["a"])
        sub = fal_submit(c, emu, "fal-ai/birefnet/v2/video",
                         {"video_url": url, "video_output_type": "VP9 (.webm)", "output_mask": True})
        png = fal_submit(c, emu, "fal-ai/birefnet/v2", {"image_url": fal_upload(c, emu, media_files["png"])})
        assert "error" not in fal_wait(c, sub, timeout=60)
        out = c.get(sub["response_url"], headers=FAL_KEY).json()
        info = decode(c.get(out["video"]["url"]).content, tmp_path, ".webm")
        assert (info["frames"], info["width"], info["height"], info["alpha"]) == (24, 160, 90, True)
        assert decode(c.get(out["mask_video"]["url"]).content, tmp_path, ".webm")["frames"] == 24
        assert "error" not in fal_wait(c, png, timeout=60)
        img = c.get(png["response_url"], headers=FAL_KEY).json()["image"]
        assert decode(c.get(img["url"]).content, tmp_path, ".png")["alpha"]
        assert emu.stats()["engine_calls"]["remove-background"] == 1


def test_module_cli(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "vidbatch.emulator", "--port", str(port), "--instant",
                             "--rate-limit", "0.0", "--fail-inputs", "abc,def", "--max-running", "fal=2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def up() -> Any:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/_emulator/health", timeout=1).json()
            except httpx.HTTPError:
                return None

        health = wait(up, timeout=30, every=0.2)
        assert health["urls"]["scenario"] == f"http://127.0.0.1:{port}/scenario/v1"
        faults = httpx.get(f"http://127.0.0.1:{port}/_emulator/faults").json()
        assert faults["fail_inputs"] == ["abc", "def"]
        assert httpx.get(f"http://127.0.0.1:{port}/_emulator/config").json()["max_running"] == {"fal": 2}
    finally:
        proc.terminate()
        proc.wait(10)
