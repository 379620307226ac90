from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from vidbatch import pipeline
from vidbatch.run import CONTEXTS
from vidbatch.spec import Item, JobHandle
from vidbatch.tasks.policies import TRANSIENT_RETRIES


@task(name="download", task_run_name="download {item.rel}", cache_policy=NO_CACHE, persist_result=False, **TRANSIENT_RETRIES)
async def download(run_id: str, item: Item, handle: JobHandle) -> list[str]:
    """Stream every artifact to a temp key on the output store and promote it."""
    return await pipeline.download(CONTEXTS[run_id], item, handle)
