"""Recursive zoom as jobs: a turn that repeats on the window its own answer chose.

A zoom turn (`repeat_until = {window_sec, max_depth}`) is planned at depth 0 over the whole clip.
When a level completes, the worker decides (`decide`) from the shots it showed and the kept
answer: go one level deeper into the chosen window, or stop — at the target size, at the depth
limit, or with a recorded reason (no verdict, nothing relevant, a window too short, no narrower
window). `settle`, run in the transaction that records the level, then creates the next level's
job, or the jobs of the turns that take the final window (`window_from`), each content-addressed
like any planned job, and points the run items at them. A crash at any level loses nothing:
the level is done and its successor exists, or neither happened.
"""

from __future__ import annotations

import json
from pathlib import Path

from egoqa.answers.zoom_choice import model_choice, oracle_choice
from egoqa.store import graph, queue
from egoqa.store import zoom as rows
from egoqa.store.db import Cursor

MIN_WINDOW_SEC = 1.0  # about one frame of the 1 fps answer turn: no narrower window is useful
STORED_ONLY = ("turn", "turn_index", "style", "graded", "segments_from")  # in a spec, not its key


def _length(window) -> float:
    return float(window[1]) - float(window[0])


def decide(spec: dict, response: str | None, shown: list[tuple[float, float]]) -> dict:
    """What a finished level decides: its note (depth, window, chosen window, and when it is
    the last level, the final window and why it stopped short, if it did)."""
    z, window = spec["zoom"], [float(x) for x in spec["media"]["window"]]
    if z["rule"] == "oracle":
        gt = z.get("gt")
        choice = oracle_choice(shown, *gt) if gt and None not in gt else None
    else:
        choice = model_choice(response, shown)
    chosen = None
    if choice is not None and choice.window is not None:
        chosen = [round(float(x), 3) for x in choice.window]  # a key holds it: no float noise
    note = {"depth": z["depth"], "window": window, "chosen": chosen}
    if chosen is None:
        reason = "no_ground_truth" if choice is None else choice.reason
        return note | {"final": True, "final_window": window, "reason": reason}
    if _length(chosen) < MIN_WINDOW_SEC:
        return note | {"final": True, "final_window": window, "reason": "window_too_short"}
    if _length(chosen) <= z["window_sec"]:
        return note | {"final": True, "final_window": chosen, "reason": None}
    if chosen == window:  # one shot spanning the whole window: zooming would repeat itself
        return note | {"final": True, "final_window": window, "reason": "no_narrower_window"}
    if z["depth"] + 1 >= z["max_depth"]:
        return note | {"final": True, "final_window": chosen, "reason": "max_depth"}
    return note | {"final": False}


# --- growing the graph -------------------------------------------------------------------------


def settle(cur: Cursor, job_ids: list[int]) -> None:
    """For each finished zoom level among these: its next level (the run items that showed this
    level move to it), or the turns that take its final window (joining those items' chains)."""
    todo = list(job_ids)
    while todo:
        batch, todo = todo[:500], todo[500:]
        for level in rows.levels(cur, batch):
            if level.state != "done" or level.note is None:
                continue
            if not rows.items_at(cur, level.id):  # no run shows this level any more
                continue
            todo += _deeper(cur, level) if not level.note["final"] else _follow(cur, level)


def _current(cur: Cursor, result: queue.EnqueueResult, key: str) -> int:
    """The successor's id. One that already finished was computed after an earlier finish of
    the level above (before a recompute of it): it runs again, as the level did."""
    job_id = result.ids[key]
    if not result.new:
        graph.requeue_finished(cur, [job_id])
    return job_id


