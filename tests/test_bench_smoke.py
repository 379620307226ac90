"""The benchmark harness still runs and still prints its table (no speed is asserted).

``python -m bench`` is not a test (it takes minutes and its figures depend on
the machine); this runs the same harness at N = 10, d = 0, with vidbatch in
this process on the session's Prefect backend, and checks the table's rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ``bench`` lives next to ``tests``

from bench import machine  # noqa: E402
from bench.suite import Config, run_suite  # noqa: E402
from bench.table import render  # noqa: E402

pytestmark = pytest.mark.usefixtures("prefect_backend")


def test_bench_harness_prints_the_table(tmp_path: Path) -> None:
    cfg = Config.quick(workdir=tmp_path, inprocess=True, dispatch_n=10)
    res = run_suite(cfg, machine.describe(["--quick"]))
    text = render(res)
    assert "Command: `python -m bench --quick`" in text and "cores" in text
    for row in ("| vidbatch, with verify |", "| vidbatch, orchestration only |", "| bare asyncio + httpx |",
                "| official-client style |", "#### Dispatch ceiling", "#### Poll economy", "#### Targets",
                "| CPU per item at d = 0, vidbatch process |", "| <= 12 polls/job, detection <= 5 % + 1 s |"):
        assert row in text, row
    for name, r in {**res.vidbatch, **res.baselines}.items():
        assert r["failed"] == 0, (name, r)
    assert {p["provider"] for p in res.polls} == {"fal", "scenario", "removebgvideo"}
