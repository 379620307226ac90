"""Prefect defaults for vidbatch processes, set before Prefect is imported.

Offline-friendly and quiet (see shared notes/prefect.md §1, §8): no analytics
(its DNS lookup fails offline), a generous ephemeral start-up timeout (a cold
start takes 13-15 s on 2 cores), and no API logging warnings outside flows.
"""

from __future__ import annotations

import os

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "PREFECT_UI_ENABLED": "false",
}


def apply(quiet: bool = False) -> None:
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    if quiet:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
