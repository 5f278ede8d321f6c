"""The catalogue a plan writes: clips, queries, runs and each run item's chain of jobs.

A run always reports the jobs its current plan computes: writing a plan re-points items whose
chain changed (the old jobs and their results stay as history) and says how many moved.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from egoqa.store.db import Cursor, chunks, in_list


@dataclass(frozen=True)
class StoredRun:
    id: int
    plan_hash: str
    config: str  # canonical JSON
    style: str  # canonical JSON


def upsert_clips(cur: Cursor, rows: list[dict]) -> dict[str, int]:
    """Clips by uid (their file, place and identity updated); returns clip_uid → id."""
    cur.executemany(
        """INSERT INTO clips (clip_uid, video_uid, video_path, offset_sec, duration_sec, identity, split)
           VALUES (:clip_uid, :video_uid, :video_path, :offset_sec, :duration_sec, :identity, :split)
           ON CONFLICT (clip_uid) DO UPDATE SET video_uid = excluded.video_uid,
             video_path = excluded.video_path, offset_sec = excluded.offset_sec,
             duration_sec = excluded.duration_sec, identity = excluded.identity, split = excluded.split""",
        rows,
    )
    return dict(cur.all("SELECT clip_uid, id FROM clips"))


VERSIONED = ("text", "query_type", "template", "gt_start", "gt_end", "extra", "split")


def query_version(row: dict) -> str:
    """What tells two contents of one (clip, annotation_uid, query_idx) apart: a hash of its
    text, type, template, answer window, extra fields and split (migration 0009 hashes alike)."""
    doc = json.dumps({k: row[k] for k in VERSIONED}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


def upsert_queries(cur: Cursor, rows: list[dict]) -> dict[tuple, int]:
    """Each query's version for its content (a new row where the content is new: an earlier
    run keeps the version it was enqueued with); returns (clip_uid, annotation_uid, idx) → id."""
    rows = [{**r, "version": query_version(r)} for r in rows]
    cur.executemany(
        """INSERT INTO queries (clip_id, annotation_uid, query_idx, text, query_type, template,
                                gt_start, gt_end, extra, version, split)
           VALUES (:clip_id, :annotation_uid, :query_idx, :text, :query_type, :template,
                   :gt_start, :gt_end, :extra, :version, :split)
           ON CONFLICT (clip_id, annotation_uid, query_idx, version) DO NOTHING""",
        rows,
    )
    wanted = {(r["clip_id"], r["annotation_uid"], r["query_idx"], r["version"]) for r in rows}
    found = cur.all(
        """SELECT q.clip_id, q.annotation_uid, q.query_idx, q.version, q.id, c.clip_uid
             FROM queries q JOIN clips c ON c.id = q.clip_id"""
    )
    return {(uid, a, i): qid for c, a, i, v, qid, uid in found if (c, a, i, v) in wanted}


def find_run(cur: Cursor, name: str) -> StoredRun | None:
    row = cur.execute(
        "SELECT id, config_hash, config, style FROM runs WHERE name = :n", {"n": name}
    ).fetchone()
    return None if row is None else StoredRun(*row)


def insert_run(cur: Cursor, row: dict) -> int:
    cur.execute(
        f"""INSERT INTO runs (name, config, config_hash, style, graded_turn, annotations,
                              provenance, created_at)
           VALUES (:name, :config, :hash, :style, :graded, :ann, :prov, {cur.db.now})""",
        row,
    )
    return cur.one("SELECT id FROM runs WHERE name = :name", row)


def replan_run(cur: Cursor, run_id: int, row: dict) -> None:
    """A run re-planned under a new config or style (`--recompute`)."""
    cur.execute(
        """UPDATE runs SET config = :config, config_hash = :hash, style = :style,
                  graded_turn = :graded, annotations = :ann WHERE id = :id""",
        {**row, "id": run_id},
    )


ITEM_UPSERT = """
INSERT INTO run_items (run_id, query_id, graded_job_id) VALUES (:run, :q, :job)
ON CONFLICT (run_id, query_id) DO UPDATE SET graded_job_id = excluded.graded_job_id
"""
# A re-pointed item's scores belonged to its old graded job.
CLEAR_SCORES = """
UPDATE run_items SET scored_at = NULL, segments = NULL, n_segments = NULL, correct = NULL,
       iou_top1 = NULL, r1_03 = NULL, r1_05 = NULL, r5_03 = NULL, r5_05 = NULL, outcome = NULL,
       best_correct = NULL, best_r1_03 = NULL, best_r1_05 = NULL, best_iou_top1 = NULL
 WHERE id IN {ids}
