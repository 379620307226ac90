"""Retries, uncertain submits and budgets, end to end through the flow and the emulator.

* Only transient errors retry (429 / 5xx / dropped connections), with the
  provider's ``Retry-After`` / ``remainingSeconds`` honoured; a permanent error
  fails the item at once with the provider's message (one request, no retry).
* A submit whose request may have reached the provider is never retried blindly:
  removebgvideo and Scenario re-check the provider's job list (the job is
  re-found, or proven absent and submitted once); fal, which has no way to find a
  job again, fails the item as "unknown - not resubmitted" until ``--force``.
* ``budget:`` stops submission before spent + in flight would cross the cap; the
  remaining items are ``skipped`` with reason ``budget``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.reliability import make_clips, sha256_of, write_manifest

pytestmark = pytest.mark.usefixtures("prefect_backend")


@pytest.fixture(scope="module")
def emu() -> Iterator[Any]:
    from vidbatch.emulator import EmulatorServer

    with EmulatorServer(instant=True, job_seconds=0, upload_import_seconds=0.05) as server:
        yield server


@pytest.fixture()
def fresh(emu: Any) -> Iterator[Any]:
    emu.reset()
    yield emu
    emu.set_faults()


def _manifest(tmp: Path, provider: str, clips: list[str], extra: str = "", name: str = "r",
              operation: str = "remove-background") -> str:
    listing = tmp / f"{name}.txt"
    listing.write_text("\n".join(clips) + "\n")
    fmt = "mp4" if operation == "upscale" else "webm"
    return write_manifest(tmp / f"{name}.yaml", f"""\
version: 1
name: {name}
output: {tmp}/out-{name}/{{stem}}.{{ext}}
defaults:
  provider: {provider}
  operation: {operation}
  format: {fmt}
videos:
  - list: {listing}
""" + extra)


async def _run(manifest: str, emu: Any, **kw: Any) -> dict[str, Any]:
    from vidbatch.flows.batch import process_manifest

    return await process_manifest(manifest=manifest, emulator=emu.base_url, **kw)


def _requests(emu: Any, route: str) -> int:
    return int(emu.stats()["requests"].get(route, 0))


# ------------------------------------------------------------------ uncertain submits
@pytest.mark.parametrize("fault", ["drop", "lost_response"])
async def test_fal_uncertain_submit_is_never_resubmitted_blindly(tmp_path: Path, fresh: Any, fault: str) -> None:
    clips = make_clips(tmp_path / "in", 1, seed0=6000)
    manifest = _manifest(tmp_path, "fal", clips)
    fresh.set_faults(rules=[{"fault": fault, "routes": ["fal:submit"], "times": 1}])
    summary = await _run(manifest, fresh)
    [row] = summary["rows"]
    assert row["status"] == "failed" and row["reason"] == "unknown-submit", row
    assert "unknown - not resubmitted" in row["error"] and "--force" in row["error"]
    assert _requests(fresh, "fal:submit") == 1  # the one uncertain request, no blind retry
    # lost_response: the job exists (and would be billed); drop: it does not - fal cannot tell us which
    assert fresh.stats()["submissions"]["fal"] == (1 if fault == "lost_response" else 0)

    again = await _run(manifest, fresh)  # a rerun still refuses: the intent is kept
    assert again["rows"][0]["reason"] == "unknown-submit"
    assert _requests(fresh, "fal:submit") == 1

    forced = await _run(manifest, fresh, force=True)  # the user decided: submit again
    assert forced["rows"][0]["status"] == "verified", forced["rows"]
    assert _requests(fresh, "fal:submit") == 2


async def test_recheckable_providers_refind_or_resubmit_once(tmp_path: Path, fresh: Any) -> None:
    rbv = make_clips(tmp_path / "rbv", 3, seed0=6100)
    scn = make_clips(tmp_path / "scn", 2, seed0=6200, prefix="scn")
    listing = "\n".join(f"  - {c}" for c in rbv) + "\n" + "\n".join(f"  - {{url: {c}, provider: scenario}}" for c in scn)
    manifest = write_manifest(tmp_path / "mix.yaml", f"""\
version: 1
name: mix
output: {tmp_path}/out/{{stem}}.{{ext}}
defaults:
  provider: removebgvideo
  format: webm
limits:
  removebgvideo: {{concurrency: 1}}
  scenario: {{concurrency: 1}}
