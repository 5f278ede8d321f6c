"""Prior-only baselines: runs that need no model, computed at enqueue and reported like any run.

- `whole_clip`: the whole clip (covers every ground truth: what coverage alone rewards).
- `uniform_random`: one window with both ends drawn uniformly over the clip, seeded per query
  (from the seed and the query's ids), so a query's window never depends on the others.
- `length_prior`: a window of the median answer length, centred at the most common relative
  position, both learned from a training annotation file (`--fit`), never from the run's own
  ground truth. The length is learned in seconds, not as a fraction of the clip: an answer window
  spans an action (median 4 s in NLQ v2), whatever the clip's length (120 s to 1,200 s), so a
  fraction would stretch windows on long clips and shrink them on short ones. The position is a
  fraction of the clip: the window centres' relative positions are put in 10 equal bins and the
  median centre inside the fullest bin (the earliest on ties) is used.

Each prediction becomes a job that is already done: model `prior:NAME`, its response the window
written as `[start s] - [end s]`, which `answers.metrics.parse_segments` reads like a model's answer.
"""

from __future__ import annotations

import hashlib
import json
import random
import statistics
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from egoqa.errors import ConfigError
from egoqa.plan.dataset import Dataset, Query, load_answer_windows

PREFIX = "prior:"
NAMES = ("whole_clip", "uniform_random", "length_prior")
POSITION_BINS = 10
TURN = "prior"


@dataclass(frozen=True)
class Prior:
    """A prior baseline and its parameters (the run's configuration, stored as JSON)."""

    name: str
    seed: int = 0
    length_sec: float | None = None
    position: float | None = None
    fit_file: str | None = None
    fit_windows: int | None = None

    @property
    def model(self) -> str:
        return PREFIX + self.name

    def config_json(self) -> str:
        return json.dumps({"model": self.model, **asdict(self)}, sort_keys=True)

    def style(self) -> dict:
        """The run's style: one graded turn that reads nothing and sees nothing."""
        turn = {"name": TURN, "media": "none", "samples": 1, "graded": True, "reads": []}
        return {"name": self.model, "description": "prior-only baseline", "turns": [turn]}


def is_prior(config: str) -> bool:
    return config.startswith(PREFIX)


def parse_prior(config: str, overrides: list[str], fit: Path | None) -> Prior:
    """`prior:NAME` plus `--set seed=N` and `--fit TRAIN.json` as a Prior (fitted if needed)."""
    name = config.removeprefix(PREFIX)
    if name not in NAMES:
        raise ConfigError(f"unknown prior {name!r}: use prior:{', prior:'.join(NAMES)}")
    seed = _seed(overrides)
    if name == "length_prior":
        if fit is None:
            raise ConfigError(
                "prior:length_prior learns from training annotations: add --fit nlq_train.json"
            )
        length, position, n = fit_length_prior(fit)
        return Prior(name, seed, length, position, str(Path(fit).absolute()), n)
    if fit is not None:
        raise ConfigError(f"--fit is only for prior:length_prior; prior:{name} learns nothing")
    return Prior(name, seed)


def _seed(overrides: list[str]) -> int:
    seed = 0
    for assignment in overrides:
        key, _, value = assignment.partition("=")
        if key.strip() != "seed" or not value.strip().lstrip("-").isdigit():
            raise ConfigError(f"--set {assignment!r}: a prior run takes only --set seed=N")
        seed = int(value)
    return seed


def fit_length_prior(path: Path) -> tuple[float, float, int]:
    """(median window length in seconds, relative centre, windows used) of an annotation file."""
    data = load_answer_windows(path)
    windows = [
        (q.gt_start, q.gt_end, data.clips[q.clip_uid].duration_sec)
        for q in data.queries
        if q.gt_start is not None and q.gt_end is not None
    ]
    if not windows:
        raise ConfigError(
            f"--fit {path}: no query there has an answer window; pass a training file "
            "with clip_start_sec / clip_end_sec (nlq_train.json)"
        )
    length = statistics.median(end - start for start, end, _ in windows)
    centres = [min(1.0, max(0.0, (s + e) / 2 / d)) for s, e, d in windows]
    bins = Counter(min(POSITION_BINS - 1, int(c * POSITION_BINS)) for c in centres)
    fullest = min(bins, key=lambda b: (-bins[b], b))
    inside = [c for c in centres if min(POSITION_BINS - 1, int(c * POSITION_BINS)) == fullest]
    return float(length), float(statistics.median(inside)), len(windows)


