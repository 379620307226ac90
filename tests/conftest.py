"""Test set-up: an isolated Prefect home before Prefect is imported (notes/prefect.md §9)."""

from __future__ import annotations

import os
import tempfile

os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="vidbatch-test-prefect-")
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
for _name in ("FAL_KEY", "SCENARIO_SDK_API_KEY", "SCENARIO_SDK_API_SECRET", "REMOVEBGVIDEO_API_KEY"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def prefect_backend():
    """A temporary Prefect API for tests that run flows (about 10 s, once per session)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """Small real H.264 clips made with PyAV: two with a person, one without."""
    from vidbatch.synth import make_clip

    d = tmp_path_factory.mktemp("clips")
    return {
        "person": make_clip(str(d / "person.mp4"), width=320, height=180, seconds=1.0, fps=12),
        "person2": make_clip(str(d / "person2.mp4"), width=320, height=180, seconds=1.0, fps=12, seed=1),
        "empty": make_clip(str(d / "empty.mp4"), width=320, height=180, seconds=1.0, fps=12, person=False),
    }


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a long end-to-end test (runs in CI too; deselect with -m 'not slow')")
