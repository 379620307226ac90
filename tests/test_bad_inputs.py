"""The bad-input catalogue: every way a run can be handed something wrong, through ``vidbatch run``.

Each case is one manifest (plus inputs, environment and emulator faults) run
through the CLI in-process (``CliRunner``; runs use the session's Prefect API and
an in-process emulator over real HTTP). Each case states its exit code and the
one-line message (fragment) the user gets:

* exit 2 - a configuration problem: the message is the CLI's one ``error:`` line,
  nothing was run (the emulator saw no request) and nothing was written;
* exit 1 - an item failed: its reason is in the report, the other items (when
  any) are unaffected, no output or temp key of the failed item is visible.

No case may print a traceback. ``tests/test_manifest.py`` holds the schema-level
manifest errors; this catalogue covers whole runs and does not repeat them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from typer.testing import CliRunner

from tests.reliability import make_clip

pytestmark = pytest.mark.usefixtures("prefect_backend")

HEADER = "version: 1\nname: bad\noutput: @OUT/{stem}.{ext}\n"


@dataclass
class Case:
    id: str
    text: str  # the manifest; @OUT @IN @EMU are replaced, @H is the standard header
    code: int
    message: str
    env: dict[str, str] = field(default_factory=dict)
    faults: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    emulator: bool = True
    #: extra check of the emulator's stats after the run
    check: Callable[[dict[str, Any]], None] | None = None
    #: the report's machine-readable reason (exit 1 cases)
    reason: str | None = None


def _no_requests(stats: dict[str, Any]) -> None:
    assert not stats["requests"], stats["requests"]


def _one(provider: str, name: str = "clip.mp4", **settings: str) -> str:
    extra = "".join(f"\n    {k}: {v}" for k, v in settings.items())
    return f"@Hdefaults:\n  format: webm\nvideos:\n  - url: @IN/{name}\n    provider: {provider}{extra}\n"


CASES: list[Case] = [
    # ------------------------------------------------------------- configuration: exit 2, nothing run
    Case("yaml-unclosed-quote", 'version: 1\nname: "bad\noutput: @OUT/{stem}.{ext}\nvideos:\n  - @IN/clip.mp4\n', 2,
         "YAML syntax error"),
    Case("unknown-limit-key", "@Hlimits:\n  fal: {concurency: 3}\nvideos:\n  - @IN/clip.mp4\n", 2,
         "m.yaml:5:9: limits.fal.concurency: unknown key 'concurency'"),
    Case("budget-wrong-type", "@Hbudget: {max_usd: lots}\nvideos:\n  - @IN/clip.mp4\n", 2, "valid number"),
    Case("budget-negative", "@Hbudget: {max_usd: -5}\nvideos:\n  - @IN/clip.mp4\n", 2, "greater than or equal to 0"),
    Case("rps-zero", "@Hlimits:\n  fal: {requests_per_second: 0}\nvideos:\n  - @IN/clip.mp4\n", 2, "greater than 0"),
    Case("target-enum", "@Hdefaults:\n  provider: fal\n  operation: upscale\n  format: mp4\n  target: 4k\n"
         "videos:\n  - @IN/clip.mp4\n", 2, "'4k' is not allowed"),
    Case("scenario-dynamic", _one("scenario", model='"General Use (Dynamic)"'), 2,
         "unknown model 'General Use (Dynamic)' (General Use (Dynamic) is fal-only)"),
    Case("fal-2304-without-dynamic", _one("fal", params="{operating_resolution: 2304x2304}"), 2,
         "operating_resolution 2304x2304 is only offered with model 'General Use (Dynamic)'"),
    Case("fal-mp4-transparent", _one("fal", format="mp4"), 2, "format 'mp4' has no alpha channel"),
    Case("removebgvideo-mask", _one("removebgvideo", mask="true"), 2, "removebgvideo: mask output is not offered"),
    Case("removebgvideo-upscale", _one("removebgvideo", operation="upscale", format="mp4"), 2,
         "provider 'removebgvideo' does not offer 'upscale'"),
    Case("scenario-upscale-webm", _one("scenario", operation="upscale"), 2,
         "the upscaler has no format parameter and writes mp4"),
    Case("fal-unknown-param", _one("fal", params="{strength: 3}"), 2, "unknown param 'strength'"),
    Case("template-escapes-root", "version: 1\nname: bad\noutput: '@OUT/x\\..\\..\\{stem}.{ext}'\n"
         "videos:\n  - @IN/clip.mp4\n", 2, "output template must not contain '..'"),
    Case("listing-missing", "@Hvideos:\n  - list: @IN/nowhere.csv\n", 2, "listing file not found"),
    Case("missing-credentials", "@Hproviders:\n  fal: {base_url: @EMU}\n" + _one("fal").removeprefix("@H"), 2,
         "fal: missing credential FAL_KEY", emulator=False, check=_no_requests),
    Case("missing-scenario-secret", "@Hproviders:\n  scenario: {base_url: @EMU}\n" + _one("scenario").removeprefix("@H"),
         2, "scenario: missing credential SCENARIO_SDK_API_SECRET", env={"SCENARIO_SDK_API_KEY": "only-the-key"},
         emulator=False, check=_no_requests),
    Case("secret-block-missing", "@Hproviders:\n  fal: {secret_block: no-such-block}\n" + _one("fal").removeprefix("@H"),
         2, "cannot load Prefect Secret block 'no-such-block'", check=_no_requests),
    Case("output-not-writable", "version: 1\nname: bad\noutput: @IN/blocker.txt/out/{stem}.{ext}\n"
         "defaults:\n  provider: removebgvideo\nvideos:\n  - @IN/clip.mp4\n", 2,
         "cannot write to", check=_no_requests),
    # ------------------------------------------------------------- inputs: exit 1, the item fails
    Case("zero-byte-file", _one("removebgvideo", name="zero.mp4"), 1, "empty", reason="input"),
    Case("text-named-mp4", _one("removebgvideo", name="notes.mp4"), 1,
         "not a readable video (unknown format, or truncated): notes.mp4", reason="input"),
    Case("truncated-video", _one("removebgvideo", name="truncated.mp4"), 1,
         "not a readable video (unknown format, or truncated): truncated.mp4", reason="input"),
    Case("audio-only", _one("fal", name="audio.mp4"), 1, "no video stream in audio.mp4 (found: audio)", reason="input"),
    Case("over-upload-limit", _one("removebgvideo", name="huge.mp4"), 1, "uploads are limited to 500 MB", reason="input"),
    Case("container-not-accepted", _one("removebgvideo", name="clip.mkv"), 1, "is not an accepted upload type", reason="input"),
    Case("unreachable-url", "@Hdefaults:\n  format: webm\nvideos:\n  - {url: 'http://127.0.0.1:9/none.mp4', provider: fal}\n",
         1, "http://127.0.0.1:9/none.mp4", reason="input"),
    Case("missing-url", "@Hdefaults:\n  format: webm\nvideos:\n  - {url: '@EMU/nothing/here.mp4', provider: fal}\n",
         1, "input not found: http", reason="input"),
    # ------------------------------------------------------------- providers: exit 1, the item fails
    Case("provider-401", _one("fal"), 1, "Invalid API key", env={"FAL_KEY": "wrong:key"},
         config={"api_key": "right:key"}, reason="auth"),
    Case("provider-403-plan", _one("scenario"), 1, "ModelAccessRestrictedError", faults={"rules": [
        {"fault": "respond", "status": 403, "routes": ["scenario:submit"],
         "body": {"reason": "ModelAccessRestrictedError: your plan does not include this model"}}]}, reason="auth"),
    Case("provider-422", _one("fal"), 1, "Unsupported video codec", faults={"rules": [
        {"fault": "respond", "status": 422, "routes": ["fal:submit"],
         "body": {"detail": [{"loc": ["body", "video_url"], "msg": "Unsupported video codec", "type": "value_error"}]}}]}, reason="permanent"),
    Case("insufficient-credits", _one("removebgvideo"), 1, "insufficient_credits",
         config={"removebgvideo_credits": 0}, reason="quota"),
    Case("garbage-json-on-submit", _one("fal"), 1, "unknown - not resubmitted", faults={"rules": [
        {"fault": "respond", "status": 200, "routes": ["fal:submit"], "body": "<html>502 Bad Gateway</html>"}]}, reason="unknown-submit"),
    Case("garbage-json-on-upload", _one("removebgvideo"), 1, "not JSON", faults={"rules": [
        {"fault": "respond", "status": 200, "routes": ["removebgvideo:upload"], "body": "Service Unavailable"}]}, reason="transient"),
    Case("job-failed-with-reason", _one("removebgvideo"), 1, "Out of GPU memory on worker 7",
         faults={"job_failure": 1.0, "failure_reason": "Out of GPU memory on worker 7"}, reason="job-failed"),
    Case("result-not-a-video", _one("removebgvideo"), 1,
         "output failed verification: decode: not a readable video (unknown format, or truncated): clip.webm",
         faults={"not_video_outputs": 1.0}, reason="verify"),
    Case("result-wrong-size", _one("fal"), 1, "output failed verification: size: 32x18, expected 64x36",
         faults={"wrong_size_outputs": 1.0}, reason="verify"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import av

    d = tmp_path_factory.mktemp("bad-inputs")
    clip = make_clip(d / "clip.mp4", 1)
    make_clip(d / "clip.mkv", 2)
    (d / "zero.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("this is not a video\n" * 50)
    data = Path(clip).read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "blocker.txt").write_text("a file where the output folder should be\n")
    huge = Path(make_clip(d / "huge.mp4", 3))
    with open(huge, "r+b") as fh:  # sparse: 600 MB on paper, a few KB on disk
        fh.truncate(600_000_000)
    with av.open(str(d / "audio.mp4"), "w") as out:  # AAC only, no video stream
        import numpy as np

        stream = out.add_stream("aac", rate=16000)
        stream.layout = "mono"
        for i in range(10):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return d


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    from vidbatch.emulator import EmulatorServer

    with EmulatorServer(instant=True, job_seconds=0, upload_import_seconds=0.05) as server:
        yield server


@pytest.fixture(autouse=True)
def prefect_console_follows_the_runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point Prefect's console log handlers at the stderr of the current ``CliRunner``.

    They keep the stream they were created with; after a first ``invoke`` that is
    a closed runner buffer (a "--- Logging error ---" traceback). A real ``vidbatch``
    process has one stderr for its whole life, so this only undoes a test artifact;
    the original streams are restored afterwards for the other test modules.
    """
    import logging
    import sys

    from prefect.logging.handlers import PrefectConsoleHandler

    from vidbatch import prefect_env

    def handlers() -> list[PrefectConsoleHandler]:
        loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                           if isinstance(lg, logging.Logger)]
        return [h for lg in loggers for h in lg.handlers if isinstance(h, PrefectConsoleHandler)]

    saved = [(h, h.stream, h.console.file) for h in handlers()]
    original = prefect_env.apply

    def apply(quiet: bool = False) -> None:
        original(quiet)
        for handler in handlers():
            handler.stream = sys.stderr  # not setStream(): it flushes the closed stream
            handler.console.file = sys.stderr

    monkeypatch.setattr(prefect_env, "apply", apply)
    yield
    restore = {id(h): (stream, file) for h, stream, file in saved}
    for handler in handlers():  # handlers Prefect made during an invoke point at a closed runner buffer too
        stream, file = restore.get(id(handler), (sys.stderr, sys.stderr))
        handler.stream, handler.console.file = stream, file


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, inputs: Path, emu: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from vidbatch.cli import app

    emu.reset()
    emu.configure(api_key=None, removebgvideo_credits=None)
    if case.faults:
        emu.set_faults(**case.faults)
    if case.config:
        emu.configure(**case.config)
    out = tmp_path / "out"
    text = case.text.replace("@H", HEADER).replace("@OUT", str(out)).replace("@IN", str(inputs))
    text = text.replace("@EMU", emu.base_url)
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text)
    report = tmp_path / "report.jsonl"
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    args = ["run", str(manifest), "--report", str(report)] + (["--emulator", emu.base_url] if case.emulator else [])
    result = CliRunner().invoke(app, args)
    stats = emu.stats()

    assert result.exit_code == case.code, (result.exit_code, result.output[-3000:])
    assert "Traceback" not in result.output, result.output
    if case.code == 2:
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert case.message in lines[0], lines[0]
        # nothing run, nothing written
        assert not stats["submissions"] or not any(stats["submissions"].values())
        assert not report.exists()
        assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()], list(out.rglob("*"))
    else:
        rows = [json.loads(x) for x in report.read_text().splitlines()]
        failed = [r for r in rows if r["status"] == "failed"]
        assert len(failed) == 1, rows
        error = failed[0]["error"]
        assert "\n" not in error and case.message in error, error
        assert failed[0]["reason"] == case.reason, failed[0]
        # nothing half-written: no output, no temp key, no handle of a job that is over
        videos = [p for p in out.rglob("*") if p.is_file() and p.suffix in (".webm", ".mp4", ".mov", ".gif")]
        assert not videos, videos
        assert not [p for p in out.rglob(".vidbatch-tmp-*")]
        handles = [json.loads(p.read_text()) for p in (out / ".vidbatch" / "handles").rglob("*.json")]
        if failed[0]["reason"] == "verify":
            # the job ran and is paid: its handle stays so a rerun re-fetches the result, never resubmits
            assert [h["state"] for h in handles] == ["submitted"], handles
        elif failed[0]["reason"] != "unknown-submit":
            assert not handles, handles
    if case.check:
        case.check(stats)


def test_catalogue_size() -> None:
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)
