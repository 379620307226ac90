from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from vidbatch import pipeline
from vidbatch.run import CONTEXTS
from vidbatch.spec import Item, JobHandle, StagedInput
from vidbatch.tasks.policies import TRANSIENT_RETRIES


@task(name="submit", task_run_name="submit {item.rel}", cache_policy=NO_CACHE, persist_result=False, **TRANSIENT_RETRIES)
async def submit(run_id: str, item: Item, staged: StagedInput | None, attempt: int = 1, note: str = "") -> JobHandle:
    """Submit once and persist the handle; re-attach to a handle a previous run left.

    Retried only for errors raised before a job could exist (the pipeline deletes
    its write-ahead intent then); an uncertain submit is never retried.
    """
    return await pipeline.submit(CONTEXTS[run_id], item, staged, attempt=attempt, note=note)  # type: ignore[arg-type]
