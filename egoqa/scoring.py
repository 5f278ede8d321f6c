"""Scores of a run's queries, stored on their run items: computed when a graded job completes,
and recomputed from the stored responses (no model call) by `egoqa report --rescore`.

A query without ground truth (the unannotated test split) gets its predicted segments parsed and
stored all the same, with no scores: the export needs them, the metrics cannot have them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from egoqa.evaluate import Scores, best_of_n, failed_scores, parse_segments, score
from egoqa.store.db import Database

_SELECT = """
SELECT ri.id, j.state, j.response, j.responses, q.gt_start, q.gt_end, c.duration_sec
  FROM run_items ri JOIN jobs j ON j.id = ri.graded_job_id
  JOIN queries q ON q.id = ri.query_id JOIN clips c ON c.id = q.clip_id
"""
_UPDATE = """
UPDATE run_items SET scored_at = :now, segments = :segments, n_segments = :n_segments,
       correct = :correct, iou_top1 = :iou_top1, r1_03 = :r1_03, r1_05 = :r1_05, r5_03 = :r5_03,
       r5_05 = :r5_05, outcome = :outcome, best_correct = :best_correct,
       best_r1_03 = :best_r1_03, best_r1_05 = :best_r1_05, best_iou_top1 = :best_iou_top1
 WHERE id = :id
"""


def _row(
    item_id: int,
    state: str,
    response: str | None,
    responses: str | None,
    gt: tuple[float | None, float | None],
    duration: float,
) -> dict | None:
    if state not in ("done", "failed"):
        return None
    if gt[0] is None or gt[1] is None:
        segs = parse_segments(response, duration) if state == "done" else []
        return _segments_only(item_id, segs)
    if state == "failed":
        segs, first, best = [], failed_scores(), failed_scores()
    else:
        segs = parse_segments(response, duration)
        first = score(segs, gt[0], gt[1])
        samples = json.loads(responses or "[]") or [response]
        best = best_of_n([score(parse_segments(t, duration), gt[0], gt[1]) for t in samples])
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
        "now": time.time(),
        "segments": _segments_json(segs),
        "n_segments": len(segs),
        **dict.fromkeys(_SCORE_COLUMNS),
    }


def _params(item_id: int, segs, first: Scores, best: Scores) -> dict:
    return {
        "id": item_id,
        "now": time.time(),
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
    stale_failures: bool = False,
) -> int:
    """Score run items (of the given graded jobs, of a run, or all); returns how many were scored."""
    where, params = ["1 = 1"], {}
    if job_ids is not None:
        if not job_ids:
            return 0
        names = {f"j{i}": v for i, v in enumerate(job_ids)}
        where.append("ri.graded_job_id IN (" + ", ".join(":" + n for n in names) + ")")
        params.update(names)
    if run is not None:
        where.append("ri.run_id = (SELECT id FROM runs WHERE name = :run)")
        params["run"] = run
    if only_unscored:
        where.append("ri.scored_at IS NULL")
    if stale_failures:  # graded jobs failed by an upstream failure or a reap, not scored since
        where.append(
            "j.state = 'failed' AND (ri.scored_at IS NULL OR ri.scored_at < j.finished_at)"
        )
    with db.write() as cur:
        rows = cur.all(_SELECT + " WHERE " + " AND ".join(where), params)
        updates = [p for r in rows if (p := _row(r[0], r[1], r[2], r[3], (r[4], r[5]), r[6]))]
        cur.executemany(_UPDATE, updates)
    return len(updates)
