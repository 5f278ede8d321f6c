"""The job graph's state rules: a job is ready when every parent is done, a failed parent fails its
dependents, and retry / recompute re-queue chains. Called inside the queue's transactions."""

from __future__ import annotations

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
    """Re-queue finished jobs (their earlier results stay in job_results as history).

    Returns how many were actually re-queued: a job running now is left to its worker.
    """
    with db.write() as cur:
        n = _reset_to_blocked(cur, job_ids, bump_generation=True)
        promote(cur, job_ids)
    return n
