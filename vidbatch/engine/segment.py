"""Person segmentation: MediaPipe's selfie segmenter, temporally smoothed.

The models are the two ``.tflite`` files shipped inside the ``mediapipe==0.10.21``
wheel (the last release that bundles them; notes/local-engine.md §1). Their
paths are resolved from the installed package: nothing is ever downloaded.
They run through the Tasks API ``ImageSegmenter`` in VIDEO mode (it reuses state
between frames and needs increasing timestamps).

* ``selfie-landscape`` (default): 144x256 input, made for 16:9 video. On the
  synthetic ground-truth clips: IoU 0.93, mean |alpha error| 0.02.
* ``selfie-general``: 256x256 input; it is worse on 16:9 video (stretched), kept
  for portrait / square footage.

It is a *person* segmenter for people near the camera: it leaves out objects a
person holds and under-covers the top of the hair.

Each :class:`Segmenter` owns its own MediaPipe graph: the engine runs one per
job, from several threads at once, and nothing here is shared between them.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import warnings
from typing import Iterator

import numpy as np

MODEL_FILES: dict[str, str] = {
    "selfie-landscape": "selfie_segmentation_landscape.tflite",
    "selfie-general": "selfie_segmentation.tflite",
}
DEFAULT_MODEL = "selfie-landscape"


def model_path(model: str = DEFAULT_MODEL) -> str:
    """The bundled ``.tflite`` for ``model`` inside the installed mediapipe package."""
    if model not in MODEL_FILES:
        raise ValueError(f"unknown segmentation model {model!r}; expected one of {', '.join(MODEL_FILES)}")
    import mediapipe

    path = os.path.join(
        os.path.dirname(mediapipe.__file__), "modules", "selfie_segmentation", MODEL_FILES[model]
    )
    if not os.path.isfile(path):
        raise RuntimeError(
            f"{MODEL_FILES[model]} is not in the installed mediapipe ({mediapipe.__version__}); "
            "vidbatch needs mediapipe==0.10.21, the last wheel that ships the selfie models"
        )
    return path


_stderr_lock = threading.Lock()


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Silence mediapipe's C++ start-up notices (GPU/EGL unavailable, XNNPACK,
    feedback tensors): absl logging ignores GLOG_* variables, so file descriptor 2
    is pointed at /dev/null for the few milliseconds a segmenter takes to start.
    ``VIDBATCH_ENGINE_LOGS=1`` keeps them."""
    if os.environ.get("VIDBATCH_ENGINE_LOGS") == "1":
        yield
        return
    with _stderr_lock:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(devnull)
            os.close(saved)


class Segmenter:
    """Per-frame person confidence, smoothed over time with an EMA.

    ``smoothing`` is the weight of the new frame: ``m_t = s * new + (1 - s) * m_{t-1}``
    (0.6 cuts flicker 7-27 % on the test clips for a little accuracy; 1.0 = off).
    Call :meth:`alpha` once per frame in order; use as a context manager.
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, smoothing: float = 0.6, fps: float = 25.0) -> None:
        if not 0.0 < smoothing <= 1.0:
            raise ValueError(f"smoothing must be in (0, 1], got {smoothing}")
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        self._mp = mp
        options = vision.ImageSegmenterOptions(
            base_options=BaseOptions(model_asset_path=model_path(model)),
            running_mode=vision.RunningMode.VIDEO,
            output_confidence_masks=True,
            output_category_mask=False,
        )
        with warnings.catch_warnings(), quiet_native_stderr():
            # protobuf's MessageFactory deprecation, raised inside mediapipe 0.10.21
            warnings.simplefilter("ignore", UserWarning)
            self._seg = vision.ImageSegmenter.create_from_options(options)
        self.model = model
        self.smoothing = float(smoothing)
        self._step_ms = 1000.0 / fps if fps > 0 else 40.0
        self._index = 0
        self._last_ts = -1
        self._state: np.ndarray | None = None

    def confidence(self, rgb: np.ndarray) -> np.ndarray:
        """Raw person confidence (float32 HxW, 0..1) for one RGB uint8 frame."""
        # VIDEO mode wants strictly increasing integer milliseconds
        ts = max(self._last_ts + 1, int(round(self._index * self._step_ms)))
        self._last_ts, self._index = ts, self._index + 1
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        if self._index == 1:
            with quiet_native_stderr():  # TFLite announces its XNNPACK delegate on the first frame
                result = self._seg.segment_for_video(image, ts)
        else:
            result = self._seg.segment_for_video(image, ts)
        mask = result.confidence_masks[0].numpy_view()
        h, w = rgb.shape[:2]
        # 0.10.21 returns (H, W); later releases (H, W, 1)
        return mask.reshape(h, w)

    def alpha(self, rgb: np.ndarray) -> np.ndarray:
        """Smoothed alpha (uint8 HxW, 0..255) for the next frame."""
        conf = self.confidence(rgb)
        s = self.smoothing
        if self._state is None or s >= 1.0 or self._state.shape != conf.shape:
            state = conf.astype(np.float32, copy=True)
        else:
            # in place: no per-frame allocation of a full-size float buffer
            state = self._state
            state *= 1.0 - s
            state += s * conf
        self._state = state
        out = np.multiply(state, 255.0, dtype=np.float32)
        out += 0.5
        np.clip(out, 0.0, 255.0, out=out)
        return out.astype(np.uint8)

    def close(self) -> None:
        if self._seg is not None:
            self._seg.close()
            self._seg = None

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
