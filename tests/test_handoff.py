"""The handoff report: Parquet against its documented schema, HTML rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from vidbatch import handoff
from vidbatch.report import ReportRow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DOC_COLUMNS = [c for c in re.findall(r"^\| (\w+)\s+\|", handoff.__doc__ or "", flags=re.M) if c != "column"]


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """An input clip, a transparent WebM output (a moving square) and its grey mask video."""
    import av

    from vidbatch.engine.codecs import open_mask_writer, open_writer
    from vidbatch.synth import make_clip

    d = tmp_path_factory.mktemp("handoff")
    src = make_clip(str(d / "person.mp4"), width=160, height=90, seconds=1.0, fps=12)
    out, mask = str(d / "person.webm"), str(d / "person.mask.webm")
    w = open_writer(out, "webm", width=160, height=90, rate=Fraction(12), alpha=True)
    mw = open_mask_writer(mask, "webm", width=160, height=90, rate=Fraction(12))
    for i in range(12):
        rgba = np.zeros((90, 160, 4), np.uint8)
        rgba[20:70, 30 + 4 * i:90 + 4 * i] = (230, 120, 20, 255)
        w.write(av.VideoFrame.from_ndarray(rgba, format="rgba"))
        grey = np.zeros((90, 160), np.uint8)
        grey[20:70, 30 + 4 * i:90 + 4 * i] = 255
        mw.write(av.VideoFrame.from_ndarray(grey, format="gray"))
    w.close()
    mw.close()
    return {"dir": d, "input": src, "output": out, "mask": mask}


def _rows(media) -> list[ReportRow]:
    return [
        ReportRow(
            run_id="r1", manifest="handoff", input=media["input"], key="a" * 64, status="verified",
            outputs=[media["output"], media["mask"]], provider="local", operation="remove-background",
            model="selfie", params={"format": "webm", "background": "transparent", "mask": True},
            request_id="req-1", cost_usd=0.0, timings={"stage": 0.1, "submit": 0.2, "poll": 1.5, "total": 2.0},
            verify={"output": {"ok": True, "frames": 12, "alpha_min": 0}, "mask": {"ok": True, "frames": 12},
                    "input": {"frames": 12, "width": 160}},
            metrics={"alpha_flicker": 0.002, "note": "not a number"}, warnings=["edge_flicker 0.04 > 0.03"],
        ),
        ReportRow(
            run_id="r1", manifest="handoff", input=str(media["dir"] / "gone.mp4"), key="b" * 64, status="failed",
            provider="fal", operation="upscale", model="seedvr", params={"format": "mp4", "factor": 2.0},
            error="input not found: gone.mp4", reason="input", cost_usd=None, timings={"total": 0.01},
        ),
    ]


def test_parquet_reads_back_against_the_documented_schema(tmp_path: Path, media) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _rows(media)
    url = str(tmp_path / "r.report.parquet")
    handoff.write_parquet(url, rows, "handoff")
    table = pq.read_table(url)

    want = handoff.arrow_schema("handoff")
    assert table.schema.equals(want, check_metadata=False), table.schema
    assert table.schema.metadata[b"vidbatch.report_schema"] == b"1"
    # the module docstring documents exactly these columns, in this order
    assert DOC_COLUMNS == table.schema.names
    # and they are the JSONL report's fields (+ verify_ok, derived)
    assert set(table.schema.names) - {"verify_ok"} == set(rows[0].safe())

    got = table.to_pylist()
    assert [r["status"] for r in got] == ["verified", "failed"]
    ok, bad = got
    assert ok["outputs"] == [media["output"], media["mask"]]
    assert json.loads(ok["params"]) == {"background": "transparent", "format": "webm", "mask": True}
    assert ok["timings"] == {"stage": 0.1, "submit": 0.2, "poll": 1.5, "download": None, "verify": None, "total": 2.0}
    assert dict(ok["metrics"]) == {"alpha_flicker": 0.002}  # non-numeric metrics stay in the JSONL only
    assert json.loads(ok["verify"])["output"]["frames"] == 12 and ok["verify_ok"] is True
    assert ok["finished_at"].tzinfo is not None and ok["schema"] == 1
    assert bad["error"] == "input not found: gone.mp4" and bad["cost_usd"] is None and bad["verify_ok"] is None
    assert pa.types.is_map(table.schema.field("metrics").type)

    # an empty run still writes a readable file with the full schema
    handoff.write_parquet(str(tmp_path / "empty.parquet"), [], "handoff")
    assert pq.read_table(str(tmp_path / "empty.parquet")).schema.equals(want, check_metadata=False)


def test_write_handoff_next_to_the_jsonl(tmp_path: Path, media) -> None:
    from vidbatch.manifest import load_manifest

    path = tmp_path / "m.yaml"
    path.write_text(textwrap.dedent(f"""\
        version: 1
        name: handoff
        output: {tmp_path}/out/{{stem}}.{{ext}}
        videos: [{media['input']}]
        """))
    m = load_manifest(str(path))
    summary = {"items": 2, "verified": 1, "failed": 1, "skipped": 0, "cached": 0, "cost_usd": 0.0}
    paths = handoff.write_handoff(m, _rows(media), summary)
    assert paths["report_parquet"] == f"{tmp_path}/out/handoff.report.parquet"
    assert paths["report_html"] == f"{tmp_path}/out/handoff.report.html"
    assert summary["report_html"] == paths["report_html"]
    page = Path(paths["report_html"]).read_text()
    assert page.count("data:image/jpeg;base64,") == 3  # input, output, mask of the verified item
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing to fetch: works offline

    # a backfill's shard leaves the handoff files to the backfill's merge
    shard = m.model_copy(update={"name": "handoff--shard-abc123-00001"})
    assert handoff.write_handoff(shard, _rows(media), {}) == {}
    assert not (tmp_path / "out" / "handoff--shard-abc123-00001.report.html").exists()


def _chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", f"--user-data-dir={user_dir}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=120)  # type: ignore[list-item]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it: apt-get install -y chromium)")
def test_html_renders_with_thumbnails_in_headless_chromium(tmp_path: Path, media) -> None:
    from PIL import Image

    html_path = tmp_path / "handoff.report.html"
    summary = {"items": 2, "verified": 1, "failed": 1, "skipped": 0, "cached": 0, "cost_usd": 0.0}
    handoff.write_html(str(html_path), "handoff", _rows(media), summary)
    url = html_path.as_uri()

    # the page marks <body data-thumbs="loaded"> once every <img> is complete with a natural width
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", url, user_dir=tmp_path / "ud1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    body = re.search(r"<body[^>]*>", dom.stdout)
    assert body, dom.stdout[:500]
    assert 'data-thumbs="loaded"' in body.group(0), body.group(0)
    assert 'data-thumbs-loaded="3"' in body.group(0), body.group(0)
    assert dom.stdout.index('class="st st-verified"') < dom.stdout.index('class="st st-failed"')  # report order
    # sortable by status (the header click and #sort=status run the same code): failed rows first
    by_status = _chromium("--virtual-time-budget=5000", "--dump-dom", url + "#sort=status", user_dir=tmp_path / "ud1")
    assert by_status.stdout.index('class="st st-failed"') < by_status.stdout.index('class="st st-verified"')

    shot = tmp_path / "shot.png"
    res = _chromium(f"--screenshot={shot}", "--window-size=1200,700", "--hide-scrollbars", url, user_dir=tmp_path / "ud2")
    assert res.returncode == 0 and shot.exists(), res.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # decoded thumbnails are colourful (the clip) and checkered (the output over transparency);
    # the page's own chrome is grey text on white with two small badges
    saturated = int(((pixels.max(axis=2) - pixels.min(axis=2)) > 60).sum())
    assert saturated > 4000, f"only {saturated} colourful pixels: thumbnails did not render"
    checker = np.isin(pixels[..., 0], (153, 204)) & (pixels[..., 0] == pixels[..., 1]) & (pixels[..., 1] == pixels[..., 2])
    assert int(checker.sum()) > 2000, "the output thumbnail's checkerboard is not visible"
    os.environ.get("VIDBATCH_KEEP_SCREENSHOT") and shutil.copy(shot, os.environ["VIDBATCH_KEEP_SCREENSHOT"])
