"""The queue: the one module that changes a job's state.

enqueue (idempotent by key) → claim (one UPDATE … RETURNING) → renew → complete | fail | release;
reap expired leases; retry failed jobs and their dependents. Complete, fail and renew only act
while `state='running' AND lease_token=:token`, and report whether they won, so a worker that
lost its lease can never overwrite anything.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from egoqa.store.db import Cursor, Database
from egoqa.store.models import JobState

RUNNING, READY, BLOCKED = JobState.RUNNING.value, JobState.READY.value, JobState.BLOCKED.value
DONE, FAILED = JobState.DONE.value, JobState.FAILED.value


@dataclass(frozen=True)
class NewJob:
    key: str
    model: str
    turn_name: str
    turn_index: int
    clip_id: int
    query_id: int | None
    spec: str  # canonical JSON
    media_key: str
    parent_keys: tuple[str, ...] = ()
    priority: int = 0
    max_attempts: int = 3


@dataclass(frozen=True)
class ClaimedJob:
    id: int
    key: str
    spec: dict
    clip_id: int
    query_id: int | None
    turn_index: int
    attempts: int
    media_key: str
    priority: int


@dataclass
class Claim:
    """A batch of jobs held under one lease token."""

    token: str
    owner: str
    jobs: list[ClaimedJob] = field(default_factory=list)


@dataclass(frozen=True)
class Completion:
    job_id: int
    response: str | None
    responses: list[str]
    prompt: str | None = None
    finish_reason: str | None = None
    latency_s: float | None = None
    prompt_tokens: int | None = None
    visual_tokens: int | None = None
    completion_tokens: int | None = None
    batch_size: int | None = None


@dataclass(frozen=True)
class EnqueueResult:
    ids: dict[str, int]
    new: int
    reused: int


def _in(prefix: str, values: Sequence) -> tuple[str, dict]:
    names = [f"{prefix}{i}" for i in range(len(values))]
    return "(" + ", ".join(":" + n for n in names) + ")", dict(zip(names, values, strict=True))


def _chunks(seq: Sequence, n: int = 500) -> Iterable[Sequence]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


# --- enqueue ---------------------------------------------------------------------------------

INSERT_JOB = """
INSERT INTO jobs (key, state, model, turn_name, turn_index, clip_id, query_id, spec, media_key,
                  priority, attempts, max_attempts, generation, created_at)
VALUES (:key, :state, :model, :turn_name, :turn_index, :clip_id, :query_id, :spec, :media_key,
        :priority, 0, :max_attempts, 0, :now)
ON CONFLICT (key) DO NOTHING
"""
INSERT_DEP = """
INSERT INTO job_deps (job_id, parent_id) VALUES (:job_id, :parent_id)
ON CONFLICT (job_id, parent_id) DO NOTHING
"""


def enqueue(cur: Cursor, jobs: Sequence[NewJob]) -> EnqueueResult:
    """Insert jobs by key (parents before children); existing keys are reused untouched."""
    now = time.time()
    keys = list(dict.fromkeys(j.key for j in jobs))
    before = _ids_by_key(cur, keys)
    fresh = [j for j in {j.key: j for j in jobs}.values() if j.key not in before]
    cur.executemany(INSERT_JOB, [_job_row(j, now) for j in fresh])
    ids = {**before, **_ids_by_key(cur, [j.key for j in fresh])}
    deps = [{"job_id": ids[j.key], "parent_id": ids[p]} for j in fresh for p in j.parent_keys]
    cur.executemany(INSERT_DEP, deps)
    new_ids = [ids[j.key] for j in fresh if j.parent_keys]
    fail_if_upstream_failed(cur, new_ids)
    promote(cur, new_ids)
    return EnqueueResult(ids=ids, new=len(fresh), reused=len(keys) - len(fresh))


def _job_row(j: NewJob, now: float) -> dict:
    return {
        "key": j.key,
        "state": BLOCKED if j.parent_keys else READY,
        "model": j.model,
        "turn_name": j.turn_name,
        "turn_index": j.turn_index,
        "clip_id": j.clip_id,
        "query_id": j.query_id,
        "spec": j.spec,
        "media_key": j.media_key,
        "priority": j.priority,
        "max_attempts": j.max_attempts,
        "now": now,
    }


def _ids_by_key(cur: Cursor, keys: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for chunk in _chunks(keys):
        frag, params = _in("k", chunk)
        out.update(
            (k, i) for i, k in cur.all(f"SELECT id, key FROM jobs WHERE key IN {frag}", params)
        )
    return out


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
    for chunk in _chunks(list(job_ids)):
        frag, params = _in("j", chunk)
        cur.execute(PROMOTE.format(ids=frag, state=state), params)


def promote_children(cur: Cursor, parent_ids: Sequence[int]) -> None:
    for chunk in _chunks(list(parent_ids)):
        frag, params = _in("p", chunk)
        children = [
            r[0] for r in cur.all(f"SELECT job_id FROM job_deps WHERE parent_id IN {frag}", params)
        ]
        promote(cur, children)


def fail_if_upstream_failed(cur: Cursor, job_ids: Sequence[int]) -> None:
    for chunk in _chunks(list(job_ids)):
        frag, params = _in("j", chunk)
        rows = cur.all(
            f"""SELECT d.job_id, MIN(p.id) FROM job_deps d JOIN jobs p ON p.id = d.parent_id
                 WHERE d.job_id IN {frag} AND p.state = 'failed' GROUP BY d.job_id""",
            params,
        )
        for job_id, parent_id in rows:
            _set_failed(cur, job_id, "upstream", f"upstream job {parent_id} failed")
            fail_dependents(cur, job_id)


# --- claim / renew / release -----------------------------------------------------------------

CLAIM = """
UPDATE jobs SET state = 'running', lease_owner = :owner, lease_token = :token,
       lease_expires_at = :expires, attempts = attempts + 1, started_at = :now
 WHERE id IN (SELECT id FROM jobs WHERE state = 'ready' AND model = :model
               ORDER BY priority, clip_id, turn_index, id LIMIT :n{lock})
