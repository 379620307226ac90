"""Manifest v1: the pydantic schema and YAML loading with file:line:col errors.

A manifest names its outputs, its defaults, per-video overrides, per-provider
limits and the videos (URLs, fsspec globs, listing files). ``load_manifest``
returns a validated ``Manifest``; every problem becomes a one-line
``ManifestError`` located in the YAML source.
"""

from __future__ import annotations

import copy
import difflib
import typing
import re
import string
from pathlib import Path as FsPath
from typing import Any, Callable, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vidbatch.errors import ManifestError
from vidbatch.problems import Problems
from vidbatch.spec import ALPHA_FORMATS, FORMATS, TARGETS
from vidbatch.yamlpos import Path, Positions, format_path, load

HEX_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
IMAGE_EXT = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: placeholders an output template may use
TEMPLATE_FIELDS = (
    "stem", "ext", "name", "manifest", "date", "key", "parent", "rel", "operation", "provider", "model",
)
#: settings that only mean something for one operation
ONLY_FOR = {"background": "remove-background", "mask": "remove-background", "factor": "upscale", "target": "upscale"}

Format = Literal["webm", "mov", "mp4", "gif", "webp", "png_sequence"]
Operation = Literal["remove-background", "upscale"]
Target = Literal["720p", "1080p", "1440p", "2160p"]
OnFail = Literal["warn", "fail", "off"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Threshold(_Strict):
    """A ``verify:`` rule: ``<metric>: {max: X}`` or ``{min: X}``, or ``<check>: {tolerance: N}``
    (``size: {multiple: 16}``), each with ``on_fail: warn | fail | off`` (see ``vidbatch.verify``)."""

    max: float | None = None
    min: float | None = None
    tolerance: float | None = None
    multiple: int | None = None
    on_fail: OnFail = "fail"


class Settings(_Strict):
    """What to do to a video. Appears under ``defaults:`` and on each video entry."""

    provider: str | None = None
    operation: Operation | None = None
    model: str | None = None
    format: Format | None = None
    background: str | None = None
    mask: bool | None = None
    params: dict[str, Any] | None = None
    factor: float | None = Field(default=None, gt=0, le=10)
    target: Target | None = None
    verify: dict[str, Threshold] | None = None

    @field_validator("background")
    @classmethod
    def _background(cls, value: str | None) -> str | None:
        if value is None:
            return value
        v = value.strip()
        if v == "transparent" or HEX_COLOUR.match(v):
            return v.lower() if v != "transparent" else v
        if "://" in v or v.lower().endswith(IMAGE_EXT):
            return v
        raise ValueError(
            f"background {value!r} is not 'transparent', a '#rrggbb' colour or an image URL/path"
        )


#: the settings a videos entry, a listing row or ``defaults:`` may write
SETTING_NAMES: tuple[str, ...] = tuple(Settings.model_fields)


class VideoEntry(Settings):
    url: str
    storage_options: dict[str, Any] | None = None


class ListEntry(Settings):
    list: str
    storage_options: dict[str, Any] | None = None


class Limit(_Strict):
    concurrency: int | None = Field(default=None, ge=1, le=10_000)
    requests_per_second: float | None = Field(default=None, gt=0)


class Budget(_Strict):
    max_usd: float | None = Field(default=None, ge=0)
    providers: dict[str, float] = Field(default_factory=dict)


class Canary(_Strict):
    """``canary: {items: N}``: N items of each settings group must come back verified
    before the group's other items are submitted (``vidbatch.canary``)."""

    items: int = Field(default=1, ge=1, le=1000)


class ProviderConfig(_Strict):
    """Per-provider settings: base URL override, credentials from a Prefect Secret block."""

    base_url: str | None = None
    secret_block: str | None = None
    queue_wait_seconds: float | None = Field(default=None, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)
    canary: bool | Canary | None = None


class Manifest(_Strict):
    version: Literal[1]
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=120)
    output: str
    state: str | None = None
    report: str | None = None
    storage_options: dict[str, Any] = Field(default_factory=dict)
    defaults: Settings = Field(default_factory=Settings)
    limits: dict[str, Limit] = Field(default_factory=dict)
    budget: Budget | None = None
    providers: dict[str, ProviderConfig] = Field(default_factory=dict)
    verify: dict[str, Threshold] = Field(default_factory=dict)
    canary: bool | Canary | None = None
    videos: list[Union[str, VideoEntry, ListEntry]] = Field(min_length=1)
    compare: list[Settings] | None = None

    # where the manifest came from (not part of the schema)
    source: str = Field(default="", exclude=True)
    positions: Any = Field(default=None, exclude=True)

    def canary_items(self, provider: str, paid: bool) -> int:
        """How many canaries a settings group of ``provider`` needs (0: none).

        ``providers.<p>.canary`` wins over the top-level ``canary:``; without
        either, paid providers get one and free ones (the local engine) none.
        """
        cfg = self.providers.get(provider)
        for setting in (cfg.canary if cfg else None, self.canary):
            if setting is None:
                continue
            if isinstance(setting, Canary):
                return setting.items
            if not setting:
                return 0
            top = self.canary if isinstance(self.canary, Canary) else None
            return top.items if top else 1
        return 1 if paid else 0

    def locate(self, path: Path) -> tuple[int, int]:
        return self.positions.locate(path) if self.positions else (0, 0)

    def error(self, path: Path, message: str) -> ManifestError:
        if self.positions:
            return self.positions.error(path, message)
        return ManifestError(f"{format_path(path)}: {message}", file=self.source)


