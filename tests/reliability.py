"""Helpers for the reliability tests (crash, soak, limits, bad inputs, secrets).

Everything here talks to real processes over real HTTP:

* ``make_clips``: tiny distinct H.264 clips (each one's bytes, hence its
  sha256, differs, so the emulator's ``submissions_by_content`` counts one
  entry per input).
* ``EmulatorProcess``: ``python -m vidbatch.emulator`` in its own process
  group (it survives a SIGKILL of a ``vidbatch run``), with its control API.
* ``VidbatchProcess``: ``vidbatch run ... --emulator URL`` as a subprocess in
  its own process group, so a SIGKILL takes Prefect's ephemeral server with it.
* ``StateDir``: what a run left on the state store (handles, records, temp keys).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import httpx
import pytest

PYTHON = sys.executable
VIDBATCH = str(Path(sys.executable).with_name("vidbatch"))
CREDENTIAL_VARS = ("FAL_KEY", "SCENARIO_SDK_API_KEY", "SCENARIO_SDK_API_SECRET", "REMOVEBGVIDEO_API_KEY")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- clips
def make_clip(path: str | os.PathLike[str], seed: int, *, width: int = 64, height: int = 36, frames: int = 4,
              fps: int = 10) -> str:
    """A tiny H.264 mp4 whose bytes depend on ``seed`` (about 6 ms each)."""
    import av
    import numpy as np

    rng = np.random.default_rng(seed)
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "30"}
        base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(np.roll(base, 2 * i, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_clips(folder: str | os.PathLike[str], n: int, *, seed0: int = 0, prefix: str = "clip", **kw: Any) -> list[str]:
    return [make_clip(Path(folder) / f"{prefix}{i:04d}.mp4", seed0 + i, **kw) for i in range(n)]


def sha256_of(path: str | os.PathLike[str]) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# --------------------------------------------------------------------------- processes
def kill_group(proc: subprocess.Popen[Any], sig: int = signal.SIGKILL, wait: float = 30.0) -> None:
    """Signal a process's whole group (it was started with ``start_new_session``)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=wait)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def group_gone_within(pgid: int, timeout: float = 15.0) -> bool:
    """Whether every process of the group has exited (and been reaped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def wait_group_gone(pgid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while group_alive(pgid):
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.5)
            return
        time.sleep(0.1)


class EmulatorProcess:
    """``python -m vidbatch.emulator`` on a free port, in its own process group."""

    def __init__(self, log_dir: str | os.PathLike[str], **knobs: Any) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        args = [PYTHON, "-m", "vidbatch.emulator", "--port", str(self.port), "--log-level", "warning"]
        for name, value in knobs.items():
            flag = "--" + name.replace("_", "-")
            if value is True:
                args.append(flag)
            elif value not in (None, False):
                args += [flag, str(value)]
        self.log_path = Path(log_dir) / f"emulator-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.http = httpx.Client(base_url=self.url, timeout=30.0)
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.http.get("/_emulator/health").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"emulator did not start: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.1)

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        resp = self.http.request(method, path, json=body)
        resp.raise_for_status()
        return resp.json()

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_emulator/stats")

    def jobs(self, provider: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/_emulator/jobs" + (f"?provider={provider}" if provider else ""))["jobs"]

    def reset(self) -> None:
        self._call("POST", "/_emulator/reset")

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        return self._call("POST", "/_emulator/faults", faults)

    def configure(self, **knobs: Any) -> dict[str, Any]:
        return self._call("POST", "/_emulator/config", knobs)

    def stop(self) -> None:
        self.http.close()
        kill_group(self.proc, signal.SIGTERM, wait=10)
        self._log.close()

    def __enter__(self) -> "EmulatorProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def subprocess_env(prefect_home: str | os.PathLike[str], **extra: str) -> dict[str, str]:
    """The environment of a ``vidbatch run`` subprocess: ephemeral Prefect in its own home."""
    env = {k: v for k, v in os.environ.items() if k not in CREDENTIAL_VARS and k != "PREFECT_API_URL"}
    env.update(
        PREFECT_HOME=str(prefect_home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


#: ``vidbatch run`` process groups not yet reaped (``reap`` kills them after each test; the
#: emulator is a context manager, so ``with`` stops it even when a test fails)
LIVE: list[subprocess.Popen[Any]] = []


@pytest.fixture(autouse=True)
def reap() -> Iterator[None]:
    """After each test (also a failed one): SIGKILL the groups of processes it left running.

    Autouse in every module that imports it (``from tests.reliability import reap``).
    """
    yield
    while LIVE:
        proc = LIVE.pop()
        if proc.poll() is None or group_alive(proc.pid):
            kill_group(proc, signal.SIGKILL, wait=10)


class VidbatchProcess:
    """``vidbatch run MANIFEST [args]`` in its own process group (stdout/stderr to files)."""

    def __init__(self, manifest: str | os.PathLike[str], log_dir: str | os.PathLike[str], env: Mapping[str, str],
                 *args: str, tag: str = "run") -> None:
        self.out_path = Path(log_dir) / f"{tag}.out"
        self.err_path = Path(log_dir) / f"{tag}.err"
        self._out = open(self.out_path, "wb")  # noqa: SIM115
        self._err = open(self.err_path, "wb")  # noqa: SIM115
        self.started = time.monotonic()
        self.proc = subprocess.Popen([VIDBATCH, "run", str(manifest), *args], stdout=self._out, stderr=self._err,
                                     env=dict(env), start_new_session=True)
        LIVE.append(self.proc)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float) -> int:
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self._close()
        wait_group_gone(self.proc.pid)  # the ephemeral server exits with its parent
        return code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """SIGKILL the whole group: vidbatch and its ephemeral Prefect server."""
        kill_group(self.proc, sig)
        self._close()

    def _close(self) -> None:
        for fh in (self._out, self._err):
            if not fh.closed:
                fh.close()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    def summary(self) -> dict[str, Any]:
        """The ``--json`` summary printed on stdout."""
        text = self.stdout
        return json.loads(text[text.index("{"):])


def wait_until(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
               proc: VidbatchProcess | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if proc is not None and proc.proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.proc.returncode}) before {what}:\n{proc.stderr[-3000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --------------------------------------------------------------------------- state
@dataclass
class StateDir:
    """What runs left under a local state root (``{output}/.vidbatch``)."""

    root: Path

    def _docs(self, kind: str) -> list[dict[str, Any]]:
        out = []
        for p in (self.root / kind).glob("*/*.json"):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                pass  # replaced while we read it
        return out

    def handles(self) -> list[dict[str, Any]]:
        return self._docs("handles")

    def records(self) -> list[dict[str, Any]]:
        return self._docs("records")

    def count(self, kind: str, state: str | None = None) -> int:
        docs = self._docs(kind)
        return sum(1 for d in docs if state is None or d.get("state") == state)


def temp_keys(root: str | os.PathLike[str]) -> list[Path]:
    from vidbatch.storage import TEMP_PREFIX

    return [p for p in Path(root).rglob(f"{TEMP_PREFIX}*")]


def write_manifest(path: str | os.PathLike[str], text: str) -> str:
    Path(path).write_text(textwrap.dedent(text))
    return str(path)


def report_rows(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def one_submission_each(stats: Mapping[str, Any], provider: str, inputs: Iterable[str]) -> dict[str, int]:
    """{input sha256: submissions} for ``inputs``, from the emulator's stats."""
    seen = stats["submissions_by_content"][provider]
    return {sha256_of(p): int(seen.get(sha256_of(p), 0)) for p in inputs}
