"""A turn's job: its spec (everything that decides its output), its key (the spec's hash, a
local model by its content), and the row the queue stores; shared by the planner and by the
zoom, which plans each next level and the turns after it while a run is worked.
"""

from __future__ import annotations

import hashlib

from pydantic import ValidationError

from egoqa.errors import ConfigError
from egoqa.plan import samplers, specjson
from egoqa.plan.config import RunConfig, SamplerConfig, engine_id, key_engine, resolve_model_ref
from egoqa.plan.dataset import Clip, Query
from egoqa.plan.styles import TIMING_FIELDS, Style, Turn
from egoqa.store import queue


def zoom_block(turn, query) -> dict:
    """The `zoom` block of a depth-0 spec (the oracle's ground truth is part of its key)."""
    block = {
        "window_sec": float(turn.repeat_until["window_sec"]),
        "max_depth": int(turn.repeat_until["max_depth"]),
        "rule": turn.zoom,
        "depth": 0,
    }
    if turn.zoom == "oracle":
        block["gt"] = [query.gt_start, query.gt_end] if query is not None else None
    return block


def canonical(obj) -> str:
    return specjson.encode(obj)


def job_key(spec: dict) -> str:
    """The hash of everything that decides a job's output (a local model by its content)."""
    if "engine" in spec:
        spec = {**spec, "engine": key_engine(spec["engine"])}
    return hashlib.sha256(canonical(spec).encode()).hexdigest()


def _sampler(config: RunConfig, turn: Turn) -> dict:
    """The turn's sampler (the config's, with the turn's own keys over it), as it decides frames."""
    try:
        sampler = SamplerConfig.model_validate({**config.sampler.model_dump(), **turn.sampler})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"turn {turn.name!r}: bad sampler ({problems})") from None
    if samplers.kind(sampler.kind).detected and turn.media not in ("frames", "none"):
        raise ConfigError(
            f"turn {turn.name!r} shows frames of {turn.media!r}: give it a uniform or dense "
            'sampler (e.g. sampler = {kind = "dense"} in the style, or --set '
            f"turns.{turn.name}.sampler.kind=dense); shots are detected over a whole window"
        )
    return sampler.identity()


def media_spec(
    turn: Turn,
    config: RunConfig,
    clip: Clip,
    identity: str,
    parent_keys: dict[str, str],
    query: Query | None = None,
    window: list[float] | None = None,
    proposals: list[list[float]] | None = None,
    sampler: dict | None = None,
) -> dict:
    """The media part of a spec; `sampler` is the turn's `_sampler` where the caller has it."""
    if turn.media == "none" and not turn.placeholders() & set(TIMING_FIELDS):
        return {"kind": "none"}
    # A text-only turn that lists the frame times or intervals depends on the clip's sampling.
    spec = {
        "kind": turn.media,
        "sampler": sampler or _sampler(config, turn),
        "video": identity,
        "offset": round(clip.offset_sec, 3),
        "duration": round(clip.duration_sec, 3),
    }
    if turn.media == "segments":
        spec["from"] = parent_keys[turn.segments_from]
    if turn.media == "ground_truth":
        spec["window"] = _ground_truth(turn, clip, query)
    if turn.media == "proposals":
        spec["windows"] = [[round(float(s), 3), round(float(e), 3)] for s, e in proposals or []]
    if turn.repeat_until is not None:  # a zoom starts from the whole clip
        spec["window"] = [0.0, round(clip.duration_sec, 3)]
    if turn.window_from is not None:  # the final window of an earlier turn's zoom
        spec["window"] = [round(float(x), 3) for x in window]
        spec["window_of"] = parent_keys[turn.window_from]
    return spec


def _ground_truth(turn: Turn, clip: Clip, query: Query | None) -> list[float]:
    if query is None or query.gt_start is None or query.gt_end is None:
        raise ConfigError(
            f"turn {turn.name!r} shows the ground-truth window, but query "
            f"{clip.clip_uid}/{query.annotation_uid if query else '?'} has none (an "
            "unannotated split): use a style without a ground_truth turn for it"
        )
    return [round(query.gt_start, 3), round(query.gt_end, 3)]


