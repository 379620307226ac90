"""Prefect tasks, one module per stage, thin over ``vidbatch.pipeline``.

Installed as ``vidbatch.tasks``. Each task takes the run id (the run context
lives in this process) and an ``Item``; results are small (handles, paths,
facts), never bytes. Retries come from one predicate over the error tree.

By default the flow makes one task run per item (``process_item``) and runs
the five stage bodies inside it with their own retry policies
(``tasks.inline``); ``task_runs="stage"`` makes one task run per stage.
"""

from __future__ import annotations

from vidbatch.tasks.download import download
from vidbatch.tasks.item import process_item
from vidbatch.tasks.poll import poll
from vidbatch.tasks.stage import stage
from vidbatch.tasks.submit import submit
from vidbatch.tasks.verify import verify

__all__ = ["stage", "submit", "poll", "download", "verify", "process_item"]
