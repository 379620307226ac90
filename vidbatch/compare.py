"""``vidbatch compare``: one clip set through several provider/model settings.

Variants come from a manifest's ``compare:`` section (each entry is a settings
override on top of ``defaults:``) or from two or more manifests. Each variant is
an ordinary run (cached, verified, measured) writing under
``{output root}/compare/<variant>/``; then a side-by-side table of metrics, cost
and time per variant, and an HTML page with the same frame of every variant.
"""

from __future__ import annotations

import html
import json
import re
import statistics
import tempfile
from dataclasses import dataclass
from typing import Any, Mapping

import yaml

from vidbatch import inputs, storage
from vidbatch.errors import ConfigError
from vidbatch.manifest import Manifest, load_manifest
from vidbatch.yamlpos import load

#: metrics shown per variant (mean over its verified items)
SHOWN = ("alpha_flicker", "edge_flicker", "coverage_pulse", "fg_bleed", "mask_agreement",
         "fidelity_psnr", "fidelity_ssim", "luma_flicker", "sharpness_gain")


@dataclass(frozen=True)
class Variant:
    label: str
    manifest: str  # path/URL of the manifest that runs it


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()[:60] or "variant"


def _raw(source: str) -> dict[str, Any]:
    data = storage.read_bytes(source) if "://" in source else open(source, "rb").read()
    raw, _ = load((data or b"").decode("utf-8"), source)
    return raw


def variants_from_section(m: Manifest, workdir: str) -> list[Variant]:
    """Derived manifests, one per ``compare:`` entry, written to ``workdir``."""
    raw = _raw(m.source)
    root = inputs.output_root(m)
    out: list[Variant] = []
    for i, settings in enumerate(m.compare or []):
        over = settings.model_dump(exclude_none=True)
        label = f"v{i + 1}-" + _slug("-".join(str(over.get(k, "")) for k in ("provider", "model") if over.get(k)))
        doc = dict(raw)
        doc.pop("compare", None)
        doc["name"] = f"{m.name}-{label}"
        doc["defaults"] = {**(raw.get("defaults") or {}), **over}
        doc["output"] = storage.join(root, "compare", label, "{rel}.{ext}")
        doc["state"] = inputs.state_root(m)
        path = f"{workdir}/{label}.yaml"
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)
        load_manifest(path)  # fail early, with a located error, if the variant is impossible
        out.append(Variant(label, path))
    return out


def plan_variants(manifests: list[str], workdir: str) -> tuple[list[Variant], str]:
    """The variants to run and where the comparison is written."""
    if not manifests:
        raise ConfigError("compare needs a manifest with a compare: section, or two or more manifests")
    first = load_manifest(manifests[0])
    if len(manifests) == 1:
        if not first.compare or len(first.compare) < 2:
            raise ConfigError(f"{manifests[0]}: add a compare: section with two or more variants, "
                              "or give two or more manifests")
        return variants_from_section(first, workdir), storage.join(inputs.output_root(first), "compare")
    variants = [Variant(_slug(load_manifest(p).name), p) for p in manifests]
    return variants, storage.join(inputs.output_root(first), "compare")


def _mean(values: list[float]) -> float | None:
    vals = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.fmean(vals), 5) if vals else None


def variant_row(label: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    rows = summary["rows"]
    ok = [r for r in rows if r["status"] == "verified"]
    first = rows[0] if rows else {}
    row: dict[str, Any] = {
        "variant": label, "provider": first.get("provider"), "model": first.get("model"),
        "items": len(rows), "verified": len(ok), "failed": summary["failed"],
        "cost_usd": summary["cost_usd"],
        "seconds_per_item": _mean([r["timings"].get("total") for r in ok if not r["cached"]]),
    }
    for name in SHOWN:
        row[name] = _mean([r["metrics"].get(name) for r in ok])
    return row


def render_html(title: str, table: list[dict[str, Any]], frames: Mapping[str, Mapping[str, str]]) -> str:
    cols = [c for c in table[0] if any(r.get(c) is not None for r in table)] if table else []
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape('' if r.get(c) is None else str(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in table)
    labels = [r["variant"] for r in table]
    grid = []
    for clip, by_variant in frames.items():
        cells = "".join(
            f"<figure><img src='{by_variant[v]}' alt='{html.escape(v)}'><figcaption>{html.escape(v)}</figcaption></figure>"
            if v in by_variant else f"<figure><div class='missing'>no output</div><figcaption>{html.escape(v)}</figcaption></figure>"
            for v in ["input", *labels])
        grid.append(f"<section><h3>{html.escape(clip)}</h3><div class='row'>{cells}</div></section>")
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;font-size:13px}}.row{{display:flex;gap:8px;flex-wrap:wrap}}figure{{margin:0}}img{{max-width:320px;
display:block}}.missing{{width:320px;height:180px;background:#eee}}figcaption{{font-size:12px}}</style></head>
<body><h1>{html.escape(title)}</h1><table><tr>{head}</tr>{body}</table><h2>Same frame, every variant</h2>
{''.join(grid)}</body></html>"""


def frames_of(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, str]]:
    """clip -> {"input" | variant: data URI of the middle frame}."""
    from vidbatch.handoff import item_thumbnails

    out: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for label, summary in summaries.items():
            for r in summary["rows"]:
                if r["status"] != "verified":
                    continue
                clip = r["input"].rsplit("/", 1)[-1]
                thumbs = item_thumbnails(r, None, workdir)
                cell = out.setdefault(clip, {})
                if "input" in thumbs:
                    cell.setdefault("input", thumbs["input"])
                if "output" in thumbs:
                    cell[label] = thumbs["output"]
    return out


async def compare(manifests: list[str], *, emulator: str | None = None, force: bool = False) -> dict[str, Any]:
    from vidbatch.flows.batch import process_manifest

    with tempfile.TemporaryDirectory(prefix="vidbatch-compare-") as workdir:
        variants, out_dir = plan_variants(manifests, workdir)
        summaries: dict[str, Any] = {}
        for v in variants:
            summaries[v.label] = await process_manifest(manifest=v.manifest, emulator=emulator, force=force)
    table = [variant_row(label, s) for label, s in summaries.items()]
    name = _slug(load_manifest(manifests[0]).name)
    page = render_html(f"vidbatch compare: {name}", table, frames_of(summaries))
    html_url = storage.join(out_dir, f"{name}.compare.html")
    json_url = storage.join(out_dir, f"{name}.compare.json")
    storage.write_bytes_atomic(html_url, page.encode())
    storage.write_bytes_atomic(json_url, json.dumps(table, indent=2).encode())
    return {"table": table, "html": html_url, "json": json_url,
            "failed": sum(s["failed"] for s in summaries.values())}
