"""Planning a run: clips, queries and the content-addressed jobs of every turn, written in one go.

A job's key hashes everything that decides its output — its engine (model, revision, dtype,
attention, quantisation, max pixels), generation settings, the turn's template, its media spec
(sampler, size, the video file's identity and the clip's place in it), the query text if the
turn reads it, and its parents' keys — so identical work is shared and a changed input can never
reuse a stale answer. A run always reports what its current plan computes: re-enqueueing a run
whose inputs changed re-points its items; one whose config or style changed is refused unless
`--recompute` re-plans it.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from egoqa import __version__
from egoqa.errors import ConfigError, DatasetError
from egoqa.plan import specjson
from egoqa.plan.config import RunConfig, engine_id, key_engine
from egoqa.plan.dataset import Clip, Dataset, Query, query_type
from egoqa.plan.jobs import (
    _job_fields,
    canonical,
    media_key,
    media_spec,
    turn_constants,
)
from egoqa.plan.styles import Style, Turn
from egoqa.plan.zoom import resolve_chains
from egoqa.store import catalog, graph, queue, skips
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
    repointed: int = 0  # queries whose chain of jobs changed (their inputs or the plan changed)
    replanned: str | None = None  # what changed in the config or style (with --recompute)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


# --- job specs -------------------------------------------------------------------------------


class _TurnPlan:
    """One turn's jobs: its constant fields built and encoded once for the whole run.

    Per job only the query, the reads, the media's clip and window (and a zoom's block) are
    encoded, then joined with the constant fields in sorted order (`specjson.Layout`): the text
    is exactly `canonical(turn_spec(...))` and `canonical` of the stored spec, so keys are what
    they always were — and what they are when `turn_spec` is used alone (zoom follow-ups).
    """

    def __init__(self, turn: Turn, index: int, style: Style, config: RunConfig) -> None:
        self.turn, self.index, self.config = turn, index, config
        self.constants = turn_constants(turn, config)
        self.engine = self.constants["engine"]
        self.engine_id = engine_id(self.engine)
        self.stored = {
            "turn": turn.name,
            "turn_index": index,
            "style": style.name,
            "graded": turn.graded,
            "segments_from": turn.segments_from,
        }
        # Built from the first job: which fields vary follows from the turn alone.
        self.media_layout: specjson.Layout | None = None
        self.layouts: tuple[specjson.Layout, specjson.Layout] | None = None
        self.sampler: dict | None = None  # validated at the first job that shows frames

    def job(
        self,
        clip: Clip,
        identity: str,
        query: Query | None,
        parent_keys: dict,
        proposals: list[list[float]] | None = None,
        **ids,
    ):
        """(key, job) of this turn for one clip (and query); `ids` are clip_id and query_id;
        `proposals` the query's proposed windows (a `media = "proposals"` turn shows them)."""
        t, config = self.turn, self.config
        media = media_spec(
            t, config, clip, identity, parent_keys, query, None, proposals, self.sampler
        )
        fields = _job_fields(t, query, parent_keys, media)
        values = self._encoded(fields, media)
        key_layout, stored_layout = self.layouts
        key = hashlib.sha256(key_layout.text(values).encode()).hexdigest()
        parents = [
            *fields["reads"].values(),
            *(media[k] for k in ("from", "window_of") if k in media),
        ]
        return key, queue.NewJob(
            key=key,
            engine=self.engine_id,
            model=self.engine["model"],
            turn_name=t.name,
            turn_index=self.index,
            spec=stored_layout.text(values),
            media_key=media_key(media),
            parent_keys=tuple(dict.fromkeys(parents)),
            priority=config.priority,
            max_attempts=config.max_attempts,
            **ids,
        )

    def _encoded(self, fields: dict, media: dict) -> dict[str, str]:
        """The varying fields' values as canonical JSON, the media's through its own layout."""
        if self.layouts is None:
            self.sampler = media.get("sampler")
            shared = {k: media[k] for k in ("kind", "sampler") if k in media}
            self.media_layout = specjson.Layout(shared, set(media) - set(shared))
            # the key holds a local model by its fingerprint alone (`key_engine`), as `job_key` does
            keyed = {**self.constants, "engine": key_engine(self.constants["engine"])}
            self.layouts = (
                specjson.Layout(keyed, fields),
                specjson.Layout({**self.constants, **self.stored}, fields),
            )
            self.media_fields = media.keys() - shared.keys()
        encode = specjson.encode
        values = {k: encode(v) for k, v in fields.items() if k != "media"}
        if media.keys() - {"kind", "sampler"} == self.media_fields:
            values["media"] = self.media_layout.text(
                {k: encode(media[k]) for k in self.media_fields}
            )
        else:  # not expected (the fields follow from the turn), and still exact
            values["media"] = encode(media)
        return values


