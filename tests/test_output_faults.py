"""The emulator's ``bad_output`` and ``legit_deviation`` knobs, judged by the real verifier.

Jobs go through the production fal client over real HTTP to the emulator
(instant mode: synthetic outputs of the right container and shape); each
result is downloaded and verified with the default tolerances, as a run would.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import av
import numpy as np
import pytest

from tests.contract import EmulatorControl, make_item, read_artifact, wait_terminal
from vidbatch import media
from vidbatch.errors import VerifyError
from vidbatch.providers.base import ProviderSettings
from vidbatch.providers.fal import FalProvider
from vidbatch.spec import Item, JobSpec, JobState, MediaInfo
from vidbatch.verify import input_is_vfr, verify_outputs

pytestmark = pytest.mark.asyncio(loop_scope="module")

TRANSPARENT = JobSpec(provider="fal", operation="remove-background", model="General Use (Light)", format="webm")
UPSCALE = JobSpec(provider="fal", operation="upscale", model="seedvr2", format="mp4", factor=1.5)


@pytest.fixture(scope="module")
def emulator_server() -> Iterator[Any]:
    from vidbatch.emulator import EmulatorServer

    with EmulatorServer(instant=True, job_seconds=0, queue_seconds=0) as server:
        yield server


@pytest.fixture()
def emulator(emulator_server: Any) -> Iterator[EmulatorControl]:
    control = EmulatorControl(emulator_server.base_url)
    control.reset()
    yield control
    control.faults()


@pytest.fixture()
async def fal(emulator: EmulatorControl) -> AsyncIterator[FalProvider]:
    provider = FalProvider(ProviderSettings(base_url=emulator.url, credentials={"FAL_KEY": "k:s"}, timeout=20.0))
    yield provider
    await provider.aclose()


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from vidbatch.synth import make_clip

    d = tmp_path_factory.mktemp("fault-clips")
    vfr = d / "vfr.mp4"
    with av.open(str(vfr), "w", format="mp4") as out:  # frame gaps of 33 and 50 ms
        stream = out.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        t = 0
        for i in range(30):
            frame = av.VideoFrame.from_ndarray(np.full((64, 96, 3), i * 8, np.uint8), format="rgb24")
            frame.pts, frame.time_base = t, Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
            t += 50 if i % 3 == 0 else 33
        for packet in stream.encode():
            out.mux(packet)
    return {"cfr": make_clip(str(d / "cfr.mp4"), width=100, height=60, seconds=1.0, fps=10), "vfr": str(vfr)}


async def _run(fal: FalProvider, path: str, spec: JobSpec, tmp_path: Path) -> tuple[Item, MediaInfo, str]:
    """One job through the emulator; returns the item, its input's probe and the downloaded output."""
    item = make_item(path, spec, size=Path(path).stat().st_size)
    handle = await fal.submit(spec, await fal.stage(item))
    status = await wait_terminal(fal, handle)
    assert status.state == JobState.SUCCEEDED, status.message
    video = next(a for a in await fal.results(handle) if a.kind == "video")
    out = tmp_path / f"out.{spec.ext}"
    out.write_bytes(await read_artifact(fal, video))
    return item, media.probe(path), str(out)


async def test_bad_output_loses_alpha_and_fails_verification(fal, emulator, clips, tmp_path):
    emulator.faults(bad_output=1.0)  # the control endpoint, at run time
    item, info, out = await _run(fal, clips["cfr"], TRANSPARENT, tmp_path)
    with pytest.raises(VerifyError) as err:
        verify_outputs(item, info, out)
    checks = err.value.facts["output"]["checks"]
    assert not checks["alpha"]["ok"] and checks["size"]["ok"] and checks["frame_count"]["ok"]
    assert emulator.stats()["submissions"]["fal"] == 1


async def test_bad_output_cuts_an_opaque_result_short(fal, emulator, clips, tmp_path):
    emulator.faults(bad_output=1.0)
    item, info, out = await _run(fal, clips["cfr"], UPSCALE, tmp_path)
    with pytest.raises(VerifyError) as err:
        verify_outputs(item, info, out)
    checks = err.value.facts["output"]["checks"]
    assert not checks["frame_count"]["ok"] and checks["size"]["ok"]
    # the fault is off again: the same job verifies
    emulator.faults()
    item, info, out = await _run(fal, clips["cfr"], UPSCALE, tmp_path)
    assert verify_outputs(item, info, out)["output"]["ok"]


async def test_legit_deviation_upscale_rounded_to_16_passes(fal, emulator, clips, tmp_path):
    emulator.faults(legit_deviation=1.0)
    item, info, out = await _run(fal, clips["cfr"], UPSCALE, tmp_path)  # 100x60 x 1.5 = 150x90
    facts = verify_outputs(item, info, out)
    assert (facts["output"]["width"], facts["output"]["height"]) == (160, 96)
    assert facts["output"]["ok"] and facts["warnings"] == []


async def test_legit_deviation_one_frame_short_passes(fal, emulator, clips, tmp_path):
    emulator.faults(legit_deviation=1.0)
    item, info, out = await _run(fal, clips["cfr"], TRANSPARENT, tmp_path)
    facts = verify_outputs(item, info, out)
    assert facts["output"]["frames"] == info.frames - 1 and facts["output"]["ok"]


async def test_legit_deviation_vfr_retimed_to_constant_rate_passes(fal, emulator, clips, tmp_path):
    emulator.faults(legit_deviation=1.0)
    item, info, out = await _run(fal, clips["vfr"], TRANSPARENT, tmp_path)
    assert input_is_vfr(info)
    facts = verify_outputs(item, info, out)
    assert facts["output"]["frames"] != info.frames  # re-timed, not a copy of the input's count
    assert facts["output"]["fps"] == pytest.approx(info.nominal_fps, rel=0.01)
    assert facts["output"]["ok"]