def media_key(media: dict) -> str:
    """What decides a sample's memory: media kind and sampler (batch limits are learned per key)."""
    if media["kind"] == "none":
        return "none"
    s = media["sampler"]
    amount = samplers.kind(s["kind"]).amount(s)
    return f"{media['kind']}:{s['kind']}:{amount}:{s['max_edge']}px"


def turn_spec(
    turn: Turn,
    config: RunConfig,
    clip: Clip,
    identity: str,
    query: Query | None,
    parent_keys: dict[str, str],
    window: list[float] | None = None,
    proposals: list[list[float]] | None = None,
    engines: dict[str | None, dict] | None = None,
) -> dict:
    """Everything that decides this turn's output (and nothing else): the key is its hash.
    `engines` remembers each model's engine (its fingerprint) across calls."""
    media = media_spec(turn, config, clip, identity, parent_keys, query, window, proposals)
    constants = turn_constants(turn, config, engines)
    return {**constants, **_job_fields(turn, query, parent_keys, media)}


def turn_constants(turn: Turn, config: RunConfig, engines: dict | None = None) -> dict:
    """The fields of a turn's spec that are the same for every job of the turn; `engines`
    caches each model's engine (a local model's fingerprint is read once)."""
    engines = {} if engines is None else engines
    if turn.model not in engines:
        engines[turn.model] = config.engine(resolve_model_ref(turn.model) if turn.model else None)
    gen = config.generation.model_dump()
    if turn.max_new_tokens:
        gen["max_new_tokens"] = turn.max_new_tokens
    engines = {} if engines is None else engines
    if turn.model not in engines:
        engines[turn.model] = config.engine(resolve_model_ref(turn.model) if turn.model else None)
    return {
        "engine": engines[turn.model],
        "generation": gen,
        "system": turn.system or config.system_prompt,
        "template": turn.template,
        "samples": turn.samples,
        "select": list(turn.select),
        **({"per_segment": True} if turn.per_segment else {}),
    }


def _job_fields(turn: Turn, query: Query | None, parent_keys: dict[str, str], media: dict) -> dict:
    """The fields of a turn's spec that differ from job to job."""
    return {
        "query": query.text if turn.reads_query and query else None,
        "reads": {r: parent_keys[r] for r in turn.reads},
        "media": media,
        **({"zoom": zoom_block(turn, query)} if turn.repeat_until is not None else {}),
    }


def make_job(
    key: str,
    spec: dict,
    turn: Turn,
    index: int,
    style_name: str,
    clip_id: int,
    qid: int | None,
    config: RunConfig,
) -> queue.NewJob:
    """A planned job: its spec stored with its turn, and edges to every job it reads."""
    media = spec["media"]
    parents = [*spec["reads"].values(), *(media[k] for k in ("from", "window_of") if k in media)]
    stored = {
        **spec,
        "turn": turn.name,
        "turn_index": index,
        "style": style_name,
        "graded": turn.graded,
        "segments_from": turn.segments_from,
    }
    return queue.NewJob(
        key=key,
        engine=engine_id(spec["engine"]),
        model=spec["engine"]["model"],
        turn_name=turn.name,
        turn_index=index,
        clip_id=clip_id,
        query_id=qid,
        spec=canonical(stored),
        media_key=media_key(media),
        parent_keys=tuple(dict.fromkeys(parents)),
        priority=config.priority,
        max_attempts=config.max_attempts,
    )


def follow_up_jobs(config: RunConfig, style: Style, level, window, clip_ctx, query):
    """(turn, index, job) of each turn that takes the final window of the zoom `level` ended in."""
    clip, identity = clip_ctx
    parents = {level.turn_name: level.key}
    out = []
    for index, turn in enumerate(style.turns):
        if turn.window_from != level.turn_name:
            continue
        spec = turn_spec(turn, config, clip, identity, query, parents, window)
        key = job_key(spec)
        job = make_job(key, spec, turn, index, style.name, level.clip_id, level.query_id, config)
        out.append((turn, index, job))
    return out
