"""What reports read about a run: its settings, its results rows, the workers that ran it, every
turn of every item, its failures, and the graded answers the original's scoring reads. Reads only;
all through the views and tables the store owns.
"""

from __future__ import annotations

from egoqa.store.db import Database


def records(db: Database, sql: str, params: dict | None = None) -> list[dict]:
    """The rows of one read statement, as dicts by column name."""
    with db.read() as cur:
        raw = cur.execute(sql, params)
        columns = [d[0] for d in raw.description]
        return [dict(zip(columns, r, strict=True)) for r in raw.fetchall()]


def run_settings(db: Database, run: str) -> dict:
    """The run's stored config, style, graded turn, creation time and provenance (JSON text)."""
    sql = "SELECT config, style, graded_turn, created_at, provenance FROM runs WHERE name = :run"
    return records(db, sql, {"run": run})[0]


def run_results(db: Database, run: str) -> list[dict]:
    """The `results` view's rows of the run, in a stable order."""
    sql = "SELECT * FROM results WHERE run = :run ORDER BY clip_uid, annotation_uid, query_idx"
    return records(db, sql, {"run": run})


def run_workers(db: Database, run: str) -> list[dict]:
    """The workers that ran any of the run's jobs."""
    sql = """SELECT id, host, device, model, started_at, stopped_at, jobs_done FROM workers
              WHERE id IN (SELECT worker_id FROM turns WHERE run = :run) ORDER BY started_at, id"""
    return records(db, sql, {"run": run})


def run_failures(db: Database, run: str) -> list[dict]:
    """The `failures` view's rows of the run (failed jobs, and zooms that stopped short)."""
    sql = "SELECT kind, turn, message FROM failures WHERE run = :run ORDER BY job_id"
    return records(db, sql, {"run": run})


_TURNS_OF_ITEMS = """
SELECT c.clip_uid, q.annotation_uid, q.query_idx, ij.turn_index, ij.turn_name, j.id, j.state,
       j.prompt, j.response, j.responses, j.finish_reason, j.error_kind, j.error
  FROM run_items ri JOIN runs r ON r.id = ri.run_id
  JOIN queries q ON q.id = ri.query_id JOIN clips c ON c.id = q.clip_id
  JOIN item_jobs ij ON ij.item_id = ri.id JOIN jobs j ON j.id = ij.job_id
 WHERE r.name = :run
 ORDER BY c.clip_uid, q.annotation_uid, q.query_idx, ij.turn_index
"""


def turns_of_items(db: Database, run: str) -> list[dict]:
    """Every turn's job of every item of the run, in item then turn order."""
    return records(db, _TURNS_OF_ITEMS, {"run": run})


_GRADED_ANSWERS = """
SELECT c.video_uid, c.clip_uid, q.annotation_uid, q.query_idx, q.text, q.extra, q.gt_start,
       q.gt_end, j.state, j.response, j.responses
  FROM run_items ri JOIN runs r ON r.id = ri.run_id
  JOIN queries q ON q.id = ri.query_id JOIN clips c ON c.id = q.clip_id
  JOIN jobs j ON j.id = ri.graded_job_id
 WHERE r.name = :run
 ORDER BY c.video_uid, c.clip_uid, q.annotation_uid, q.query_idx
"""


def graded_answers(db: Database, run: str) -> list[dict]:
    """Each item's query, ground truth and graded job's answers, by video then clip."""
    return records(db, _GRADED_ANSWERS, {"run": run})


def run_annotations(db: Database, run: str) -> str | None:
    """The annotation file the run was last enqueued from, as it was given (or None)."""
    rows = records(db, "SELECT annotations FROM runs WHERE name = :run", {"run": run})
    return rows[0]["annotations"] if rows else None
