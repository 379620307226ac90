"""fal's status stream: jobs are followed, not polled, and polling takes over when it fails.

fal reports no progress, so a poll schedule for a job of unknown length needs
dozens of status requests to see its end within 5 % (``vidbatch.polling``).
``GET {status_url}/stream`` (SSE) pushes the end as it happens: one request per
job (its COMPLETED body is the final status; the result fetch still decides success). When the stream is refused, dropped or
turned off (``providers: fal: options: status_stream: false``), the poll loop
falls back to its schedule and the item still ends verified.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.reliability import make_clips, write_manifest

pytestmark = pytest.mark.usefixtures("prefect_backend")

JOB_SECONDS = 2.0


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    from vidbatch.emulator import EmulatorServer

    with EmulatorServer(instant=True, job_seconds=JOB_SECONDS) as server:
        yield server


@pytest.fixture()
def fresh(emu: Any) -> Iterator[Any]:
    emu.reset()
    yield emu
    emu.set_faults()


def _manifest(tmp: Path, clips: list[str], extra: str = "") -> str:
    listing = tmp / "in.txt"
    listing.write_text("\n".join(clips) + "\n")
    return write_manifest(tmp / "s.yaml", f"""\
version: 1
name: s
output: {tmp}/out/{{stem}}.{{ext}}
defaults:
  provider: fal
  format: webm
videos:
  - list: {listing}
""" + extra)


async def _run(manifest: str, emu: Any) -> dict[str, Any]:
    from vidbatch.flows.batch import process_manifest

    return await process_manifest(manifest=manifest, emulator=emu.base_url)


def _requests(emu: Any, route: str) -> int:
    return int(emu.stats()["requests"].get(route, 0))


async def test_fal_jobs_are_followed_on_the_stream_with_one_status_request_each(tmp_path: Path, fresh: Any) -> None:
    clips = make_clips(tmp_path / "in", 3, seed0=7100)
    summary = await _run(_manifest(tmp_path, clips), fresh)
    assert [r["status"] for r in summary["rows"]] == ["verified"] * 3, summary["rows"]
    assert _requests(fresh, "fal:status_stream") == 3
    assert _requests(fresh, "fal:status") == 0  # the stream's COMPLETED body is the status
    jobs = fresh.jobs("fal")
    assert [j["polls"] for j in jobs] == [1, 1, 1]
    for row in summary["rows"]:
        # the end is seen as it happens: the poll stage is the job's run plus request time
        # (a loose bound: CI machines are loaded; polling blind would need ~10 requests for it)
        assert JOB_SECONDS - 0.2 <= row["timings"]["poll"] < JOB_SECONDS + 1.5, row["timings"]


@pytest.mark.parametrize("fault", [
    {"fault": "respond", "status": 404, "body": {"detail": "Not Found"}},  # no stream route (a proxy, an old API)
    {"fault": "drop"},  # the connection dies at once
    {"fault": "respond", "status": 200, "body": {"status": "IN_PROGRESS"}},  # JSON, not an event stream
])
async def test_a_stream_that_does_not_work_falls_back_to_polling(tmp_path: Path, fresh: Any,
                                                                  fault: dict[str, Any]) -> None:
    clips = make_clips(tmp_path / "in", 2, seed0=7200)
    fresh.set_faults(rules=[{**fault, "routes": ["fal:status_stream"]}])
    summary = await _run(_manifest(tmp_path, clips), fresh)
    assert [r["status"] for r in summary["rows"]] == ["verified"] * 2, summary["rows"]
    assert _requests(fresh, "fal:status_stream") == 2  # tried once per job, then left alone
    assert _requests(fresh, "fal:status") > 2  # the poll schedule took over
    for row in summary["rows"]:  # detected on the schedule's terms (5 % + 1 s), with room for a loaded machine
        assert row["timings"]["poll"] < JOB_SECONDS * 1.05 + 2.0, row["timings"]


async def test_status_stream_false_polls_on_the_schedule(tmp_path: Path, fresh: Any) -> None:
    clips = make_clips(tmp_path / "in", 1, seed0=7300)
    manifest = _manifest(tmp_path, clips, "providers:\n  fal:\n    options: {status_stream: false}\n")
    summary = await _run(manifest, fresh)
    assert summary["rows"][0]["status"] == "verified", summary["rows"]
    assert _requests(fresh, "fal:status_stream") == 0
    assert _requests(fresh, "fal:status") > 1


@pytest.mark.parametrize("fault", ["job_failure", "completed_with_error"])
async def test_a_failed_job_seen_on_the_stream_fails_with_fals_message(tmp_path: Path, fresh: Any, fault: str) -> None:
    clips = make_clips(tmp_path / "in", 1, seed0=7400)
    fresh.set_faults(**{fault: 1.0}, failure_reason="CUDA out of memory on runner 3")
    summary = await _run(_manifest(tmp_path, clips), fresh)
    [row] = summary["rows"]
    assert row["status"] == "failed", row
    # the result fetch's detail: HTTP 500 for a failed run, 422 for a validation error found late
    assert row["reason"] == "job-failed" and "CUDA out of memory on runner 3" in row["error"], row
    assert ("HTTP 500" if fault == "job_failure" else "HTTP 422") in row["error"], row
    assert _requests(fresh, "fal:status_stream") == 1
    assert not list((tmp_path / "out").glob("*.webm"))
