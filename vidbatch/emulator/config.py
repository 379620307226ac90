"""Configuration of the provider emulator: timing knobs, limits and faults.

Two models:

* ``EmulatorConfig`` -- everything fixed when the server starts, plus the
  runtime knobs (``job_seconds``, ``queue_seconds``, ``max_running``,
  ``instant``, ``time_scale``...) that ``POST /_emulator/config`` may change
  later.
* ``FaultConfig`` -- what ``POST /_emulator/faults`` takes (JSON), and what
  the ``--rate-limit``/``--server-error``/... CLI flags build.

Time semantics (``time_scale``): the emulator runs an *emulated clock* that
goes ``time_scale`` times faster than the wall clock. Every duration you
configure (``job_seconds``, ``queue_seconds``, ``url_ttl``, ``token_ttl``,
``fal_result_ttl``, ``upload_import_seconds``) is in emulated seconds, so a
600 s job with ``time_scale=100`` takes 6 s of wall time. The engine's own
run time is wall time and counts ``time_scale`` times as much emulated time.
Whatever crosses the wire is wall clock: timestamps (``createdAt``,
``expires_at``, a CDN ``Policy`` epoch) are real times, and the retry hints
(``Retry-After``, ``remainingSeconds``) are ``FaultConfig.retry_after``
wall-clock seconds, sent verbatim, because the client really sleeps them.
Reported run times (fal ``metrics.inference_time``) are emulated seconds.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

PROVIDERS: tuple[str, ...] = ("fal", "scenario", "removebgvideo")

#: request-level faults, tried in this order for every request that matches
REQUEST_FAULTS: tuple[str, ...] = ("drop", "rate_limit", "server_error", "lost_response", "truncate")

RequestFault = Literal["drop", "rate_limit", "server_error", "lost_response", "truncate", "respond", "delay"]


class FaultRule(BaseModel):
    """One targeted request-level fault: ``p`` on routes matching ``routes``.

    ``times`` caps how many times the rule fires (``None``: no cap), so
    ``{"fault": "rate_limit", "p": 1, "routes": ["fal:submit"], "times": 2}``
    gives exactly the first two fal submits a 429.
    """

    model_config = ConfigDict(extra="forbid")

    fault: RequestFault
    p: float = Field(1.0, ge=0.0, le=1.0)
    routes: list[str] = Field(default_factory=lambda: ["*"])
    times: int | None = Field(None, ge=0)
    #: ``respond`` (rules only): answer ``status`` with ``body`` (a JSON value,
    #: or a string sent as is) and ``headers`` instead of processing the request
    #: -- a 403 plan error, a 422, a 200 whose body is not JSON...
    status: int = Field(500, ge=100, le=599)
    body: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    #: ``delay`` (rules only): process the request, then hold the response for
    #: ``seconds`` (wall clock) -- a window in which a client can be killed
    seconds: float = Field(0.0, ge=0.0)

    def matches(self, route: str) -> bool:
        return any(fnmatch.fnmatchcase(route, pat) for pat in self.routes)


class FaultConfig(BaseModel):
    """Fault knobs. Probabilities are per request (request faults) or per job.

    Request-level (apply to requests whose route name matches ``routes``;
    route names are listed in ``vidbatch.emulator``'s docstring):

    * ``drop``: the connection is closed without any response; the request
      is *not* processed.
    * ``rate_limit``: 429 in the provider's shape; ``Retry-After`` header on
      fal and removebgvideo, ``remainingSeconds`` in the body on Scenario.
    * ``server_error``: a 5xx in the provider's shape (request not processed).
    * ``lost_response``: the request *is* processed (a submit creates a job)
      and then the connection is closed without the response.
    * ``truncate``: only on file downloads: the headers promise the whole
      body (Content-Length), half of it is sent, then the connection closes.
    * ``respond`` / ``delay`` (``rules`` only, see ``FaultRule``): a canned
      response instead of processing; or processing, then a held response.

    Job-level (per job of the providers in ``providers``):

    * ``job_failure``: the job fails with ``failure_reason`` (fal: COMPLETED
      with ``error``, result HTTP 500; Scenario ``failure``; removebgvideo
      ``failed``).
    * ``completed_with_error``: fal only: COMPLETED with ``error``, result
      HTTP 422 ``{"detail": [...]}``. On the other providers it acts like
      ``job_failure``.
    * ``slow_jobs``: the job runs ``slow_job_seconds`` (emulated) longer than
      it otherwise would.
    * ``fail_inputs``: sha256 hex digests, or substrings of the input URL /
      file name, of inputs that always fail (as ``completed_with_error`` on
      fal, as a failure elsewhere).
    * ``expired_urls``: the *first* download URL minted for an output is
      already expired (fal CDN 404, Scenario CDN 403, removebgvideo 403);
      every refresh (fal result again, Scenario asset again, removebgvideo
      job/download again) mints a working one.
    * ``not_video_outputs``: the job succeeds but its video output is a text
      file (with the video's name and content type).
    * ``wrong_size_outputs``: the job succeeds with a video of half the
      expected width and height.
    * ``bad_output``: the job succeeds at the provider but its result fails
      verification: a transparent output comes back without its alpha
      channel; any other loses the last quarter of its frames (at least 2:
      one frame short at the end is a legitimate deviation, below).
    * ``legit_deviation``: the job succeeds with a result that deviates the
      way real providers' results do and must pass verification with the
      default tolerances: an upscale rounded up to a multiple of 16 on each
      side; a variable-frame-rate input re-timed to its constant nominal
      rate; any other result one frame short at the end.
    """

    model_config = ConfigDict(extra="forbid")

    seed: int | None = None
    drop: float = Field(0.0, ge=0.0, le=1.0)
    rate_limit: float = Field(0.0, ge=0.0, le=1.0)
    server_error: float = Field(0.0, ge=0.0, le=1.0)
    lost_response: float = Field(0.0, ge=0.0, le=1.0)
    truncate: float = Field(0.0, ge=0.0, le=1.0)
    routes: list[str] = Field(default_factory=lambda: ["*"])
    rules: list[FaultRule] = Field(default_factory=list)
    retry_after: float = Field(1.0, ge=0.0)

    job_failure: float = Field(0.0, ge=0.0, le=1.0)
    completed_with_error: float = Field(0.0, ge=0.0, le=1.0)
    expired_urls: float = Field(0.0, ge=0.0, le=1.0)
    slow_jobs: float = Field(0.0, ge=0.0, le=1.0)
    slow_job_seconds: float = Field(30.0, ge=0.0)
    fail_inputs: list[str] = Field(default_factory=list)
    providers: list[str] = Field(default_factory=lambda: list(PROVIDERS))
    failure_reason: str = "Emulated job failure (fault injection)"
    not_video_outputs: float = Field(0.0, ge=0.0, le=1.0)
    wrong_size_outputs: float = Field(0.0, ge=0.0, le=1.0)
    bad_output: float = Field(0.0, ge=0.0, le=1.0)
    legit_deviation: float = Field(0.0, ge=0.0, le=1.0)

    @field_validator("fail_inputs", "routes", "providers", mode="before")
    @classmethod
    def _split_csv(cls, value: Any) -> Any:
        # CLI convenience: "a,b,c" -> ["a", "b", "c"]
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    def all_rules(self) -> list[FaultRule]:
        """The flat probabilities as rules on ``routes``, then the explicit rules."""
        flat = [
            FaultRule(fault=name, p=getattr(self, name), routes=list(self.routes))
            for name in REQUEST_FAULTS
            if getattr(self, name) > 0
        ]
        return flat + [r.model_copy(deep=True) for r in self.rules]


def parse_max_running(text: str) -> int | dict[str, int]:
    """``"4"`` (every provider) or ``"fal=2,scenario=3"``."""
    if "=" not in text:
        return int(text)
    out: dict[str, int] = {}
    for item in text.split(","):
        name, _, value = item.partition("=")
        if name.strip() not in PROVIDERS:
            raise ValueError(f"unknown provider in max_running: {name.strip()!r}")
        out[name.strip()] = int(value)
    return out


@dataclass
class EmulatorConfig:
    """Server configuration. Durations are emulated seconds (see module doc)."""

    host: str = "127.0.0.1"
    #: 0: a free port (EmulatorServer); the CLI defaults to 8787
    port: int = 0
    #: pin the credential: fal key, removebgvideo key, Scenario "key:secret".
    #: None: any non-empty credential is accepted.
    api_key: str | None = None
    #: minimum job run time: IN_PROGRESS until max(engine time, job_seconds)
    job_seconds: float = 0.0
    #: time a job stays IN_QUEUE before it may start
    queue_seconds: float = 0.0
    #: account concurrency per (provider, key): int for all providers, or a
    #: {provider: int} mapping; None / 0: unlimited. Extra jobs stay queued.
    max_running: int | dict[str, int] | None = None
    #: engine worker threads (jobs beyond it run, but wait for a thread)
    workers: int = 2
    #: benchmark mode: no engine; outputs are cached synthetic videos of the
    #: right container, size, frame count and fps, served instantly
    instant: bool = False
    #: emulated seconds per wall-clock second
    time_scale: float = 1.0
    seed: int | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    #: lifetime of download URLs; None: provider default (fal 7 d, Scenario
    #: 24 h, removebgvideo 24 h)
    url_ttl: float | None = None
    #: fal CDN token lifetime
    token_ttl: float = 3600.0
    #: fal result JSON retention after completion (then 404)
    fal_result_ttl: float = 3600.0
    #: fal: validate inputs on the runner (submit 200, then COMPLETED with a
    #: 422 result) instead of at submit (422 at once, not a submission)
    fal_deferred_validation: bool = False
    #: Scenario: time from "complete" to "imported"
    upload_import_seconds: float = 0.2
    #: Scenario (S3) minimum size of every part but the last
    scenario_min_part_size: int = 5 * 1024 * 1024
    #: removebgvideo upload limit (400 "File too large" above it)
    removebgvideo_max_upload: int = 500 * 1000 * 1000
    #: removebgvideo credits per key; None: unlimited. At 0, job creation
    #: gets 402 insufficient_credits. Completed jobs deduct their cost.
    removebgvideo_credits: float | None = None
    #: where uploads and outputs live; None: a temporary directory. Instant-mode
    #: templates are cached in ``<data_dir>/templates``, or without a data_dir
    #: in ``$TMPDIR/vidbatch-emulator-templates`` (shared between servers)
    data_dir: str | None = None
    #: override the base URL used in absolute URLs (default: the request's)
    public_url: str | None = None
    #: timeout for fetching input URLs
    fetch_timeout: float = 120.0
    #: the engine: an object with ``remove_background`` / ``upscale`` like
    #: ``vidbatch.engine``; None: import ``vidbatch.engine``
    engine: Any = None

    #: knobs that ``POST /_emulator/config`` may change at run time
    RUNTIME_KNOBS = (
        "api_key",
        "job_seconds",
        "queue_seconds",
        "max_running",
        "instant",
        "time_scale",
        "url_ttl",
        "token_ttl",
        "fal_result_ttl",
        "fal_deferred_validation",
        "upload_import_seconds",
        "scenario_min_part_size",
        "removebgvideo_max_upload",
        "removebgvideo_credits",
    )

    def __post_init__(self) -> None:
        if isinstance(self.max_running, str):
            self.max_running = parse_max_running(self.max_running)
        if isinstance(self.faults, Mapping):
            self.faults = FaultConfig(**dict(self.faults))
        if self.seed is not None and self.faults.seed is None:
            self.faults = self.faults.model_copy(update={"seed": self.seed})
        if self.time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        if self.workers < 1:
            raise ValueError("workers must be >= 1")

    def running_limit(self, provider: str) -> int | None:
        value = self.max_running
        if isinstance(value, Mapping):
            value = value.get(provider)
        return int(value) if value else None

    def provider_url_ttl(self, provider: str) -> float:
        if self.url_ttl is not None:
            return float(self.url_ttl)
        return {"fal": 7 * 86400.0}.get(provider, 86400.0)

    def runtime_view(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.RUNTIME_KNOBS}
        data["api_key"] = "***" if self.api_key else None
        data["workers"] = self.workers
        data["seed"] = self.seed
        return data

    def update(self, changes: Mapping[str, Any]) -> None:
        unknown = set(changes) - set(self.RUNTIME_KNOBS)
        if unknown:
            raise ValueError(f"not a runtime knob: {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            if name == "max_running" and isinstance(value, str):
                value = parse_max_running(value)
            setattr(self, name, value)
        if self.time_scale <= 0:
            raise ValueError("time_scale must be > 0")

    #: alternative knob names accepted by ``from_knobs`` (e.g. the Typer CLI's)
    KNOB_ALIASES = {
        "skip_engine": "instant",
        "fault_routes": "routes",
        "p_429": "rate_limit",
        "p_5xx": "server_error",
        "p_drop": "drop",
        "p_fail": "job_failure",
        "p_expire": "expired_urls",
        "p_truncate": "truncate",
    }

    @classmethod
    def from_knobs(cls, **knobs: Any) -> "EmulatorConfig":
        """Build from flat keyword knobs: config fields plus FaultConfig fields (or aliases)."""
        names = {f.name for f in fields(cls)}
        fault_names = set(FaultConfig.model_fields)
        config_kwargs: dict[str, Any] = {}
        fault_kwargs: dict[str, Any] = {}
        for key, value in knobs.items():
            if value is None:
                continue
            key = cls.KNOB_ALIASES.get(key, key)
            if key in names:
                config_kwargs[key] = value
            elif key in fault_names:
                fault_kwargs[key] = value
            else:
                raise TypeError(f"unknown emulator knob: {key}")
        if "faults" in config_kwargs and fault_kwargs:
            base = config_kwargs["faults"]
            base = base.model_dump() if isinstance(base, FaultConfig) else dict(base)
            config_kwargs["faults"] = {**base, **fault_kwargs}
        elif fault_kwargs:
            config_kwargs["faults"] = fault_kwargs
        return cls(**config_kwargs)

    def describe(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "engine"}
        data["api_key"] = "***" if self.api_key else None
        data["faults"] = self.faults.model_dump()
        data["engine"] = "vidbatch.engine" if self.engine is None else repr(self.engine)
        return data
