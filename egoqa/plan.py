"""Planning a run: clips, queries and the content-addressed jobs of every turn, written in one go.

A job's key hashes everything that decides its output — model (revision, dtype), generation
settings, the turn's template, its media spec (sampler, size, the video file's identity and the
clip's place in it), the query text if the turn reads it, and its parents' keys — so identical
work is shared and a changed input can never reuse a stale answer.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from egoqa import __version__
from egoqa.config import RunConfig
from egoqa.dataset import Clip, Dataset, Query, query_type
from egoqa.errors import ConfigError, DatasetError
from egoqa.prompts import Style, Turn
from egoqa.store import queue, skips
from egoqa.store.db import Cursor, Database

_IDENTITY_BYTES = 1 << 16


def video_identity(path: Path) -> str:
    """Size plus a hash of the first and last 64 KiB: cheap, and changes when the file does."""
    try:
        size = path.stat().st_size
        h = hashlib.sha1(str(size).encode())
        with path.open("rb") as f:
            h.update(f.read(_IDENTITY_BYTES))
            if size > 2 * _IDENTITY_BYTES:
                f.seek(-_IDENTITY_BYTES, 2)
                h.update(f.read())
    except OSError as exc:
        raise DatasetError(
            f"video file {path} cannot be read ({exc.strerror or exc}): check the file and its "
            "permissions; nothing was enqueued"
        ) from None
    return f"{size}-{h.hexdigest()[:20]}"


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def job_key(spec: dict) -> str:
    return hashlib.sha256(canonical(spec).encode()).hexdigest()


@dataclass
class PlanReport:
    run: str
    queries: int
    skipped: dict[str, int]
    clips: int
    jobs_new: int
    jobs_reused: int
    jobs_total: int
    per_turn: dict[str, int] = field(default_factory=dict)
    recomputed: int = 0

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# --- job specs -------------------------------------------------------------------------------


def _sampler(config: RunConfig, turn: Turn) -> dict:
    return {**config.sampler.model_dump(), **turn.sampler}


def media_spec(
    turn: Turn, config: RunConfig, clip: Clip, identity: str, parent_keys: dict[str, str]
) -> dict:
    if turn.media == "none":
        return {"kind": "none"}
    spec = {
        "kind": turn.media,
        "sampler": _sampler(config, turn),
        "video": identity,
        "offset": round(clip.offset_sec, 3),
        "duration": round(clip.duration_sec, 3),
    }
    if turn.media == "segments":
        spec["from"] = parent_keys[turn.segments_from]
    return spec


def media_key(media: dict) -> str:
    """What decides a sample's memory: media kind and sampler (batch limits are learned per key)."""
    if media["kind"] == "none":
        return "none"
    s = media["sampler"]
    amount = f"{s['frames']}f" if s["kind"] == "uniform" else f"{s['fps']}fps<={s['max_frames']}"
    return f"{media['kind']}:{s['kind']}:{amount}:{s['max_edge']}px"


def turn_spec(
    turn: Turn,
    config: RunConfig,
    clip: Clip,
    identity: str,
    query: Query | None,
    parent_keys: dict[str, str],
) -> dict:
    """Everything that decides this turn's output (and nothing else): the key is its hash."""
    gen = config.generation.model_dump()
    if turn.max_new_tokens:
        gen["max_new_tokens"] = turn.max_new_tokens
    return {
        "model": turn.model or config.model,
        "revision": config.revision,
        "dtype": config.dtype,
        "generation": gen,
        "system": turn.system or config.system_prompt,
        "template": turn.template,
        "query": query.text if turn.reads_query and query else None,
        "reads": {r: parent_keys[r] for r in turn.reads},
        "media": media_spec(turn, config, clip, identity, parent_keys),
        "samples": turn.samples,
        "select": list(turn.select),
    }


