"""``vidbatch validate``: every problem of a manifest, one line each, before anything runs.

Checks run in independent units (``vidbatch.problems``): the schema of each
setting and videos entry, the manifest's own checks (``manifest.MANIFEST_CHECKS``
/ ``ENTRY_CHECKS``), every input and listing row, every planned item, each
provider's credentials, the budget's prices, then ``PLAN_CHECKS`` over the
whole plan. A check is any function that raises ``ConfigError`` for one mistake;
add one to a list and ``validate`` reports what it finds with the rest.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from vidbatch.errors import ConfigError
from vidbatch.manifest import Manifest, load_manifest
from vidbatch.problems import Problems
from vidbatch.providers.base import Provider
from vidbatch.spec import Item, MediaInfo

log = logging.getLogger("vidbatch")

#: the clip a price is asked for when only "is there a price?" matters (720p, 10 s)
NOMINAL_MEDIA = MediaInfo(width=1280, height=720, fps=30.0, frames=300, duration=10.0)

#: checks over the whole plan: ``check(manifest, items)`` raises ``ConfigError`` per mistake
PLAN_CHECKS: list[Callable[[Manifest, list[Item]], None]] = []


@dataclass(frozen=True)
class Validated:
    manifest: Manifest
    items: list[Item]
    providers: Mapping[str, Provider]


def validate(source: str, *, emulator: str | None = None, credentials: bool = True) -> Validated:
    """Load, plan and check a manifest; raise ``ManifestProblems`` (or the one
    ``ConfigError``) with every problem found, else return what was planned.

    ``credentials=False``: missing keys are no problem (``vidbatch plan``)."""
    from vidbatch.inputs import plan_items
    from vidbatch.providers import registry
    from vidbatch.run import provider_settings, providers_used

    problems = Problems()
    m = load_manifest(source, problems=problems)
    items = plan_items(m, problems=problems) if _plannable(m) else []
    if not items and not problems:
        raise ConfigError(f"{m.source}: the manifest lists no videos")
    providers: dict[str, Provider] = {}
    for name in providers_used(items):
        with problems.collect():
            provider = providers[name] = registry.create(name, provider_settings(m, name, emulator))
            if credentials:
                provider.check_credentials()
    for check in budget_checks(m, items, providers):
        with problems.collect():
            check()
    for plan_check in PLAN_CHECKS:
        with problems.collect():
            plan_check(m, items)
    problems.raise_if_any()
    return Validated(m, items, providers)


def _plannable(m: Manifest) -> bool:
    """Items can be planned only through a valid output template (its problem is reported already)."""
    from vidbatch.manifest import _check_template

    try:
        _check_template(m, m.output, ("output",))
    except ConfigError:
        return False
    return True


# --------------------------------------------------------------------------- budgets


def load_prices(providers: Mapping[str, Provider]) -> None:
    """Give each provider its published prices before ``estimate`` is asked.

    Through the provider hooks ``fetch_prices`` / ``use_prices`` where a provider
    has them (``vidbatch.pricing`` adds caching and the manifest's own prices on
    top); a price document that cannot be fetched leaves the provider's built-in
    prices, so the check below then names what is missing.
    """
    async def fetch_all() -> None:
        for provider in providers.values():
            fetch = getattr(provider, "fetch_prices", None)
            if fetch is None or getattr(provider, "prices", None):
                continue
            try:
                doc = await fetch()
            except Exception as exc:  # noqa: BLE001 - an unreadable price list is "no price"
                log.info("%s: prices not fetched: %s", provider.name, exc)
                continue
            if doc:
                provider.use_prices(doc)  # type: ignore[attr-defined]

    if any(hasattr(p, "fetch_prices") for p in providers.values()):
        asyncio.run(fetch_all())


def _budget_path(m: Manifest, provider: str) -> tuple[Any, ...]:
    assert m.budget is not None
    if provider in m.budget.providers:
        return ("budget", "providers", provider)
    return ("budget", "max_usd") if m.budget.max_usd is not None else ("budget",)


def budget_checks(m: Manifest, items: list[Item], providers: Mapping[str, Provider]) -> list[Callable[[], None]]:
    """One check per provider/operation/model whose items a budget caps without a known price.

    A budget cannot cap what it cannot price: such items would all be skipped at
    run time. ``validate`` says so up front and names the fix instead.
    """
    budget = m.budget
    if budget is None or (budget.max_usd is None and not budget.providers):
        return []
    load_prices(providers)
    unknown: dict[tuple[str, str, str], tuple[int, str]] = {}
    asked: dict[str, str | None] = {}
    for item in items:
        provider = providers.get(item.spec.provider)
        if provider is None or not provider.paid:
            continue
        if budget.max_usd is None and item.spec.provider not in budget.providers:
            continue  # no cap covers this provider
        digest = item.spec.digest()
        if digest not in asked:
            cost = provider.estimate(item.spec, NOMINAL_MEDIA)
            asked[digest] = None if cost.usd is not None else (cost.basis or "no published price")
        if asked[digest] is None:
            continue
        group = (item.spec.provider, item.spec.operation, item.spec.model)
        count, basis = unknown.get(group, (0, asked[digest] or ""))
        unknown[group] = (count + 1, basis)

    def check(group: tuple[str, str, str], count: int, basis: str) -> Callable[[], None]:
        name, operation, model = group

        def run() -> None:
            raise m.error(_budget_path(m, name), (
                f"{name} {operation} with model {model!r} has no known price ({basis}), so budget: cannot cap "
                f"its {count} item(s) and a run would skip them all; give its price in the manifest or let "
                f"vidbatch read {name}'s published prices (README: Budget), or take {name} out of budget:"))

        return run

    return [check(g, n, b) for g, (n, b) in unknown.items()]
