"""A real S3-compatible server for tests: moto's server mode on loopback.

Not a mock of boto: s3fs, botocore, presigned URLs and multipart uploads all
talk HTTP to ``moto.server.ThreadedMotoServer`` on ``127.0.0.1:<free port>``.

Use from a test module::

    from tests.s3 import s3, s3_server  # noqa: F401  (pytest fixtures)

    def test_x(s3):                      # fresh server state + buckets per test
        s3.client().put_object(Bucket="vb-in", Key="a.mp4", Body=b"...")

``s3_server`` (session) starts the server once and points the AWS environment
(``AWS_ENDPOINT_URL``, keys, region) at it for the rest of the session;
``s3`` (function) resets the server, creates ``BUCKETS`` and clears s3fs's
instance cache so no test sees another's listings.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterator

import pytest

#: distinctive values so that tests can prove they never land in reports
ACCESS_KEY = "VBTESTACCESSKEY12345"
SECRET_KEY = "vbtest-secret-7Qk2pX9wLmZr4sTu"
REGION = "us-east-1"
BUCKETS = ("vb-in", "vb-out")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class S3Endpoint:
    """A running S3-compatible server."""

    url: str

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL": self.url,
        }

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY, region_name=REGION,
        )

    def reset(self) -> None:
        """Forget every bucket and object (moto's management API)."""
        import httpx

        httpx.post(f"{self.url}/moto-api/reset", timeout=30).raise_for_status()

    def make_buckets(self, *names: str) -> None:
        client = self.client()
        for name in names:
            client.create_bucket(Bucket=name)

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def uploads(self, bucket: str) -> list[dict[str, Any]]:
        """Incomplete multipart uploads of a bucket."""
        return list(self.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def _wait_listening(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"moto server did not listen on 127.0.0.1:{port} within {timeout} s")


@contextlib.contextmanager
def moto_thread() -> Iterator[S3Endpoint]:
    """moto's server in a thread of this process (tests: fast, shares nothing else)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    _wait_listening(port)
    try:
        yield S3Endpoint(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@contextlib.contextmanager
def moto_process() -> Iterator[S3Endpoint]:
    """moto's server in a child process (benchmarks: its memory is not ours)."""
    port = free_port()
    code = (
        "import logging,sys,time\n"
        "logging.getLogger('werkzeug').setLevel(logging.ERROR)\n"
        "from moto.server import ThreadedMotoServer\n"
        f"s=ThreadedMotoServer(ip_address='127.0.0.1',port={port},verbose=False); s.start()\n"
        "sys.stdin.read()\n"  # until the parent closes our stdin (or dies)
        "s.stop()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        yield S3Endpoint(f"http://127.0.0.1:{port}")
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            proc.wait(timeout=10)


def clear_fs_cache() -> None:
    """Drop cached s3fs instances (and their listings) so a test starts clean."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Endpoint]:
    """One moto server for the session; the AWS environment points at it meanwhile."""
    with moto_thread() as endpoint, pytest.MonkeyPatch.context() as mp:
        for name, value in endpoint.env().items():
            mp.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_SESSION_TOKEN", "VIDBATCH_S3_ANON"):
            mp.delenv(name, raising=False)
        yield endpoint
    clear_fs_cache()


@pytest.fixture
def s3(s3_server: S3Endpoint) -> Iterator[S3Endpoint]:
    """A clean server with ``BUCKETS`` for one test."""
    s3_server.reset()
    s3_server.make_buckets(*BUCKETS)
    clear_fs_cache()
    yield s3_server
    clear_fs_cache()
