"""Expand a manifest's ``videos:`` into planned ``Item``s over fsspec.

Expansion streams: ``iter_items`` is a generator, so a 100k-item listing is
planned item by item. Order is deterministic (manifest order; globs sorted);
an input listed twice with the same settings is kept once; two items that would
write the same output path are refused.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

from vidbatch import storage
from vidbatch.errors import ConfigError, ManifestError, StorageError
from vidbatch.manifest import ONLY_FOR, ListEntry, Manifest, Settings, VideoEntry, alpha_message, setting_path
from vidbatch.problems import Problems
from vidbatch.providers import registry
from vidbatch.spec import ALPHA_FORMATS, FORMAT_EXT, Item, JobSpec, item_key, mask_format
from vidbatch.yamlpos import Path

GLOB_CHARS = "*?["
SETTING_KEYS = tuple(Settings.model_fields)


@dataclass(frozen=True)
class Source:
    """One input file found by expansion, before settings are applied."""

    url: str
    info: Mapping[str, Any]
    rel: str
    entry_path: Path
    overrides: Mapping[str, Any] = field(default_factory=dict)
    storage_options: Mapping[str, Any] = field(default_factory=dict)


def _abs_local(url: str, base_dir: str | None = None) -> str:
    if "://" in url and not url.startswith("file://"):
        return url
    path = storage.local_path(url)
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(base_dir or os.getcwd(), path)
    return os.path.normpath(path)


def _strip_ext(path: str) -> str:
    stem, _ = posixpath.splitext(path)
    return stem


def _glob_root(pattern: str) -> str:
    parts = pattern.split("/")
    root: list[str] = []
    for part in parts:
        if any(c in part for c in GLOB_CHARS):
            break
        root.append(part)
    return "/".join(root)


def _expand_glob(pattern: str, opts: Mapping[str, Any], path: Path, m: Manifest) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    fs, fpath = storage.fs_for(pattern, opts)
    try:
        found = fs.glob(fpath, detail=True)
    except (OSError, ValueError) as exc:
        raise m.error(path, f"cannot list {pattern}: {exc}") from None
    root = _glob_root(fpath).rstrip("/")
    files = sorted((p, i) for p, i in found.items() if i.get("type", "file") != "directory")
    if not files:
        raise m.error(path, f"glob {pattern!r} matched no files; check the pattern and the storage options")
    proto = storage.protocol_of(pattern)
    for p, info in files:
        url = p if proto == "file" else fs.unstrip_protocol(p)
        rel = posixpath.relpath(p, root) if root else posixpath.basename(p)
        yield url, info, _strip_ext(rel)


def _info(url: str, opts: Mapping[str, Any], path: Path, m: Manifest) -> Mapping[str, Any]:
    if storage.protocol_of(url) in ("http", "https"):
        return {"size": 0, "type": "file", "url": url}
    fs, fpath = storage.fs_for(url, opts)
    try:
        info = fs.info(fpath)
    except FileNotFoundError:
        raise m.error(path, f"input not found: {url}; check the path (relative paths are from the current folder)") from None
    except (OSError, ValueError) as exc:
        raise m.error(path, f"cannot read input {url}: {exc}") from None
    if info.get("type") == "directory":
        raise m.error(path, f"{url} is a folder; use a glob such as {url.rstrip('/')}/*.mp4")
    return info


def _listing_rows(url: str, opts: Mapping[str, Any], path: Path, m: Manifest) -> Iterator[tuple[str, dict[str, Any], int]]:
    data = storage.read_bytes(url, opts)
    if data is None:
        raise m.error(path, f"listing file not found: {url}")
    text = data.decode("utf-8", errors="replace")
    kind = posixpath.splitext(url.split("?")[0])[1].lower()
    if kind == ".txt":
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line and not line.startswith("#"):
                yield line, {}, n
    elif kind == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "url" not in reader.fieldnames:
            raise m.error(path, f"listing {url} has no 'url' column (columns: {', '.join(reader.fieldnames or [])})")
        for n, row in enumerate(reader, 2):
            if (row.get("url") or "").strip():
                extra = {k: v for k, v in row.items() if k in SETTING_KEYS and v not in (None, "")}
                yield row["url"].strip(), extra, n
    elif kind in (".jsonl", ".ndjson"):
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise m.error(path, f"listing {url} line {n}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("url"), str):
                raise m.error(path, f"listing {url} line {n}: each line needs a \"url\" string")
            unknown = [k for k in row if k not in ("url", "rel") and k not in SETTING_KEYS]
            if unknown:
                raise m.error(path, f"listing {url} line {n}: unknown key {unknown[0]!r}; allowed: url, rel, {', '.join(SETTING_KEYS)}")
            if "rel" in row and not (isinstance(row["rel"], str) and row["rel"] and ".." not in row["rel"].split("/")):
                raise m.error(path, f"listing {url} line {n}: \"rel\" must be a relative path without '..'")
            yield row["url"], {k: v for k, v in row.items() if k != "url"}, n
    else:
        raise m.error(path, f"listing {url} must end in .txt, .csv or .jsonl")


def iter_sources(m: Manifest, problems: Problems | None = None) -> Iterator[Source]:
    """The inputs of every videos entry. With ``problems`` (collecting), an entry or a
    listing row that cannot be read is recorded there and the next one is read."""
    problems = problems if problems is not None else Problems(fail_fast=True)
    for i, entry in enumerate(m.videos):
        if entry is None:
            continue  # refused by the schema check (reported there)
        with problems.collect():
            yield from _entry_sources(m, i, entry, problems)


def _entry_sources(m: Manifest, i: int, entry: Any, problems: Problems) -> Iterator[Source]:
    path: Path = ("videos", i)
    if isinstance(entry, str):
        overrides: dict[str, Any] = {}
        url, extra_opts = entry, None
    else:
        overrides = entry.model_dump(exclude_none=True, include=set(SETTING_KEYS))
        url = entry.url if isinstance(entry, VideoEntry) else entry.list
        extra_opts = entry.storage_options
    opts = {**m.storage_options, **(extra_opts or {})}
    url = _abs_local(url)
    if isinstance(entry, ListEntry):
        listing_dir = posixpath.dirname(url)
        for row_url, row_over, n in _listing_rows(url, opts, path + ("list",), m):
            if "://" not in row_url:
                # relative rows are relative to the listing file's folder
                row_url = posixpath.join(listing_dir, row_url) if "://" in url else _abs_local(row_url, listing_dir)
            # a row's "rel" keeps a glob's tree through a listing (backfill shards)
            rel = row_over.pop("rel", None) or _strip_ext(posixpath.basename(row_url.split("?")[0]))
            merged = {**overrides, **row_over}
            try:
                info = _info(row_url, opts, path + ("list",), m)
            except ConfigError as exc:
                problems.add(exc)  # this row; the listing's other rows are still read
                continue
            yield Source(row_url, info, rel, path, merged, opts)
    elif any(c in url for c in GLOB_CHARS) and storage.protocol_of(url) not in ("http", "https"):
        for u, info, rel in _expand_glob(url, opts, path, m):
            yield Source(u, info, rel, path, overrides, opts)
    else:
        info = _info(url, opts, path, m)
        stem = _strip_ext(posixpath.basename(url.split("?")[0]))
        yield Source(url, info, stem, path, overrides, opts)


def resolve_settings(m: Manifest, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """defaults + overrides; inherited settings that don't apply to the operation are dropped."""
    d = m.defaults.model_dump(exclude_none=True)
    op = overrides.get("operation") or d.get("operation") or "remove-background"
    merged: dict[str, Any] = {}
    for key, value in d.items():
        if ONLY_FOR.get(key, op) == op:
            merged[key] = value
    if "factor" in overrides or "target" in overrides:
        merged.pop("factor", None)
        merged.pop("target", None)
    merged.update(overrides)
    merged["operation"] = op
    if isinstance(d.get("params"), dict) and isinstance(overrides.get("params"), dict):
        merged["params"] = {**d["params"], **overrides["params"]}
    verify = {**m.verify, **(d.get("verify") or {}), **(overrides.get("verify") or {})}
    merged["verify"] = verify
    return merged


