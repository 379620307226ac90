"""End to end through Prefect's real API: manifest -> flow -> local engine -> verified outputs."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vidbatch import engine, media
from vidbatch.cli import app

pytestmark = pytest.mark.usefixtures("prefect_backend")


def _manifest(tmp_path: Path, clips: dict[str, str], extra: str = "") -> Path:
    text = textwrap.dedent(f"""\
        version: 1
        name: e2e
        output: {tmp_path}/out/{{stem}}.{{operation}}.{{ext}}
        defaults:
          provider: local
          format: webm
        limits:
          local: {{concurrency: 2}}
        videos:
          - {clips['person']}
          - {clips['empty']}
          - url: {clips['person2']}
            background: "#00ff00"
            format: mp4
            mask: true
          - url: {clips['person2']}
            operation: upscale
            factor: 2
            format: mov
        """) + extra
    path = tmp_path / "m.yaml"
    path.write_text(text)
    return path


async def test_run_then_rerun_is_all_cached(tmp_path: Path, clips: dict[str, str]) -> None:
    from vidbatch.flows.batch import process_manifest

    manifest = _manifest(tmp_path, clips)
    before = sum(engine.CALLS.values())
    summary = await process_manifest(manifest=str(manifest))
    assert summary["failed"] == 0, summary["rows"]
    assert summary["verified"] == 4 and summary["cached"] == 0
    assert sum(engine.CALLS.values()) - before == 4

    rows = {(r["input"], r["operation"], r["params"]["format"]): r for r in summary["rows"]}
    transparent = rows[(clips["person"], "remove-background", "webm")]
    assert transparent["verify"]["output"]["alpha_min"] < 255
    # the alpha is real: person mostly opaque somewhere, corners transparent
    frames = list(media.iter_frames(transparent["outputs"][0], "rgba"))
    assert len(frames) == media.probe(clips["person"]).frames
    alpha = np.stack([f[..., 3] for f in frames])
    assert alpha.max() == 255 and alpha[:, :8, :8].mean() < 30

    green = rows[(clips["person2"], "remove-background", "mp4")]
    assert len(green["outputs"]) == 2 and green["outputs"][1].endswith(".mask.mp4")
    up = rows[(clips["person2"], "upscale", "mov")]
    assert (up["verify"]["output"]["width"], up["verify"]["output"]["height"]) == (640, 360)

    report = Path(summary["report"])
    assert report.exists()
    lines = [json.loads(x) for x in report.read_text().splitlines()]
    assert {ln["status"] for ln in lines} == {"verified"}
    for field in ("input", "key", "status", "cached", "outputs", "provider", "operation", "model",
                  "request_id", "error", "timings", "verify"):
        assert field in lines[0]

    calls = sum(engine.CALLS.values())
    again = await process_manifest(manifest=str(manifest))
    assert again["cached"] == 4 and again["verified"] == 4
    assert sum(engine.CALLS.values()) == calls  # no engine work at all on the rerun


def test_cli_run_isolates_a_bad_input(tmp_path: Path, clips: dict[str, str]) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n")
    empty = tmp_path / "zero.mp4"
    empty.write_bytes(b"")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(textwrap.dedent(f"""\
        version: 1
        name: iso
        output: {tmp_path}/out/{{stem}}.{{ext}}
        videos:
          - {bad}
          - {empty}
          - {clips['person']}
        """))
    result = CliRunner().invoke(app, ["run", str(manifest), "--report", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    rows = {Path(r["input"]).name: r for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())}
    assert rows["person.mp4"]["status"] == "verified"
    assert rows["notes.mp4"]["status"] == "failed" and rows["notes.mp4"]["reason"] == "input"
    assert rows["zero.mp4"]["status"] == "failed" and "empty" in rows["zero.mp4"]["error"].lower()
    assert not (tmp_path / "out" / "notes.webm").exists()


def test_thresholds_warn_and_fail_reach_the_report_and_exit_code(tmp_path: Path, clips: dict[str, str]) -> None:
    manifest = tmp_path / "t.yaml"
    manifest.write_text(textwrap.dedent(f"""\
        version: 1
        name: thresholds
        output: {tmp_path}/out/{{stem}}.{{operation}}.{{ext}}
        videos:
          - url: {clips['person']}
            verify:
              coverage_mean: {{max: 0.0, on_fail: warn}}
          - url: {clips['person']}
            operation: upscale
            factor: 2
            format: mp4
            verify:
              fidelity_psnr: {{min: 1000}}
        """))
    result = CliRunner().invoke(app, ["run", str(manifest), "--report", str(tmp_path / "r.jsonl")])
    assert result.exit_code == 1, result.output
    rows = {r["operation"]: r for r in map(json.loads, (tmp_path / "r.jsonl").read_text().splitlines())}
    warned, failed = rows["remove-background"], rows["upscale"]
    assert warned["status"] == "verified" and any("coverage_mean" in w for w in warned["warnings"])
    assert failed["status"] == "failed" and failed["reason"] == "verify" and "fidelity_psnr" in failed["error"]
    assert not Path(failed["outputs"][0] if failed["outputs"] else tmp_path / "none").exists()
