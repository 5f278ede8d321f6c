"""Reading graded jobs for scoring and writing run items' scores (`scored_at` by the database's
clock, so it compares with the job's `finished_at` whatever node scored it)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from egoqa.store.db import Database, chunks, in_list

SELECT = """
SELECT ri.id, j.state, j.response, j.responses, q.gt_start, q.gt_end, c.duration_sec, j.spec,
       ri.graded_job_id
  FROM run_items ri JOIN jobs j ON j.id = ri.graded_job_id
  JOIN queries q ON q.id = ri.query_id JOIN clips c ON c.id = q.clip_id
"""
UPDATE = """
UPDATE run_items SET scored_at = {now}, segments = :segments, n_segments = :n_segments,
       correct = :correct, iou_top1 = :iou_top1, r1_03 = :r1_03, r1_05 = :r1_05, r5_03 = :r5_03,
       r5_05 = :r5_05, outcome = :outcome, best_correct = :best_correct,
       best_r1_03 = :best_r1_03, best_r1_05 = :best_r1_05, best_iou_top1 = :best_iou_top1
 WHERE id = :id AND graded_job_id = :job
"""


def graded_rows(
    db: Database,
    *,
    job_ids: Sequence[int] | None = None,
    run: str | None = None,
    only_unscored: bool = False,
) -> list[tuple]:
    """(item id, state, response, responses, gt start, gt end, clip duration, job spec, graded
    job id) of run items: those graded by these jobs, of a run, or all."""
    where, params = ["1 = 1"], {}
    ungraded = ungraded_runs(db)
    if ungraded:  # an answer-only run's items show answers and are never scored
        frag, names = in_list("u", ungraded)
        where.append(f"ri.run_id NOT IN {frag}")
        params.update(names)
    if run is not None:
        where.append("ri.run_id = (SELECT id FROM runs WHERE name = :run)")
        params["run"] = run
    if only_unscored:
        where.append("ri.scored_at IS NULL")
    with db.read() as cur:
        if job_ids is None:
            return cur.all(SELECT + " WHERE " + " AND ".join(where), params)
        rows: list[tuple] = []
        for chunk in chunks(list(job_ids)):
            frag, ids = in_list("j", chunk)
            clause = " AND ".join([*where, f"ri.graded_job_id IN {frag}"])
            rows += cur.all(SELECT + " WHERE " + clause, {**params, **ids})
        return rows


def ungraded_runs(db: Database) -> list[int]:
    """Runs whose style grades no turn (the style is stored with the run as JSON)."""
    with db.read() as cur:
        rows = cur.all("SELECT id, style FROM runs")
    return [
        run_id
        for run_id, style in rows
        if not any(t.get("graded") for t in json.loads(style).get("turns", []))
    ]


def write_scores(db: Database, updates: list[dict]) -> None:
    """Each update names its item and the graded job it was computed from (`job`): an item
    re-pointed at another job since the read keeps no score of the old one."""
    if updates:
        with db.write() as cur:
            cur.executemany(UPDATE.format(now=db.now), updates)