def resolve_chains(cur: Cursor, config, style, chains: list[tuple[int, list]]) -> list[tuple]:
    """At enqueue: chains whose zoom levels were computed before (by this run or another) go on
    to the deepest level and to the turns after the zoom, as if they had been there all along."""
    zooming = [i for i, t in enumerate(style.turns) if t.repeat_until is not None]
    if not zooming:
        return chains
    out = []
    for qid, ids in chains:
        ids = list(ids)
        for i in zooming:
            if ids[i] is not None:
                ids = _walk(cur, config, style, ids, i)
        out.append((qid, ids))
    return out


def _walk(cur: Cursor, config, style, ids: list, i: int) -> list:
    (level,) = rows.levels(cur, [ids[i]])
    while level.state == "done" and level.note is not None and not level.note["final"]:
        job = next_level_job(level)
        (level,) = rows.levels(cur, [queue.enqueue(cur, [job]).ids[job.key]])
    ids[i] = level.id
    if level.state == "done" and level.note is not None:
        for _, index, job in _follow_jobs(cur, config, style, level):
            ids[index] = queue.enqueue(cur, [job]).ids[job.key]
    return ids


def _key_spec(stored: dict) -> dict:
    return {k: v for k, v in stored.items() if k not in STORED_ONLY}


def next_level_job(level: rows.LevelRow) -> queue.NewJob:
    """The job of the level below this one: the same turn on the window it chose."""
    from egoqa.plan.jobs import canonical, job_key

    spec = _key_spec(level.spec)
    spec["media"] = {**spec["media"], "window": level.note["chosen"]}
    spec["zoom"] = {**spec["zoom"], "depth": spec["zoom"]["depth"] + 1, "from": level.key}
    key = job_key(spec)
    stored = {**spec, **{k: level.spec[k] for k in STORED_ONLY if k in level.spec}}
    return queue.NewJob(
        key=key,
        engine=level.engine,
        model=level.model,
        turn_name=level.turn_name,
        turn_index=level.turn_index,
        clip_id=level.clip_id,
        query_id=level.query_id,
        spec=canonical(stored),
        media_key=level.media_key,
        parent_keys=(level.key,),
        priority=level.priority,
        max_attempts=level.max_attempts,
    )


def _deeper(cur: Cursor, level: rows.LevelRow) -> list[int]:
    job = next_level_job(level)
    new_id = _current(cur, queue.enqueue(cur, [job]), job.key)
    rows.move_items(cur, level.id, new_id)
    return [new_id]


def _follow(cur: Cursor, level: rows.LevelRow) -> list[int]:
    """The turns that take this zoom's final window, for every run item that reached it."""
    from egoqa.plan.config import config_from_json
    from egoqa.plan.styles import parse_style

    spawned: list[int] = []
    for item_id, run_id, _ in rows.items_at(cur, level.id):
        config_text, style_text = rows.run_plan(cur, run_id)
        config, style = config_from_json(config_text), parse_style(json.loads(style_text))
        for turn, index, job in _follow_jobs(cur, config, style, level):
            job_id = _current(cur, queue.enqueue(cur, [job]), job.key)
            rows.attach(cur, item_id, index, turn.name, job_id, turn.graded)
            spawned.append(job_id)
    return spawned


def _follow_jobs(cur: Cursor, config, style, level: rows.LevelRow) -> list[tuple]:
    from egoqa.plan.jobs import follow_up_jobs

    clip_row, query_row = rows.clip_and_query(cur, level.clip_id, level.query_id)
    window = level.note["final_window"]
    return follow_up_jobs(
        config, style, level, window, _clip(clip_row), _query(clip_row, query_row)
    )


def _clip(row: tuple):
    from egoqa.plan.dataset import Clip

    uid, video_uid, path, offset, duration, split, identity = row
    return Clip(uid, video_uid, Path(path), offset, duration, split), identity


def _query(clip_row: tuple, row: tuple | None):
    from egoqa.plan.dataset import Query

    if row is None:
        return None
    annotation_uid, idx, text, template, gs, ge, extra = row
    return Query(
        clip_row[0], annotation_uid, idx, text, template, gs, ge, json.loads(extra or "{}")
    )
