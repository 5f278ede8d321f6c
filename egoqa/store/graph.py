"""The job graph's state rules: a job is ready when every parent is done, a failed parent fails its
dependents, and retry / recompute re-queue chains. Called inside the queue's transactions."""

from __future__ import annotations

import json
from collections.abc import Sequence

from egoqa.store.db import Cursor, Database, chunks, in_list

PROMOTE = """
UPDATE jobs SET state = 'ready'
 WHERE {state} = 'blocked' AND id IN {ids}
   AND NOT EXISTS (SELECT 1 FROM job_deps d JOIN jobs p ON p.id = d.parent_id
                    WHERE d.job_id = jobs.id AND p.state <> 'done')
"""


def promote(cur: Cursor, job_ids: Sequence[int]) -> None:
    """Make blocked jobs ready once every parent is done."""
    # SQLite would walk every blocked job through the state index and test it against the id
    # list (quadratic over a large plan); `+state` keeps the index out, so the ids drive it.
    state = "+state" if cur.db.is_sqlite else "state"
    for chunk in chunks(list(job_ids)):
        frag, params = in_list("j", chunk)
        cur.execute(PROMOTE.format(ids=frag, state=state), params)


def promote_children(cur: Cursor, parent_ids: Sequence[int]) -> None:
    for chunk in chunks(list(parent_ids)):
        frag, params = in_list("p", chunk)
        children = [
            r[0] for r in cur.all(f"SELECT job_id FROM job_deps WHERE parent_id IN {frag}", params)
        ]
        promote(cur, children)


def fail_if_upstream_failed(cur: Cursor, job_ids: Sequence[int]) -> list[int]:
    """Fail (with the upstream reason) those of these jobs that have a failed parent."""
    failed: list[int] = []
    for chunk in chunks(list(job_ids)):
        frag, params = in_list("j", chunk)
        rows = cur.all(
            f"""SELECT d.job_id, MIN(p.id) FROM job_deps d JOIN jobs p ON p.id = d.parent_id
                 WHERE d.job_id IN {frag} AND p.state = 'failed' GROUP BY d.job_id""",
            params,
        )
        for job_id, parent_id in rows:
            cur.execute(
                f"""UPDATE jobs SET state = 'failed', error_kind = 'upstream', error = :msg,
                           finished_at = {cur.db.now}, lease_owner = NULL, lease_token = NULL,
                           lease_expires_at = NULL
                     WHERE id = :id""",
                {"id": job_id, "msg": f"upstream job {parent_id} failed"},
            )
            failed += [job_id, *fail_dependents(cur, job_id)]
    return failed


DESCENDANTS = """
WITH RECURSIVE down(id) AS (
    SELECT job_id FROM job_deps WHERE parent_id = :id
    UNION SELECT d.job_id FROM job_deps d JOIN down ON d.parent_id = down.id)
SELECT id FROM down
"""


def fail_dependents(cur: Cursor, job_id: int) -> list[int]:
    """Fail every job waiting (blocked or ready) downstream of `job_id`; returns their ids."""
    ids = [r[0] for r in cur.all(DESCENDANTS, {"id": job_id})]
    failed: list[int] = []
    for chunk in chunks(ids):
        frag, params = in_list("j", chunk)
        params["msg"] = f"upstream job {job_id} failed"
        rows = cur.all(
            f"""UPDATE jobs SET state = 'failed', error_kind = 'upstream', error = :msg,
                       finished_at = {cur.db.now}
                 WHERE id IN {frag} AND state IN ('blocked', 'ready') RETURNING id""",
            params,
        )
        failed += [r[0] for r in rows]
    return failed


# --- retry / recompute ------------------------------------------------------------------------


def retry(db: Database, job_ids: Sequence[int] | None = None) -> int:
    """Re-queue failed jobs (all, or those given) and the dependents they failed."""
    with db.write() as cur:
        if job_ids is None:
            ids = [r[0] for r in cur.all("SELECT id FROM jobs WHERE state = 'failed'")]
        else:
            ids = _failed_among(cur, job_ids)
            ids += _failed_downstream(cur, ids)
        n = _reset_to_blocked(cur, ids, bump_generation=False)
        fail_if_upstream_failed(cur, ids)  # a parent outside the retry is still failed
        promote(cur, ids)
    return n


