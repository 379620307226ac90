"""Running the emulator: in-process on a background thread, or as a CLI server.

In-process (tests, benchmarks)::

    with EmulatorServer(job_seconds=2, instant=True) as emu:   # or EmulatorServer(config)
        emu.base_url            # http://127.0.0.1:<free port>
        emu.urls["fal_queue"]   # per-provider base URLs (see app.provider_urls)
        emu.set_faults(rate_limit=0.2, seed=1)
        emu.stats()["submissions"]["fal"]

CLI: ``main(host="127.0.0.1", port=8787, **knobs)`` (blocking), wired to
``vidbatch emulator`` by the CLI and to ``python -m vidbatch.emulator``.
Knobs are ``EmulatorConfig`` fields plus ``FaultConfig`` fields
(``fault_routes`` = FaultConfig ``routes``; ``skip_engine`` = ``instant``).

Uvicorn runs with ``loop="asyncio"``, no access log, and an HTTP protocol
subclass that turns ``DropConnection`` into a closed socket (no 500 page).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from typing import Any

import httpx
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from vidbatch.emulator.app import create_app, provider_urls
from vidbatch.emulator.config import EmulatorConfig
from vidbatch.emulator.faults import DropConnection

log = logging.getLogger("vidbatch.emulator")


class EmulatorH11Protocol(H11Protocol):
    """h11 protocol that closes the connection when the app raises DropConnection.

    uvicorn runs each request through ``RequestResponseCycle.run_asgi(self.app)``;
    wrapping ``self.app`` lets us mark the cycle disconnected before closing the
    socket, so uvicorn neither logs the exception nor sends a 500 page.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        inner = self.app

        async def dropping_app(scope: Any, receive: Any, send: Any) -> None:
            try:
                await inner(scope, receive, send)
            except DropConnection:
                cycle = getattr(self, "cycle", None)
                if cycle is not None:
                    cycle.disconnected = True
                if self.transport is not None:
                    self.transport.close()

        self.app = dropping_app


class _QuietDrops(logging.Filter):
    """If a DropConnection ever reaches uvicorn's logger (other protocol), hide it."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DropConnection)


logging.getLogger("uvicorn.error").addFilter(_QuietDrops())


def _uvicorn_config(app: Any, host: str, port: int, log_level: str) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="asyncio",
        http=EmulatorH11Protocol,
        access_log=False,
        log_level=log_level,
        lifespan="on",
        backlog=4096,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,  # an open SSE stream must not hold up stop()
    )


class EmulatorServer:
    """The emulator on a free loopback port, served from a background thread."""

    def __init__(self, config: EmulatorConfig | None = None, **knobs: Any) -> None:
        if config is None:
            knobs.setdefault("port", 0)
            config = EmulatorConfig.from_knobs(**knobs)
        elif knobs:
            raise TypeError("pass either a config or knobs, not both")
        self.config = config
        self.app = create_app(config)
        self.emulator = self.app.state.emulator
        self.base_url: str | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 30.0) -> str:
        if self._thread is not None:
            assert self.base_url is not None
            return self.base_url
        host = self.config.host or "127.0.0.1"
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, self.config.port or 0))
        port = sock.getsockname()[1]
        self._server = uvicorn.Server(_uvicorn_config(self.app, host, port, "warning"))
        self._thread = threading.Thread(target=self._run, args=(sock,), name=f"emulator-{port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("emulator server failed to start")
            time.sleep(0.01)
        self.base_url = f"http://{host}:{port}"
        self.emulator.state.note_host(f"{host}:{port}")
        return self.base_url

    def _run(self, sock: socket.socket) -> None:
        assert self._server is not None
        asyncio.run(self._server.serve(sockets=[sock]))

    def stop(self, timeout: float = 30.0) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None
        self._server = None

    def __enter__(self) -> "EmulatorServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ helpers
    @property
    def urls(self) -> dict[str, str]:
        if self.base_url is None:
            raise RuntimeError("server not started")
        return provider_urls(self.base_url)

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(base_url=self.base_url or "", timeout=30.0)
        return self._client

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        resp = self._http().request(method, path, json=body)
        if resp.status_code >= 400:
            raise ValueError(f"{method} {path}: HTTP {resp.status_code}: {resp.text}")
        return resp.json()

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_emulator/stats")

    def jobs(self, provider: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/_emulator/jobs" + (f"?provider={provider}" if provider else ""))["jobs"]

    def reset(self) -> None:
        self._call("POST", "/_emulator/reset")

    def faults(self) -> dict[str, Any]:
        """The active fault configuration (rules with their remaining ``times``)."""
        return self._call("GET", "/_emulator/faults")

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Replace the fault configuration (``set_faults()`` clears it)."""
        return self._call("POST", "/_emulator/faults", faults)

    def configure(self, **knobs: Any) -> dict[str, Any]:
        """Change runtime knobs (job_seconds, queue_seconds, max_running, instant, ...)."""
        return self._call("POST", "/_emulator/config", knobs)


def main(host: str = "127.0.0.1", port: int = 8787, *, log_level: str = "info", **knobs: Any) -> None:
    """Serve the emulator until interrupted (the ``vidbatch emulator`` command)."""
    config = EmulatorConfig.from_knobs(host=host, port=port, **knobs)
    app = create_app(config)
    server = uvicorn.Server(_uvicorn_config(app, host, port, log_level))
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    lines = [f"vidbatch provider emulator on {base}"]
    lines += [f"  {name:<14} {url}" for name, url in provider_urls(base).items()]
    lines += [f"  {'control':<14} {base}/_emulator/stats | /reset | /faults | /config | /jobs"]
    print("\n".join(lines), flush=True)
    server.run()
