"""Retry policies as named values, shared by the stage tasks."""

from __future__ import annotations

import asyncio
from typing import Any

from prefect.tasks import exponential_backoff

from vidbatch.errors import SubmitUncertainError, is_transient


def should_retry(exc: BaseException) -> bool:
    """The classification behind ``retry_if_transient`` (also used in-process, ``tasks.inline``)."""
    if isinstance(exc, SubmitUncertainError):
        return False  # the job may exist: the submit stage decides, never a blind retry
    return isinstance(exc, Exception) and is_transient(exc)


async def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only transient errors.

    A plain ``async def``: Prefect 3.8 ignores callable objects and partials, and
    in an async task ``state.result()`` would return an un-awaited coroutine.
    """
    try:
        await state.aresult()
    except Exception as exc:  # noqa: BLE001 - classification is the point
        if not should_retry(exc):
            return False
        await honour_hint(exc)
        return True
    return False


async def honour_hint(exc: BaseException) -> None:
    """Wait out the provider's Retry-After / remainingSeconds (clamped where it was parsed);
    the stage's backoff comes on top."""
    hint = getattr(exc, "retry_after", None)
    if hint:
        await asyncio.sleep(float(hint))


#: transient failures of a stage: 4 retries, 1 s, 2 s, 4 s, 8 s, with jitter
TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": 4,
    "retry_delay_seconds": exponential_backoff(backoff_factor=1),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_if_transient,
}
NO_RETRIES: dict[str, Any] = {"retries": 0}
