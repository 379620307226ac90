"""The shared provider contract, applied to the embedded ``local`` provider."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from tests.contract import ProviderContract
from vidbatch.providers.base import ProviderSettings
from vidbatch.providers.local import LocalProvider
from vidbatch.spec import JobSpec

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> str:
    from vidbatch.synth import make_clip

    d = tmp_path_factory.mktemp("local-clips")
    return make_clip(str(d / "tiny.mp4"), width=160, height=90, seconds=1.0, fps=10)


class TestLocal(ProviderContract):
    cancel_accepted = None  # a running engine thread cannot be interrupted: either outcome is fine

    @pytest.fixture()
    async def provider(self) -> AsyncIterator[LocalProvider]:
        p = LocalProvider(ProviderSettings())
        yield p
        await p.aclose()

    @pytest.fixture()
    def spec(self) -> JobSpec:
        return JobSpec("local", "remove-background", "selfie-landscape", format="webm")

    async def test_upscale_job(self, provider: LocalProvider, clip: str) -> None:
        spec = JobSpec("local", "upscale", "lanczos", format="mp4", factor=2.0)
        handle, status = await self.run_job(provider, spec, clip)
        assert status.state.value == "succeeded"
        await self.check_artifacts(provider, handle, expect_mask=False)
