"""The handoff report for people and tools: Parquet and a self-contained HTML page.

Both sit next to the JSONL report (``vidbatch.report``), under the output root::

    {output_root}/{name}.report.jsonl     one JSON object per item (report.py)
    {output_root}/{name}.report.parquet   the same rows, typed (this module)
    {output_root}/{name}.report.html      thumbnails + a sortable table, works offline

Parquet schema, version 1 (``HANDOFF_SCHEMA_VERSION``; the file's key-value
metadata carries ``vidbatch.report_schema`` = ``1`` and ``vidbatch.manifest``).
One row per item, the same fields as the JSONL ``ReportRow`` v1, typed:

| column      | Arrow type                        | meaning                                            |
|-------------|-----------------------------------|----------------------------------------------------|
| schema      | int16                             | report schema version (1)                          |
| run_id      | string                            | the run that wrote the row                         |
| manifest    | string                            | the manifest's ``name``                            |
| input       | string                            | input URL (signatures redacted)                    |
| key         | string                            | item key (sha256 of settings + input fingerprint)  |
| status      | string                            | ``verified`` / ``failed`` / ``skipped``            |
| cached      | bool                              | a previous run's verified record was reused        |
| outputs     | list<string>                      | output URLs (video first, then mask)               |
| provider    | string                            | provider name                                      |
| operation   | string                            | ``remove-background`` / ``upscale``                |
| model       | string                            | model as the provider names it                     |
| params      | string (JSON object, sorted keys) | normalized settings + native params                |
| request_id  | string, nullable                  | the provider's job id                              |
| error       | string, nullable                  | one-line reason when failed / skipped              |
| reason      | string, nullable                  | machine-readable reason class                      |
| cost_usd    | float64, nullable                 | actual cost where reported, else the estimate      |
| timings     | struct<stage, submit, poll, download, verify, total: float64> | seconds per stage (null: stage not run) |
| verify      | string (JSON object)               | the verification facts (frames, fps, size, alpha…) |
| verify_ok   | bool, nullable                    | every verified file passed its checks (null: not verified) |
| metrics     | map<string, float64>              | quality metrics (non-numeric values are left out)  |
| warnings    | list<string>                      | thresholds crossed with ``on_fail: warn``; notes   |
| finished_at | timestamp[ms, UTC]                | when the item finished                             |
| accepted    | bool                              | verified by the user's acceptance (``vidbatch accept``), not by its checks |
| quarantine  | string (JSON object), nullable    | a paid result held back: ``urls``, final ``outputs``, ``reason``, ``facts`` |

``params`` and ``verify`` are JSON strings because their keys differ by provider
and operation; read them with ``json.loads`` or DuckDB's ``json_extract``.
Additive changes (a new column) keep version 1; renaming, retyping or removing a
column bumps it.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import os
import posixpath
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

import numpy as np

from vidbatch import storage
from vidbatch.report import REPORT_SCHEMA_VERSION, ReportRow

if TYPE_CHECKING:
    import pyarrow as pa

    from vidbatch.manifest import Manifest

log = logging.getLogger("vidbatch")

HANDOFF_SCHEMA_VERSION = REPORT_SCHEMA_VERSION
TIMING_FIELDS = ("stage", "submit", "poll", "download", "verify", "total")
#: items that get thumbnails in the HTML page (decoding costs ~0.1-1 s per file)
MAX_THUMB_ITEMS = int(os.environ.get("VIDBATCH_HTML_THUMBS", "300"))
#: table rows in the HTML page; the Parquet/JSONL reports always have every row
MAX_HTML_ROWS = int(os.environ.get("VIDBATCH_HTML_ROWS", "5000"))
#: files larger than this are not fetched from remote stores just for a thumbnail
MAX_REMOTE_THUMB_BYTES = 256 * 1024 * 1024
THUMB_SIDE = 160


# --------------------------------------------------------------------------- rows


def as_dict(row: ReportRow | Mapping[str, Any]) -> dict[str, Any]:
    """A report row as the JSONL's safe dict (secrets redacted)."""
    return row.safe() if isinstance(row, ReportRow) else dict(row)


