"""The store's test helpers: jobs planned, claimed and completed through `egoqa.store.queue` with
nothing else in the way (the contract tests, the store's promises, resilience and recompute)."""

from __future__ import annotations

import json

from egoqa.store import queue
from egoqa.store.db import Database

MODEL = "contract-model"
COLUMNS = (
    "state, attempts, lease_owner, lease_token, lease_expires_at, response, error_kind, error, "
    "generation, worker_id"
)


def add_clips(db: Database, n: int = 1) -> list[int]:
    with db.write() as cur:
        start = cur.one("SELECT COUNT(*) FROM clips")
        for i in range(start, start + n):
            cur.execute(
                """INSERT INTO clips (clip_uid, video_path, offset_sec, duration_sec, identity)
                   VALUES (:uid, :path, 0, 24, :identity)""",
                {"uid": f"clip-{i:05d}", "path": f"clip-{i}.mp4", "identity": f"id-{i}"},
            )
        return [r[0] for r in cur.all("SELECT id FROM clips ORDER BY id")][start:]


def job(
    name: str,
    clip_id: int,
    turn: int = 0,
    parents: tuple[str, ...] = (),
    priority: int = 0,
    max_attempts: int = 3,
    model: str = MODEL,
) -> queue.NewJob:
    return queue.NewJob(
        key=name,
        engine=model,  # one engine per model here
        model=model,
        turn_name=f"turn{turn}",
        turn_index=turn,
        clip_id=clip_id,
        query_id=None,
        spec=json.dumps({"name": name}),
        media_key="none",
        parent_keys=parents,
        priority=priority,
        max_attempts=max_attempts,
    )


def enqueue(db: Database, jobs: list[queue.NewJob]) -> queue.EnqueueResult:
    with db.write() as cur:
        return queue.enqueue(cur, jobs)


def row(db: Database, job_id: int) -> dict:
    with db.read() as cur:
        raw = cur.execute(f"SELECT {COLUMNS} FROM jobs WHERE id = :id", {"id": job_id})
        names = [d[0] for d in raw.description]
        return dict(zip(names, raw.fetchone(), strict=True))


def states(db: Database, ids: dict[str, int]) -> dict[str, str]:
    return {name: row(db, i)["state"] for name, i in ids.items()}


def results(db: Database, job_id: int) -> list[tuple]:
    with db.read() as cur:
        return cur.all(
            "SELECT generation, lease_token, worker_id, response FROM job_results "
            "WHERE job_id = :id ORDER BY id",
            {"id": job_id},
        )


def done(text_: str, job_id: int) -> queue.Completion:
    return queue.Completion(job_id=job_id, response=text_, responses=[text_])


def complete_all(db: Database, claim: queue.Claim, prefix: str = "answer") -> set[int]:
    return queue.complete(db, claim, [done(f"{prefix} {j.id}", j.id) for j in claim.jobs])


def claim(db: Database, n: int = 10, owner: str = "w1", lease_s: float = 60) -> queue.Claim:
    return queue.claim(db, owner, MODEL, n, lease_s)


def expire_leases(db: Database, seconds: float = 3600) -> None:
    """Move every running lease `seconds` into the past (as if that much time had passed)."""
    with db.write() as cur:
        cur.execute(
            "UPDATE jobs SET lease_expires_at = lease_expires_at - :s WHERE state = 'running'",
            {"s": seconds},
        )


def reap(db: Database) -> tuple[int, int]:
    """(re-queued, failed for good) by a reap now."""
    got = queue.reap(db)
    return got.requeued, sum(row(db, i)["error_kind"] == "lease_expired" for i in got.failed)


def enqueue_independent(db: Database, n: int, clips: int = 20) -> None:
    clip_ids = add_clips(db, clips)
    enqueue(db, [job(f"job-{i:06d}", clip_ids[i % clips], turn=i % 3) for i in range(n)])


def assert_each_job_claimed_once(db: Database, reports: list[dict], n: int) -> None:
    errors = [e for r in reports for e in r["errors"]]
    assert errors == [], f"worker processes failed: {errors}"
    claimed = [i for r in reports for i in r["claimed"]]
    assert len(claimed) == n and len(set(claimed)) == n, (
        f"{len(claimed) - len(set(claimed))} job(s) claimed twice, "
        f"{n - len(set(claimed))} never claimed"
    )
    assert all(sorted(r["won"]) == sorted(r["claimed"]) for r in reports)
    by_owner = {i: r["owner"] for r in reports for i in r["claimed"]}
    with db.read() as cur:
        state_counts = dict(cur.all("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        attempts = dict(cur.all("SELECT attempts, COUNT(*) FROM jobs GROUP BY attempts"))
        per_job = dict(cur.all("SELECT job_id, COUNT(*) FROM job_results GROUP BY job_id"))
        writers = dict(cur.all("SELECT job_id, worker_id FROM job_results"))
    assert state_counts == {"done": n}
    assert attempts == {1: n}, "a job was claimed more than once"
    assert len(per_job) == n and set(per_job.values()) == {1}, "a result was written twice"
    assert writers == by_owner, "a result was written by a process that did not claim it"
