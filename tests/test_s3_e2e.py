"""Real manifests through the Prefect flow against a real S3 server (moto, over HTTP).

Local provider: S3 -> S3 (a nested tree mirrored with {rel}, a changed object
reprocessed alone, report and state on S3, no credentials anywhere), local -> S3,
S3 -> local, memory:// -> local. Hosted provider through the emulator: S3 inputs
staged as presigned URLs that the emulator fetches from the S3 server.
"""

from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path
from typing import Any

import fsspec
import pytest

from tests.s3 import ACCESS_KEY, SECRET_KEY, S3Endpoint, s3, s3_server  # noqa: F401  (fixtures)
from vidbatch import engine, media, storage

pytestmark = pytest.mark.usefixtures("prefect_backend")


def _yaml(text: str) -> str:
    return textwrap.dedent(text)


async def _run(manifest: str, **kw: Any) -> dict[str, Any]:
    from vidbatch.flows.batch import process_manifest

    return await process_manifest(manifest=manifest, **kw)


def _calls() -> int:
    return sum(engine.CALLS.values())


def _all_text(s3: S3Endpoint, bucket: str) -> str:
    """Every small object of a bucket (reports, records, handles) as text."""
    client = s3.client()
    out = []
    for key in s3.keys(bucket):
        if key.endswith((".json", ".jsonl")):
            out.append(client.get_object(Bucket=bucket, Key=key)["Body"].read().decode())
    return "\n".join(out)


def _outputs(keys: list[str], prefix: str) -> list[str]:
    """The output videos among ``keys``: no state, no reports (JSONL, Parquet, HTML...)."""
    return [k for k in keys if k.startswith(prefix) and "/.vidbatch/" not in k and ".report." not in k]


def _clean(s3: S3Endpoint, bucket: str) -> None:
    assert not [k for k in s3.keys(bucket) if storage.TEMP_PREFIX in k], "temp keys left behind"
    assert s3.uploads(bucket) == [], "multipart uploads left behind"


async def test_s3_to_s3_tree_mirror_rerun_and_report(s3: S3Endpoint, clips: dict[str, str], tmp_path: Path) -> None:
    client = s3.client()
    tree = {"lib/a/one.mp4": clips["person"], "lib/b/c/two.mp4": clips["person2"], "lib/b/three.mp4": clips["empty"]}
    for key, path in tree.items():
        client.upload_file(path, "vb-in", key)
    # the manifest itself lives on S3, and carries explicit credentials
    client.put_object(Bucket="vb-in", Key="manifests/mirror.yaml", Body=_yaml(f"""\
        version: 1
        name: mirror
        output: s3://vb-out/mirror/{{rel}}.{{ext}}
        storage_options: {{key: {ACCESS_KEY}, secret: {SECRET_KEY}, endpoint_url: "{s3.url}"}}
        defaults: {{provider: local, operation: upscale, factor: 2, format: mp4}}
        limits: {{local: {{concurrency: 2}}}}
        videos:
          - s3://vb-in/lib/**/*.mp4
        """).encode())
    manifest = "s3://vb-in/manifests/mirror.yaml"

    before = _calls()
    summary = await _run(manifest)
    assert summary["failed"] == 0, summary["rows"]
    assert summary["verified"] == 3 and _calls() - before == 3
    outputs = ["mirror/a/one.mp4", "mirror/b/c/two.mp4", "mirror/b/three.mp4"]
    keys = s3.keys("vb-out")
    assert _outputs(keys, "mirror/") == outputs and "mirror/mirror.report.jsonl" in keys
    assert any(k.startswith("mirror/.vidbatch/records/") for k in keys)
    assert summary["report"] == "s3://vb-out/mirror/mirror.report.jsonl"
    _clean(s3, "vb-out")

    # the outputs are real videos at twice the size
    with storage.local_file("s3://vb-out/mirror/b/c/two.mp4") as path:
        info = media.probe(path)
    assert (info.width, info.height) == (640, 360)

    # rerun after changing one object: exactly that item is reprocessed (new
    # content that no other item has: identical bytes would be a cache hit)
    from vidbatch.synth import make_clip

    changed = make_clip(str(tmp_path / "changed.mp4"), width=320, height=180, seconds=1.0, fps=12, seed=7)
    client.upload_file(changed, "vb-in", "lib/b/three.mp4")
    before = _calls()
    again = await _run(manifest)
    assert again["failed"] == 0, again["rows"]
    assert _calls() - before == 1
    assert again["cached"] == 2 and again["verified"] == 3
    fresh = [r for r in again["rows"] if not r["cached"]]
    assert [r["input"] for r in fresh] == ["s3://vb-in/lib/b/three.mp4"]
    _clean(s3, "vb-out")

    # the report (on S3) lists every item; no credential lands in it or in the state
    report = [json.loads(x) for x in client.get_object(Bucket="vb-out", Key="mirror/mirror.report.jsonl")["Body"].read().splitlines()]
    assert sorted(r["input"] for r in report) == sorted(f"s3://vb-in/{k}" for k in tree)
    text = _all_text(s3, "vb-out")
    assert SECRET_KEY not in text and SECRET_KEY not in json.dumps(again, default=str)