class _Planner:
    def __init__(
        self,
        config: RunConfig,
        style: Style,
        clip_ids: dict[str, int],
        identities: dict[str, str],
        query_ids: dict[tuple, int],
    ) -> None:
        self.config, self.style = config, style
        self.clip_ids, self.identities, self.query_ids = clip_ids, identities, query_ids
        self.per_clip = style.per_clip()
        self.jobs: dict[str, queue.NewJob] = {}
        self.chains: list[tuple[int, list[str]]] = []  # (query id, key per turn)
        # A per-clip turn's spec is the same for every query on the clip: hash it once per clip.
        self.clip_keys: dict[tuple[str, str], str] = {}

    def plan_query(self, clip: Clip, q: Query) -> None:
        qid = self.query_ids[(q.clip_uid, q.annotation_uid, q.query_idx)]
        keys: dict[str, str] = {}
        for index, turn in enumerate(self.style.turns):
            shared = self.per_clip[turn.name]
            key = self.clip_keys.get((clip.clip_uid, turn.name)) if shared else None
            if key is not None:
                keys[turn.name] = key
                continue
            spec = turn_spec(turn, self.config, clip, self.identities[clip.clip_uid], q, keys)
            key = keys[turn.name] = job_key(spec)
            if shared:
                self.clip_keys[(clip.clip_uid, turn.name)] = key
            if key not in self.jobs:
                self.jobs[key] = self._new_job(
                    key, spec, turn, index, clip, None if self.per_clip[turn.name] else qid
                )
        self.chains.append((qid, [keys[t.name] for t in self.style.turns]))

    def _new_job(
        self, key: str, spec: dict, turn: Turn, index: int, clip: Clip, qid: int | None
    ) -> queue.NewJob:
        parents = tuple(
            dict.fromkeys(
                [
                    *spec["reads"].values(),
                    *([spec["media"]["from"]] if "from" in spec["media"] else []),
                ]
            )
        )
        stored = {
            **spec,
            "turn": turn.name,
            "turn_index": index,
            "style": self.style.name,
            "graded": turn.graded,
            "segments_from": turn.segments_from,
        }
        return queue.NewJob(
            key=key,
            model=spec["model"],
            turn_name=turn.name,
            turn_index=index,
            clip_id=self.clip_ids[clip.clip_uid],
            query_id=qid,
            spec=canonical(stored),
            media_key=media_key(spec["media"]),
            parent_keys=parents,
            priority=self.config.priority,
            max_attempts=self.config.max_attempts,
        )


# --- writing the catalogue -------------------------------------------------------------------


def _upsert_clips(cur: Cursor, clips: list[Clip], identities: dict[str, str]) -> dict[str, int]:
    cur.executemany(
        """INSERT INTO clips (clip_uid, video_uid, video_path, offset_sec, duration_sec, identity, split)
           VALUES (:clip_uid, :video_uid, :video_path, :offset_sec, :duration_sec, :identity, :split)
           ON CONFLICT (clip_uid) DO UPDATE SET video_uid = excluded.video_uid,
             video_path = excluded.video_path, offset_sec = excluded.offset_sec,
             duration_sec = excluded.duration_sec, identity = excluded.identity, split = excluded.split""",
        [
            {
                "clip_uid": c.clip_uid,
                "video_uid": c.video_uid,
                "video_path": str(Path(c.video_path).absolute()),
                "offset_sec": c.offset_sec,
                "duration_sec": c.duration_sec,
                "identity": identities[c.clip_uid],
                "split": c.split,
            }
            for c in clips
        ],
    )
    return dict(cur.all("SELECT clip_uid, id FROM clips"))


def _upsert_queries(
    cur: Cursor, queries: list[Query], clip_ids: dict[str, int]
) -> dict[tuple, int]:
    cur.executemany(
        """INSERT INTO queries (clip_id, annotation_uid, query_idx, text, query_type, template,
                                gt_start, gt_end, extra)
           VALUES (:clip_id, :annotation_uid, :query_idx, :text, :query_type, :template,
                   :gt_start, :gt_end, :extra)
           ON CONFLICT (clip_id, annotation_uid, query_idx) DO UPDATE SET text = excluded.text,
             query_type = excluded.query_type, template = excluded.template,
             gt_start = excluded.gt_start, gt_end = excluded.gt_end, extra = excluded.extra""",
        [
            {
                "clip_id": clip_ids[q.clip_uid],
                "annotation_uid": q.annotation_uid,
                "query_idx": q.query_idx,
                "text": q.text,
                "query_type": query_type(q.text),
                "template": q.template,
                "gt_start": q.gt_start,
                "gt_end": q.gt_end,
                "extra": canonical(q.extra),
            }
            for q in queries
        ],
    )
    rows = cur.all(
        "SELECT c.clip_uid, q.annotation_uid, q.query_idx, q.id FROM queries q JOIN clips c ON c.id = q.clip_id"
    )
    return {(c, a, i): qid for c, a, i, qid in rows}


