"""The Starlette application: the three providers plus the control endpoints.

Control endpoints (no auth, never faulted)::

    GET  /_emulator/health           {"status": "ok", "urls": {...}}
    GET  /_emulator/stats            counters (layout in ``vidbatch.emulator``)
    GET  /_emulator/jobs[?provider=] one row per job (state, polls, input sha256, fault)
    POST /_emulator/reset            clear jobs, files, stats and faults
    GET  /_emulator/faults           the active FaultConfig (rules show remaining ``times``)
    POST /_emulator/faults           replace it (FaultConfig JSON; ``{}`` clears)
    GET  /_emulator/config           the runtime knobs
    POST /_emulator/config           change runtime knobs, e.g. {"job_seconds": 5}
"""

from __future__ import annotations

import contextlib
from typing import Any, AsyncIterator

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from vidbatch.emulator.config import EmulatorConfig, FaultConfig
from vidbatch.emulator.fal import Fal
from vidbatch.emulator.removebgvideo import RemoveBgVideo
from vidbatch.emulator.removebgvideo import error as rbv_error
from vidbatch.emulator.runner import Runner
from vidbatch.emulator.scenario import Scenario
from vidbatch.emulator.scenario import err as scenario_error
from vidbatch.emulator.state import EmulatorState
from vidbatch.emulator.web import base_url, json_response, read_json


class Emulator:
    """State + runner + provider route sets; ``app.state.emulator``."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.state = EmulatorState(config)
        self.runner = Runner(self.state)
        self.fal = Fal(self.state, self.runner)
        self.scenario = Scenario(self.state, self.runner)
        self.removebgvideo = RemoveBgVideo(self.state, self.runner)

    # ------------------------------------------------------------------ control
    async def health(self, request: Request) -> Response:
        return json_response({"status": "ok", "urls": provider_urls(base_url(request, self.state))})

    async def stats(self, request: Request) -> Response:
        return json_response(self.state.snapshot())

    async def jobs(self, request: Request) -> Response:
        return json_response({"jobs": self.state.job_summaries(request.query_params.get("provider"))})

    async def reset(self, request: Request) -> Response:
        self.state.reset()
        return json_response({"ok": True})

    async def faults(self, request: Request) -> Response:
        if request.method == "POST":
            body, error = await read_json(request)
            if error is not None or not isinstance(body, dict):
                return json_response({"error": error or "body must be a JSON object"}, 400)
            try:
                cfg = FaultConfig(**body)
            except ValidationError as exc:
                return json_response({"error": "invalid faults", "detail": exc.errors(include_url=False)}, 400)
            self.state.faults.configure(cfg)
        data = self.state.faults.config.model_dump()
        data["rules"] = [r.model_dump() for r in self.state.faults.rules]
        return json_response(data)

    async def config_endpoint(self, request: Request) -> Response:
        if request.method == "POST":
            body, error = await read_json(request)
            if error is not None or not isinstance(body, dict):
                return json_response({"error": error or "body must be a JSON object"}, 400)
            try:
                self.config.update(body)
            except (ValueError, TypeError) as exc:
                return json_response({"error": str(exc)}, 400)
            self.state.wake_accounts()  # a raised max_running admits queued jobs now
        return json_response(self.config.runtime_view())

    # ------------------------------------------------------------------ fallbacks
    @staticmethod
    async def fal_404(request: Request) -> Response:
        return json_response({"detail": "Not Found"}, 404)

    @staticmethod
    async def scenario_404(request: Request) -> Response:
        return scenario_error(404, "Not found")

    @staticmethod
    async def rbv_404(request: Request) -> Response:
        return rbv_error(404, "not_found", "Not found")

    def routes(self) -> list[Route]:
        any_method = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"]
        return [
            Route("/_emulator/health", self.health, methods=["GET"]),
            Route("/_emulator/stats", self.stats, methods=["GET"]),
            Route("/_emulator/jobs", self.jobs, methods=["GET"]),
            Route("/_emulator/reset", self.reset, methods=["POST"]),
            Route("/_emulator/faults", self.faults, methods=["GET", "POST"]),
            Route("/_emulator/config", self.config_endpoint, methods=["GET", "POST"]),
            *self.fal.routes(),
            *self.scenario.routes(),
            *self.removebgvideo.routes(),
            Route("/fal/{path:path}", self.fal_404, methods=any_method),
            Route("/scenario/{path:path}", self.scenario_404, methods=any_method),
            Route("/removebgvideo/{path:path}", self.rbv_404, methods=any_method),
        ]


def provider_urls(base: str) -> dict[str, str]:
    """Base URLs to give each provider client instead of the production hosts."""
    base = base.rstrip("/")
    return {
        "fal_queue": f"{base}/fal/queue",  # https://queue.fal.run
        "fal_rest": f"{base}/fal/rest",  # https://rest.fal.ai
        "fal_cdn": f"{base}/fal/cdn",  # https://v3.fal.media
        "scenario": f"{base}/scenario/v1",  # https://api.cloud.scenario.com/v1
        "removebgvideo": f"{base}/removebgvideo",  # https://api.removebgvideo.com
    }


def create_app(config: EmulatorConfig | None = None, **knobs: Any) -> Starlette:
    """The emulator as an ASGI app. ``knobs`` build a config when none is given."""
    if config is None:
        config = EmulatorConfig.from_knobs(**knobs)
    emulator = Emulator(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            emulator.state.reset()
            await emulator.runner.close()
            emulator.state.close()

    app = Starlette(routes=emulator.routes(), lifespan=lifespan)
    app.state.emulator = emulator
    return app
