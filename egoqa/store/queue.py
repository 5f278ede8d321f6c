"""The queue: the one module that changes a claimed job's state.

enqueue (idempotent by key) → claim (one UPDATE … RETURNING) → renew → complete | fail | release;
reap expired leases. Every write to a claimed job checks `state='running' AND lease_token=:token`
in the statement that writes (complete also locks what it reads on PostgreSQL), so a worker that
lost its lease can never change anything. Lease and finish times come from the database's clock.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from egoqa.store import graph
from egoqa.store.db import Cursor, Database, chunks, in_list
from egoqa.store.states import JobState

RUNNING, READY, BLOCKED = JobState.RUNNING.value, JobState.READY.value, JobState.BLOCKED.value
DONE, FAILED = JobState.DONE.value, JobState.FAILED.value


@dataclass(frozen=True)
class NewJob:
    key: str
    engine: str
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

    @property
    def ids(self) -> list[int]:
        return [j.id for j in self.jobs]


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
    device: str | None = None  # where it actually ran
    dtype: str | None = None  # what the weights actually were
    note: str | None = None  # a zoom level's decision (JSON)
    stop_reason: str | None = None  # why a zoom stopped short of its target window
    served_model: str | None = None  # the model a server said answered (backend = "openai")
    system_fingerprint: str | None = None  # the server's configuration, as it reported it


@dataclass(frozen=True)
class EnqueueResult:
    ids: dict[str, int]
    new: int
    reused: int


# --- enqueue ---------------------------------------------------------------------------------

INSERT_JOB = """
INSERT INTO jobs (key, state, engine, model, turn_name, turn_index, clip_id, query_id, spec,
                  media_key, priority, attempts, max_attempts, generation, created_at)
VALUES (:key, :state, :engine, :model, :turn_name, :turn_index, :clip_id, :query_id, :spec,
        :media_key, :priority, 0, :max_attempts, 0, {now})
ON CONFLICT (key) DO NOTHING
"""
INSERT_DEP = """
INSERT INTO job_deps (job_id, parent_id) VALUES (:job_id, :parent_id)
ON CONFLICT (job_id, parent_id) DO NOTHING
"""


def enqueue(cur: Cursor, jobs: Sequence[NewJob]) -> EnqueueResult:
    """Insert jobs by key (parents before children); existing keys are reused untouched."""
    keys = list(dict.fromkeys(j.key for j in jobs))
    before = ids_by_key(cur, keys)
    fresh = [j for j in {j.key: j for j in jobs}.values() if j.key not in before]
    cur.executemany(INSERT_JOB.format(now=cur.db.now), [_job_row(j) for j in fresh])
    # parents enqueued before (a zoom's next level is enqueued alone) are looked up as well
    outside = {p for j in fresh for p in j.parent_keys} - set(keys)
    ids = {**before, **ids_by_key(cur, [j.key for j in fresh] + sorted(outside))}
    deps = [{"job_id": ids[j.key], "parent_id": ids[p]} for j in fresh for p in j.parent_keys]
    cur.executemany(INSERT_DEP, deps)
    new_ids = [ids[j.key] for j in fresh if j.parent_keys]
    graph.fail_if_upstream_failed(cur, new_ids)
    graph.promote(cur, new_ids)
    ids = {k: ids[k] for k in keys}
    return EnqueueResult(ids=ids, new=len(fresh), reused=len(keys) - len(fresh))


def _job_row(j: NewJob) -> dict:
    row = {k: getattr(j, k) for k in NewJob.__dataclass_fields__ if k != "parent_keys"}
    return {**row, "state": BLOCKED if j.parent_keys else READY}


def ids_by_key(cur: Cursor, keys: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for chunk in chunks(keys):
        frag, params = in_list("k", chunk)
        out.update(
            (k, i) for i, k in cur.all(f"SELECT id, key FROM jobs WHERE key IN {frag}", params)
        )
    return out


# --- claim / renew / release -----------------------------------------------------------------

_ORDER = "ORDER BY priority, clip_id, turn_index, id"
HEAD = f"""
SELECT media_key, spec FROM jobs WHERE state = 'ready' AND engine = :engine {_ORDER} LIMIT 1{{lock}}
"""
CLAIM = f"""
UPDATE jobs SET state = 'running', lease_owner = :owner, lease_token = :token,
       lease_expires_at = {{now}} + :lease, attempts = attempts + 1, started_at = {{now}}
 WHERE id IN (SELECT id FROM jobs
               WHERE state = 'ready' AND engine = :engine AND media_key = :media_key
               {_ORDER} LIMIT :n{{lock}})