videos:
{listing}
""")
    fresh.set_faults(rules=[
        # processed, answer lost: the job exists -> re-found in the job list
        {"fault": "lost_response", "routes": ["removebgvideo:submit"], "times": 1},
        # connection dropped before processing: no job -> proven absent, submitted once
        {"fault": "drop", "routes": ["removebgvideo:submit"], "times": 1},
        # a 200 whose body is not JSON (not processed): the id is unreadable -> proven absent, submitted
        {"fault": "respond", "status": 200, "body": "<html>upstream hiccup</html>", "routes": ["scenario:submit"],
         "times": 1},
        # then the retry's answer is lost: the job exists -> re-found
        {"fault": "lost_response", "routes": ["scenario:submit"], "times": 1},
    ])
    summary = await _run(manifest, fresh)
    assert [r["status"] for r in summary["rows"]] == ["verified"] * 5, [r["error"] for r in summary["rows"]]
    stats = fresh.stats()
    assert stats["faults_injected"]["removebgvideo:submit:lost_response"] == 1
    assert stats["faults_injected"]["removebgvideo:submit:drop"] == 1
    assert stats["faults_injected"]["scenario:submit:lost_response"] == 1
    assert stats["faults_injected"]["scenario:submit:respond"] == 1
    for provider, clips in (("removebgvideo", rbv), ("scenario", scn)):
        seen = stats["submissions_by_content"][provider]
        assert [seen.get(sha256_of(c)) for c in clips] == [1] * len(clips), (provider, seen)
    assert stats["requests"]["removebgvideo:list"] >= 2 and stats["requests"]["scenario:jobs"] >= 1


@pytest.mark.parametrize("provider", ["scenario", "removebgvideo"])
async def test_a_submit_interrupted_before_its_handle_is_refound_by_the_next_run(
        tmp_path: Path, fresh: Any, provider: str) -> None:
    """The process dies between the write-ahead intent and the handle: the job exists, only the intent says so.

    The next run stages the input again (a new upload, a new asset id / URL), so it
    finds the job by the hint the intent kept (Scenario: the first asset id;
    removebgvideo: the metadata token), never by the new staging.
    """
    from vidbatch import pipeline, run
    from vidbatch.inputs import plan_items
    from vidbatch.manifest import load_manifest

    clips = make_clips(tmp_path / "in", 1, seed0=6700, prefix=provider[:3])
    manifest = _manifest(tmp_path, provider, clips, name=f"refind-{provider}")
    m = load_manifest(manifest)
    [item] = plan_items(m)
    ctx = run.new_context(m, [item], emulator=fresh.base_url)
    try:
        staged, _ = await pipeline.stage(ctx, item)
        client = ctx.provider(provider)
        ctx.state.write_intent(item.key, provider, 1, hint=client.submit_hint(item.spec, staged))
        await client.submit(item.spec, staged)  # accepted (and billed); the handle is never written
    finally:
        await run.close_context(ctx)
    assert ctx.state.read_handle(item.key)["state"] == "submitting"

    summary = await _run(manifest, fresh)
    assert summary["rows"][0]["status"] == "verified", summary["rows"]
    stats = fresh.stats()
    assert stats["submissions"][provider] == 1  # re-found, not paid twice
    assert stats["submissions_by_content"][provider] == {sha256_of(clips[0]): 1}
    assert stats["uploads"][provider] == 2  # the rerun did stage anew


# ------------------------------------------------------------------ transient vs permanent
async def test_retry_after_and_remaining_seconds_are_honoured(tmp_path: Path, fresh: Any) -> None:
    rbv = make_clips(tmp_path / "rbv", 1, seed0=6300)
    scn = make_clips(tmp_path / "scn", 1, seed0=6400, prefix="scn")
    manifest = write_manifest(tmp_path / "ra.yaml", f"""\
version: 1
name: ra
output: {tmp_path}/out/{{stem}}.{{ext}}
defaults:
  provider: removebgvideo
  format: webm
videos:
  - {rbv[0]}
  - {{url: {scn[0]}, provider: scenario}}
