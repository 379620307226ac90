from __future__ import annotations

import asyncio
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from vidbatch import pipeline
from vidbatch.run import CONTEXTS
from vidbatch.spec import Item, MediaInfo
from vidbatch.tasks.policies import NO_RETRIES


@task(name="verify", task_run_name="verify {item.rel}", cache_policy=NO_CACHE, persist_result=False, **NO_RETRIES)
async def verify(run_id: str, item: Item, media: MediaInfo, outputs: list[str], input_path: str | None) -> dict[str, Any]:
    """Decode and check the outputs, measure quality, apply thresholds."""
    ctx = CONTEXTS[run_id]
    return await asyncio.to_thread(pipeline.verify_item, ctx, item, media, outputs, input_path)