async def test_local_to_s3_and_s3_to_local(s3: S3Endpoint, clips: dict[str, str], tmp_path: Path) -> None:
    # what a killed earlier run left under the output prefix: an incomplete upload
    # (moto dates every upload 2010, so it is old enough for the run's cleanup)
    s3.client().create_multipart_upload(Bucket="vb-out", Key="from-local/person.mp4")
    stale = all(u["Initiated"].timestamp() < time.time() - storage.DEFAULT_TEMP_AGE for u in s3.uploads("vb-out"))
    up = tmp_path / "up.yaml"
    up.write_text(_yaml(f"""\
        version: 1
        name: up
        output: s3://vb-out/from-local/{{stem}}.{{ext}}
        defaults: {{provider: local, operation: upscale, factor: 2, format: mp4}}
        videos: [{clips['person']}]
        """))
    summary = await _run(str(up))
    assert summary["verified"] == 1, summary["rows"]
    assert "from-local/person.mp4" in s3.keys("vb-out")
    assert "from-local/up.report.jsonl" in s3.keys("vb-out")
    if stale:
        _clean(s3, "vb-out")  # the abandoned upload was aborted at the start of the run

    s3.client().upload_file(clips["person2"], "vb-in", "raw/clip.mp4")
    down = tmp_path / "down.yaml"
    down.write_text(_yaml(f"""\
        version: 1
        name: down
        output: {tmp_path}/out/{{parent}}/{{stem}}.{{ext}}
        defaults: {{provider: local, operation: upscale, factor: 2, format: mp4}}
        videos: [s3://vb-in/raw/clip.mp4]
        """))
    summary = await _run(str(down))
    assert summary["verified"] == 1, summary["rows"]
    out = tmp_path / "out" / "raw" / "clip.mp4"
    assert media.probe(str(out)).width == 640
    assert (tmp_path / "out" / "down.report.jsonl").exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(storage.TEMP_PREFIX)]


async def test_memory_to_local(clips: dict[str, str], tmp_path: Path) -> None:
    # memory:// lives in this process: the flow runs in-process, so it sees it
    mem = fsspec.filesystem("memory")
    mem.pipe_file("/vb-e2e/in/clip.mp4", Path(clips["person"]).read_bytes())
    manifest = tmp_path / "mem.yaml"
    manifest.write_text(_yaml(f"""\
        version: 1
        name: mem
        output: {tmp_path}/out/{{rel}}.{{ext}}
        defaults: {{provider: local, operation: upscale, factor: 2, format: mp4}}
        videos: ["memory://vb-e2e/in/*.mp4"]
        """))
    summary = await _run(str(manifest))
    assert summary["verified"] == 1, summary["rows"]
    assert media.probe(str(tmp_path / "out" / "clip.mp4")).width == 640
    # a rerun is cached (content hash fingerprint), a changed object is not
    before = _calls()
    assert (await _run(str(manifest)))["cached"] == 1 and _calls() == before
    mem.pipe_file("/vb-e2e/in/clip.mp4", Path(clips["person2"]).read_bytes())
    again = await _run(str(manifest))
    assert again["cached"] == 0 and again["verified"] == 1 and _calls() == before + 1


@pytest.mark.parametrize("provider", ["fal", "removebgvideo"])
async def test_hosted_provider_fetches_presigned_s3_inputs(
    s3: S3Endpoint, clips: dict[str, str], tmp_path: Path, provider: str
) -> None:
    from vidbatch.emulator.server import EmulatorServer

    client = s3.client()
    client.upload_file(clips["person"], "vb-in", "hosted/a.mp4")
    client.upload_file(clips["person2"], "vb-in", "hosted/b/c.mp4")
    manifest = tmp_path / "hosted.yaml"
    manifest.write_text(_yaml(f"""\
        version: 1
        name: hosted-{provider}
        output: s3://vb-out/hosted/{{rel}}.{{ext}}
        defaults: {{provider: {provider}, format: webm}}
        videos: ["s3://vb-in/hosted/**/*.mp4"]
        """))
    with EmulatorServer(instant=True) as emu:
        summary = await _run(str(manifest), emulator=emu.base_url)
        stats = emu.stats()
        fetched = sorted(j.input_url or "" for j in emu.emulator.state.jobs[provider].values())
    assert summary["failed"] == 0, summary["rows"]
    assert summary["verified"] == 2
    assert stats["submissions"][provider] == 2  # one submission per input
    assert stats["uploads"].get(provider, 0) == 0  # nothing uploaded: the emulator fetched the S3 URLs
    keys = s3.keys("vb-out", "hosted/")
    assert _outputs(keys, "hosted/") == ["hosted/a.webm", "hosted/b/c.webm"]
    assert f"hosted/hosted-{provider}.report.jsonl" in keys
    _clean(s3, "vb-out")
    # the emulator fetched presigned GETs from the S3 server (SigV4, expiry = queue wait + margin)
    assert [u.split("?")[0] for u in fetched] == [f"{s3.url}/vb-in/hosted/a.mp4", f"{s3.url}/vb-in/hosted/b/c.mp4"]
    assert all("X-Amz-Signature=" in u and "X-Amz-Expires=" in u for u in fetched)
    text = _all_text(s3, "vb-out")
    assert SECRET_KEY not in text and "X-Amz-Signature=" not in text.replace("X-Amz-Signature=***", "")
