"""Collecting problems instead of stopping at the first.

A check is any code that raises ``ConfigError`` (``ManifestError`` with its
file:line:col) for one mistake. ``vidbatch validate`` runs its checks inside
``Problems.collect()`` blocks, one per independent unit (a top-level setting,
a videos entry, a listing row, an item, a provider), so every mistake in a
manifest is reported, one line each::

    problems = Problems()
    for i, entry in enumerate(m.videos):
        with problems.collect():
            check_entry(m, i, entry)      # raises ManifestError
    problems.raise_if_any()               # ManifestProblems with every line

``Problems(fail_fast=True)`` re-raises the first problem at once: the same
checks then behave as they do at run time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator

from vidbatch.errors import ConfigError, ManifestProblems

#: lines reported at most (a 100k-item listing with one mistake per row stays readable)
MAX_PROBLEMS = 50


@dataclass
class Problems:
    fail_fast: bool = False
    limit: int = MAX_PROBLEMS
    found: list[ConfigError] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    dropped: int = 0

    def add(self, exc: ConfigError) -> None:
        if self.fail_fast:
            raise exc
        if isinstance(exc, ManifestProblems):
            for one in exc.problems:
                self.add(one)
            return
        line = str(exc)
        if line in self.seen:
            return  # one mistake inherited by many items is one line
        self.seen.add(line)
        if len(self.found) >= self.limit:
            self.dropped += 1
            return
        self.found.append(exc)

    @contextlib.contextmanager
    def collect(self) -> Iterator[None]:
        """Run a check: its ``ConfigError`` is recorded and the caller goes on."""
        try:
            yield
        except ConfigError as exc:
            self.add(exc)

    def __bool__(self) -> bool:
        return bool(self.found)

    def raise_if_any(self) -> None:
        if not self.found:
            return
        # in the order they are written (file:line:col); problems with no place last, as found
        found = sorted(self.found, key=lambda e: (not getattr(e, "file", ""), getattr(e, "file", ""),
                                                  getattr(e, "line", 0), getattr(e, "col", 0)))
        if self.dropped:
            found.append(ConfigError(f"... and {self.dropped} more problem(s) not shown; fix these and validate again"))
        if len(found) == 1:
            raise found[0]
        raise ManifestProblems(found)
