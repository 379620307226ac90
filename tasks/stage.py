from __future__ import annotations

import asyncio

from prefect import task
from prefect.cache_policies import NO_CACHE

from vidbatch import pipeline
from vidbatch.run import CONTEXTS
from vidbatch.spec import Item, MediaInfo, StagedInput
from vidbatch.tasks.policies import TRANSIENT_RETRIES


@task(name="stage", task_run_name="stage {item.rel}", cache_policy=NO_CACHE, persist_result=False, **TRANSIENT_RETRIES)
async def stage(run_id: str, item: Item, upload: bool = True) -> tuple[StagedInput | None, MediaInfo]:
    """Probe the input; unless re-attaching, make it readable by the provider."""
    ctx = CONTEXTS[run_id]
    if not upload:
        return None, await asyncio.to_thread(pipeline.probe_input, item)
    return await pipeline.stage(ctx, item)
