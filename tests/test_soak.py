"""Fault soak: 200+ distinct items through the emulator with every transient fault on.

The emulator runs in its own process (``python -m vidbatch.emulator``, instant
outputs); the flow runs in this process against the session's Prefect API.
Faults apply to every removebgvideo route (uploads, submits, status, listing,
downloads): 10 % 429 (Retry-After honoured), 5 % 5xx, 2 % dropped connections
(on a submit: the request may or may not have reached the provider, so the
client re-checks the provider's job list before any resubmit), 2 % truncated
downloads, 2 % expired result URLs. Every item must end verified with exactly one
submission per input. A second pass adds 3 % permanently failing inputs: exactly
those fail, each with the provider's reason; the rest are verified.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.reliability import EmulatorProcess, make_clips, report_rows, sha256_of, write_manifest

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_backend")]

N = 200
TRANSIENT = dict(rate_limit=0.10, server_error=0.05, drop=0.02, truncate=0.02, expired_urls=0.02, retry_after=0.2)
MEASURED: dict[str, Any] = {}


@pytest.fixture(scope="module")
def soak_clips(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return make_clips(tmp_path_factory.mktemp("soak-clips"), N, seed0=1000)


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path_factory.mktemp("soak-emu"), instant=True, job_seconds=0) as e:
        yield e


def _manifest(tmp: Path, clips: list[str], name: str) -> str:
    listing = tmp / "inputs.txt"
    listing.write_text("\n".join(clips) + "\n")
    return write_manifest(tmp / f"{name}.yaml", f"""\
        version: 1
        name: {name}
        output: {tmp}/out/{{stem}}.{{ext}}
        defaults:
          provider: removebgvideo
          format: webm
        limits:
          removebgvideo: {{concurrency: 24}}
        videos:
          - list: {listing}
        """)


async def _run(manifest: str, emu: EmulatorProcess) -> dict[str, Any]:
    from vidbatch.flows.batch import process_manifest

    t0 = time.monotonic()
    summary = await process_manifest(manifest=manifest, emulator=emu.url)
    summary["wall"] = round(time.monotonic() - t0, 1)
    return summary


async def test_soak_transient_faults_every_item_verified_once(tmp_path: Path, soak_clips: list[str],
                                                                emu: EmulatorProcess) -> None:
    emu.reset()
    emu.set_faults(seed=7, **TRANSIENT)
    summary = await _run(_manifest(tmp_path, soak_clips, "soak"), emu)
    stats = emu.stats()
    bad = [r for r in summary["rows"] if r["status"] != "verified"]
    assert not bad, bad[:5]
    assert summary["verified"] == N
    # the faults really happened, on every kind of call
    injected = stats["faults_injected"]
    for fault in ("rate_limit", "server_error", "drop", "truncate"):
        assert sum(v for k, v in injected.items() if k.endswith(f":{fault}")) > 0, (fault, injected)
    assert injected.get("removebgvideo:url:expired", 0) > 0, injected
    assert sum(v for k, v in injected.items() if k.startswith("removebgvideo:submit:")) > 0, injected
    # never paid twice: one accepted job per distinct input, no stray jobs
    by_content = stats["submissions_by_content"]["removebgvideo"]
    assert {sha256_of(c): by_content.get(sha256_of(c), 0) for c in soak_clips} == {sha256_of(c): 1 for c in soak_clips}
    assert stats["submissions"]["removebgvideo"] == N
    # every output is whole (verified = decoded, frame count checked) and no temp key is visible
    assert not list((tmp_path / "out").glob(".vidbatch-tmp-*"))
    MEASURED["transient"] = {"items": N, "seconds": summary["wall"], "faults": dict(injected),
                             "submissions": stats["submissions"]["removebgvideo"]}
    print("soak transient:", MEASURED["transient"])


async def test_soak_permanent_failures_are_exactly_the_failing_inputs(tmp_path: Path, soak_clips: list[str],
                                                                        emu: EmulatorProcess) -> None:
    failing = soak_clips[3::33][:6]  # 3 % of 200
    assert len(failing) == 6
    emu.reset()
    emu.set_faults(seed=11, fail_inputs=[sha256_of(c) for c in failing], **TRANSIENT)
    manifest = _manifest(tmp_path, soak_clips, "soakfail")
    summary = await _run(manifest, emu)
    rows = {Path(r["input"]).name: r for r in report_rows(summary["report"])}
    failed = {n for n, r in rows.items() if r["status"] == "failed"}
    assert failed == {Path(c).name for c in failing}, {n: rows[n]["error"] for n in failed}
    for name in failed:
        assert rows[name]["reason"] == "job-failed"
        assert "Input rejected by the emulator (fail_inputs)" in rows[name]["error"], rows[name]["error"]
        assert not (tmp_path / "out" / name.replace(".mp4", ".webm")).exists()
    assert summary["verified"] == N - len(failing)
    stats = emu.stats()
    counts = stats["submissions_by_content"]["removebgvideo"]
    assert {sha256_of(c): counts.get(sha256_of(c), 0) for c in soak_clips} == {sha256_of(c): 1 for c in soak_clips}
    MEASURED["permanent"] = {"items": N, "failed": len(failed), "seconds": summary["wall"]}
    print("soak permanent:", MEASURED["permanent"])
