"""Prefect tasks, one module per stage, thin over ``vidbatch.pipeline``.

Installed as ``vidbatch.tasks``. Each task takes the run id (the run context
lives in this process) and an ``Item``; results are small (handles, paths,
facts), never bytes. Retries come from one predicate over the error tree.
"""

from __future__ import annotations

from vidbatch.tasks.download import download
from vidbatch.tasks.poll import poll
from vidbatch.tasks.stage import stage
from vidbatch.tasks.submit import submit
from vidbatch.tasks.verify import verify

__all__ = ["stage", "submit", "poll", "download", "verify"]
