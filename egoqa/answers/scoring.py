"""Scores of a run's queries, stored on their run items: computed when a graded job completes,
and recomputed from the stored responses (no model call) by `egoqa report --rescore`.

A query without ground truth (the unannotated test split) gets its predicted segments parsed and
stored all the same, with no scores: the export needs them, the metrics cannot have them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from egoqa.answers.metrics import Scores, best_of_n, failed_scores, parse_segments, score
from egoqa.store.db import Database
from egoqa.store.scores import graded_rows, write_scores


def _parser(spec: str | None, duration: float):
    """How the graded job's answers become segments: parsed, and for a turn that judged a
    grounding model's proposals, read as a reordering of those proposals."""
    media = json.loads(spec or "{}").get("media") or {}
    if media.get("kind") != "proposals":
        return lambda text: parse_segments(text, duration)
    from egoqa.answers.rerank import rerank

    return lambda text: rerank(parse_segments(text, duration), media["windows"])


def _row(
    item_id: int,
    state: str,
    response: str | None,
    responses: str | None,
    gt: tuple[float | None, float | None],
    duration: float,
    spec: str | None = None,
) -> dict | None:
    if state not in ("done", "failed"):
        return None
    parse = _parser(spec, duration)
    if gt[0] is None or gt[1] is None:
        segs = parse(response) if state == "done" else []
        return _segments_only(item_id, segs)
    if state == "failed":
        segs, first, best = [], failed_scores(), failed_scores()
    else:
        segs = parse(response)
        first = score(segs, gt[0], gt[1])
        samples = json.loads(responses or "[]") or [response]
        best = best_of_n([score(parse(t), gt[0], gt[1]) for t in samples])
    return _params(item_id, segs, first, best)


def _segments_json(segs) -> str:
    return json.dumps([[s.start, s.end, s.confidence] for s in segs])


_SCORE_COLUMNS = (
    "correct", "iou_top1", "r1_03", "r1_05", "r5_03", "r5_05", "outcome",
    "best_correct", "best_r1_03", "best_r1_05", "best_iou_top1",
)  # fmt: skip


def _segments_only(item_id: int, segs) -> dict:
    """A query without ground truth: its segments, and NULL for every score."""
    return {
        "id": item_id,
        "segments": _segments_json(segs),
        "n_segments": len(segs),
        **dict.fromkeys(_SCORE_COLUMNS),
    }


def _params(item_id: int, segs, first: Scores, best: Scores) -> dict:
    return {
        "id": item_id,
        "segments": _segments_json(segs),
        "n_segments": first.n_segments,
        "correct": int(first.correct),
        "iou_top1": first.iou_top1,
        "r1_03": int(first.r1_03),
        "r1_05": int(first.r1_05),
        "r5_03": int(first.r5_03),
        "r5_05": int(first.r5_05),
        "outcome": str(first.outcome),
        "best_correct": int(best.correct),
        "best_r1_03": int(best.r1_03),
        "best_r1_05": int(best.r1_05),
        "best_iou_top1": best.iou_top1,
    }


def score_items(
    db: Database,
    *,
    job_ids: Sequence[int] | None = None,
    run: str | None = None,
    only_unscored: bool = False,
) -> int:
    """Score run items (of the given graded jobs, of a run, or all); returns how many were scored.

    Reads, computes, then writes in a short transaction of its own: a completion never waits
    on scoring a whole run.
    """
    if job_ids is not None and not job_ids:
        return 0
    rows = graded_rows(db, job_ids=job_ids, run=run, only_unscored=only_unscored)
    updates = [
        p | {"job": r[8]}
        for r in rows
        if (p := _row(r[0], r[1], r[2], r[3], (r[4], r[5]), r[6], r[7]))
    ]
    write_scores(db, updates)
    return len(updates)
