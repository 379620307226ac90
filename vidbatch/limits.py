"""Per-provider limits: jobs in flight (``concurrency``) and ``requests_per_second``.

A ``ProviderLimiter`` holds both for one provider in this process. ``slot()`` is
held from submit until the job is seen terminal (the provider's concurrency counts
queued and running jobs; the download from its CDN happens after); ``request()`` paces every API
call with a token bucket. Cross-process limits (Prefect global concurrency
limits) plug in behind the same two context managers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator


@dataclass
class TokenBucket:
    """``rate`` requests per second with a burst of ``burst``; exact, no drift."""

    rate: float
    burst: float = 1.0
    _tokens: float = field(default=0.0, init=False)
    _stamp: float = field(default_factory=time.monotonic, init=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    def __post_init__(self) -> None:
        self._tokens = self.burst

    async def take(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                await asyncio.sleep((1.0 - self._tokens) / self.rate)


@dataclass
class ProviderLimiter:
    name: str
    concurrency: int
    requests_per_second: float | None = None
    _sem: asyncio.Semaphore = field(init=False)
    _bucket: TokenBucket | None = field(default=None, init=False)
    in_flight: int = field(default=0, init=False)
    max_in_flight: int = field(default=0, init=False)
    #: cross-process limits (``vidbatch.leases``) when running against a server
    global_slots: Any = None
    global_rate: Any = None

    def __post_init__(self) -> None:
        self._sem = asyncio.Semaphore(self.concurrency)
        if self.requests_per_second:
            self._bucket = TokenBucket(self.requests_per_second, burst=max(1.0, self.requests_per_second))

    @contextlib.asynccontextmanager
    async def slot(self, key: str | None = None) -> AsyncIterator[None]:
        """One job in flight at the provider (item ``key``'s): held from submit until it is seen terminal."""
        async with self._sem, (self.global_slots.slot(key) if self.global_slots else _nothing()):
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                yield
            finally:
                self.in_flight -= 1

    @contextlib.asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """One API request, paced by ``requests_per_second``."""
        if self.global_rate is not None:
            await self.global_rate.take()
        elif self._bucket is not None:
            await self._bucket.take()
        yield

    async def close(self) -> None:
        for part in (self.global_slots, self.global_rate):
            if part is not None:
                await part.close()


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield
