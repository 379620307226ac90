"""``vidbatch compare``: two local variants and a hosted one (via the emulator), side by side."""

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

    with EmulatorServer(job_seconds=0, queue_seconds=0) as server:
        yield server


def test_compare_two_local_models_and_fal(tmp_path: Path, clips: dict[str, str], emulator: Any) -> None:
    manifest = tmp_path / "cmp.yaml"
    manifest.write_text(textwrap.dedent(f"""\
        version: 1
        name: cmp
        output: {tmp_path}/out/{{rel}}.{{ext}}
        defaults: {{provider: local, format: webm, background: transparent}}
        videos: [{clips['person']}, {clips['person2']}]
        compare:
          - {{model: selfie-landscape}}
          - {{model: selfie-general}}
          - {{provider: fal, model: "General Use (Light)"}}
        """))
    result = CliRunner().invoke(app, ["compare", str(manifest), "--emulator", emulator.base_url])
    assert result.exit_code == 0, result.output[-3000:]
    out = tmp_path / "out" / "compare"
    table = json.loads((out / "cmp.compare.json").read_text())
    assert [r["variant"] for r in table] == ["v1-selfie-landscape", "v2-selfie-general",
                                             "v3-fal-general-use-light"]
    for row in table:
        assert row["verified"] == 2 and row["failed"] == 0
        assert row["alpha_flicker"] is not None and row["edge_flicker"] is not None
    assert table[2]["provider"] == "fal"
    page = (out / "cmp.compare.html").read_text()
    assert page.count("<img") == 2 * 4  # per clip: the input and the same frame of each variant
    assert all(v in page for v in ("v1-selfie-landscape", "v2-selfie-general", "v3-fal"))
