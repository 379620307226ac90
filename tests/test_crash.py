"""Crash safety: SIGKILL ``vidbatch run`` mid-flight, rerun, never lose work or pay twice.

``vidbatch run`` runs as a subprocess in its own process group (SIGKILL of the
group also kills its ephemeral Prefect server); the emulator is a separate
process, so the remote jobs outlive the run, as they would at a real provider.

Provider: removebgvideo. Its jobs carry a ``metadata.vidbatch_token``, so a
submit whose outcome is unknown (killed between the write-ahead intent and the
handle write) can be re-found in the provider's job list by the next run.
fal offers no way to find a job again (no idempotency key, no job list), so a
kill inside that one-request window leaves fal items "unknown - not resubmitted"
(by design; ``test_retries`` covers that path).

Kill points, one run each:
1. after some submits (handles on the state store);
2. inside the submit window: the emulator holds one submit response for 30 s
   after creating the job (``delay`` fault), the kill lands while the intent is
   the only trace of it;
3. during a download: the emulator holds one download's response, the temp key
   exists, the final key must not;
then a last run finishes every item, verified, with exactly one submission per
input, no handle left and no temp key left.

Ctrl-C: SIGINT cancels in-flight fal jobs (cancel supported) and keeps the
removebgvideo handles (no cancel endpoint); a rerun re-attaches to those.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import (
    EmulatorProcess,
    StateDir,
    VidbatchProcess,
    group_gone_within,
    make_clips,
    reap,  # noqa: F401  (autouse: no run outlives its test)
    sha256_of,
    subprocess_env,
    temp_keys,
    wait_until,
    write_manifest,
)
from vidbatch import media

pytestmark = pytest.mark.slow

N = 12
FRAMES = 4
REPO = Path(__file__).resolve().parents[1]


def _final_outputs(out: Path) -> list[Path]:
    return [p for p in out.glob("*.webm") if not p.name.startswith(".")]


def _assert_outputs_whole(out: Path) -> None:
    """Anything visible at a final key is a complete, decodable video."""
    for p in _final_outputs(out):
        info = media.probe(str(p))
        assert info.frames == FRAMES, (p, info)


def _output_temp_keys(out: Path) -> list[Path]:
    return [p for p in temp_keys(out) if ".vidbatch" not in p.relative_to(out).parts[:1]]


def test_sigkill_at_several_points_then_rerun_finishes_everything_once(tmp_path: Path) -> None:
    clips = make_clips(tmp_path / "in", N, seed0=500, frames=FRAMES)
    out = tmp_path / "out"
    manifest = write_manifest(tmp_path / "crash.yaml", f"""\
        version: 1
        name: crash
        output: {out}/{{stem}}.{{ext}}
        defaults:
          provider: removebgvideo
          format: webm
        limits:
          removebgvideo: {{concurrency: 4}}
        videos:
          - {tmp_path}/in/*.mp4
        """)
    state = StateDir(out / ".vidbatch")
    env = subprocess_env(tmp_path / "prefect")
    timeline: dict[str, Any] = {}
    t_start = time.monotonic()
    with EmulatorProcess(tmp_path, instant=True, job_seconds=3) as emu:
        # -- 1: killed after some submits ---------------------------------------------------
        run = VidbatchProcess(manifest, tmp_path, env, "--emulator", emu.url, "--json", tag="run1")
        wait_until(lambda: state.count("handles", "submitted") >= 3, 120, "three handles", proc=run)
        run.kill()
        assert group_gone_within(run.pid, 15), "the ephemeral Prefect server outlived the SIGKILL"
        timeline["kill1"] = {"handles": state.count("handles"), "records": state.count("records"),
                             "submissions": emu.stats()["submissions"]["removebgvideo"]}
        _assert_outputs_whole(out)

        # -- 2: killed between the write-ahead intent and the handle -------------------------
        before = emu.stats()["submissions"]["removebgvideo"]
        emu.set_faults(rules=[{"fault": "delay", "seconds": 30, "routes": ["removebgvideo:submit"], "times": 1}])
        run = VidbatchProcess(manifest, tmp_path, env, "--emulator", emu.url, "--json", tag="run2")

        def in_window() -> bool:
            stats = emu.stats()
            held = stats["faults_injected"].get("removebgvideo:submit:delay", 0) == 1
            return held and state.count("handles", "submitting") >= 1 and stats["submissions"]["removebgvideo"] > before

        wait_until(in_window, 120, "a submit held after it created the job", proc=run)
        time.sleep(0.3)
        run.kill()
        intents = [h for h in state.handles() if h.get("state") == "submitting"]
        assert intents and all(h.get("hint", {}).get("token") for h in intents), intents
        timeline["kill2"] = {"intents": len(intents), "handles": state.count("handles"),
                             "records": state.count("records")}
        _assert_outputs_whole(out)

        # -- 3: killed during a download ------------------------------------------------------
        emu.set_faults(rules=[{"fault": "delay", "seconds": 30, "routes": ["removebgvideo:download"], "times": 1}])
        run = VidbatchProcess(manifest, tmp_path, env, "--emulator", emu.url, "--json", tag="run3")
        wait_until(lambda: _output_temp_keys(out), 120, "a download's temp key", proc=run)
        time.sleep(0.3)
        run.kill()
        leftovers = _output_temp_keys(out)
        assert leftovers, "the killed download left no temp key (the kill came too late)"
        for tmp in leftovers:  # the partial file is only ever at a temp key
            final = out / tmp.name.split("-", 4)[-1]
            assert not final.exists() or media.probe(str(final)).frames == FRAMES
        timeline["kill3"] = {"temp_keys": len(leftovers), "handles": state.count("handles"),
                             "records": state.count("records")}
        _assert_outputs_whole(out)

        # -- 4: the rerun finishes everything -------------------------------------------------
        emu.set_faults()
        run = VidbatchProcess(manifest, tmp_path, env, "--emulator", emu.url, "--json", tag="run4")
        code = run.wait(300)
        assert code == 0, run.stderr[-3000:]
        summary = run.summary()
        stats = emu.stats()

    assert summary["verified"] == N and summary["failed"] == 0, summary["rows"]
    assert "Traceback" not in run.stderr
    # exactly one paid job per input, across four runs and three kills
    by_content = stats["submissions_by_content"]["removebgvideo"]
    assert {sha256_of(c): by_content.get(sha256_of(c), 0) for c in clips} == {sha256_of(c): 1 for c in clips}
    assert stats["submissions"]["removebgvideo"] == N
    # every output whole; nothing left in flight; the killed download's temp key is gone
    assert len(_final_outputs(out)) == N
    _assert_outputs_whole(out)
    assert state.count("handles") == 0
    assert state.count("records") == N
    assert _output_temp_keys(out) == []
    report = [json.loads(x) for x in Path(summary["report"]).read_text().splitlines()]
    assert {r["status"] for r in report} == {"verified"} and len(report) == N
    timeline["seconds"] = round(time.monotonic() - t_start, 1)
    print("crash timeline:", timeline)


def test_ctrl_c_cancels_fal_keeps_removebgvideo_handles_and_rerun_reattaches(tmp_path: Path) -> None:
    clips = make_clips(tmp_path / "in", 6, seed0=700, frames=FRAMES)
    fal_clips, rbv_clips = clips[:3], clips[3:]
    out = tmp_path / "out"
    entries = "\n".join(f"  - {{url: {c}, provider: fal}}" for c in fal_clips)
    entries += "\n" + "\n".join(f"  - {c}" for c in rbv_clips)
    manifest = write_manifest(tmp_path / "cancel.yaml", f"""\
version: 1
name: cancel
output: {out}/{{stem}}.{{ext}}
defaults:
  provider: removebgvideo
  format: webm
limits:
  removebgvideo: {{concurrency: 8}}
  fal: {{concurrency: 8}}
videos:
{entries}
""")
    state = StateDir(out / ".vidbatch")
    env = subprocess_env(tmp_path / "prefect")
    with EmulatorProcess(tmp_path, instant=True, job_seconds=15) as emu:
        run = VidbatchProcess(manifest, tmp_path, env, "--emulator", emu.url, "--json", tag="ctrlc")
        wait_until(lambda: state.count("handles", "submitted") == 6, 120, "six submitted jobs", proc=run)
        # Ctrl-C in a terminal signals the foreground process group
        run.kill(signal.SIGINT)
        code = run.proc.returncode
        assert code == 130, (code, run.stderr[-3000:])
        assert "error: interrupted" in run.stderr
        # Prefect's ephemeral server shares the process group and logs its own
        # shutdown tracebacks on SIGINT; none of them may come from vidbatch code
        ours = [f for f in re.findall(r'File "([^"]+)"', run.stderr)
                if f.startswith(str(REPO)) and "site-packages" not in f]
        assert not ours, ours
        jobs = {j["provider"]: [] for j in emu.jobs()}
        for j in emu.jobs():
            jobs[j["provider"]].append(j["state"])
        assert sorted(jobs["fal"]) == ["canceled"] * 3, jobs
        # removebgvideo cannot cancel: its three jobs run on, none cancelled
        assert len(jobs["removebgvideo"]) == 3 and "canceled" not in jobs["removebgvideo"], jobs
        handles = state.handles()
        assert sorted(h["handle"]["provider"] for h in handles) == ["removebgvideo"] * 3, handles
        assert _final_outputs(out) == [] and _output_temp_keys(out) == []

        emu.configure(job_seconds=0)
        rerun = VidbatchProcess(manifest, tmp_path, env, "--emulator", emu.url, "--json", tag="rerun")
        assert rerun.wait(300) == 0, rerun.stderr[-3000:]
        summary = rerun.summary()
        stats = emu.stats()
    assert summary["verified"] == 6, summary["rows"]
    counts = stats["submissions_by_content"]
    # removebgvideo: re-attached to the jobs that ran on (no second bill)
    assert [counts["removebgvideo"].get(sha256_of(c)) for c in rbv_clips] == [1, 1, 1]
    # fal: the canceled jobs are submitted again, once each
    assert [counts["fal"].get(sha256_of(c)) for c in fal_clips] == [2, 2, 2]
    assert state.count("handles") == 0
    _assert_outputs_whole(out)
