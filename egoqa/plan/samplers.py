"""Frame samplers by kind: one entry each says everything a kind means anywhere in egoqa.

An entry holds the fields that decide its frames (they go into a job's key), where its frames
fall on a timeline (or that they come from the video's detected shots), how many frames a job
shows at most (the batch sizer's estimate) and its part of a media key (what batch limits are
learned per). A new kind is one entry here, plus its fields on `config.SamplerConfig` when it
needs new ones; an unknown kind is an error wherever it is read.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from egoqa.errors import ConfigError


@dataclass(frozen=True)
class Kind:
    # Its own fields that decide its frames (with kind, max_edge and stamp: a job key's sampler).
    fields: Callable[[Any], tuple[str, ...]]
    # Frame times on a timeline of `length` seconds (whole clip, or segments joined end to end);
    # None: the frames are the keyframes of shots detected in the video (`media.shots`).
    positions: Callable[[Any, float], list[float]] | None
    # The most frames a job shows: its stored sampler (a dict) over `seconds` of video.
    frames: Callable[[dict, float], int]
    # Its part of a media key: what decides a sample's memory.
    amount: Callable[[dict], str]
    # What one of `n` windows (a grounding model's proposals) gets of the sampler.
    per_window: Callable[[Any, int], dict[str, Any]] = lambda spec, n: {}

    @property
    def detected(self) -> bool:
        return self.positions is None


def _uniform(spec, length: float) -> list[float]:
    """`frames` spread over the timeline: both ends included when `endpoints`, else bin centres."""
    if spec.endpoints and spec.frames > 1:
        return [i * length / (spec.frames - 1) for i in range(spec.frames)]
    return [(i + 0.5) * length / spec.frames for i in range(spec.frames)]


def _dense(spec, length: float) -> list[float]:
    """`fps` frames a second at bin centres, thinned evenly to at most `max_frames`."""
    count = max(1, math.ceil(length * spec.fps - 0.5))  # k with (k + 0.5) / R < length
    grid = [(k + 0.5) / spec.fps for k in range(count)]
    grid = [t for t in grid if t < length] or [length / 2]
    return thin(grid, spec.max_frames)


def thin(values: list[float], limit: int) -> list[float]:
    """Keep `limit` evenly spread values (bin centres over the index range)."""
    if len(values) <= limit:
        return values
    return [values[int((j + 0.5) * len(values) / limit)] for j in range(limit)]


def _shot_fields(spec) -> tuple[str, ...]:
    threshold = "threshold" if spec.detector == "content" else "adaptive_threshold"
    return ("max_shots", "detector", "min_shot_sec", "split_sec", threshold)


KINDS: dict[str, Kind] = {
    "uniform": Kind(
        fields=lambda spec: ("frames", "endpoints"),
        positions=_uniform,
        frames=lambda s, seconds: s["frames"] + s["frames"] % 2,
        amount=lambda s: f"{s['frames']}f",
        per_window=lambda spec, n: {"frames": max(2, spec.frames // max(1, n))},
    ),
    "dense": Kind(
        fields=lambda spec: ("fps", "max_frames"),
        positions=_dense,
        frames=lambda s, seconds: min(s["max_frames"], math.ceil(s["fps"] * seconds) + 1),
        amount=lambda s: f"{s['fps']}fps<={s['max_frames']}",
    ),
    "shots": Kind(  # one keyframe (the middle frame) per shot PySceneDetect finds
        fields=_shot_fields,
        positions=None,
        frames=lambda s, seconds: s["max_shots"] + s["max_shots"] % 2,
        amount=lambda s: f"<={s['max_shots']}shots",
    ),
}


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown sampler kind {name!r}: use {choices()}") from None


def choices() -> str:
    quoted = [repr(k) for k in KINDS]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