def urls_of(row: ReportRow | Mapping[str, Any]) -> tuple[str, list[str]]:
    """The input and output URLs to read media from (unredacted where we have them)."""
    if isinstance(row, ReportRow):
        return row.input, list(row.outputs)
    return str(row.get("input", "")), list(row.get("outputs") or [])


def report_base(m: Manifest) -> str:
    from vidbatch.inputs import output_root

    return storage.join(output_root(m), m.name + ".report")


# --------------------------------------------------------------------------- Parquet


def arrow_schema(manifest: str = "") -> pa.Schema:
    import pyarrow as pa

    timings = pa.struct([pa.field(f, pa.float64()) for f in TIMING_FIELDS])
    fields = [
        pa.field("schema", pa.int16(), nullable=False),
        pa.field("run_id", pa.string()),
        pa.field("manifest", pa.string()),
        pa.field("input", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("cached", pa.bool_()),
        pa.field("outputs", pa.list_(pa.string())),
        pa.field("provider", pa.string()),
        pa.field("operation", pa.string()),
        pa.field("model", pa.string()),
        pa.field("params", pa.string()),
        pa.field("request_id", pa.string()),
        pa.field("error", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("cost_usd", pa.float64()),
        pa.field("timings", timings),
        pa.field("verify", pa.string()),
        pa.field("verify_ok", pa.bool_()),
        pa.field("metrics", pa.map_(pa.string(), pa.float64())),
        pa.field("warnings", pa.list_(pa.string())),
        pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
        pa.field("accepted", pa.bool_()),
        pa.field("quarantine", pa.string()),
    ]
    meta = {"vidbatch.report_schema": str(HANDOFF_SCHEMA_VERSION), "vidbatch.manifest": manifest}
    return pa.schema(fields, metadata=meta)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def _verify_ok(status: str, facts: Mapping[str, Any]) -> bool | None:
    if status != "verified" or not facts:
        return None
    checked = [v for k, v in facts.items() if k in ("output", "mask") and isinstance(v, Mapping)]
    return all(bool(v.get("ok", True)) for v in checked)


def _finished(value: Any) -> dt.datetime | None:
    if not value:
        return None
    try:
        t = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def parquet_record(row: ReportRow | Mapping[str, Any]) -> dict[str, Any]:
    """One row in the Parquet schema's shape."""
    d = as_dict(row)
    timings = d.get("timings") or {}
    verify = d.get("verify") or {}
    metrics = d.get("metrics") or {}
    return {
        "schema": int(d.get("schema") or REPORT_SCHEMA_VERSION),
        "run_id": d.get("run_id") or "",
        "manifest": d.get("manifest") or "",
        "input": d["input"],
        "key": d["key"],
        "status": d["status"],
        "cached": bool(d.get("cached")),
        "outputs": list(d.get("outputs") or []),
        "provider": d.get("provider"),
        "operation": d.get("operation"),
        "model": d.get("model"),
        "params": json.dumps(d.get("params") or {}, sort_keys=True, default=str),
        "request_id": d.get("request_id"),
        "error": d.get("error"),
        "reason": d.get("reason"),
        "cost_usd": _num(d.get("cost_usd")),
        "timings": {f: _num(timings.get(f)) for f in TIMING_FIELDS},
        "verify": json.dumps(verify, sort_keys=True, default=str),
        "verify_ok": _verify_ok(d["status"], verify),
        "metrics": [(str(k), v) for k, v in ((k, _num(v)) for k, v in metrics.items()) if v is not None],
        "warnings": [str(w) for w in d.get("warnings") or []],
        "finished_at": _finished(d.get("finished_at")),
        "accepted": bool(d.get("accepted")),
        "quarantine": json.dumps(d["quarantine"], sort_keys=True, default=str) if d.get("quarantine") else None,
    }


def _batches(rows: Iterable[ReportRow | Mapping[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(parquet_record(row))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def to_parquet(rows: Iterable[ReportRow | Mapping[str, Any]], manifest: str = "", batch_rows: int = 4096) -> bytes:
    """Rows -> Parquet bytes, converting ``batch_rows`` at a time (100k rows stay small in memory)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = arrow_schema(manifest)
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        wrote = False
        for batch in _batches(rows, batch_rows):
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
            wrote = True
        if not wrote:
            writer.write_table(schema.empty_table())
    return sink.getvalue().to_pybytes()


def write_parquet(url: str, rows: Iterable[ReportRow | Mapping[str, Any]], manifest: str = "",
                  storage_options: Mapping[str, Any] | None = None) -> None:
    storage.write_bytes_atomic(url, to_parquet(rows, manifest), storage_options)


# --------------------------------------------------------------------------- thumbnails


def _checkerboard(h: int, w: int, cell: int = 8) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    light = ((yy // cell + xx // cell) % 2).astype(bool)
    board = np.where(light[..., None], 204, 153).astype(np.float32)
    return np.broadcast_to(board, (h, w, 3))


def _fetch(url: str, storage_options: Mapping[str, Any] | None, workdir: str) -> tuple[str, bool]:
    """A local path for ``url`` (a temp copy for remote stores); (path, is_temp)."""
    if storage.is_local(url):
        return storage.local_path(url), False
    suffix = posixpath.splitext(url.split("?")[0])[1]
    fd, path = tempfile.mkstemp(dir=workdir, suffix=suffix)
    total = 0
    with os.fdopen(fd, "wb") as out:
        if storage.protocol_of(url) in ("http", "https"):
            import httpx

            with httpx.stream("GET", url, timeout=60, follow_redirects=True) as resp:
                resp.raise_for_status()
                for chunk in resp.iter_bytes(1 << 20):
                    total += len(chunk)
                    if total > MAX_REMOTE_THUMB_BYTES:
                        raise ValueError("too large to fetch for a thumbnail")
                    out.write(chunk)
        else:
            for chunk in storage.iter_read(url, storage_options):
                total += len(chunk)
                if total > MAX_REMOTE_THUMB_BYTES:
                    raise ValueError("too large to fetch for a thumbnail")
                out.write(chunk)
    return path, True


def middle_frame(path: str, frames: int | None = None) -> np.ndarray:
    """The RGBA frame in the middle of a video (the only frame of an image)."""
    from vidbatch import media

    if not frames:
        frames = int(media.probe(path).frames or 1)
    target = max(0, (frames - 1) // 2)
    last: np.ndarray | None = None
    for i, frame in enumerate(media.iter_frames(path, "rgba")):
        last = frame
        if i >= target:
            break
    if last is None:
        raise ValueError("no frames")
    return last


def thumbnail(frame: np.ndarray, kind: str, side: int = THUMB_SIDE) -> str:
    """A data URI: ``input`` (JPEG), ``output`` (over a checkerboard, JPEG) or ``mask`` (grey JPEG)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(frame[..., :4] if frame.ndim == 3 else frame))
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    arr = np.asarray(img.convert("RGBA")).astype(np.float32)
    if kind == "output":
        alpha = arr[..., 3:4] / 255.0
        rgb = arr[..., :3] * alpha + _checkerboard(*arr.shape[:2]) * (1.0 - alpha)
    elif kind == "mask":
        # a mask video is grey (or its alpha carries the matte): show luminance
        grey = arr[..., :3].mean(axis=2, keepdims=True)
        if arr[..., 3].min() < 255:
            grey = arr[..., 3:4]
        rgb = np.repeat(grey, 3, axis=2)
    else:
        rgb = arr[..., :3]
    out = Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8), "RGB")
    buf = io.BytesIO()
    out.save(buf, format="JPEG", quality=80, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _frames_hint(facts: Mapping[str, Any], which: str) -> int | None:
    part = facts.get(which)
    if isinstance(part, Mapping):
        n = part.get("frames") or part.get("num_frames")
        if isinstance(n, int) and n > 0:
            return n
    return None


def item_thumbnails(row: ReportRow | Mapping[str, Any], storage_options: Mapping[str, Any] | None,
                    workdir: str) -> dict[str, str]:
    """Data URIs for the input, output and mask of one row; a missing or unreadable file is left out."""
    d = as_dict(row)
    src, outputs = urls_of(row)
    facts = d.get("verify") or {}
    wanted: list[tuple[str, str, int | None]] = [("input", src, _frames_hint(facts, "input"))]
    if outputs:
        wanted.append(("output", outputs[0], _frames_hint(facts, "output")))
    if len(outputs) > 1:
        wanted.append(("mask", outputs[1], _frames_hint(facts, "mask")))
    thumbs: dict[str, str] = {}
    for kind, url, frames in wanted:
        path, temp = "", False
        try:
            path, temp = _fetch(url, storage_options, workdir)
            thumbs[kind] = thumbnail(middle_frame(path, frames), kind)
        except Exception as exc:  # noqa: BLE001 - a thumbnail is never worth failing the report
            log.debug("no %s thumbnail for %s: %s", kind, url, exc)
        finally:
            if temp and path:
                try:
                    os.remove(path)
                except OSError:
                    pass
    return thumbs


# --------------------------------------------------------------------------- HTML

_CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1d1d1f;background:#fafafa}
h1{font-size:20px;margin:0 0 4px} .meta{color:#666;margin-bottom:16px}
.cards{display:flex;gap:12px;margin:12px 0 20px} .card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 14px}
.card b{display:block;font-size:20px}
table{border-collapse:collapse;background:#fff;width:100%} th,td{border-bottom:1px solid #e5e5e5;padding:6px 8px;text-align:left;vertical-align:top}
th{position:sticky;top:0;background:#f0f0f0;cursor:pointer;user-select:none;white-space:nowrap}
th.sorted-asc::after{content:" \\25B2"} th.sorted-desc::after{content:" \\25BC"}
td.thumbs{white-space:nowrap} figure{display:inline-block;margin:0 6px 0 0;text-align:center}
figure img{display:block;max-width:160px;max-height:160px;border:1px solid #ccc}
figcaption{font-size:11px;color:#777} .noimg{width:96px;height:54px;display:flex;align-items:center;justify-content:center;border:1px dashed #ccc;color:#aaa;font-size:11px}
.st{font-weight:600;border-radius:4px;padding:1px 6px} .st-verified{background:#e3f6e5;color:#17692a}
.st-failed{background:#fde4e4;color:#9b1c1c} .st-skipped{background:#fff4d6;color:#7a5a00}
.err{color:#9b1c1c;max-width:420px} .warn{color:#7a5a00} .small{font-size:12px;color:#555} .url{word-break:break-all;max-width:320px}
"""

# Sort on header click (status first by default); mark the page once every thumbnail has decoded,
# so a headless browser (and a test) can tell the images really loaded.
_JS = """
(function(){
  var tbody=document.querySelector('#items tbody'), heads=document.querySelectorAll('#items th');
  function key(tr,i){var c=tr.children[i];return c.getAttribute('data-sort')||c.textContent.trim();}
  function sortBy(i,asc){
    var th=heads[i],num=th.hasAttribute('data-num');
    heads.forEach(function(h){h.classList.remove('sorted-asc','sorted-desc');});
    th.classList.add(asc?'sorted-asc':'sorted-desc');
    var rows=Array.prototype.slice.call(tbody.rows);
    rows.sort(function(a,b){var x=key(a,i),y=key(b,i);
      var r=num?(parseFloat(x)||0)-(parseFloat(y)||0):x.localeCompare(y);return asc?r:-r;});
    rows.forEach(function(r){tbody.appendChild(r);});
  }
  heads.forEach(function(th,i){th.addEventListener('click',function(){sortBy(i,!th.classList.contains('sorted-asc'));});});
  // report.html#sort=status (or #sort=-seconds) opens the page sorted
  var m=/sort=(-?)(\\w+)/.exec(location.hash);
  if(m)heads.forEach(function(th,i){if(th.getAttribute('data-key')===m[2])sortBy(i,!m[1]);});
  function check(){
    var imgs=document.images,ok=0,bad=0;
    for(var i=0;i<imgs.length;i++){if(imgs[i].complete){if(imgs[i].naturalWidth>0)ok++;else bad++;}}
    var done=ok+bad===imgs.length;
    document.body.setAttribute('data-thumbs',done?(bad?'broken':'loaded'):'pending');
    document.body.setAttribute('data-thumbs-loaded',String(ok));
    if(!done)setTimeout(check,50);
  }
  window.addEventListener('load',check);check();
})();
"""

_STATUS_ORDER = {"failed": "0", "skipped": "1", "verified": "2"}


def _fig(uri: str | None, caption: str) -> str:
    if not uri:
        return f'<figure><div class="noimg">no {html.escape(caption)}</div><figcaption>{html.escape(caption)}</figcaption></figure>'
    return (f'<figure><img alt="{html.escape(caption)}" src="{uri}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _row_html(n: int, d: Mapping[str, Any], thumbs: Mapping[str, str] | None) -> str:
    status = str(d.get("status", ""))
    e = html.escape
    name = posixpath.basename(str(d.get("input", "")).split("?")[0]) or str(d.get("input", ""))
    if thumbs is None:
        figs = '<span class="small">thumbnails shown for the first items only</span>'
    else:
        figs = _fig(thumbs.get("input"), "input")
        if d.get("outputs"):
            figs += _fig(thumbs.get("output"), "output")
        if len(d.get("outputs") or []) > 1:
            figs += _fig(thumbs.get("mask"), "mask")
    timings = d.get("timings") or {}
    total = timings.get("total")
    cost = d.get("cost_usd")
    notes = ""
    if d.get("error"):
        notes += f'<div class="err">{e(str(d["error"]))}</div>'
    for w in d.get("warnings") or []:
        notes += f'<div class="warn">{e(str(w))}</div>'
    metrics = d.get("metrics") or {}
    if metrics:
        shown = ", ".join(f"{e(str(k))}={v:.4g}" for k, v in list(metrics.items())[:6] if isinstance(v, (int, float)))
        notes += f'<div class="small">{shown}</div>'
    outs = "<br>".join(e(str(o)) for o in d.get("outputs") or [])
    return (
        f"<tr><td data-sort=\"{n:08d}\">{n + 1}</td>"
        f'<td data-sort="{_STATUS_ORDER.get(status, "9")}{n:08d}"><span class="st st-{e(status)}">{e(status)}</span>'
        f'{"<div class=small>cached</div>" if d.get("cached") else ""}</td>'
        f'<td class="url" data-sort="{e(name)}"><b>{e(name)}</b><div class="small">{e(str(d.get("input", "")))}</div>'
        f'<div class="small">{outs}</div></td>'
        f'<td class="thumbs">{figs}</td>'
        f'<td>{e(str(d.get("provider", "")))}<div class="small">{e(str(d.get("operation", "")))}<br>'
        f'{e(str(d.get("model", "")))}</div></td>'
        f'<td data-sort="{cost if cost is not None else -1}">{"" if cost is None else f"{cost:.4f}"}</td>'
        f'<td data-sort="{total if total is not None else -1}">{"" if total is None else f"{total:.1f}"}</td>'
        f"<td>{notes}</td></tr>"
    )


def render_html(name: str, rows: Iterable[ReportRow | Mapping[str, Any]], summary: Mapping[str, Any],
                storage_options: Mapping[str, Any] | None = None, *, max_thumbs: int = MAX_THUMB_ITEMS,
                max_rows: int = MAX_HTML_ROWS, workers: int | None = None,
                thumbs: Mapping[str, dict[str, str]] | None = None) -> str:
    """The self-contained HTML page (thumbnails embedded as data URIs; no external requests).

    ``thumbs``: ``item_thumbnails`` results by row key, made earlier (the flow makes
    them while the batch runs); only the rows missing from it are decoded here.
    """
    kept: list[ReportRow | Mapping[str, Any]] = []
    total = 0
    for row in rows:
        total += 1
        if len(kept) < max_rows:
            kept.append(row)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    known = thumbs or {}
    todo = [r for r in kept[:max_thumbs] if as_dict(r).get("key") not in known]
    with tempfile.TemporaryDirectory(prefix="vidbatch-thumbs-") as workdir:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            made = iter(list(pool.map(lambda r: item_thumbnails(r, storage_options, workdir), todo)))
    pics = [known[k] if (k := as_dict(r).get("key")) in known else next(made) for r in kept[:max_thumbs]]
    e = html.escape
    counts = {k: summary.get(k, 0) for k in ("items", "verified", "failed", "skipped", "cached")}
    cards = "".join(f'<div class="card">{e(k)}<b>{v}</b></div>' for k, v in counts.items())
    cost = summary.get("cost_usd")
    if cost is not None:
        cards += f'<div class="card">cost (USD)<b>{float(cost):.2f}</b></div>'
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    shown = (f"<p class=small>Showing the first {len(kept)} of {total} items; the Parquet and JSONL reports have all."
             "</p>" if total > len(kept) else "")
    body = "\n".join(
        _row_html(i, as_dict(r), pics[i] if i < len(pics) else None) for i, r in enumerate(kept)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>vidbatch report: {e(name)}</title><style>{_CSS}</style></head>
<body data-thumbs="pending">
<h1>vidbatch report: {e(name)}</h1>
<div class="meta">generated {e(now)} &middot; report schema v{HANDOFF_SCHEMA_VERSION} &middot; click a column header to sort</div>
<div class="cards">{cards}</div>{shown}
<table id="items"><thead><tr><th data-key="n" data-num>#</th><th data-key="status">status</th>
<th data-key="input">input / outputs</th><th data-key="thumbs">input &middot; output &middot; mask</th>
<th data-key="provider">provider</th><th data-key="cost" data-num>cost</th><th data-key="seconds" data-num>seconds</th>
<th data-key="notes">notes</th></tr></thead>
<tbody>
{body}
</tbody></table>
<script>{_JS}</script>
</body></html>
"""


def write_html(url: str, name: str, rows: Iterable[ReportRow | Mapping[str, Any]], summary: Mapping[str, Any],
               storage_options: Mapping[str, Any] | None = None, **kw: Any) -> None:
    page = render_html(name, rows, summary, storage_options, **kw)
    storage.write_bytes_atomic(url, page.encode("utf-8"), storage_options)


# --------------------------------------------------------------------------- the flow's entry point

#: shard manifests written by ``flows/backfill.py`` are named ``<name>--shard-<n>``: their
#: rows are merged into the parent's report, which gets the handoff files instead
SHARD_MARK = "--shard-"


def is_shard(name: str) -> bool:
    return SHARD_MARK in name


def write_handoff(m: Manifest, rows: Iterable[ReportRow | Mapping[str, Any]], summary: dict[str, Any],
                  thumbs: Mapping[str, dict[str, str]] | None = None) -> dict[str, str]:
    """Write ``{name}.report.parquet`` and ``{name}.report.html`` next to the JSONL report.

    Adds their URLs to ``summary`` (``report_parquet``, ``report_html``) and returns them.
    Shard runs of a backfill write nothing: the backfill writes the merged report.
    """
    if is_shard(m.name):
        return {}
    rows = list(rows)
    base = report_base(m)
    opts = dict(m.storage_options)
    paths = {"report_parquet": base + ".parquet", "report_html": base + ".html"}
    write_parquet(paths["report_parquet"], rows, m.name, opts)
    write_html(paths["report_html"], m.name, rows, summary, opts, thumbs=thumbs)
    summary.update(paths)
    return paths



async def awrite_handoff(m: Manifest, rows: Iterable[ReportRow | Mapping[str, Any]], summary: dict[str, Any],
                         thumbs: Mapping[str, dict[str, str]] | None = None) -> dict[str, str]:
    """``write_handoff`` off the event loop (thumbnails decode video)."""
    import asyncio

    return await asyncio.to_thread(write_handoff, m, list(rows), summary, thumbs)