RETURNING id, key, spec, clip_id, query_id, turn_index, attempts, media_key, priority
"""


def new_token() -> str:
    return secrets.token_hex(16)


def claim(db: Database, owner: str, model: str, n: int, lease_s: float) -> Claim:
    """Claim up to n ready jobs of `model`, in (priority, clip, turn) order, under a fresh token."""
    token, now = new_token(), time.time()
    lock = "" if db.is_sqlite else " FOR UPDATE SKIP LOCKED"
    params = {
        "owner": owner,
        "token": token,
        "expires": now + lease_s,
        "now": now,
        "model": model,
        "n": n,
    }
    with db.write() as cur:
        rows = cur.all(CLAIM.format(lock=lock), params)
    jobs = [
        ClaimedJob(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows
    ]
    jobs.sort(key=lambda j: (j.priority, j.clip_id, j.turn_index, j.id))
    return Claim(token=token, owner=owner, jobs=jobs)


def renew(db: Database, claim: Claim, job_ids: Sequence[int], lease_s: float) -> set[int]:
    """Extend the lease of the jobs still held; returns the ids this worker still holds."""
    if not job_ids:
        return set()
    frag, params = _in("j", list(job_ids))
    params.update(token=claim.token, expires=time.time() + lease_s)
    with db.write() as cur:
        rows = cur.all(
            f"""UPDATE jobs SET lease_expires_at = :expires
                 WHERE id IN {frag} AND state = 'running' AND lease_token = :token RETURNING id""",
            params,
        )
    return {r[0] for r in rows}


def release(db: Database, claim: Claim, job_ids: Sequence[int] | None = None) -> int:
    """Give jobs back at once (graceful stop): ready again, the attempt not counted."""
    ids = [j.id for j in claim.jobs] if job_ids is None else list(job_ids)
    if not ids:
        return 0
    frag, params = _in("j", ids)
    params["token"] = claim.token
    with db.write() as cur:
        cur.execute(
            f"""UPDATE jobs SET state = 'ready', lease_owner = NULL, lease_token = NULL,
                       lease_expires_at = NULL, attempts = attempts - 1
                 WHERE id IN {frag} AND state = 'running' AND lease_token = :token""",
            params,
        )
        return cur.rowcount


# --- complete / fail -------------------------------------------------------------------------

COMPLETE = """
UPDATE jobs SET state = 'done', response = :response, responses = :responses, prompt = :prompt,
       finish_reason = :finish_reason, latency_s = :latency_s, prompt_tokens = :prompt_tokens,
       visual_tokens = :visual_tokens, completion_tokens = :completion_tokens,
       batch_size = :batch_size, worker_id = :owner, finished_at = :now,
       error = NULL, error_kind = NULL,
       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
 WHERE id = :job_id AND state = 'running' AND lease_token = :token
