"""Turning a claimed job into a backend request: its parents' responses, its frames, its prompt.

Prompts are rendered at claim time (parents are done by then) and stored with the job's result.
A shots sampler detects the clip's shots here, in the worker, through the database's cache: the
first job of a clip pays for the detection, every later one (any worker, any run) reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from itertools import pairwise
from pathlib import Path

from egoqa.answers.metrics import parse_segments
from egoqa.backends.base import Request, job_seed
from egoqa.plan import samplers
from egoqa.plan.config import generation_from, sampler_from
from egoqa.plan.styles import render_template
from egoqa.store.db import Database
from egoqa.store.queue import ClaimedJob
from egoqa.store.work import responses_by_key

SEGMENTS = "__segments__"


@dataclass
class Timing:
    """The frame times a job shows (an even count) and, for shots, each keyframe's shot."""

    timestamps: list[float] = field(default_factory=list)
    ranges: list[tuple[float, float]] | None = None

    @property
    def intervals(self) -> list[tuple[float, float]]:
        """The intervals the prompt lists: the shots, or the gaps between consecutive frames."""
        return list(self.ranges) if self.ranges is not None else list(pairwise(self.timestamps))


def parent_responses(db: Database, spec: dict) -> dict[str, str]:
    """The chosen response of every turn this job reads (and of the turn its segments come from)."""
    keys = dict(spec.get("reads", {}))
    if "from" in spec["media"]:
        keys[SEGMENTS] = spec["media"]["from"]
    rows = responses_by_key(db, list(dict.fromkeys(keys.values())))
    return {name: rows.get(key) or "" for name, key in keys.items()}


def media_timestamps(spec: dict, duration: float, parents: dict[str, str]) -> list[float]:
    """Frame times of a uniform or dense media spec (a shots sampler needs `media_timing`)."""
    from egoqa.media.frames import sample_timestamps, segment_timestamps

    media = spec["media"]
    if "sampler" not in media:
        return []
    sampler = sampler_from(media["sampler"])
    if media["kind"] in ("frames", "none") and "window" not in media:
        return sample_timestamps(sampler, duration)
    if media["kind"] == "proposals":
        return proposal_timestamps(sampler, media["windows"], duration)
    if media["kind"] in ("ground_truth", "frames"):  # the ground truth, or a zoom's window
        return segment_timestamps(sampler, [tuple(media["window"])], duration)
    segments = [(s.start, s.end) for s in parse_segments(parents.get(SEGMENTS), duration)]
    return segment_timestamps(sampler, segments, duration)


def proposal_timestamps(sampler, windows: list, duration: float) -> list[float]:
    """Frames of every proposed window, in time order: each window gets its share of a uniform
    sampler's frames (at least two), or the dense sampler's rate inside it."""
    from egoqa.media.frames import segment_timestamps

    sampler = sampler.model_copy(
        update=samplers.kind(sampler.kind).per_window(sampler, len(windows))
    )
    times = [t for s, e in windows for t in segment_timestamps(sampler, [(s, e)], duration)]
    return sorted(times)


def media_timing(
    db: Database, spec: dict, video_path: str, duration: float, parents: dict[str, str]
) -> Timing:
    """What the job shows: frame times, and with a shots sampler the shots they stand for."""
    media = spec["media"]
    sampler = media.get("sampler", {})
    if not sampler or not samplers.kind(sampler["kind"]).detected:
        return Timing(media_timestamps(spec, duration, parents))
    from egoqa.media.shots import clip_shots

    window = tuple(media.get("window") or (0.0, duration))
    spec_ = sampler_from(sampler)
    path, video, offset = Path(video_path), media["video"], media["offset"]
    shots = clip_shots(db, path, video, offset, window, spec_, duration)
    keyframes = shots.keyframes
    if len(keyframes) % 2:  # Qwen's temporal patch takes frames in pairs
        keyframes.append(keyframes[-1])
    return Timing(keyframes, shots.ranges)


def _frames(spec: dict, timing: Timing, video_path: str, offset: float, duration: float, decoder):
    media = spec["media"]
    if media["kind"] == "none" or not timing.timestamps:
        return None
    sampler = media["sampler"]
    frames = decoder.frames(
        Path(video_path), offset, timing.timestamps, sampler["max_edge"], duration
    )
    if not sampler.get("stamp"):
        return frames
    from egoqa.media.frames import stamp_frames
    from egoqa.plan.styles import fmt_range, fmt_time

    if timing.ranges is not None:
        labels = [fmt_range(*r) for r in timing.ranges]
        labels += labels[-1:] * (len(timing.timestamps) - len(labels))
    else:
        labels = [fmt_time(t) for t in timing.timestamps]
    return stamp_frames(frames, labels)


def build_requests(
    db: Database, job: ClaimedJob, video_path: str, offset: float, duration: float, decoder
) -> list[tuple[Request, dict]]:
    """The requests for one job, each with the context its selection rules need: one, or with
    `per_segment` one per chosen segment (its context says which: `part`, `parts`, `segment`)."""
    spec = job.spec
    parents = parent_responses(db, spec)
    segments = _chosen_segments(parents, duration) if spec.get("per_segment") else []
    if len(segments) < 1:
        timing = media_timing(db, spec, video_path, duration, parents)
        return [_request(job, parents, timing, video_path, offset, duration, decoder)]
    from egoqa.media.frames import segment_timestamps

    sampler = sampler_from(spec["media"]["sampler"])
    out = []
    for i, segment in enumerate(segments):
        timing = Timing(segment_timestamps(sampler, [segment], duration))
        request, context = _request(job, parents, timing, video_path, offset, duration, decoder)
        seed = (request.seed + i) & (2**63 - 1)  # a stream of its own for each segment's call
        context |= {"part": i, "parts": len(segments), "segment": segment}
        out.append((replace(request, seed=seed), context))
    return out


def _chosen_segments(parents: dict[str, str], duration: float) -> list[tuple[float, float]]:
    """The distinct segments the parent chose, clipped to the clip, in time order."""
    clipped = {
        (max(0.0, s.start), min(duration, s.end))
        for s in parse_segments(parents.get(SEGMENTS), duration)
    }
    return sorted((a, b) for a, b in clipped if b > a)


def _proposals_text(media: dict) -> str:
    if media.get("kind") != "proposals":
        return ""
    from egoqa.plan.proposals import numbered

    return numbered(media["windows"])


def _request(
    job: ClaimedJob,
    parents: dict[str, str],
    timing: Timing,
    video_path: str,
    offset: float,
    duration: float,
    decoder,
) -> tuple[Request, dict]:
    from egoqa.answers.selection import parse_stage_names

    spec = job.spec
    frames = _frames(spec, timing, video_path, offset, duration, decoder)
    reads = {k: v for k, v in parents.items() if k != SEGMENTS}
    prompt = render_template(
        spec["template"],
        query=spec.get("query"),
        timestamps=timing.timestamps,
        duration=duration,
        parents=reads,
        ranges=timing.ranges,
        proposals=_proposals_text(spec["media"]),
    )
    first_read = next(iter(reads.values()), "")
    context = {
        "timestamps": timing.timestamps,
        "intervals": timing.intervals,
        "stages": parse_stage_names(first_read) if first_read else [],
    }
    request = Request(
        job_id=job.id,
        prompt=prompt,
        frames=frames,
        samples=int(spec.get("samples", 1)),
        generation=generation_from(spec["generation"]),
        system=spec.get("system"),
        seed=job_seed(job.key),
    )
    return request, context
