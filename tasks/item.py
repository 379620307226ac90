from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from vidbatch import run
from vidbatch.report import ReportRow
from vidbatch.spec import Item
from vidbatch.tasks.policies import NO_RETRIES


@task(name="process-item", task_run_name="item {item.rel}", cache_policy=NO_CACHE, persist_result=False, **NO_RETRIES)
async def process_item(run_id: str, item: Item, stages: Any) -> ReportRow:
    """One video through the five stages: stage, submit, poll, download, verify.

    The one task run of an item (the flow checks the cache first, so cached
    items have none). ``stages`` are the stage tasks' bodies with their own
    retry policies (``tasks.inline``); every outcome is a report row, a failed
    item is a row with status failed, not a failed task run.
    """
    return await run.process_item(run.CONTEXTS[run_id], run.MANIFESTS[run_id], item, stages, check_cache=False)