def predict(prior: Prior, query: Query, duration: float) -> tuple[float, float]:
    """The prior's window for one query on a clip of `duration` seconds."""
    if prior.name == "whole_clip":
        return 0.0, duration
    if prior.name == "uniform_random":
        ids = f"{prior.seed}/{query.clip_uid}/{query.annotation_uid}/{query.query_idx}"
        rng = random.Random(hashlib.sha256(ids.encode()).digest())
        a, b = sorted((rng.uniform(0.0, duration), rng.uniform(0.0, duration)))
        return a, b
    length = min(float(prior.length_sec or 0.0), duration)
    start = min(max(0.0, prior.position * duration - length / 2), duration - length)
    return start, start + length


def seconds(value: float) -> str:
    """A time as the response writes it: up to 6 decimals, never in exponent notation."""
    text = f"{value:.6f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


def response(window: tuple[float, float]) -> str:
    return f"[{seconds(window[0])}s] - [{seconds(window[1])}s]"


@dataclass(frozen=True)
class Prediction:
    """One query's prior prediction, as the done job that stores it."""

    query: Query
    key: str
    spec: str
    prompt: str
    response: str


def predictions(prior: Prior, dataset: Dataset) -> list[Prediction]:
    """Every query's window, with the content key of its job (the prior and what it reads)."""
    out = []
    for q in dataset.queries:
        duration = dataset.clips[q.clip_uid].duration_sec
        params = {k: getattr(prior, k) for k in ("name", "seed", "length_sec", "position")}
        spec = {"model": prior.model, "prior": params, "turn": TURN}
        spec |= {"clip_uid": q.clip_uid, "duration": round(duration, 6), "graded": True}
        spec |= {"annotation_uid": q.annotation_uid, "query_idx": q.query_idx}
        text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        key = hashlib.sha256(text.encode()).hexdigest()
        prompt = f"(no model: prior {prior.name} on a {seconds(duration)} s clip)"
        out.append(Prediction(q, key, text, prompt, response(predict(prior, q, duration))))
    return out


def enqueue_prior_run(db, dataset: Dataset, prior: Prior, run: str, annotations: str | None):
    """Write the run, its clips and queries, and its predictions as done jobs; score them."""
    return write_finished_run(db, dataset, prior, run, annotations, predictions(prior, dataset))


def write_finished_run(
    db,
    dataset: Dataset,
    baseline,
    run: str,
    annotations: str | None,
    preds,
    *,
    turn: str = TURN,
    record_source: bool = False,
):
    """A run needing no model (a prior, an imported proposal set): its clips and queries, its
    predictions as done jobs of one `turn`, scored now; with `record_source`, the annotation
    file's skipped records too (what `export` writes as misses)."""
    from egoqa.answers.scoring import score_items
    from egoqa.plan.planner import PlanReport, _clip_rows, _query_rows, video_identity
    from egoqa.store import catalog, skips
    from egoqa.store import priors as store

    used = {q.clip_uid for q in dataset.queries}
    clips = [c for uid, c in dataset.clips.items() if uid in used]
    identities = {c.clip_uid: video_identity(c.video_path) for c in clips}
    with db.write() as cur:
        run_id = store.ensure_run(cur, run, baseline, annotations)
        clip_ids = catalog.upsert_clips(cur, _clip_rows(clips, identities))
        query_ids = catalog.upsert_queries(
            cur, _query_rows(dataset.queries, clip_ids, dataset.clips)
        )
        new, job_ids = store.insert_done_jobs(cur, preds, clip_ids, query_ids, baseline.model)
        store.write_items(cur, run_id, [query_ids[_ids(p.query)] for p in preds], job_ids, turn)
        if record_source and annotations is not None:
            source = str(Path(annotations).resolve())
            skips.record_source(cur, run_id, source, len(dataset.queries), dataset.skipped)
    score_items(db, run=run)
    return PlanReport(
        run=run,
        queries=len(preds),
        skipped=dataset.skipped_counts(),
        clips=len(clips),
        jobs_new=new,
        jobs_reused=len(preds) - new,
        jobs_total=len(preds),
        per_turn={turn: len(preds)},
    )


def _ids(q: Query) -> tuple[str, str, int]:
    return q.clip_uid, q.annotation_uid, q.query_idx