class _Planner:
    def __init__(
        self,
        config: RunConfig,
        style: Style,
        clip_ids: dict[str, int],
        identities: dict[str, str],
        query_ids: dict[tuple, int],
        proposals: dict[tuple, list] | None = None,
    ) -> None:
        self.style = style
        self.proposals = proposals or {}
        self.clip_ids, self.identities, self.query_ids = clip_ids, identities, query_ids
        self.per_clip = style.per_clip()
        # turns that take a zoom's final window are planned when the zoom has ended
        self.turns = [
            _TurnPlan(turn, index, style, config)
            for index, turn in enumerate(style.turns)
            if turn.window_from is None
        ]
        self.jobs: dict[str, queue.NewJob] = {}
        self.chains: list[tuple[int, list[str]]] = []  # (query id, key per turn)
        # A per-clip turn's spec is the same for every query on the clip: build it once per clip.
        self.clip_keys: dict[tuple[str, str], str] = {}
        self.engines: dict[str | None, dict] = {}  # by a turn's model override

    def plan_query(self, clip: Clip, q: Query) -> None:
        qid = self.query_ids[(q.clip_uid, q.annotation_uid, q.query_idx)]
        keys: dict[str, str] = {}
        for plan in self.turns:
            name = plan.turn.name
            shared = self.per_clip[name]
            key = self.clip_keys.get((clip.clip_uid, name)) if shared else None
            if key is not None:
                keys[name] = key
                continue
            windows = self.proposals.get((q.clip_uid, q.annotation_uid, q.query_idx))
            ids = {"clip_id": self.clip_ids[clip.clip_uid], "query_id": None if shared else qid}
            identity = self.identities[clip.clip_uid]
            key, job = plan.job(clip, identity, q, keys, proposals=windows, **ids)
            keys[name] = key
            if shared:
                self.clip_keys[(clip.clip_uid, name)] = key
            self.jobs.setdefault(key, job)
        self.chains.append((qid, [keys.get(t.name) for t in self.style.turns]))


# --- writing the catalogue -------------------------------------------------------------------


def _clip_rows(clips: list[Clip], identities: dict[str, str]) -> list[dict]:
    return [
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
    ]


def _query_rows(queries: list[Query], clip_ids: dict[str, int], clips: dict) -> list[dict]:
    """The catalogue's rows of these queries, with their clip's split (part of a version)."""
    return [
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
            "split": clips[q.clip_uid].split,
        }
        for q in queries
    ]


def plan_hash(config: RunConfig, style: Style) -> str:
    """What a run name stands for: its config and its style's content (not the style's path)."""
    doc = {"config": json.loads(config.canonical_json()), "style": style.to_dict()}
    return hashlib.sha256(canonical(doc).encode()).hexdigest()


def _run_row(config: RunConfig, style: Style, name: str, annotations: str | None) -> dict:
    return {
        "name": name,
        "config": config.canonical_json(),
        "hash": plan_hash(config, style),
        "style": canonical(style.to_dict()),
        "graded": style.result_turn.name,
        "ann": annotations,
        "prov": canonical({"egoqa_version": __version__}),
    }


def describe_change(old_config: str, old_style: str, row: dict) -> str:
    """What differs between a stored plan and a new one, in a few words."""
    changed = _changed_keys(json.loads(old_config), json.loads(row["config"]))
    old_turns = {t["name"]: t for t in json.loads(old_style).get("turns", [])}
    new_turns = {t["name"]: t for t in json.loads(row["style"]).get("turns", [])}
    if list(old_turns) != list(new_turns):
        changed.append(f"style turns {list(old_turns)} -> {list(new_turns)}")
    for name, turn in new_turns.items():
        if name in old_turns and turn != old_turns[name]:
            keys = _changed_keys(old_turns[name], turn)
            changed.append(f"style turn {name!r} ({', '.join(keys)})")
    return "; ".join(changed) or "the style"