""")
    # whole seconds: Retry-After (removebgvideo) carries delta-seconds as an integer
    fresh.set_faults(retry_after=3, rules=[
        {"fault": "rate_limit", "routes": ["removebgvideo:submit"], "times": 2},
        {"fault": "rate_limit", "routes": ["scenario:submit"], "times": 2},
    ])
    summary = await _run(manifest, fresh)
    rows = {r["provider"]: r for r in summary["rows"]}
    for provider in ("removebgvideo", "scenario"):
        assert rows[provider]["status"] == "verified", rows[provider]
        # two 429s asking for 3 s each: the submit stage waited at least that long
        assert rows[provider]["timings"]["submit"] >= 6.0, rows[provider]["timings"]
        assert _requests(fresh, f"{provider}:submit") == 3
    assert fresh.stats()["submissions"]["removebgvideo"] == 1


async def test_5xx_retries_but_a_permanent_error_fails_at_once_with_the_providers_message(
        tmp_path: Path, fresh: Any) -> None:
    clips = make_clips(tmp_path / "in", 2, seed0=6500)
    manifest = _manifest(tmp_path, "removebgvideo", clips[:1], name="fivexx")
    fresh.set_faults(rules=[{"fault": "server_error", "routes": ["removebgvideo:submit"], "times": 2}])
    summary = await _run(manifest, fresh)
    assert summary["rows"][0]["status"] == "verified"
    assert _requests(fresh, "removebgvideo:submit") == 3

    fresh.reset()
    manifest = _manifest(tmp_path, "removebgvideo", clips[1:], name="perm")
    message = "video_url must point to a video file you uploaded"
    fresh.set_faults(rules=[{"fault": "respond", "status": 400, "routes": ["removebgvideo:submit"],
                             "body": {"error": {"code": "invalid_request", "message": message}}}])
    summary = await _run(manifest, fresh)
    [row] = summary["rows"]
    assert row["status"] == "failed" and message in row["error"], row
    assert row["timings"]["total"] < 5
    assert _requests(fresh, "removebgvideo:submit") == 1  # no retry of a permanent error
    assert not list((tmp_path / "out-perm").glob("*.webm"))


async def test_a_rate_limited_upload_is_retried_in_place_and_never_fails_the_item(tmp_path: Path, fresh: Any) -> None:
    """Uploads create no job, so each one is retried where it fails.

    Six 429s in a row are more than the stage's own 5 attempts would absorb if
    each 429 failed the whole stage (the CI flake this test pins down).
    """
    clips = make_clips(tmp_path / "in", 1, seed0=6600)
    manifest = _manifest(tmp_path, "removebgvideo", clips, name="upl")
    fresh.set_faults(rules=[{"fault": "rate_limit", "routes": ["removebgvideo:upload"], "times": 6}], retry_after=0)
    summary = await _run(manifest, fresh)
    [row] = summary["rows"]
    assert row["status"] == "verified", row
    assert _requests(fresh, "removebgvideo:upload") == 7
    assert _requests(fresh, "removebgvideo:submit") == 1
    assert fresh.stats()["submissions"]["removebgvideo"] == 1


@pytest.mark.parametrize("provider", ["removebgvideo", "fal"])
async def test_a_429_on_submit_is_resent_in_place_not_by_the_stage(tmp_path: Path, fresh: Any, provider: str) -> None:
    """Six 429s on one submit: more than the stage's 5 attempts, so only the in-place re-send
    (a refused request created no job) gets the item through, with exactly one job."""
    clips = make_clips(tmp_path / "in", 1, seed0=6700)
    manifest = _manifest(tmp_path, provider, clips, name=f"s429{provider}")
    fresh.set_faults(rules=[{"fault": "rate_limit", "routes": [f"{provider}:submit"], "times": 6}], retry_after=0)
    summary = await _run(manifest, fresh)
    [row] = summary["rows"]
    assert row["status"] == "verified", row
    assert _requests(fresh, f"{provider}:submit") == 7
    assert fresh.stats()["submissions"][provider] == 1


# ------------------------------------------------------------------ budget
@pytest.mark.parametrize("scope", ["max_usd", "providers"])
async def test_budget_stops_submission_and_skips_the_rest(tmp_path: Path, fresh: Any, scope: str) -> None:
    from vidbatch.providers.fal import PRICE_SEEDVR_PER_MP

    clips = make_clips(tmp_path / "in", 5, seed0=6600, width=64, height=36, frames=4)
    each = 128 * 72 * 4 / 1e6 * PRICE_SEEDVR_PER_MP  # factor 2: 128x72 x 4 frames, $0.001 per output MP
    cap = round(each * 2.5, 9)
    budget = f"budget: {{max_usd: {cap}}}\n" if scope == "max_usd" else f"budget: {{providers: {{fal: {cap}}}}}\n"
    manifest = _manifest(tmp_path, "fal", clips, extra=budget + "limits:\n  fal: {concurrency: 1}\n",
                         name=f"budget-{scope.replace('_', '')}", operation="upscale")
    summary = await _run(manifest, fresh)
    statuses = [r["status"] for r in summary["rows"]]
    assert statuses.count("verified") == 2 and statuses.count("skipped") == 3, summary["rows"]
    for r in summary["rows"]:
        if r["status"] == "skipped":
            assert r["reason"] == "budget" and r["error"].startswith("budget:"), r
            assert r["cost_usd"] == 0.0
    assert fresh.stats()["submissions"]["fal"] == 2
    assert sum(r["cost_usd"] or 0 for r in summary["rows"]) == pytest.approx(2 * each, rel=1e-6)
