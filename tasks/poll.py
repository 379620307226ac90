from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from vidbatch import pipeline
from vidbatch.run import CONTEXTS
from vidbatch.spec import Item, JobHandle, JobStatus, MediaInfo
from vidbatch.tasks.policies import NO_RETRIES


@task(name="poll", task_run_name="poll {item.rel}", cache_policy=NO_CACHE, persist_result=False, **NO_RETRIES)
async def poll(run_id: str, item: Item, handle: JobHandle, media: MediaInfo | None) -> JobStatus:
    """One task run per job (never one per poll tick); transient errors are absorbed inside."""
    return await pipeline.poll(CONTEXTS[run_id], item, handle, media)