def _ensure_run(
    cur: Cursor, name: str, config: RunConfig, style: Style, annotations: str | None
) -> int:
    row = cur.execute("SELECT id, config_hash FROM runs WHERE name = :n", {"n": name}).fetchone()
    if row is not None:
        if row[1] != config.hash():
            raise ConfigError(
                f"run {name!r} already exists with a different configuration: "
                "pick another --run name (runs share cached jobs anyway)"
            )
        return row[0]
    cur.execute(
        """INSERT INTO runs (name, config, config_hash, style, graded_turn, annotations, provenance, created_at)
           VALUES (:name, :config, :hash, :style, :graded, :ann, :prov, :now)""",
        {
            "name": name,
            "config": config.canonical_json(),
            "hash": config.hash(),
            "style": canonical(style.to_dict()),
            "graded": style.graded.name,
            "ann": annotations,
            "prov": canonical({"egoqa_version": __version__}),
            "now": time.time(),
        },
    )
    return cur.one("SELECT id FROM runs WHERE name = :n", {"n": name})


def _write_items(
    cur: Cursor, run_id: int, style: Style, chains: list[tuple[int, list[str]]], ids: dict[str, int]
) -> None:
    graded = style.index(style.graded.name)
    cur.executemany(
        """INSERT INTO run_items (run_id, query_id, graded_job_id) VALUES (:run, :q, :job)
           ON CONFLICT (run_id, query_id) DO NOTHING""",
        [{"run": run_id, "q": qid, "job": ids[keys[graded]]} for qid, keys in chains],
    )
    item_ids = dict(cur.all("SELECT query_id, id FROM run_items WHERE run_id = :r", {"r": run_id}))
    cur.executemany(
        """INSERT INTO item_jobs (item_id, turn_index, turn_name, job_id) VALUES (:item, :i, :name, :job)
           ON CONFLICT (item_id, turn_index) DO NOTHING""",
        [
            {"item": item_ids[qid], "i": i, "name": style.turns[i].name, "job": ids[k]}
            for qid, keys in chains
            for i, k in enumerate(keys)
        ],
    )


def enqueue_run(
    db: Database,
    dataset: Dataset,
    config: RunConfig,
    style: Style,
    run: str,
    *,
    annotations: str | None = None,
    recompute: bool = False,
) -> PlanReport:
    """Plan and write a run; idempotent (re-enqueueing the same plan creates nothing)."""
    used = {q.clip_uid for q in dataset.queries}
    clips = [c for uid, c in dataset.clips.items() if uid in used]
    identities = {c.clip_uid: video_identity(c.video_path) for c in clips}
    by_uid = {c.clip_uid: c for c in clips}
    with db.write() as cur:
        run_id = _ensure_run(cur, run, config, style, annotations)
        clip_ids = _upsert_clips(cur, clips, identities)
        query_ids = _upsert_queries(cur, dataset.queries, clip_ids)
        planner = _Planner(config, style, clip_ids, identities, query_ids)
        for q in dataset.queries:
            planner.plan_query(by_uid[q.clip_uid], q)
        result = queue.enqueue(cur, list(planner.jobs.values()))
        _write_items(cur, run_id, style, planner.chains, result.ids)
        if annotations is not None:
            source = str(Path(annotations).resolve())
            skips.record_source(cur, run_id, source, len(dataset.queries), dataset.skipped)
    recomputed = queue.recompute(db, sorted(result.ids.values())) if recompute else 0
    return PlanReport(
        run=run,
        queries=len(dataset.queries),
        skipped=dataset.skipped_counts(),
        clips=len(clips),
        jobs_new=result.new,
        jobs_reused=result.reused,
        jobs_total=len(planner.jobs),
        per_turn=dict(Counter(j.turn_name for j in planner.jobs.values())),
        recomputed=recomputed,
    )
