"""The rows a recursive zoom reads and moves: a level's job, the run items that point at it, the
run that planned them, and re-pointing those items at the next level or the turns after it.
Called inside the transaction that completes a level (or that enqueues a run over finished ones)."""

from __future__ import annotations

import json
from dataclasses import dataclass

from egoqa.store.catalog import CLEAR_SCORES, JOB_UPSERT
from egoqa.store.db import Cursor, chunks, in_list


@dataclass(frozen=True)
class LevelRow:
    id: int
    key: str
    state: str
    spec: dict
    note: dict | None
    engine: str
    model: str
    turn_name: str
    turn_index: int
    clip_id: int
    query_id: int | None
    media_key: str
    priority: int
    max_attempts: int


def levels(cur: Cursor, job_ids: list[int]) -> list[LevelRow]:
    """The jobs among these that are zoom levels (their spec has a `zoom` block)."""
    out: list[LevelRow] = []
    for chunk in chunks(job_ids):
        frag, params = in_list("j", chunk)
        rows = cur.all(
            f"""SELECT id, key, state, spec, note, engine, model, turn_name, turn_index, clip_id,
                       query_id, media_key, priority, max_attempts
                  FROM jobs WHERE id IN {frag} AND spec LIKE '%"zoom":%'""",
            params,
        )
        for r in rows:
            spec = json.loads(r[3])
            if "zoom" in spec:
                out.append(LevelRow(r[0], r[1], r[2], spec, json.loads(r[4] or "null"), *r[5:]))
    return out


def items_at(cur: Cursor, job_id: int) -> list[tuple[int, int, int]]:
    """(item id, run id, turn index) of every run item whose chain holds this job."""
    return cur.all(
        """SELECT ij.item_id, ri.run_id, ij.turn_index FROM item_jobs ij
             JOIN run_items ri ON ri.id = ij.item_id WHERE ij.job_id = :j""",
        {"j": job_id},
    )


def move_items(cur: Cursor, old: int, new: int) -> None:
    """Items that showed a level now show the next one (graded or not); old scores go."""
    items = [r[0] for r in cur.all("SELECT id FROM run_items WHERE graded_job_id = :o", {"o": old})]
    cur.execute(
        "UPDATE run_items SET graded_job_id = :n WHERE graded_job_id = :o", {"n": new, "o": old}
    )
    for chunk in chunks(items):
        frag, params = in_list("i", chunk)
        cur.execute(CLEAR_SCORES.format(ids=frag), params)
    cur.execute("UPDATE item_jobs SET job_id = :n WHERE job_id = :o", {"n": new, "o": old})


def attach(
    cur: Cursor, item_id: int, turn_index: int, turn_name: str, job_id: int, graded: bool
) -> None:
    """A turn that follows the zoom joins the item's chain once the zoom has ended."""
    cur.execute(JOB_UPSERT, {"item": item_id, "i": turn_index, "name": turn_name, "job": job_id})
    if graded:
        cur.execute(
            "UPDATE run_items SET graded_job_id = :j WHERE id = :i", {"j": job_id, "i": item_id}
        )
        cur.execute(CLEAR_SCORES.format(ids="(:i)"), {"i": item_id})


def run_plan(cur: Cursor, run_id: int) -> tuple[str, str]:
    """(config JSON, style JSON) of a run."""
    row = cur.execute("SELECT config, style FROM runs WHERE id = :r", {"r": run_id}).fetchone()
    return row[0], row[1]


def clip_and_query(cur: Cursor, clip_id: int, query_id: int | None) -> tuple[tuple, tuple | None]:
    """The clip row (uid, video uid, path, offset, duration, split, identity) and the query row
    (annotation uid, index, text, template, gt start, gt end, extra)."""
    clip = cur.execute(
        """SELECT clip_uid, video_uid, video_path, offset_sec, duration_sec, split, identity
             FROM clips WHERE id = :c""",
        {"c": clip_id},
    ).fetchone()
    query = None
    if query_id is not None:
        query = cur.execute(
            """SELECT annotation_uid, query_idx, text, template, gt_start, gt_end, extra
                 FROM queries WHERE id = :q""",
            {"q": query_id},
        ).fetchone()
    return tuple(clip), None if query is None else tuple(query)


def next_levels(cur: Cursor, job_id: int, turn_name: str) -> list[int]:
    """Jobs of the same turn that depend on this one: its deeper levels."""
    return [
        r[0]
        for r in cur.all(
            """SELECT d.job_id FROM job_deps d JOIN jobs j ON j.id = d.job_id
                WHERE d.parent_id = :p AND j.turn_name = :t""",
            {"p": job_id, "t": turn_name},
        )
    ]


def stops(cur: Cursor) -> list[tuple[str, int]]:
    """(reason, levels) for every zoom that ended short of its target window."""
    return cur.all(
        """SELECT stop_reason, COUNT(*) FROM jobs WHERE stop_reason IS NOT NULL
            GROUP BY stop_reason ORDER BY stop_reason"""
    )
