"""Secrets never leave vidbatch: keys and URL signatures are absent from every trace of a run.

A batch runs against the emulator (its own process, credential pinned to known,
distinctive values) with inputs on a real S3-compatible server (moto, its own
process) that providers read through presigned URLs, plus a Scenario multipart
upload (presigned part URLs), signed CDN result URLs, and one item that fails
while downloading from a signed URL (its error names the URL). The test then
looks for the key values, the S3 credentials, the Basic-auth token and any
unredacted signature parameter in:

* the captured logs (every logger at INFO, as ``--verbose`` or an embedding app
  shows them) and stdout/stderr;
* the report (JSONL, Parquet, HTML) and every other text file under the outputs,
  including the ``.vidbatch`` records and handles;
* Prefect's artifacts and the logs Prefect stored (read back via the client);
* the error messages of failed items.
"""

from __future__ import annotations

import base64
import logging
import re
from pathlib import Path
from typing import Iterator

import pytest

from tests.reliability import EmulatorProcess, make_clip, write_manifest
from tests.s3 import ACCESS_KEY, SECRET_KEY, S3Endpoint, clear_fs_cache, moto_process

pytestmark = pytest.mark.usefixtures("prefect_backend")

KEY, SECRET = "vbsecret-key-K3y9w", "vbsecret-s3cr3t-Zq81x"
PINNED = f"{KEY}:{SECRET}"
BASIC = base64.b64encode(PINNED.encode()).decode()
KNOWN = (KEY, SECRET, PINNED, BASIC, ACCESS_KEY, SECRET_KEY)
SIGNED = re.compile(
    r"(?i)(X-Amz-Signature|X-Amz-Credential|X-Amz-Security-Token|X-Goog-Signature|Signature|Policy|Key-Pair-Id)"
    r"(=|%3D)([^&\s\"'<>\\]+)"
)


def leaks(text: str) -> list[str]:
    found = [k for k in KNOWN if k in text]
    found += [m.group(0)[:80] for m in SIGNED.finditer(text) if m.group(3) not in ("***", "%2A%2A%2A")]
    return found


@pytest.fixture()
def s3_proc(monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Endpoint]:
    """moto in a child process, so its own request logs are not ours."""
    with moto_process() as endpoint:
        for name, value in endpoint.env().items():
            monkeypatch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN", "VIDBATCH_S3_ANON"):
            monkeypatch.delenv(name, raising=False)
        endpoint.make_buckets("vb-in")
        clear_fs_cache()
        yield endpoint
        clear_fs_cache()


async def _prefect_traces() -> str:
    from prefect.client.orchestration import get_client
    from prefect.logging.handlers import APILogHandler

    await APILogHandler.aflush()
    async with get_client() as client:
        artifacts = await client.read_artifacts()
        logs = await client.read_logs()
        runs = await client.read_flow_runs()
        tasks = await client.read_task_runs()
    parts = [repr(a.data) + repr(a.description) for a in artifacts]
    parts += [f"{lg.message}" for lg in logs]
    parts += [repr(r.parameters) + repr(r.state) for r in runs]
    parts += [repr(t.name) + repr(t.state) for t in tasks]
    return "\n".join(parts)


async def test_no_key_or_signature_anywhere(tmp_path: Path, s3_proc: S3Endpoint, caplog: pytest.LogCaptureFixture,
                                            capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from vidbatch.flows.batch import process_manifest

    monkeypatch.setenv("FAL_KEY", PINNED)
    monkeypatch.setenv("SCENARIO_SDK_API_KEY", KEY)
    monkeypatch.setenv("SCENARIO_SDK_API_SECRET", SECRET)
    monkeypatch.setenv("REMOVEBGVIDEO_API_KEY", PINNED)
    client = s3_proc.client()
    for i, name in enumerate(("a", "b", "c")):
        client.upload_file(make_clip(tmp_path / "in" / f"{name}.mp4", 900 + i), "vb-in", f"sec/{name}.mp4")
    local = make_clip(tmp_path / "in" / "d.mp4", 903)
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "secrets.yaml", f"""\
        version: 1
        name: secrets
        output: {out}/{{stem}}.{{ext}}
        defaults:
          format: webm
        videos:
          - {{url: "s3://vb-in/sec/a.mp4", provider: fal}}
          - {{url: "s3://vb-in/sec/b.mp4", provider: removebgvideo}}
          - {{url: "s3://vb-in/sec/c.mp4", provider: scenario}}
          - {{url: "{local}", provider: scenario, mask: true}}
        """)
    caplog.set_level(logging.INFO)
    with EmulatorProcess(tmp_path, instant=True, api_key=PINNED) as emu:
        # the removebgvideo result URL (signed) is refused for good: its error names the URL
        emu.set_faults(rules=[{"fault": "respond", "status": 400, "routes": ["removebgvideo:download"],
                               "body": {"error": {"code": "invalid_request", "message": "Bad download"}}}],
                       expired_urls=1.0)
        summary = await process_manifest(manifest=manifest, emulator=emu.url)
        stats = emu.stats()
    rows = {Path(r["input"]).name: r for r in summary["rows"]}
    assert rows["b.mp4"]["status"] == "failed" and "download of" in rows["b.mp4"]["error"], rows["b.mp4"]
    assert {n: r["status"] for n, r in rows.items() if n != "b.mp4"} == dict.fromkeys(("a.mp4", "c.mp4", "d.mp4"), "verified")
    # the secrets were really used: every provider authenticated with them, inputs came presigned
    assert stats["submissions"] == {"fal": 1, "scenario": 2, "removebgvideo": 1}
    assert stats["faults_injected"].get("scenario:url:expired", 0) >= 1

    found: dict[str, list[str]] = {}
    found["logs"] = leaks(caplog.text + "\n".join(str(r.args) for r in caplog.records))
    captured = capsys.readouterr()
    found["stdout/stderr"] = leaks(captured.out + captured.err)
    # the logs did show signed URLs (httpx logs every request at INFO), redacted
    assert "Signature=***" in caplog.text + captured.err
    found["summary"] = leaks(repr(summary))
    for path in out.rglob("*"):
        if path.is_file() and path.suffix in (".json", ".jsonl", ".html", ".txt", ".yaml"):
            found[str(path.relative_to(out))] = leaks(path.read_text(errors="replace"))
    import pyarrow.parquet as pq

    parquet = Path(summary["report_parquet"])
    found["parquet"] = leaks(repr(pq.read_table(parquet).to_pylist()))
    found["prefect"] = leaks(await _prefect_traces())
    assert not {k: v for k, v in found.items() if v}, {k: v for k, v in found.items() if v}
    assert any(p.parts[-3] == "records" for p in (out / ".vidbatch").rglob("*.json"))