_ENTRY_FIELDS = {
    "url": VideoEntry,
    "list": ListEntry,
}


def _fields(model: type[BaseModel]) -> list[str]:
    return [f for f in model.model_fields if f not in ("source", "positions")]


def _describe(err: Mapping[str, Any], model_fields: list[str]) -> tuple[str, bool]:
    """A one-line message for one pydantic error, and whether it points at a key."""
    kind = err["type"]
    loc = err["loc"]
    name = str(loc[-1]) if loc else ""
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(name, model_fields, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; allowed keys: {', '.join(model_fields)}"
        return f"unknown key {name!r}{hint}", True
    if kind == "missing":
        return f"missing required key {name!r}", True
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        got = err.get("input")
        allowed = expected.replace("'", "").replace(" or ", ", ")
        extra = ""
        if isinstance(got, str):
            close = difflib.get_close_matches(got, [a.strip() for a in allowed.split(",")], n=1)
            extra = f" (did you mean {close[0]!r}?)" if close else ""
        return f"{got!r} is not allowed; choose one of: {allowed}{extra}", False
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, "), False
    if kind == "string_pattern_mismatch" and name == "name":
        return "name must be letters, digits, '.', '_' or '-' (it is used in paths)", False
    got = err.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    return f"{err['msg'][0].lower()}{err['msg'][1:]} (got {shown})", False


#: type tags pydantic puts in an error's location for a union member
_TYPE_TAGS = frozenset({"bool", "str", "int", "float", "list", "dict", "none"})


def _clean_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(p for p in loc if not (isinstance(p, str) and (p[:1].isupper() or p in _TYPE_TAGS)))


def _errors(exc: ValidationError, base: Path, pos: Positions, model: type[BaseModel]) -> list[ManifestError]:
    """One located error per mistake pydantic found, most telling first.

    A misspelt key explains the "missing" error of the key it was meant to be, so
    that one is left out; of a union's per-member errors the deepest is kept.
    """
    errs = exc.errors(include_url=False)
    rank = {"extra_forbidden": 0, "missing": 2}
    errs = sorted(errs, key=lambda e: rank.get(e["type"], 1))
    misspelt = {_clean_loc(e["loc"])[:-1] for e in errs if e["type"] == "extra_forbidden"}
    locs = [_clean_loc(e["loc"]) for e in errs]
    out: list[ManifestError] = []
    seen: set[tuple[Any, ...]] = set()
    for err, loc in zip(errs, locs):
        if err["type"] == "missing" and loc[:-1] in misspelt:
            continue
        if loc in seen or any(len(other) > len(loc) and other[: len(loc)] == loc for other in locs):
            continue
        seen.add(loc)
        sub: type[BaseModel] = model
        for part in loc[:-1]:
            field = sub.model_fields.get(str(part)) if isinstance(part, str) else None
            ann = getattr(field, "annotation", None) if field else None
            for candidate in (ann, *typing.get_args(ann)):  # Model, dict[str, Model], list[Model]
                if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                    sub = candidate
                    break
        message, is_key = _describe(err, _fields(sub))
        if err["type"] == "missing":
            out.append(pos.error(base + loc[:-1], message))
        else:
            out.append(pos.error(base + loc, message, key=is_key))
    return out


def _raise_first(exc: ValidationError, base: Path, pos: Positions, model: type[BaseModel]) -> ManifestError:
    return _errors(exc, base, pos, model)[0]


def _validate_entry(raw: Any, path: Path, pos: Positions) -> Any:
    """The entry as a model (or its URL string), or the list of its mistakes."""
    if isinstance(raw, str):
        if not raw.strip():
            return [pos.error(path, "empty video URL; give a path, URL or glob")]
        return raw
    if not isinstance(raw, dict):
        return [pos.error(path, "a videos entry must be a URL/glob string, {url: ...} or {list: ...}")]
    kinds = [k for k in _ENTRY_FIELDS if k in raw]
    if len(kinds) != 1:
        if not kinds:
            close = difflib.get_close_matches(" ".join(raw), list(_ENTRY_FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return [pos.error(path, f"a videos entry mapping needs a 'url' or a 'list' key{hint}")]
        return [pos.error(path, "a videos entry has either 'url' or 'list', not both")]
    model = _ENTRY_FIELDS[kinds[0]]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        return _errors(exc, path, pos, model)


#: top-level keys without which there is no manifest to check further
_REQUIRED = frozenset({"version", "name", "output", "videos"})


def _drop(data: dict[str, Any], locs: list[tuple[Any, ...]]) -> bool:
    """Remove the settings pydantic refused, so that the rest can be checked; False when
    a required one is among them (nothing more can be checked)."""
    for loc in locs:
        if not loc or (loc[0] in _REQUIRED and len(loc) == 1):
            return False
        node: Any = data
        for part in loc[:-1]:
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                break
            node = child
        else:
            if isinstance(node, dict):
                node.pop(loc[-1], None)
                continue
        data.pop(loc[0], None)  # the mistake is inside a list or a value: drop the whole setting
    return True


def parse_manifest(data: Any, pos: Positions, source: str = "", problems: Problems | None = None) -> Manifest | None:
    """The validated manifest. With ``problems`` (collecting), every mistake is recorded there,
    a videos entry with mistakes is left out (``None`` in ``videos``), and None is returned
    when no manifest could be built; without, the first mistake is raised."""
    problems = problems if problems is not None else Problems(fail_fast=True)
    if not isinstance(data, dict):
        raise pos.error((), "a manifest is a YAML mapping with version, name, output and videos")
    videos = data.get("videos")
    entries: list[Any] = []
    if isinstance(videos, list):
        for i, raw in enumerate(videos):
            got = _validate_entry(raw, ("videos", i), pos)
            if isinstance(got, list):
                for err in got:
                    problems.add(err)
                entries.append(None)
            else:
                entries.append(got)
    top = dict(data)
    if isinstance(videos, list):
        top["videos"] = ["placeholder"] * len(videos)  # validated above, entry by entry
    manifest = None
    for _ in range(8):
        try:
            manifest = Manifest.model_validate(top)
            break
        except ValidationError as exc:
            found = _errors(exc, (), pos, Manifest)
            for err in found:
                problems.add(err)
            top = copy.deepcopy(top)
            if not _drop(top, [_clean_loc(e["loc"]) for e in exc.errors(include_url=False)]):
                return None
    if manifest is None:
        return None
    manifest = manifest.model_copy(update={"videos": entries, "source": source, "positions": pos})
    _check_semantics(manifest, problems)
    return manifest


def _check_rules(m: Manifest, rules: Mapping[str, Any] | None, path: Path) -> None:
    from vidbatch.verify import validate_rules

    for name, rule in (rules or {}).items():
        try:
            validate_rules({name: rule})
        except ValueError as exc:
            raise m.error(path + (name,), str(exc)) from None


def setting_path(m: Manifest, entry_path: Path, overrides: Mapping[str, Any], *keys: str) -> Path:
    """Where the setting behind a mistake is written: on the item (its first key of ``keys``
    it writes), else in ``defaults:`` (its line, so an inherited mistake is one line)."""
    for key in keys:
        if key in overrides:
            return entry_path + (key,)
    written = m.defaults.model_dump(exclude_none=True)
    for key in keys:
        if key in written:
            return ("defaults", key)
    if any(k in overrides for k in SETTING_NAMES):
        return entry_path
    return ("defaults",)


def _check_output(m: Manifest) -> None:
    _check_template(m, m.output, ("output",))


def _check_top_rules(m: Manifest) -> None:
    _check_rules(m, m.verify, ("verify",))
    _check_rules(m, m.defaults.verify, ("defaults", "verify"))


def _check_defaults(m: Manifest) -> None:
    d = m.defaults
    if d.factor is not None and d.target is not None:
        raise m.error(("defaults", "target"), "give either factor or target, not both")


def _check_entry_rules(m: Manifest, i: int, entry: Any) -> None:
    if not isinstance(entry, str):
        _check_rules(m, entry.verify, ("videos", i, "verify"))


def _check_entry_settings(m: Manifest, i: int, entry: Any) -> None:
    d = m.defaults
    written = {} if isinstance(entry, str) else entry.model_dump(exclude_none=True, include=set(SETTING_NAMES))
    if written.get("factor") is not None and written.get("target") is not None:
        raise m.error(("videos", i, "target"), "give either factor or target, not both")
    op = written.get("operation") or d.operation or "remove-background"
    for key, only in ONLY_FOR.items():
        if written.get(key) is not None and op != only:
            raise m.error(("videos", i, key), f"{key!r} does not apply to operation {op!r} (only to {only}); remove it")
    fmt = written.get("format") or d.format or "webm"
    bg = written.get("background") or (d.background if op == "remove-background" else None) or "transparent"
    if op == "remove-background" and bg == "transparent" and fmt not in ALPHA_FORMATS:
        raise m.error(setting_path(m, ("videos", i), written, "format", "background"), alpha_message(fmt))


#: checks of the whole manifest and of each videos entry: each raises ``ManifestError``
#: for one mistake; ``vidbatch validate`` runs every one and reports all they find
MANIFEST_CHECKS: list[Callable[[Manifest], None]] = [_check_output, _check_top_rules, _check_defaults]
ENTRY_CHECKS: list[Callable[[Manifest, int, Any], None]] = [_check_entry_rules, _check_entry_settings]


def _check_semantics(m: Manifest, problems: Problems | None = None) -> None:
    """Checks that need more than one field; per-item checks happen in ``plan``."""
    problems = problems if problems is not None else Problems(fail_fast=True)
    for check in MANIFEST_CHECKS:
        with problems.collect():
            check(m)
    for i, entry in enumerate(m.videos):
        if entry is None:
            continue  # its own mistakes are reported already
        for entry_check in ENTRY_CHECKS:
            with problems.collect():
                entry_check(m, i, entry)


def alpha_message(fmt: str) -> str:
    return (
        f"format {fmt!r} has no alpha channel, so background 'transparent' cannot be kept; "
        f"use one of {', '.join(f for f in FORMATS if f in ALPHA_FORMATS)} or set background to a '#rrggbb' colour"
    )


def _check_template(m: Manifest, template: str, path: Path) -> None:
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as exc:
        raise m.error(path, f"output template {template!r} is malformed ({exc}); use {{stem}}-style placeholders")
    for name in names:
        if name not in TEMPLATE_FIELDS:
            close = difflib.get_close_matches(name, TEMPLATE_FIELDS, n=1)
            hint = f"did you mean {{{close[0]}}}?" if close else f"allowed: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}"
            raise m.error(path, f"unknown placeholder {{{name}}} in output template; {hint}")
    if "stem" not in names and "key" not in names and "rel" not in names:
        raise m.error(path, "output template must contain {stem}, {rel} or {key} so that items get distinct paths")
    if ".." in template.replace("\\", "/").split("/"):
        raise m.error(path, "output template must not contain '..'; write outputs under one root")


def load_manifest(source: str, storage_options: Mapping[str, Any] | None = None,
                  problems: Problems | None = None) -> Manifest:
    """Load and validate a manifest from a local path or an fsspec URL.

    With ``problems`` (collecting), mistakes are recorded there and the manifest is
    returned as far as it could be built (raising only when nothing could be).
    """
    from vidbatch import storage

    if "://" in source and not source.startswith("file://"):
        data = storage.read_bytes(source, storage_options)
        if data is None:
            raise ManifestError(f"manifest not found: {source}")
        text = data.decode("utf-8", errors="replace")
        shown = source
    else:
        p = FsPath(storage.local_path(source))
        if not p.exists():
            raise ManifestError(f"manifest not found: {source}; check the path")
        if p.is_dir():
            raise ManifestError(f"{source} is a directory; give the manifest's YAML file")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ManifestError(f"{source} is not a UTF-8 text file; give the manifest's YAML file") from None
        shown = str(source)
    data, pos = load(text, shown)
    if data is None:
        raise ManifestError("the manifest is empty; see configs/examples/demo.yaml", file=shown, line=1, col=1)
    manifest = parse_manifest(data, pos, shown, problems)
    if manifest is None:
        assert problems is not None  # fail-fast parsing raised already
        problems.raise_if_any()
        raise ManifestError("the manifest could not be read", file=shown)
    return manifest


def json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    schema["title"] = "vidbatch manifest v1"
    schema.setdefault("properties", {}).pop("source", None)
    schema["properties"].pop("positions", None)
    return schema