RETURNING id, key, spec, clip_id, query_id, turn_index, attempts, media_key, priority
"""


def new_token() -> str:
    return secrets.token_hex(16)


def claim(
    db: Database, owner: str, engine: str, size: int | Callable[[dict], int], lease_s: float
) -> Claim:
    """Claim the next batch of `engine`'s ready jobs, in (priority, clip, turn) order.

    A batch holds jobs of one media spec (the head job's), and `size` (a number, or a function
    of the head job's spec) says how many: what the worker will run now, so a crash strands at
    most one batch. The lease ends `lease_s` after the database's clock says now.
    """
    token = new_token()
    lock = "" if db.is_sqlite else " FOR UPDATE SKIP LOCKED"
    with db.write() as cur:
        head = cur.execute(HEAD.format(lock=lock), {"engine": engine}).fetchone()
        if head is None:
            return Claim(token=token, owner=owner)
        n = size if isinstance(size, int) else size(json.loads(head[1]))
        params = {"owner": owner, "token": token, "lease": float(lease_s), "engine": engine}
        params |= {"media_key": head[0], "n": max(1, int(n))}
        rows = cur.all(CLAIM.format(lock=lock, now=db.now), params)
    jobs = [
        ClaimedJob(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7], r[8]) for r in rows
    ]
    jobs.sort(key=lambda j: (j.priority, j.clip_id, j.turn_index, j.id))
    return Claim(token=token, owner=owner, jobs=jobs)


RENEW = """
UPDATE jobs SET lease_expires_at = {now} + :lease
 WHERE id IN {ids} AND state = 'running' AND lease_token = :token RETURNING id
"""


def renew(db: Database, claim: Claim, job_ids: Sequence[int], lease_s: float) -> set[int]:
    """Extend the lease of the jobs still held; returns the ids this worker still holds."""
    if not job_ids:
        return set()
    frag, params = in_list("j", list(job_ids))
    params.update(token=claim.token, lease=float(lease_s))
    with db.write() as cur:
        rows = cur.all(RENEW.format(now=db.now, ids=frag), params)
    return {r[0] for r in rows}


def release(db: Database, claim: Claim, job_ids: Sequence[int] | None = None) -> int:
    """Give jobs back at once (graceful stop): ready again, the attempt not counted."""
    ids = claim.ids if job_ids is None else list(job_ids)
    if not ids:
        return 0
    frag, params = in_list("j", ids)
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
       batch_size = :batch_size, device = :device, dtype = :dtype, note = :note,
       stop_reason = :stop_reason, served_model = :served_model,
       system_fingerprint = :system_fingerprint, worker_id = :owner,
       finished_at = {now}, error = NULL, error_kind = NULL,
       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
 WHERE id = :job_id AND state = 'running' AND lease_token = :token
"""
HELD = """
SELECT id, generation FROM jobs WHERE id IN {ids} AND state = 'running' AND lease_token = :token{lock}
"""
RECORD = """
INSERT INTO job_results (job_id, generation, lease_token, worker_id, prompt, response, responses,
       finish_reason, latency_s, prompt_tokens, visual_tokens, completion_tokens, batch_size,
       device, dtype, served_model, system_fingerprint, finished_at)
VALUES (:job_id, :generation, :token, :owner, :prompt, :response, :responses, :finish_reason,
        :latency_s, :prompt_tokens, :visual_tokens, :completion_tokens, :batch_size,
        :device, :dtype, :served_model, :system_fingerprint, {now})
"""


def complete(
    db: Database,
    claim: Claim,
    results: Sequence[Completion],
    after: Callable[[Cursor, list[int]], None] | None = None,
) -> set[int]:
    """Write results; returns the ids whose write won (still held under this claim's token).

    One locked lookup of the jobs still held, then one batched update and one batched history
    insert: a handful of statements per batch, and no reaper can slip in between. `after` runs
    in the same transaction with the ids that won (a zoom level's next job is created there).
    """
    rows: dict[int, dict] = {}
    for r in results:  # a job listed twice is written once, by its first result
        row = {**r.__dict__, "responses": json.dumps(r.responses)}
        rows.setdefault(r.job_id, row | {"token": claim.token, "owner": claim.owner})
    with db.write() as cur:
        held = held_generations(cur, claim.token, list(rows))
        won = [{**row, "generation": held[i]} for i, row in rows.items() if i in held]
        cur.executemany(COMPLETE.format(now=db.now), won)
        cur.executemany(RECORD.format(now=db.now), won)
        graph.promote_children(cur, sorted(held))
        if after is not None and held:
            after(cur, sorted(held))
    return set(held)


def held_generations(cur: Cursor, token: str, job_ids: Sequence[int]) -> dict[int, int]:
    """Generation of each of these jobs still running under `token` (locked on PostgreSQL)."""
    lock = "" if cur.db.is_sqlite else " FOR UPDATE"
    out: dict[int, int] = {}
    for chunk in chunks(job_ids):
        frag, params = in_list("j", chunk)
        params["token"] = token
        out.update(cur.all(HELD.format(ids=frag, lock=lock), params))
    return out


_REQUEUE = "(:retryable = 1 AND attempts < max_attempts)"
FAIL = f"""
UPDATE jobs SET state = CASE WHEN {_REQUEUE} THEN 'ready' ELSE 'failed' END,
       finished_at = CASE WHEN {_REQUEUE} THEN finished_at ELSE {{now}} END,
       error_kind = :kind, error = :msg,
       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
 WHERE id = :id AND state = 'running' AND lease_token = :token
RETURNING state
"""


def fail(
    db: Database, claim: Claim, job_id: int, kind: str, message: str, retryable: bool = False
) -> list[int] | None:
    """Record a failure under the claim's lease (one statement checks the token and writes).

    A retryable failure goes back to ready while attempts remain. Returns None when the lease
    was lost (nothing changed), else the ids that are now failed: the job and its dependents
    ([] when it was re-queued).
    """
    params = {"id": job_id, "token": claim.token, "kind": kind, "msg": message}
    params["retryable"] = int(retryable)
    with db.write() as cur:
        row = cur.execute(FAIL.format(now=db.now), params).fetchone()
        if row is None:
            return None
        if row[0] != FAILED:
            return []
        return [job_id, *graph.fail_dependents(cur, job_id)]


# --- reap and counts -------------------------------------------------------------------------

REAP = """
UPDATE jobs SET
       state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'ready' END,
       finished_at = CASE WHEN attempts >= max_attempts THEN {now} ELSE finished_at END,
       error_kind = 'lease_expired', error = 'lease of worker ' || lease_owner || ' expired',
       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
 WHERE state = 'running' AND lease_expires_at < {now}
RETURNING id, state
"""


@dataclass(frozen=True)
class Reaped:
    requeued: int
    failed: list[int]  # jobs failed for good (attempts used up) and the dependents they failed


def reap(db: Database) -> Reaped:
    """Expired leases (by the database's clock): back to ready, or failed once attempts are used."""
    with db.write() as cur:
        rows = cur.all(REAP.format(now=db.now))
        failed: list[int] = []
        for job_id, state in rows:
            if state == FAILED:
                failed += [job_id, *graph.fail_dependents(cur, job_id)]
    return Reaped(requeued=sum(1 for _, s in rows if s != FAILED), failed=failed)


def pending(db: Database, engine: str) -> int:
    """Jobs of `engine` that are ready, running or blocked (what `--until-done` waits for)."""
    with db.read() as cur:
        return cur.one(
            "SELECT COUNT(*) FROM jobs WHERE engine = :e AND state IN ('ready', 'running', 'blocked')",
            {"e": engine},
        )