"""
JOB_UPSERT = """
INSERT INTO item_jobs (item_id, turn_index, turn_name, job_id) VALUES (:item, :i, :name, :job)
ON CONFLICT (item_id, turn_index) DO UPDATE SET turn_name = excluded.turn_name,
       job_id = excluded.job_id
"""


def write_items(
    cur: Cursor,
    run_id: int,
    turn_names: list[str],
    graded: int,
    chains: list[tuple[int, list[int | None]]],
) -> int:
    """Point each query's item at its chain of job ids; returns how many items changed chain.

    A turn not planned yet (it follows a zoom that has not ended) is None in a chain: it has
    no row yet, and the item is graded by the zoom's job until it has one.
    """
    _follow_versions(cur, run_id, [q for q, _ in chains])
    before = _chains(cur, run_id)
    chains = [(q, ids) for q, ids in chains]
    changed = [(q, ids) for q, ids in chains if q in before and before[q] != _present(ids)]
    items = [{"run": run_id, "q": q, "job": _graded(ids, graded)} for q, ids in chains]
    cur.executemany(ITEM_UPSERT, items)
    item_ids = dict(cur.all("SELECT query_id, id FROM run_items WHERE run_id = :r", {"r": run_id}))
    moved = [item_ids[q] for q, _ in changed]
    for chunk in chunks(moved):
        frag, params = in_list("i", chunk)
        cur.execute(CLEAR_SCORES.format(ids=frag), params)
        # the chain is written again below, turns not planned yet (after a zoom) left out
        cur.execute(f"DELETE FROM item_jobs WHERE item_id IN {frag}", params)
    rows = [
        {"item": item_ids[q], "i": i, "name": turn_names[i], "job": job}
        for q, ids in chains
        if q not in before or before[q] != _present(ids)
        for i, job in enumerate(ids)
        if job is not None
    ]
    cur.executemany(JOB_UPSERT, rows)
    return len(changed)


_ITEM_QUERIES = """
SELECT ri.id, ri.query_id, q.clip_id, q.annotation_uid, q.query_idx FROM run_items ri
  JOIN queries q ON q.id = ri.query_id WHERE ri.run_id = :r
"""


def _follow_versions(cur: Cursor, run_id: int, query_ids: list[int]) -> None:
    """A run enqueued again from a file whose query changed (its text, its answer window) shows
    the new version: its item moves to it, and the scores and clusters of the old one go."""
    items = {(c, a, i): (item, q) for item, q, c, a, i in cur.all(_ITEM_QUERIES, {"r": run_id})}
    moves = []
    for chunk in chunks(query_ids):
        frag, params = in_list("q", chunk)
        sql = f"SELECT id, clip_id, annotation_uid, query_idx FROM queries WHERE id IN {frag}"
        for qid, c, a, i in cur.all(sql, params):
            item, old = items.get((c, a, i), (None, qid))
            if old != qid:
                moves.append({"item": item, "new": qid, "old": old, "r": run_id})
    cur.executemany("UPDATE run_items SET query_id = :new WHERE id = :item", moves)
    cur.executemany("DELETE FROM query_clusters WHERE run_id = :r AND query_id = :old", moves)
    for chunk in chunks([m["item"] for m in moves]):
        frag, params = in_list("i", chunk)
        cur.execute(CLEAR_SCORES.format(ids=frag), params)


def _present(ids: list[int | None]) -> dict[int, int]:
    return {i: job for i, job in enumerate(ids) if job is not None}


def _graded(ids: list[int | None], graded: int) -> int:
    """The graded turn's job, or (not planned yet) the nearest planned job before it."""
    return next(job for job in reversed(ids[: graded + 1]) if job is not None)


def _chains(cur: Cursor, run_id: int) -> dict[int, dict[int, int]]:
    out: dict[int, dict[int, int]] = {}
    rows = cur.all(
        """SELECT ri.query_id, ij.turn_index, ij.job_id FROM run_items ri
             JOIN item_jobs ij ON ij.item_id = ri.id WHERE ri.run_id = :r""",
        {"r": run_id},
    )
    for query_id, turn_index, job_id in rows:
        out.setdefault(query_id, {})[turn_index] = job_id
    return out
