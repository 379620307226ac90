"""Malformed manifests: one-line ``file:line:col`` errors, exit code 2, no traceback."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vidbatch.cli import app
from vidbatch.inputs import plan_items
from vidbatch.manifest import load_manifest

runner = CliRunner()

BASE = """\
version: 1
name: t
output: out/{{stem}}.{{ext}}
videos:
  - {clip}
"""

# (id, manifest text (``{clip}`` = a real file), expected message fragment, expected line or None)
CASES = [
    ("yaml-syntax", "version: 1\nname: t\noutput: [out\nvideos: []\n", "YAML syntax error", 4),
    ("tabs", "version: 1\nname: t\n\toutput: x\n", "YAML syntax error", 3),
    ("unknown-top-key", BASE.replace("output:", "outptu:"), "unknown key 'outptu'; did you mean 'output'?", 3),
    ("unknown-defaults-key", BASE + "defaults:\n  fromat: webm\n", "did you mean 'format'?", 7),
    ("bad-format", BASE + "defaults:\n  format: mkv\n", "'mkv' is not allowed; choose one of: webm, mov, mp4, gif, webp, png_sequence", 7),
    ("bad-operation", BASE + "defaults:\n  operation: remove_background\n", "did you mean 'remove-background'?", 7),
    ("transparent-mp4", "version: 1\nname: t\noutput: out/{stem}.{ext}\nvideos:\n  - url: {clip}\n    format: mp4\n",
     "format 'mp4' has no alpha channel", 6),
    ("bad-background", BASE + "defaults:\n  background: greenish\n", "is not 'transparent', a '#rrggbb' colour", 7),
    ("version-2", BASE.replace("version: 1", "version: 2"), "2 is not allowed; choose one of: 1", 1),
    ("missing-output", "version: 1\nname: t\nvideos:\n  - {clip}\n", "missing required key 'output'", 1),
    ("empty-videos", "version: 1\nname: t\noutput: out/{stem}.{ext}\nvideos: []\n", "videos: list should have at least 1 item", 4),
    ("unknown-provider", BASE + "defaults:\n  provider: fall\n", "unknown provider 'fall'; did you mean 'fal'?", 7),
    ("bad-placeholder", BASE.replace("{{stem}}", "{{stme}}"), "unknown placeholder {stme} in output template; did you mean {stem}?", 3),
    ("escaping-template", BASE.replace("out/", "out/../../"), "must not contain '..'", 3),
    ("background-on-upscale", "version: 1\nname: t\noutput: out/{stem}.{ext}\nvideos:\n  - url: {clip}\n    operation: upscale\n    background: '#00ff00'\n",
     "'background' does not apply to operation 'upscale'", 7),
    ("factor-and-target", "version: 1\nname: t\noutput: out/{stem}.{ext}\ndefaults:\n  operation: upscale\n  factor: 2\n  target: 720p\nvideos:\n  - {clip}\n",
     "give either factor or target, not both", 7),
    ("mask-not-bool", BASE + "defaults:\n  mask: maybe\n", "input should be a valid boolean", 7),
    ("missing-input", BASE.replace("{clip}", "nowhere/none.mp4"), "input not found", 5),
    ("glob-no-match", BASE.replace("{clip}", "nowhere/*.mp4"), "matched no files", 5),
    ("duplicate-key", "version: 1\nname: t\nname: u\noutput: out/{stem}.{ext}\nvideos:\n  - {clip}\n", "duplicate key 'name'", 3),
    ("bad-local-model", BASE + "defaults:\n  model: BiRefNet\n", "unknown model 'BiRefNet'; choose one of: selfie-landscape, selfie-general", 7),
    ("local-unknown-param", BASE + "defaults:\n  params: {strength: 3}\n", "local: unknown param 'strength'", 7),
    ("concurrency-zero", BASE + "limits:\n  local: {concurrency: 0}\n", "greater than or equal to 1", 7),
    ("bad-name", BASE.replace("name: t", "name: my batch"), "name must be letters, digits", 2),
    ("entry-without-url", "version: 1\nname: t\noutput: out/{stem}.{ext}\nvideos:\n  - uri: {clip}\n", "needs a 'url' or a 'list' key (did you mean 'url'?)", 5),
    ("listing-bad-ext", BASE.replace("  - {clip}", "  - list: {clip}"), "must end in .txt, .csv or .jsonl", 5),
    ("not-a-mapping", "- just\n- a list\n", "a manifest is a YAML mapping", 1),
    ("empty-file", "", "the manifest is empty", 1),
]


@pytest.fixture()
def clip(tmp_path: Path) -> str:
    p = tmp_path / "in" / "clip.mp4"
    p.parent.mkdir()
    p.write_bytes(b"\x00" * 64)  # schema checks do not decode; inputs are probed at run time
    return str(p)


@pytest.mark.parametrize("case_id,text,fragment,line", CASES, ids=[c[0] for c in CASES])
def test_malformed_manifest(tmp_path: Path, clip: str, monkeypatch, case_id: str, text: str, fragment: str, line: int | None) -> None:
    monkeypatch.chdir(tmp_path)
    body = text.replace("{clip}", clip).replace("{{", "{").replace("}}", "}")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(body)
    result = runner.invoke(app, ["validate", str(manifest)])
    output = result.output.strip()
    assert result.exit_code == 2, output
    assert "Traceback" not in output
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1, output
    assert fragment in " ".join(output.split()), output
    m = re.search(r"m\.yaml:(\d+):(\d+): ", output)
    assert m, f"no file:line:col in {output!r}"
    if line is not None:
        assert int(m.group(1)) == line, output
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_missing_manifest_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert "manifest not found" in result.output


def test_valid_manifest_and_inherited_settings(tmp_path: Path, clip: str, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text(textwrap.dedent(f"""\
        version: 1
        name: t
        output: out/{{stem}}-{{operation}}.{{ext}}
        defaults:
          background: '#00ff00'
          format: mp4
          mask: true
        videos:
          - {clip}
          - url: {clip}
            operation: upscale
            target: 720p
    """))
    m = load_manifest(str(tmp_path / "m.yaml"))
    items = plan_items(m)
    assert [i.spec.operation for i in items] == ["remove-background", "upscale"]
    up = items[1].spec
    # background and mask inherited from defaults do not apply to an upscale: ignored
    assert up.background == "transparent" and up.mask is False and up.target == "720p"
    assert items[0].mask_output and items[0].mask_output.endswith(".mask.mp4")
    assert items[0].key != items[1].key
    result = runner.invoke(app, ["validate", str(tmp_path / "m.yaml")])
    assert result.exit_code == 0, result.output


def test_schema_command() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert '"videos"' in result.output and '"version"' in result.output


def test_unknown_metric_in_verify_rules(tmp_path: Path, clip: str) -> None:
    (tmp_path / "m.yaml").write_text(BASE.replace("{clip}", clip).replace("{{", "{").replace("}}", "}")
                                     + "verify:\n  alpha_flicker: {max: 0.01}\n  edge_flikker: {max: 0.1}\n")
    result = runner.invoke(app, ["validate", str(tmp_path / "m.yaml")])
    assert result.exit_code == 2
    assert "unknown check or metric 'edge_flikker'" in result.output and "did you mean 'edge_flicker'" in result.output
    assert "m.yaml:8:" in result.output


def test_typo_inside_a_provider_limit(tmp_path: Path, clip: str) -> None:
    (tmp_path / "m.yaml").write_text(BASE.replace("{clip}", clip).replace("{{", "{").replace("}}", "}")
                                     + "limits:\n  local: {concurency: 2}\n")
    result = runner.invoke(app, ["validate", str(tmp_path / "m.yaml")])
    assert result.exit_code == 2
    assert "unknown key 'concurency'; did you mean 'concurrency'?" in result.output
    assert "m.yaml:7:" in result.output
