"""Settings groups: items a provider treats alike, so one of them speaks for the rest.

Items that share provider, operation, model, format, background kind
(transparent, a colour, an image), mask and native params form a group
(``group_key``). A group is what a canary proves (``vidbatch.canary``) and what
``vidbatch run --sample N`` spreads its N items over (``sample``).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Iterator

from vidbatch.spec import Item, JobSpec, canonical_json


def background_kind(spec: JobSpec) -> str:
    if spec.operation != "remove-background":
        return ""
    if spec.background == "transparent":
        return "transparent"
    return "colour" if spec.background.startswith("#") else "image"


def group_fields(spec: JobSpec) -> dict[str, Any]:
    return {
        "provider": spec.provider, "operation": spec.operation, "model": spec.model, "format": spec.format,
        "background": background_kind(spec), "mask": bool(spec.mask),
        "params": dict(sorted(dict(spec.params).items())),
    }


def group_key(spec: JobSpec) -> str:
    """A short stable hash of the group's settings (the canary's name on the state store)."""
    return hashlib.sha256(canonical_json(group_fields(spec)).encode()).hexdigest()[:16]


def group_label(spec: JobSpec) -> str:
    """The group in words, for messages: ``fal remove-background 'General Use (Light)' webm transparent``."""
    parts = [spec.provider, spec.operation, repr(spec.model), spec.format]
    if spec.operation == "remove-background":
        parts.append(background_kind(spec) + (" + mask" if spec.mask else ""))
    if spec.params:
        parts.append(" ".join(f"{k}={v}" for k, v in sorted(dict(spec.params).items())))
    return " ".join(parts)


def sample(items: Iterable[Item], n: int) -> list[Item]:
    """``n`` items spread over the settings groups: the first of each group in manifest
    order, then the second of each, ... (at least one per group while ``n`` allows).

    Streams the plan once, keeping at most ``n`` items per group.
    """
    if n <= 0:
        return []
    groups: dict[str, list[Item]] = {}
    for item in items:
        bucket = groups.setdefault(group_key(item.spec), [])
        if len(bucket) < n:
            bucket.append(item)
    picked: list[Item] = []
    for rank in range(n):
        for bucket in groups.values():
            if rank < len(bucket) and len(picked) < n:
                picked.append(bucket[rank])
        if len(picked) >= n:
            break
    return sorted(picked, key=lambda i: i.index)


def iter_sample(items: Iterable[Item], n: int | None) -> Iterator[Item]:
    """``items`` unchanged without ``n``; else their ``sample``."""
    if n is None:
        yield from items
        return
    yield from sample(items, n)
