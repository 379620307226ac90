"""``vidbatch validate`` reports every problem, one line each, where it is written;
a budget over items without a known price is one of them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vidbatch import validation
from vidbatch.cli import app
from vidbatch.errors import ConfigError

runner = CliRunner()


@pytest.fixture()
def clip(tmp_path: Path) -> str:
    from vidbatch.synth import make_clip

    return make_clip(str(tmp_path / "in" / "clip.mp4"), width=64, height=36, seconds=0.4, fps=10)


def _validate(tmp_path: Path, text: str) -> tuple[int, list[str]]:
    manifest = tmp_path / "m.yaml"
    manifest.write_text(text)
    result = runner.invoke(app, ["validate", str(manifest)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert "Traceback" not in result.output
    return result.exit_code, lines


def _where(line: str) -> tuple[int, int]:
    m = re.search(r"m\.yaml:(\d+):(\d+): ", line)
    assert m, line
    return int(m.group(1)), int(m.group(2))


def test_three_independent_mistakes_three_lines(tmp_path, clip, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = f"""version: 1
name: t
output: out/{{stem}}.{{ext}}
defaults:
  format: mkv
videos:
  - {clip}
  - nowhere/missing.mp4
  - url: {clip}
    operation: upscale
    background: '#00ff00'
"""
    code, lines = _validate(tmp_path, text)
    assert code == 2
    assert len(lines) == 3, lines
    assert all(ln.startswith("error: ") for ln in lines)
    found = {_where(ln): ln for ln in lines}
    assert "'mkv' is not allowed" in found[(5, 11)]                      # defaults.format
    assert "input not found" in found[(8, 5)]                            # videos[1]
    assert "'background' does not apply to operation 'upscale'" in found[(11, 17)]  # videos[2].background
    assert not (tmp_path / "out").exists()


def test_inherited_contradiction_is_one_line_at_defaults(tmp_path, clip, monkeypatch):
    monkeypatch.chdir(tmp_path)
    other = Path(clip).with_name("clip2.mp4")
    other.write_bytes(Path(clip).read_bytes())
    text = f"""version: 1
name: t
output: out/{{stem}}.{{ext}}
defaults:
  format: mp4
videos:
  - {clip}
  - {other}
  - url: {clip}
    format: gif
"""
    code, lines = _validate(tmp_path, text)
    assert code == 2 and len(lines) == 1, lines
    assert _where(lines[0]) == (5, 11) and "defaults.format: format 'mp4' has no alpha channel" in lines[0]


def test_schema_mistakes_in_several_settings_are_all_reported(tmp_path, clip):
    text = f"""version: 1
name: t
output: out/{{stem}}.{{ext}}
limits:
  local: {{concurrency: 0}}
defaults:
  mask: maybe
  operaton: upscale
videos:
  - {clip}
"""
    code, lines = _validate(tmp_path, text)
    assert code == 2 and len(lines) == 3, lines
    text = " ".join(lines)
    assert "greater than or equal to 1" in text and "valid boolean" in text and "did you mean 'operation'" in text


def test_plan_checks_join_the_collection(tmp_path, clip, monkeypatch):
    def no_local(m, items):  # noqa: ANN001 - a check as another module would add one
        if any(i.spec.provider == "local" for i in items):
            raise m.error(("defaults",), "this site runs no local engine")

    monkeypatch.setattr(validation, "PLAN_CHECKS", [no_local])
    text = f"version: 1\nname: t\noutput: out/{{stem}}.{{ext}}\ndefaults:\n  mask: maybe\nvideos:\n  - {clip}\n"
    code, lines = _validate(tmp_path, text)
    assert code == 2 and len(lines) == 2, lines
    assert any("this site runs no local engine" in ln for ln in lines)


def test_budget_with_an_unknown_price_is_a_validate_error(tmp_path, clip, monkeypatch):
    monkeypatch.setenv("FAL_KEY", "id:secret")
    text = f"""version: 1
name: t
output: out/{{stem}}.{{ext}}
budget: {{max_usd: 5}}
defaults:
  provider: fal
videos:
  - {clip}
  - url: {clip}
    operation: upscale
    format: mp4
"""
    code, lines = _validate(tmp_path, text)
    assert code == 2 and len(lines) == 1, lines
    # the BiRefNet video price is unknown; SeedVR's is published, so the upscale item is fine
    assert _where(lines[0]) == (4, 19)
    assert "fal remove-background with model 'General Use (Light)' has no known price" in lines[0]
    assert "give its price in the manifest" in lines[0] and "published prices" in lines[0]
    # without budget: the same manifest is valid (nothing to cap)
    code, lines = _validate(tmp_path, text.replace("budget: {max_usd: 5}\n", ""))
    assert code == 0, lines


def test_budget_on_another_provider_only_is_fine(tmp_path, clip, monkeypatch):
    monkeypatch.setenv("FAL_KEY", "id:secret")
    text = f"""version: 1
name: t
output: out/{{stem}}.{{ext}}
budget: {{providers: {{scenario: 5}}}}
defaults:
  provider: fal
videos:
  - {clip}
"""
    code, lines = _validate(tmp_path, text)
    assert code == 0, lines


def test_validate_api_raises_every_problem(tmp_path, clip):
    (tmp_path / "m.yaml").write_text(
        f"version: 1\nname: t\noutput: out/{{stem}}.{{ext}}\ndefaults:\n  mask: maybe\n  format: mkv\nvideos:\n  - {clip}\n")
    with pytest.raises(ConfigError) as err:
        validation.validate(str(tmp_path / "m.yaml"))
    assert len(err.value.problems) == 2  # type: ignore[attr-defined]
    assert "(and 1 more problem)" in str(err.value)