def _changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(prefix + key)
    return out


def _ensure_run(cur: Cursor, row: dict, recompute: bool) -> tuple[int, str | None]:
    """The run's id, and what changed in its plan (re-planned with --recompute, else refused)."""
    stored = catalog.find_run(cur, row["name"])
    if stored is None:
        return catalog.insert_run(cur, row), None
    if stored.plan_hash == row["hash"]:
        return stored.id, None
    change = describe_change(stored.config, stored.style, row)
    if not recompute:
        raise ConfigError(
            f"run {row['name']!r} was planned with a different configuration ({change}): "
            "pass --recompute to re-plan it (its old results stay as history), or pick a new "
            "--run name (runs share cached jobs anyway)"
        )
    catalog.replan_run(cur, stored.id, row)
    return stored.id, change


def _check_oracle(style: Style, dataset: Dataset) -> None:
    """An oracle zoom chooses by the ground truth: over queries without one, every chain would
    stop at its first level (no_ground_truth)."""
    oracle = [t.name for t in style.turns if t.zoom == "oracle"]
    blind = sum(q.gt_start is None or q.gt_end is None for q in dataset.queries)
    if oracle and blind:
        raise ConfigError(
            f"turn {oracle[0]!r} zooms by the ground truth (zoom = 'oracle'), but {blind} of the "
            f"{len(dataset.queries)} queries have none (an unannotated split): use zoom = 'model'"
        )


def _check_follow_ups(style: Style) -> None:
    """A turn that takes a zoom's final window is planned when the zoom ends; a turn that reads
    it would have to wait for that too, which this planner does not do: refuse it plainly."""
    later = {t.name for t in style.turns if t.window_from}
    for t in style.turns:
        needs = set(t.reads) | ({t.segments_from} if t.segments_from else set())
        if needs & later:
            raise ConfigError(
                f"style {style.name!r}: turn {t.name!r} reads {sorted(needs & later)}, which "
                "follow a zoom (window_from): read the zoom turn itself, or drop that read"
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
    proposals: dict[tuple, list] | None = None,
) -> PlanReport:
    """Plan and write a run; idempotent (re-enqueueing the same plan creates nothing).

    Items whose chain of jobs changed (a query's text, a video file) are re-pointed at the new
    jobs; a changed config or style needs `recompute`, which also re-queues the plan's jobs.
    """
    style = style.with_overrides(config.turns)
    _check_follow_ups(style)
    _check_oracle(style, dataset)
    used = {q.clip_uid for q in dataset.queries}
    clips = [c for uid, c in dataset.clips.items() if uid in used]
    identities = {c.clip_uid: video_identity(c.video_path) for c in clips}
    by_uid = {c.clip_uid: c for c in clips}
    with db.write() as cur:
        run_id, change = _ensure_run(cur, _run_row(config, style, run, annotations), recompute)
        clip_ids = catalog.upsert_clips(cur, _clip_rows(clips, identities))
        query_ids = catalog.upsert_queries(
            cur, _query_rows(dataset.queries, clip_ids, dataset.clips)
        )
        planner = _Planner(config, style, clip_ids, identities, query_ids, proposals)
        for q in dataset.queries:
            planner.plan_query(by_uid[q.clip_uid], q)
        result = queue.enqueue(cur, list(planner.jobs.values()))
        chains = [
            (qid, [result.ids[k] if k else None for k in keys]) for qid, keys in planner.chains
        ]
        if not recompute:  # a recomputed zoom starts again from its first level
            chains = resolve_chains(cur, config, style, chains)
        names = [t.name for t in style.turns]
        graded = style.index(style.result_turn.name)
        moved = catalog.write_items(cur, run_id, names, graded, chains)
        if annotations is not None:
            source = str(Path(annotations).resolve())
            skips.record_source(cur, run_id, source, len(dataset.queries), dataset.skipped)
    recomputed = graph.recompute(db, sorted(result.ids.values())) if recompute else 0
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
        repointed=moved,
        replanned=change,
    )
