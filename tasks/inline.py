"""A stage task's body run in-process, with the task's own retry policy.

The flow runs one Prefect task run per item (``tasks.item``); inside it each
stage is ``inline(<stage task>)``: the same function with the same retries,
delays, jitter and retry condition the ``@task`` declares (read from the Task
object, so ``tasks/policies.py`` stays the single source), but no task run of
its own. Why (issue 8, measured with ``python -m bench``): a task run costs
several ms of CPU in the flow's process and more in Prefect's API server
(recording its states); at five per item that was most of the orchestration
cost, and fewer task runs keep the run history complete (the server drops
events beyond ~10 000 queued, notes/prefect.md §2).
"""

from __future__ import annotations

import asyncio
import functools
import random
from typing import Any, Awaitable, Callable

from prefect import Task

from vidbatch.tasks.policies import honour_hint, retry_if_transient, should_retry


def _delay(task: Task[Any, Any], retry: int) -> float:
    delays = task.retry_delay_seconds
    if isinstance(delays, (list, tuple)):
        base = float(delays[min(retry, len(delays) - 1)]) if delays else 0.0
    else:
        base = float(delays or 0.0)
    jitter = task.retry_jitter_factor
    if jitter:
        # Prefect clamps a Poisson interval to base * (1 +- jitter); uniform is close enough
        base *= random.uniform(max(0.0, 1.0 - jitter), 1.0 + jitter)
    return base


def inline(task: Task[Any, Any]) -> Callable[..., Awaitable[Any]]:
    """``task.fn`` with ``task``'s retries, run in the caller's task run."""
    fn = task.fn
    retries = int(task.retries or 0)
    condition = task.retry_condition_fn

    @functools.wraps(fn)
    async def run(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(retries + 1):
            try:
                return await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below, re-raised when final
                if attempt >= retries:
                    raise
                if condition is retry_if_transient:
                    if not should_retry(exc):
                        raise
                    await honour_hint(exc)
                elif condition is not None:
                    raise  # a Prefect-state predicate we cannot evaluate here: no blind retry
                await asyncio.sleep(_delay(task, attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    return run
