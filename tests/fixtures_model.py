"""Fixtures for tests on the real transformers path: the tiny model's backend and rendered clips.

Import the fixtures you use into the test module; the tiny checkpoint itself is conftest's
session-wide `tiny_model`, so it is built once per session.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from egoqa.backends.base import Frames
from egoqa.dev.synth import render_clip
from egoqa.media.frames import FrameDecoder, sample_timestamps
from egoqa.plan.config import SamplerConfig

CLIP_SEC = 24.0
CLIP_FPS = 10


@pytest.fixture(scope="session")
def tiny_backend(tiny_model: Path):
    """The real `TransformersBackend` on the tiny checkpoint, on CPU."""
    from egoqa.backends.transformers import TransformersBackend

    return TransformersBackend(str(tiny_model), device="cpu")


@pytest.fixture(scope="session")
def clip_24s(tmp_path_factory) -> Path:
    """A 24 s, 10 fps, 320x240 clip with each frame's index burned in."""
    return render_clip(tmp_path_factory.mktemp("clips") / "clip24.mp4", CLIP_SEC, fps=CLIP_FPS)


def clip_frames(clip: Path, spec: SamplerConfig, duration: float = CLIP_SEC, offset: float = 0.0):
    """Frames of `clip` sampled by `spec`, decoded for real."""
    timestamps = sample_timestamps(spec, duration)
    return FrameDecoder().frames(clip, offset, timestamps, spec.max_edge, duration)


def frames_of(array) -> Frames:
    """Frames from a uint8 array (T, H, W, 3) at 1 fps, for tests that need exact pixels."""
    return Frames(array, [i + 0.5 for i in range(len(array))], 1.0)
