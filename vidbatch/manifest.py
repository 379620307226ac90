"""Manifest v1: the pydantic schema and YAML loading with file:line:col errors.

A manifest names its outputs, its defaults, per-video overrides, per-provider
limits and the videos (URLs, fsspec globs, listing files). ``load_manifest``
returns a validated ``Manifest``; every problem becomes a one-line
``ManifestError`` located in the YAML source.
"""

from __future__ import annotations

import difflib
import typing
import re
import string
from pathlib import Path as FsPath
from typing import Any, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vidbatch.errors import ManifestError
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


def _raise_first(exc: ValidationError, base: Path, pos: Positions, model: type[BaseModel]) -> ManifestError:
    errs = exc.errors(include_url=False)
    # a misspelt key explains the "missing" error of the key it was meant to be
    rank = {"extra_forbidden": 0, "missing": 2}
    err = min(errs, key=lambda e: rank.get(e["type"], 1))
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p[:1].isupper()))
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
        return pos.error(base + loc[:-1], message)
    return pos.error(base + loc, message, key=is_key)


def _validate_entry(raw: Any, path: Path, pos: Positions) -> Any:
    if isinstance(raw, str):
        if not raw.strip():
            return pos.error(path, "empty video URL; give a path, URL or glob")
        return raw
    if not isinstance(raw, dict):
        return pos.error(path, "a videos entry must be a URL/glob string, {url: ...} or {list: ...}")
    kinds = [k for k in _ENTRY_FIELDS if k in raw]
    if len(kinds) != 1:
        if not kinds:
            close = difflib.get_close_matches(" ".join(raw), list(_ENTRY_FIELDS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return pos.error(path, f"a videos entry mapping needs a 'url' or a 'list' key{hint}")
        return pos.error(path, "a videos entry has either 'url' or 'list', not both")
    model = _ENTRY_FIELDS[kinds[0]]
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        return _raise_first(exc, path, pos, model)


def parse_manifest(data: Any, pos: Positions, source: str = "") -> Manifest:
    if not isinstance(data, dict):
        raise pos.error((), "a manifest is a YAML mapping with version, name, output and videos")
    videos = data.get("videos")
    entries: list[Any] = []
    if isinstance(videos, list):
        for i, raw in enumerate(videos):
            got = _validate_entry(raw, ("videos", i), pos)
            if isinstance(got, ManifestError):
                raise got
            entries.append(got)
    top = dict(data)
    if isinstance(videos, list):
        top["videos"] = ["placeholder"] * len(videos)  # validated above, entry by entry
    try:
        manifest = Manifest.model_validate(top)
    except ValidationError as exc:
        raise _raise_first(exc, (), pos, Manifest) from None
    manifest = manifest.model_copy(update={"videos": entries, "source": source, "positions": pos})
    _check_semantics(manifest)
    return manifest


def _check_rules(m: Manifest, rules: Mapping[str, Any] | None, path: Path) -> None:
    from vidbatch.verify import validate_rules

    for name, rule in (rules or {}).items():
        try:
            validate_rules({name: rule})
        except ValueError as exc:
            raise m.error(path + (name,), str(exc)) from None


def _check_semantics(m: Manifest) -> None:
    """Checks that need more than one field; per-item checks happen in ``plan``."""
    _check_template(m, m.output, ("output",))
    _check_rules(m, m.verify, ("verify",))
    _check_rules(m, m.defaults.verify, ("defaults", "verify"))
    for i, entry in enumerate(m.videos):
        if not isinstance(entry, str):
            _check_rules(m, entry.verify, ("videos", i, "verify"))
    d = m.defaults
    if d.factor is not None and d.target is not None:
        raise m.error(("defaults", "target"), "give either factor or target, not both")
    for i, entry in enumerate(m.videos):
        if isinstance(entry, str):
            continue
        if entry.factor is not None and entry.target is not None:
            raise m.error(("videos", i, "target"), "give either factor or target, not both")
        op = entry.operation or d.operation or "remove-background"
        for key, only in ONLY_FOR.items():
            if getattr(entry, key) is not None and op != only:
                raise m.error(
                    ("videos", i, key),
                    f"{key!r} does not apply to operation {op!r} (only to {only}); remove it",
                )
        fmt = entry.format or d.format or "webm"
        bg = entry.background or d.background or "transparent"
        if op == "remove-background" and bg == "transparent" and fmt not in ALPHA_FORMATS:
            field = "format" if entry.format else "background"
            raise m.error(("videos", i, field), alpha_message(fmt))


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


def load_manifest(source: str, storage_options: Mapping[str, Any] | None = None) -> Manifest:
    """Load and validate a manifest from a local path or an fsspec URL."""
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
    return parse_manifest(data, pos, shown)


def json_schema() -> dict[str, Any]:
    schema = Manifest.model_json_schema()
    schema["title"] = "vidbatch manifest v1"
    schema.setdefault("properties", {}).pop("source", None)
    schema["properties"].pop("positions", None)
    return schema