def _failed_downstream(cur: Cursor, job_ids: Sequence[int]) -> list[int]:
    """Failed jobs downstream of these: left failed, they would block the chain for good."""
    out: set[int] = set()
    for job_id in job_ids:
        out.update(r[0] for r in cur.all(DESCENDANTS, {"id": job_id}))
    out -= set(job_ids)
    return _failed_among(cur, sorted(out))


def _failed_among(cur: Cursor, job_ids: Sequence[int]) -> list[int]:
    out: list[int] = []
    for chunk in chunks(list(job_ids)):
        frag, params = in_list("j", chunk)
        out += [
            r[0]
            for r in cur.all(f"SELECT id FROM jobs WHERE id IN {frag} AND state = 'failed'", params)
        ]
    return out


def _reset_to_blocked(cur: Cursor, ids: Sequence[int], bump_generation: bool) -> int:
    """Finished jobs back to blocked (promote makes them ready); returns how many. Jobs still
    pending are already queued, and a running job is left to its worker."""
    gen = ", generation = generation + 1" if bump_generation else ""
    n = 0
    for chunk in chunks(list(ids)):
        frag, params = in_list("j", chunk)
        cur.execute(
            f"""UPDATE jobs SET state = 'blocked', attempts = 0, error = NULL, error_kind = NULL,
                       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL{gen}
                 WHERE id IN {frag} AND state IN ('done', 'failed')""",
            params,
        )
        n += cur.rowcount
    return n


def recompute(db: Database, job_ids: Sequence[int]) -> int:
    """Re-queue finished jobs (their earlier results stay in job_results as history), and every
    job downstream of them, whatever its state: a job that ran, waits or runs now on a parent's
    old response would otherwise keep or produce an answer the recomputed parent did not give.

    A running job among those given is left to its worker; a running job downstream loses its
    lease (its result is refused) and waits for its parent again. A zoom's later levels and the
    turns after it are not touched here: the run's items are pointed back at the first level,
    and each successor is re-queued when the level above it finishes again (`plan.zoom.settle`).
    Returns how many jobs were re-queued.
    """
    with db.write() as cur:
        n = _reset_to_blocked(cur, job_ids, bump_generation=True)
        below = sorted(_downstream(cur, job_ids) - set(job_ids))
        n += demote(cur, below)
        promote(cur, list(job_ids))
    return n


def _downstream(cur: Cursor, job_ids: Sequence[int]) -> set[int]:
    """Every job below these, except a zoom's successors and what lies below them."""
    out: set[int] = set()
    todo = list(job_ids)
    while todo:
        frag, params = in_list("p", todo[:500])
        todo = todo[500:]
        rows = cur.all(
            f"""SELECT j.id, j.spec FROM job_deps d JOIN jobs j ON j.id = d.job_id
                 WHERE d.parent_id IN {frag}""",
            params,
        )
        fresh = [i for i, spec in rows if i not in out and not zoom_successor(spec)]
        out.update(fresh)
        todo += fresh
    return out


def zoom_successor(spec: str) -> bool:
    """A job a zoom level created when it finished: its next level, or a turn on its window."""
    if '"zoom"' not in spec and '"window_of"' not in spec:
        return False
    parsed = json.loads(spec)
    return "from" in (parsed.get("zoom") or {}) or "window_of" in (parsed.get("media") or {})


def requeue_finished(cur: Cursor, ids: Sequence[int]) -> int:
    """Done or failed jobs among these back to the queue (a new generation); returns how many."""
    n = _reset_to_blocked(cur, ids, bump_generation=True)
    promote(cur, ids)
    return n


def demote(cur: Cursor, ids: Sequence[int]) -> int:
    """Jobs back to blocked whatever their state (a running one loses its lease, so its worker's
    result is refused); returns how many were not blocked already."""
    n = 0
    for chunk in chunks(list(ids)):
        frag, params = in_list("j", chunk)
        cur.execute(
            f"""UPDATE jobs SET state = 'blocked', attempts = 0, error = NULL, error_kind = NULL,
                       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
                       generation = generation + 1
                 WHERE id IN {frag} AND state <> 'blocked'""",
            params,
        )
        n += cur.rowcount
    return n
