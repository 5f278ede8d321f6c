"""Turning a claimed job into a backend request: its parents' responses, its frames, its prompt.

Prompts are rendered at claim time (parents are done by then) and stored with the job's result.
"""

from __future__ import annotations

from pathlib import Path

from egoqa.backends.base import Request, job_seed
from egoqa.config import generation_from, sampler_from
from egoqa.evaluate import parse_segments
from egoqa.prompts import render_template
from egoqa.store.db import Database
from egoqa.store.queue import ClaimedJob
from egoqa.store.work import responses_by_key

SEGMENTS = "__segments__"


def parent_responses(db: Database, spec: dict) -> dict[str, str]:
    """The chosen response of every turn this job reads (and of the turn its segments come from)."""
    keys = dict(spec.get("reads", {}))
    if "from" in spec["media"]:
        keys[SEGMENTS] = spec["media"]["from"]
    rows = responses_by_key(db, list(dict.fromkeys(keys.values())))
    return {name: rows.get(key) or "" for name, key in keys.items()}


def media_timestamps(spec: dict, duration: float, parents: dict[str, str]) -> list[float]:
    from egoqa.frames import sample_timestamps, segment_timestamps

    media = spec["media"]
    if media["kind"] == "none":
        return []
    sampler = sampler_from(media["sampler"])
    if media["kind"] == "frames":
        return sample_timestamps(sampler, duration)
    segments = [(s.start, s.end) for s in parse_segments(parents.get(SEGMENTS), duration)]
    return segment_timestamps(sampler, segments, duration)


def build_request(
    db: Database, job: ClaimedJob, video_path: str, offset: float, duration: float, decoder
) -> tuple[Request, dict]:
    """The request for one job, and the context its selection rules need."""
    from egoqa.selection import parse_stage_names

    spec = job.spec
    parents = parent_responses(db, spec)
    timestamps = media_timestamps(spec, duration, parents)
    frames = None
    if timestamps:
        max_edge = spec["media"]["sampler"]["max_edge"]
        frames = decoder.frames(Path(video_path), offset, timestamps, max_edge, duration)
    reads = {k: v for k, v in parents.items() if k != SEGMENTS}
    prompt = render_template(
        spec["template"],
        query=spec.get("query"),
        timestamps=timestamps,
        duration=duration,
        parents=reads,
    )
    first_read = next(iter(reads.values()), "")
    context = {
        "timestamps": timestamps,
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
