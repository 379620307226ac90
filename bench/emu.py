"""The provider emulator in its own process (its CPU is not vidbatch's).

``EmulatorProcess`` starts ``python -m vidbatch.emulator`` on a free loopback
port in instant mode (cached synthetic outputs: downloads are tiny real
videos) and wraps the control endpoints the benchmarks need.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx
import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmulatorProcess:
    def __init__(self, *, workers: int = 2) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        self.proc: subprocess.Popen[bytes] | None = None
        self._http: httpx.Client | None = None

    def start(self, timeout: float = 60.0) -> "EmulatorProcess":
        cmd = [sys.executable, "-m", "vidbatch.emulator", "--host", "127.0.0.1", "--port", str(self.port),
               "--instant", "--workers", str(self.workers), "--log-level", "warning"]
        # stderr to a file: a pipe nobody reads would block the emulator once full
        self._log = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self._http = httpx.Client(base_url=self.base_url, timeout=30.0)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self._http.get("/_emulator/health").status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self._log.seek(0)
                err = self._log.read().decode(errors="replace")
                raise RuntimeError(f"emulator did not start: {err[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc = None

    def __enter__(self) -> "EmulatorProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control --------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any = None) -> Any:
        assert self._http is not None
        resp = self._http.request(method, path, json=body)
        resp.raise_for_status()
        return resp.json()

    def configure(self, **knobs: Any) -> Any:
        return self._call("POST", "/_emulator/config", knobs)

    def reset(self) -> None:
        self._call("POST", "/_emulator/reset")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_emulator/stats")

    def jobs(self, provider: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/_emulator/jobs" + (f"?provider={provider}" if provider else ""))["jobs"]

    def cpu_seconds(self) -> float:
        if self.proc is None:
            return 0.0
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def prepare(self, job_seconds: float, time_scale: float = 1.0) -> None:
        """A clean slate for one scenario: no jobs, no stats, unlimited account slots."""
        self.reset()
        self.configure(job_seconds=job_seconds, queue_seconds=0.0, time_scale=time_scale, instant=True,
                       max_running=None)