def output_root(m: Manifest) -> str:
    """The literal prefix of the output template: where state and reports live."""
    template = m.output.replace("{name}", m.name).replace("{manifest}", m.name)
    literal = template.split("{", 1)[0]
    root = literal.rsplit("/", 1)[0] if "/" in literal else "."
    return _abs_local(root) if "://" not in root else root


def state_root(m: Manifest) -> str:
    if m.state:
        return _abs_local(m.state)
    return storage.join(output_root(m), ".vidbatch")


def build_spec(m: Manifest, settings: Mapping[str, Any], path: Path,
               written: Mapping[str, Any] | None = None) -> JobSpec:
    """The item's spec from its resolved settings; ``written``: the settings the item
    itself writes (its entry or listing row), so that a mistake points where it is written."""
    provider_name = settings.get("provider") or "local"
    try:
        provider_cls = registry.get_class(provider_name)
    except ConfigError as exc:
        raise m.error(setting_path(m, path, written or {}, "provider"), str(exc)) from None
    op = settings["operation"]
    info = provider_cls.operations.get(op)
    if info is None:
        raise m.error(setting_path(m, path, written or {}, "operation", "provider"),
                      f"provider {provider_name!r} does not offer {op!r}")
    fmt = settings.get("format") or ("webm" if op == "remove-background" else "mp4")
    bg = settings.get("background", "transparent") if op == "remove-background" else "transparent"
    spec = JobSpec(
        provider=provider_name,
        operation=op,
        model=settings.get("model") or info.default_model,
        format=fmt,
        background=bg,
        mask=bool(settings.get("mask", False)) if op == "remove-background" else False,
        factor=settings.get("factor") if op == "upscale" else None,
        target=settings.get("target") if op == "upscale" else None,
        params=dict(settings.get("params") or {}),
    )
    if op == "upscale" and spec.factor is None and spec.target is None:
        spec = JobSpec(**{**spec.__dict__, "factor": 2.0})
    if spec.transparent and spec.format not in ALPHA_FORMATS:
        raise m.error(setting_path(m, path, written or {}, "format", "background"), alpha_message(spec.format))
    return spec


