"""Batch sizes: a first guess from free memory and visual tokens, bounded by what was learned.

Pure functions; the worker feeds them what the backend and the database report.
"""

from __future__ import annotations

import math

PATCH = 14
MERGE = 2
TEMPORAL_PATCH = 2


def visual_tokens(frames: int, max_edge: int) -> int:
    """Upper bound on Qwen2.5-VL visual tokens for `frames` frames no larger than max_edge²."""
    side = max(1, math.ceil(max_edge / (PATCH * MERGE)))
    return math.ceil(frames / TEMPORAL_PATCH) * side * side


def frames_in(media: dict) -> int:
    """How many frames a job's media spec shows (an estimate for dense sampling of segments)."""
    if media.get("kind", "none") == "none":
        return 0
    s = media["sampler"]
    if s["kind"] == "uniform":
        return s["frames"] + s["frames"] % 2
    if s["kind"] == "shots":  # at most one keyframe per shot
        return s["max_shots"] + s["max_shots"] % 2
    return min(s["max_frames"], math.ceil(s["fps"] * float(media.get("duration", 0.0))) + 1)


def per_sample_bytes(
    media: dict,
    samples: int,
    *,
    per_sample_gb: float | None,
    gb_per_1k_visual_tokens: float,
    base_gb: float,
) -> float:
    if per_sample_gb is not None:
        gb = per_sample_gb
    else:
        vt = (
            visual_tokens(frames_in(media), media.get("sampler", {}).get("max_edge", 0))
            if frames_in(media)
            else 0
        )
        gb = base_gb + gb_per_1k_visual_tokens * vt / 1000
    return gb * samples * 2**30


def auto_batch_size(
    free_bytes: int | None,
    per_sample: float,
    max_batch: int,
    learned: tuple[int | None, int | None] = (None, None),
) -> int:
    """Free memory ÷ per-sample estimate, at most `max_batch`, below the smallest batch that failed."""
    guess = max_batch if free_bytes is None else int(free_bytes // max(per_sample, 1.0))
    size = max(1, min(max_batch, guess))
    max_ok, min_fail = learned
    if min_fail is not None:
        size = min(size, max(1, min_fail - 1))
        if max_ok is not None and max_ok < min_fail:
            size = max(min(size, min_fail - 1), min(max_ok, min_fail - 1))
    return max(1, size)


def split(items: list) -> tuple[list, list]:
    """Halves for an out-of-memory retry."""
    mid = len(items) // 2
    return items[:mid], items[mid:]
