"""One manifest over fal, Scenario and removebgvideo through ``vidbatch run --emulator``.

Both operations, transparent and colour backgrounds, a mask; every item verified
and exactly one submission per item. ``vidbatch plan`` prices the same manifest.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner

from vidbatch.cli import app

pytestmark = pytest.mark.usefixtures("prefect_backend")


@pytest.fixture(scope="module")
def emulator() -> Iterator[Any]:
    from vidbatch.emulator import EmulatorServer

    with EmulatorServer(job_seconds=0, queue_seconds=0, upload_import_seconds=0.05) as server:
        yield server


def _manifest(tmp_path: Path, clips: dict[str, str]) -> Path:
    path = tmp_path / "hosted.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: hosted
        output: {tmp_path}/out/{{provider}}/{{stem}}.{{operation}}.{{ext}}
        defaults:
          operation: remove-background
          format: webm
          background: transparent
        limits:
          fal: {{concurrency: 2}}
          scenario: {{concurrency: 2}}
          removebgvideo: {{concurrency: 2}}
        videos:
          - url: {clips['person']}
            provider: fal
            mask: true
          - url: {clips['person2']}
            provider: fal
            operation: upscale
            factor: 2
            format: mp4
          - url: {clips['person2']}
            provider: scenario
            model: Portrait
          - url: {clips['empty']}
            provider: scenario
            operation: upscale
            factor: 2
            format: mp4
          - url: {clips['empty']}
            provider: removebgvideo
            background: "#00ff00"
            format: mp4
          - url: {clips['person']}
            provider: removebgvideo
            model: human
            format: mov
        """))
    return path


def test_three_providers_one_manifest_every_item_verified_once(tmp_path: Path, clips: dict[str, str],
                                                               emulator: Any) -> None:
    emulator.reset()
    manifest = _manifest(tmp_path, clips)
    report = tmp_path / "report.jsonl"
    result = CliRunner().invoke(app, ["run", str(manifest), "--emulator", emulator.base_url, "--report", str(report)])
    rows = [json.loads(line) for line in report.read_text().splitlines()]
    assert result.exit_code == 0, (result.output[-3000:], [r["error"] for r in rows])
    assert len(rows) == 6 and {r["status"] for r in rows} == {"verified"}
    by = {(r["provider"], r["operation"], r["params"]["format"]): r for r in rows}

    fal_bg = by[("fal", "remove-background", "webm")]
    assert len(fal_bg["outputs"]) == 2 and fal_bg["outputs"][1].endswith(".mask.webm")
    assert fal_bg["verify"]["output"]["alpha_min"] < 255  # a real alpha channel
    assert "mask" in fal_bg["verify"]
    assert by[("fal", "upscale", "mp4")]["verify"]["output"]["width"] == 640
    assert by[("fal", "upscale", "mp4")]["cost_usd"] > 0  # SeedVR's per-megapixel price
    assert by[("scenario", "remove-background", "webm")]["verify"]["output"]["alpha_min"] < 255
    assert by[("scenario", "upscale", "mp4")]["verify"]["output"]["height"] == 360
    green = by[("removebgvideo", "remove-background", "mp4")]
    assert green["verify"]["output"]["alpha_min"] == 255  # composited on the colour: opaque
    assert by[("removebgvideo", "remove-background", "mov")]["verify"]["output"]["alpha_min"] < 255
    for r in rows:
        assert r["request_id"] and r["metrics"], r

    stats = emulator.stats()
    assert stats["submissions"] == {"fal": 2, "scenario": 2, "removebgvideo": 2}
    # per provider, each input content was submitted once per item that uses it
    for provider, counts in stats["submissions_by_content"].items():
        assert set(counts.values()) == {1}, (provider, counts)

    again = CliRunner().invoke(app, ["run", str(manifest), "--emulator", emulator.base_url, "--json"])
    assert again.exit_code == 0
    assert emulator.stats()["submissions"] == {"fal": 2, "scenario": 2, "removebgvideo": 2}  # all cached


def test_plan_shows_cost_per_item_and_per_provider(tmp_path: Path, clips: dict[str, str], emulator: Any) -> None:
    manifest = _manifest(tmp_path, clips)
    before = emulator.stats()["submissions"]
    result = CliRunner().invoke(app, ["plan", str(manifest), "--emulator", emulator.base_url, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output[result.output.index("{"):])
    assert len(data["items"]) == 6
    assert set(data["totals"]) == {"fal", "scenario", "removebgvideo"}
    upscale = next(r for r in data["items"] if r["provider"] == "fal" and r["operation"] == "upscale")
    # 640 x 360 x 12 frames = 2.7648 output megapixels at $0.001
    assert upscale["estimate_usd"] == pytest.approx(0.0027648, rel=1e-3)
    assert all(r["basis"] for r in data["items"])
    assert emulator.stats()["submissions"] == before  # plan submits nothing
