"""The workers table: who is working where (host, pid, GPUs), since when, last heartbeat, jobs done.

It is how a dead worker is noticed before its leases run out: a worker on this host whose
process is gone, or any worker whose heartbeat is older than its lease, is marked dead and its
jobs are released at once (the attempt counts: a job that keeps killing its worker fails).
Times come from the database's clock, like leases.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from egoqa.store import graph
from egoqa.store.db import Database


def host() -> str:
    return socket.gethostname()


def register_worker(
    db: Database, worker_id: str, engine: str, model: str, device: str, lease_s: float
) -> None:
    with db.write() as cur:
        cur.execute(
            f"""INSERT INTO workers (id, host, pid, engine, gpus, lease_s, model, device, state,
                                    started_at, heartbeat_at, jobs_done)
               VALUES (:id, :host, :pid, :engine, :gpus, :lease, :model, :device, 'running',
                       {db.now}, {db.now}, 0)""",
            {
                "id": worker_id,
                "host": host(),
                "pid": os.getpid(),
                "engine": engine,
                "gpus": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "lease": float(lease_s),
                "model": model,
                "device": device,
            },
        )


def beat(db: Database, worker_id: str) -> None:
    with db.write() as cur:
        cur.execute(
            f"UPDATE workers SET heartbeat_at = {db.now} WHERE id = :id AND state = 'running'",
            {"id": worker_id},
        )


def stop_worker(db: Database, worker_id: str, jobs_done: int) -> None:
    with db.write() as cur:
        cur.execute(
            f"""UPDATE workers SET state = 'stopped', stopped_at = {db.now}, jobs_done = :n
                 WHERE id = :id""",
            {"id": worker_id, "n": jobs_done},
        )


# --- noticing dead workers ---------------------------------------------------------------------


@dataclass(frozen=True)
class LiveWorker:
    id: str
    host: str
    pid: int
    gpus: str | None
    heartbeat_age_s: float
    lease_s: float | None


def running_workers(db: Database) -> list[LiveWorker]:
    """Workers registered as running (alive or not: see `release_dead`)."""
    with db.read() as cur:
        rows = cur.all(
            f"""SELECT id, host, pid, gpus, {db.now} - heartbeat_at, lease_s FROM workers
                 WHERE state = 'running' ORDER BY started_at, id"""
        )
    return [LiveWorker(*r) for r in rows]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return not _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def is_dead(worker: LiveWorker, here: str) -> str | None:
    """Why a running worker is dead, or None while it may be alive."""
    if worker.host == here and worker.pid != os.getpid() and not pid_alive(worker.pid):
        return f"its process {worker.pid} on {worker.host} is gone"
    if worker.lease_s and worker.heartbeat_age_s > worker.lease_s:
        return f"no heartbeat for {worker.heartbeat_age_s:.0f} s"
    return None


RELEASE = """
UPDATE jobs SET state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'ready' END,
       finished_at = CASE WHEN attempts >= max_attempts THEN {now} ELSE finished_at END,
       error_kind = 'worker_died', error = :why,
       lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
 WHERE state = 'running' AND lease_owner = :id
RETURNING id, state
"""


@dataclass(frozen=True)
class Released:
    workers: list[str]
    requeued: int
    failed: list[int]  # jobs failed for good (attempts used up) and the dependents they failed


def release_dead(db: Database) -> Released:
    """Mark dead workers so and give their jobs back now instead of when their leases end."""
    here = host()
    dead = [(w, why) for w in running_workers(db) if (why := is_dead(w, here))]
    requeued, failed = 0, []
    for worker, why in dead:
        with db.write() as cur:
            cur.execute(
                f"""UPDATE workers SET state = 'dead', stopped_at = {db.now}
                     WHERE id = :id AND state = 'running'""",
                {"id": worker.id},
            )
            msg = f"worker {worker.id} died ({why})"
            rows = cur.all(RELEASE.format(now=db.now), {"id": worker.id, "why": msg})
            for job_id, state in rows:
                if state == "failed":
                    failed += [job_id, *graph.fail_dependents(cur, job_id)]
                else:
                    requeued += 1
    return Released([w.id for w, _ in dead], requeued, failed)


def held_jobs(db: Database) -> list[tuple]:
    """(worker, host, pid, jobs held, lease ends in seconds) for every worker holding jobs."""
    with db.read() as cur:
        return cur.all(
            f"""SELECT j.lease_owner, w.host, w.pid, COUNT(*), MAX(j.lease_expires_at) - {db.now}
                  FROM jobs j LEFT JOIN workers w ON w.id = j.lease_owner
                 WHERE j.state = 'running'
                 GROUP BY j.lease_owner, w.host, w.pid ORDER BY j.lease_owner"""
        )


def gpus_in_use(db: Database, wanted: list[str]) -> list[tuple[str, int, str]]:
    """(GPU, pid, worker) for each wanted GPU that a live worker on this host holds."""
    here, out = host(), []
    for w in running_workers(db):
        if w.host != here or not w.gpus or not pid_alive(w.pid):
            continue
        out += [(g, w.pid, w.id) for g in w.gpus.split(",") if g in wanted]
    return out
