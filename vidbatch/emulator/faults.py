"""Fault injection: decides, reproducibly from a seed, which request or job fails.

All decisions are taken on the event-loop thread, one random draw per
(request, matching rule), so a given ``seed`` and the same request order give
the same faults. Concurrent clients make the order itself nondeterministic;
for "exactly these fail" tests use ``fail_inputs`` or rules with ``times``.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Literal

from vidbatch.emulator.config import FaultConfig, FaultRule

JobFault = Literal["failure", "completed_with_error", "fail_input"]


class DropConnection(BaseException):
    """Raised by a handler to close the client's connection without (more) response.

    A ``BaseException`` on purpose: Starlette's error middlewares catch
    ``Exception`` and would turn it into a 500 response. The emulator's
    uvicorn protocol (``server.py``) catches it and closes the socket, so the
    client sees a transport error (httpx ``RemoteProtocolError``).
    """


class FaultInjector:
    def __init__(self, config: FaultConfig | None = None) -> None:
        #: faults injected since start / the last reset (kept across configure())
        self.injected: Counter[str] = Counter()
        self.configure(config or FaultConfig())

    def configure(self, config: FaultConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.rules: list[FaultRule] = config.all_rules()

    # -- request level -------------------------------------------------
    def _fire(self, rule: FaultRule) -> bool:
        if rule.times is not None and rule.times <= 0:
            return False
        if rule.p <= 0:
            return False
        if rule.p < 1 and self.rng.random() >= rule.p:
            return False
        if rule.times is not None:
            rule.times -= 1
        return True

    def request_fault(self, route: str) -> str | None:
        """The fault to inject on this request (other than ``truncate``), if any."""
        rule = self.request_rule(route)
        return rule.fault if rule is not None else None

    def request_rule(self, route: str) -> FaultRule | None:
        """The rule that fires on this request (other than ``truncate``), if any."""
        for rule in self.rules:
            if rule.fault == "truncate" or not rule.matches(route):
                continue
            if self._fire(rule):
                self.injected[f"{route}:{rule.fault}"] += 1
                return rule
        return None

    def truncate(self, route: str) -> bool:
        for rule in self.rules:
            if rule.fault == "truncate" and rule.matches(route) and self._fire(rule):
                self.injected[f"{route}:truncate"] += 1
                return True
        return False

    # -- job level -----------------------------------------------------
    def job_fault(self, provider: str) -> JobFault | None:
        cfg = self.config
        if provider not in cfg.providers:
            return None
        if cfg.job_failure > 0 and self.rng.random() < cfg.job_failure:
            self.injected[f"{provider}:job:failure"] += 1
            return "failure"
        if cfg.completed_with_error > 0 and self.rng.random() < cfg.completed_with_error:
            self.injected[f"{provider}:job:completed_with_error"] += 1
            return "completed_with_error"
        return None

    def output_fault(self, provider: str) -> str | None:
        """``not_video`` / ``wrong_size`` / ``bad_output`` / ``legit_deviation`` for a
        succeeded job's outputs, usually None."""
        cfg = self.config
        if provider not in cfg.providers:
            return None
        for name, p in (("not_video", cfg.not_video_outputs), ("wrong_size", cfg.wrong_size_outputs),
                        ("bad_output", cfg.bad_output), ("legit_deviation", cfg.legit_deviation)):
            if p > 0 and self.rng.random() < p:
                self.injected[f"{provider}:job:{name}"] += 1
                return name
        return None

    def slow_job(self, provider: str) -> float:
        """Extra emulated seconds for this job (``slow_jobs`` fault), usually 0."""
        cfg = self.config
        if provider not in cfg.providers or cfg.slow_jobs <= 0 or self.rng.random() >= cfg.slow_jobs:
            return 0.0
        self.injected[f"{provider}:job:slow"] += 1
        return cfg.slow_job_seconds

    def input_fails(self, provider: str, sha256: str | None, names: list[str]) -> bool:
        patterns = self.config.fail_inputs
        if not patterns:
            return False
        for pat in patterns:
            low = pat.lower()
            if sha256 and low == sha256.lower():
                break
            if any(low in (n or "").lower() for n in names):
                break
        else:
            return False
        self.injected[f"{provider}:job:fail_input"] += 1
        return True

    def expire_first_url(self, provider: str) -> bool:
        cfg = self.config
        if provider not in cfg.providers or cfg.expired_urls <= 0:
            return False
        if self.rng.random() < cfg.expired_urls:
            self.injected[f"{provider}:url:expired"] += 1
            return True
        return False
