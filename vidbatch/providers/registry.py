"""Providers by name: the built-ins plus third parties via entry points.

Third-party packages register under the ``vidbatch.providers`` entry-point group::

    [project.entry-points."vidbatch.providers"]
    acme = "acme_vidbatch:AcmeProvider"
"""

from __future__ import annotations

import difflib
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from vidbatch.errors import ConfigError

if TYPE_CHECKING:
    from vidbatch.providers.base import Provider, ProviderSettings

ENTRY_POINT_GROUP = "vidbatch.providers"

#: built-in providers, imported lazily (the local engine pulls in mediapipe)
_BUILTIN: dict[str, str] = {
    "local": "vidbatch.providers.local:LocalProvider",
    "fal": "vidbatch.providers.fal:FalProvider",
    "scenario": "vidbatch.providers.scenario:ScenarioProvider",
    "removebgvideo": "vidbatch.providers.removebgvideo:RemoveBgVideoProvider",
}
_registered: dict[str, type[Provider]] = {}


def register(name: str, cls: type[Provider]) -> None:
    """Register a provider class under ``name`` (overrides built-ins)."""
    _registered[name] = cls


def names() -> list[str]:
    eps = {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    return sorted(set(_BUILTIN) | set(_registered) | eps)


def _load(target: str) -> type[Provider]:
    module, _, attr = target.partition(":")
    return getattr(import_module(module), attr)


def get_class(name: str) -> type[Provider]:
    if name in _registered:
        return _registered[name]
    if name in _BUILTIN:
        cls = _load(_BUILTIN[name])
        _registered[name] = cls
        return cls
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            cls = ep.load()
            _registered[name] = cls
            return cls
    close = difflib.get_close_matches(name, names(), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; choose one of: {', '.join(names())}"
    raise ConfigError(f"unknown provider {name!r}{hint}")


def create(name: str, settings: ProviderSettings | None = None) -> Provider:
    return get_class(name)(settings)
