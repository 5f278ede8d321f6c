"""What the run explorer reads beyond the `results` view: every turn's job of each query (with
its key and spec, to know which frames it showed) and where each clip's video is."""

from __future__ import annotations

import json

from egoqa.store.db import Database, chunks, in_list

_JOBS = """
SELECT c.clip_uid, q.annotation_uid, q.query_idx, ij.turn_index, ij.turn_name, j.id, j.key,
       j.state, j.spec, j.prompt, j.response, j.responses, j.finish_reason, j.error_kind, j.error
  FROM run_items ri JOIN runs r ON r.id = ri.run_id
  JOIN queries q ON q.id = ri.query_id JOIN clips c ON c.id = q.clip_id
  JOIN item_jobs ij ON ij.item_id = ri.id JOIN jobs j ON j.id = ij.job_id
 WHERE r.name = :run
 ORDER BY c.clip_uid, q.annotation_uid, q.query_idx, ij.turn_index
"""
_CLIPS = """
SELECT DISTINCT c.clip_uid, c.video_path, c.offset_sec, c.duration_sec
  FROM run_items ri JOIN runs r ON r.id = ri.run_id
  JOIN queries q ON q.id = ri.query_id JOIN clips c ON c.id = q.clip_id
 WHERE r.name = :run ORDER BY c.clip_uid
"""
_COLUMNS = (
    "clip_uid", "annotation_uid", "query_idx", "turn_index", "turn", "job_id", "key", "state",
    "spec", "prompt", "response", "responses", "finish_reason", "error_kind", "error",
)  # fmt: skip


def run_jobs(db: Database, run: str) -> list[dict]:
    """Every (query, turn) of the run with its job, in query then turn order; a job shared by
    several queries (a per-clip turn) appears once per query. spec and responses are decoded."""
    with db.read() as cur:
        rows = cur.all(_JOBS, {"run": run})
    out, decoded = [], {}
    for row in rows:
        job = dict(zip(_COLUMNS, row, strict=True))
        if job["job_id"] not in decoded:  # a per-clip job repeats once per query of its clip
            responses = json.loads(job["responses"]) if job["responses"] else []
            decoded[job["job_id"]] = (json.loads(job["spec"]), responses)
        job["spec"], job["responses"] = decoded[job["job_id"]]
        out.append(job)
    return out


def run_clips(db: Database, run: str) -> list[dict]:
    """The run's clips: uid, video file, offset in it and length (seconds), by clip uid."""
    with db.read() as cur:
        rows = cur.all(_CLIPS, {"run": run})
    return [
        {"clip_uid": u, "video_path": p, "offset_sec": float(o), "duration_sec": float(d)}
        for u, p, o, d in rows
    ]


# A zoom level's levels above it: its parents of the same turn, up to depth 0.
_LEVELS_UP = """
WITH RECURSIVE up(start, id) AS (
  SELECT id, id FROM jobs WHERE id IN {ids}
  UNION ALL
  SELECT up.start, d.parent_id FROM up
    JOIN job_deps d ON d.job_id = up.id
    JOIN jobs p ON p.id = d.parent_id JOIN jobs c ON c.id = up.id
   WHERE p.turn_name = c.turn_name
)
SELECT up.start, j.id, j.note FROM up JOIN jobs j ON j.id = up.id ORDER BY up.start, j.id
"""


def zoom_levels(db: Database, job_ids: list[int]) -> dict[int, list[dict | None]]:
    """For each zoom level's job, the notes of its chain from depth 0 down to it (a level not
    finished yet has None): each level's window, chosen window and, at the end, why it stopped."""
    out: dict[int, list[dict | None]] = {}
    with db.read() as cur:
        for chunk in chunks(job_ids):
            frag, params = in_list("j", chunk)
            for start, _, note in cur.all(_LEVELS_UP.format(ids=frag), params):
                out.setdefault(start, []).append(json.loads(note) if note else None)
    return out