def render_output(m: Manifest, template: str, src: Source, spec: JobSpec, key: str, date: str, ext: str) -> str:
    stem = posixpath.basename(src.rel) or "video"
    parent = posixpath.basename(posixpath.dirname(src.url.split("?")[0]))
    values = {
        "stem": stem, "ext": ext, "name": m.name, "manifest": m.name, "date": date, "key": key[:12],
        "parent": parent, "rel": src.rel, "operation": spec.operation, "provider": spec.provider,
        "model": spec.model.replace(" ", "_").replace("(", "").replace(")", "").replace("/", "_"),
    }
    out = template.format(**values)
    return _abs_local(out) if "://" not in out else out


@dataclass
class Planner:
    """Turns sources into Items, checking collisions and provider validation."""

    manifest: Manifest
    date: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d"))
    seen: dict[tuple[str, str], int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    validated: set[str] = field(default_factory=set)
    count: int = 0

    def plan(self, src: Source) -> Item | None:
        m = self.manifest
        settings = resolve_settings(m, src.overrides)
        spec = build_spec(m, settings, src.entry_path, src.overrides)
        digest = spec.digest()
        if digest not in self.validated:
            try:
                registry.create(spec.provider).validate(spec)
            except ConfigError as exc:
                where = setting_path(m, src.entry_path, src.overrides, *_mentioned(str(exc)))
                raise m.error(where, str(exc)) from None
            self.validated.add(digest)
        dedupe = (src.url, digest)
        if dedupe in self.seen:
            return None
        self.seen[dedupe] = self.count
        fp = _fingerprint(src)
        key = item_key(spec, fp)
        root = output_root(m)
        out = render_output(m, m.output, src, spec, key, self.date, FORMAT_EXT[spec.format])
        if not _under(out, root):
            raise m.error(("output",), f"output {out} escapes the output root {root}")
        mask_out = None
        if spec.mask:
            base, _ = posixpath.splitext(out)
            mask_out = f"{base}.mask.{FORMAT_EXT[mask_format(spec.format)]}"
        for o in filter(None, (out, mask_out)):
            if o in self.outputs and self.outputs[o] != src.url:
                raise m.error(
                    src.entry_path,
                    f"two inputs would write {o} ({self.outputs[o]} and {src.url}); "
                    "add {key}, {rel} or {parent} to the output template",
                )
            if o in self.outputs:
                raise m.error(
                    src.entry_path,
                    f"{src.url} is listed twice with different settings that write the same {o}; "
                    "add {operation} or {key} to the output template",
                )
            self.outputs[o] = src.url
        size = int(src.info.get("size") or 0)
        item = Item(
            url=src.url, fingerprint=fp, size=size, spec=spec, key=key, output=out, mask_output=mask_out,
            storage_options=dict(src.storage_options), rel=src.rel, index=self.count,
            thresholds={k: (v.model_dump() if hasattr(v, "model_dump") else dict(v)) for k, v in settings["verify"].items()},
        )
        self.count += 1
        return item


def _mentioned(message: str) -> list[str]:
    """The settings a provider's refusal names (``unknown model``, ``unknown param``...)."""
    words = set(message.replace("'", " ").replace(":", " ").replace(";", " ").split())
    return [k for k in SETTING_KEYS if k in words or (k == "params" and "param" in words)]


def _under(path: str, root: str) -> bool:
    if "://" in path:
        return path.startswith(root.rstrip("/") + "/")
    return os.path.normpath(path).startswith(os.path.normpath(root) + os.sep)


def _fingerprint(src: Source) -> str:
    if storage.protocol_of(src.url) in ("http", "https"):
        etag = src.info.get("ETag") or ""
        return f"url:{src.url}:{etag}"
    fs, path = storage.fs_for(src.url, src.storage_options)
    try:
        return storage.fingerprint(src.info, fs, path)
    except (OSError, StorageError) as exc:
        raise ConfigError(f"cannot read {src.url}: {exc}") from None


def iter_items(m: Manifest, *, date: str | None = None, problems: Problems | None = None) -> Iterator[Item]:
    """Planned items, streaming. With ``problems`` (collecting), an input that cannot be
    planned is recorded there and planning goes on with the next."""
    problems = problems if problems is not None else Problems(fail_fast=True)
    planner = Planner(m) if date is None else Planner(m, date=date)
    for src in iter_sources(m, problems):
        item = None
        with problems.collect():
            item = planner.plan(src)
        if item is not None:
            yield item


def plan_items(m: Manifest, *, date: str | None = None, problems: Problems | None = None) -> list[Item]:
    items = list(iter_items(m, date=date, problems=problems))
    if not items and not problems:
        raise ManifestError("the manifest lists no videos", file=m.source)
    return items