"""
HELD = """
SELECT id, generation FROM jobs WHERE id IN {ids} AND state = 'running' AND lease_token = :token{lock}
"""
RECORD = """
INSERT INTO job_results (job_id, generation, lease_token, worker_id, prompt, response, responses,
       finish_reason, latency_s, prompt_tokens, visual_tokens, completion_tokens, batch_size,
       finished_at)
VALUES (:job_id, :generation, :token, :owner, :prompt, :response, :responses, :finish_reason,
        :latency_s, :prompt_tokens, :visual_tokens, :completion_tokens, :batch_size, :now)
"""


def complete(db: Database, claim: Claim, results: Sequence[Completion]) -> set[int]:
    """Write results; returns the ids whose write won (still held under this claim's token).

    One lookup of the jobs still held, then one batched update and one batched history insert:
    a handful of statements per batch, not two per job (the write lock is held that much less).
    """
    now = time.time()
    rows: dict[int, dict] = {}
    for r in results:  # a job listed twice is written once, by its first result
        rows.setdefault(
            r.job_id,
            {
                **r.__dict__,
                "responses": json.dumps(r.responses),
                "token": claim.token,
                "owner": claim.owner,
                "now": now,
            },
        )
    with db.write() as cur:
        held = _held(cur, claim.token, list(rows))
        won = [{**row, "generation": held[i]} for i, row in rows.items() if i in held]
        cur.executemany(COMPLETE, won)
        cur.executemany(RECORD, won)
        promote_children(cur, sorted(held))
    return set(held)


def _held(cur: Cursor, token: str, job_ids: Sequence[int]) -> dict[int, int]:
    """Generation of each of these jobs still running under `token` (locked on PostgreSQL)."""
    lock = "" if cur.db.is_sqlite else " FOR UPDATE"
    out: dict[int, int] = {}
    for chunk in _chunks(job_ids):
        frag, params = _in("j", chunk)
        params["token"] = token
        out.update(cur.all(HELD.format(ids=frag, lock=lock), params))
    return out


def fail(
    db: Database, claim: Claim, job_id: int, kind: str, message: str, retryable: bool = False
) -> bool:
    """Record a failure. Retryable ones go back to ready while attempts remain."""
    with db.write() as cur:
        row = cur.execute(
            "SELECT attempts, max_attempts FROM jobs WHERE id = :id AND state = 'running' "
            "AND lease_token = :token",
            {"id": job_id, "token": claim.token},
        ).fetchone()
        if row is None:
            return False
        if retryable and row[0] < row[1]:
            cur.execute(
                """UPDATE jobs SET state = 'ready', error_kind = :kind, error = :msg,
                          lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
                    WHERE id = :id""",
                {"id": job_id, "kind": kind, "msg": message},
            )
            return True
        _set_failed(cur, job_id, kind, message)
        fail_dependents(cur, job_id)
    return True


def _set_failed(cur: Cursor, job_id: int, kind: str, message: str) -> None:
    cur.execute(
        """UPDATE jobs SET state = 'failed', error_kind = :kind, error = :msg, finished_at = :now,
                  lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
            WHERE id = :id""",
        {"id": job_id, "kind": kind, "msg": message, "now": time.time()},
    )


DESCENDANTS = """
WITH RECURSIVE down(id) AS (
    SELECT job_id FROM job_deps WHERE parent_id = :id
    UNION SELECT d.job_id FROM job_deps d JOIN down ON d.parent_id = down.id)
SELECT id FROM down
"""


def fail_dependents(cur: Cursor, job_id: int) -> int:
    ids = [r[0] for r in cur.all(DESCENDANTS, {"id": job_id})]
    n = 0
    for chunk in _chunks(ids):
        frag, params = _in("j", chunk)
        params.update(msg=f"upstream job {job_id} failed", now=time.time())
        cur.execute(
            f"""UPDATE jobs SET state = 'failed', error_kind = 'upstream', error = :msg,
                       finished_at = :now
                 WHERE id IN {frag} AND state IN ('blocked', 'ready')""",
            params,
        )
        n += cur.rowcount
    return n


# --- reap / retry / recompute ----------------------------------------------------------------


def reap(db: Database, now: float | None = None) -> tuple[int, int]:
    """Expired leases: back to ready, or failed once attempts are used up. Returns (ready, failed)."""
    now = time.time() if now is None else now
    with db.write() as cur:
        rows = cur.all(
            """UPDATE jobs SET
                   state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'ready' END,
                   error_kind = 'lease_expired',
                   error = 'lease of worker ' || lease_owner || ' expired',
                   lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
             WHERE state = 'running' AND lease_expires_at < :now
             RETURNING id, state""",
            {"now": now},
        )
        for job_id, state in rows:
            if state == FAILED:
                fail_dependents(cur, job_id)
    failed = sum(1 for _, s in rows if s == FAILED)
    return len(rows) - failed, failed


def retry(db: Database, job_ids: Sequence[int] | None = None) -> int:
    """Re-queue failed jobs (all, or those given) and the dependents they failed."""
    with db.write() as cur:
        if job_ids is None:
            ids = [r[0] for r in cur.all("SELECT id FROM jobs WHERE state = 'failed'")]
        else:
            ids = _failed_among(cur, job_ids)
            ids += _failed_downstream(cur, ids)
        _reset_to_blocked(cur, ids, bump_generation=False)
        fail_if_upstream_failed(cur, ids)  # a parent outside the retry is still failed
        promote(cur, ids)
    return len(ids)


def _failed_downstream(cur: Cursor, job_ids: Sequence[int]) -> list[int]:
    """Failed jobs downstream of these: left failed, they would block the chain for good."""
    out: set[int] = set()
    for job_id in job_ids:
        out.update(r[0] for r in cur.all(DESCENDANTS, {"id": job_id}))
    out -= set(job_ids)
    return _failed_among(cur, sorted(out))


def _failed_among(cur: Cursor, job_ids: Sequence[int]) -> list[int]:
    out: list[int] = []
    for chunk in _chunks(list(job_ids)):
        frag, params = _in("j", chunk)
        out += [
            r[0]
            for r in cur.all(f"SELECT id FROM jobs WHERE id IN {frag} AND state = 'failed'", params)
        ]
    return out


def _reset_to_blocked(cur: Cursor, ids: Sequence[int], bump_generation: bool) -> None:
    gen = ", generation = generation + 1" if bump_generation else ""
    for chunk in _chunks(list(ids)):
        frag, params = _in("j", chunk)
        cur.execute(
            f"""UPDATE jobs SET state = 'blocked', attempts = 0, error = NULL, error_kind = NULL,
                       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL{gen}
                 WHERE id IN {frag} AND state IN ('done', 'failed', 'ready', 'blocked')""",
            params,
        )


def recompute(db: Database, job_ids: Sequence[int]) -> int:
    """Re-queue finished jobs (their earlier results stay in job_results as history)."""
    with db.write() as cur:
        ids = [i for i in job_ids]
        _reset_to_blocked(cur, ids, bump_generation=True)
        promote(cur, ids)
    return len(ids)


# --- counts and learned limits ---------------------------------------------------------------


def pending_for_model(db: Database, model: str) -> int:
    """Jobs of `model` that are ready, running or blocked (what `--until-done` waits for)."""
    with db.read() as cur:
        return cur.one(
            "SELECT COUNT(*) FROM jobs WHERE model = :m AND state IN ('ready', 'running', 'blocked')",
            {"m": model},
        )


def batch_limit(db: Database, model: str, media_key: str) -> tuple[int | None, int | None]:
    with db.read() as cur:
        row = cur.execute(
            "SELECT max_ok, min_fail FROM batch_limits WHERE model = :m AND media_key = :k",
            {"m": model, "k": media_key},
        ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def record_batch(
    db: Database, model: str, media_key: str, *, ok: int | None = None, failed: int | None = None
) -> None:
    """Remember the largest batch that fit and the smallest that ran out of memory."""
    with db.write() as cur:
        cur.execute(
            """INSERT INTO batch_limits (model, media_key, max_ok, min_fail, updated_at)
               VALUES (:m, :k, :ok, :failed, :now)
               ON CONFLICT (model, media_key) DO UPDATE SET
                 max_ok = CASE WHEN excluded.max_ok IS NULL THEN batch_limits.max_ok
                               WHEN batch_limits.max_ok IS NULL OR excluded.max_ok > batch_limits.max_ok
                               THEN excluded.max_ok ELSE batch_limits.max_ok END,
                 min_fail = CASE WHEN excluded.min_fail IS NULL THEN batch_limits.min_fail
                               WHEN batch_limits.min_fail IS NULL OR excluded.min_fail < batch_limits.min_fail
                               THEN excluded.min_fail ELSE batch_limits.min_fail END,
                 updated_at = excluded.updated_at""",
            {"m": model, "k": media_key, "ok": ok, "failed": failed, "now": time.time()},
        )
