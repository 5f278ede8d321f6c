"""The workers table: who is working where (host, pid, GPUs), since when, last heartbeat, jobs done.

It is how a dead worker is noticed before its leases run out: a worker in this very place (see
`Place`) whose process is gone, or any worker whose heartbeat is older than its lease, is marked
dead and its jobs are released at once (the attempt counts: a job that keeps killing its worker
fails). Times come from the database's clock, like leases, and the heartbeat's age is checked in
the statement that marks the worker dead: a heartbeat that lands first keeps it alive.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from egoqa.store import graph
from egoqa.store.db import Database


def host() -> str:
    return socket.gethostname()


@dataclass(frozen=True)
class Place:
    """Where a pid means one process: the host's name, its boot (pids of an earlier boot are
    gone) and the pid namespace. Containers that share a host name (host networking) but not
    a pid namespace each have their own pid 1234: only a worker in the same place can be
    looked up by its pid. None where the system does not say (no /proc), and in rows written
    before these were kept: such a row is in no Linux worker's place."""

    host: str
    boot_id: str | None
    pid_ns: str | None


def here() -> Place:
    return Place(host(), _boot_id(), _pid_namespace())


def _boot_id() -> str | None:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """The pid namespace's identity, e.g. 'pid:[4026531836]' (its inode)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def register_worker(
    db: Database, worker_id: str, engine: str, model: str, device: str, lease_s: float
) -> None:
    with db.write() as cur:
        place = here()
        cur.execute(
            f"""INSERT INTO workers (id, host, boot_id, pid_ns, pid, engine, gpus, lease_s, model,
                                    device, state, started_at, heartbeat_at, jobs_done)
               VALUES (:id, :host, :boot, :pidns, :pid, :engine, :gpus, :lease, :model, :device,
                       'running', {db.now}, {db.now}, 0)""",
            {
                "id": worker_id,
                "host": place.host,
                "boot": place.boot_id,
                "pidns": place.pid_ns,
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
    place: Place
    pid: int
    gpus: str | None
    heartbeat_age_s: float
    lease_s: float | None

    @property
    def host(self) -> str:
        return self.place.host


def running_workers(db: Database) -> list[LiveWorker]:
    """Workers registered as running (alive or not: see `release_dead`)."""
    with db.read() as cur:
        rows = cur.all(
            f"""SELECT id, host, boot_id, pid_ns, pid, gpus, {db.now} - heartbeat_at, lease_s
                  FROM workers WHERE state = 'running' ORDER BY started_at, id"""
        )
    return [LiveWorker(r[0], Place(*r[1:4]), *r[4:]) for r in rows]


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


def here_and_gone(worker: LiveWorker, place: Place) -> bool:
    """The worker ran in this very place (host, boot, pid namespace) and its process is gone."""
    same = worker.place == place  # without /proc (boot and namespace None): by host, as before
    return same and worker.pid != os.getpid() and not pid_alive(worker.pid)


def is_dead(worker: LiveWorker, place: Place) -> str | None:
    """Why a running worker looks dead, or None while it may be alive. A silent heartbeat is
    checked again by the statement that marks it dead (`mark_dead`)."""
    if here_and_gone(worker, place):
        return f"its process {worker.pid} on {worker.host} is gone"
    if worker.lease_s and worker.heartbeat_age_s > worker.lease_s:
        return f"no heartbeat for {worker.heartbeat_age_s:.0f} s"
    return None


# Marks a worker dead, only if it still is what the caller saw: running, and (unless its process
# is known to be gone) silent for longer than its lease, by the database's clock now.
MARK_DEAD = """
UPDATE workers SET state = 'dead', stopped_at = {now}
 WHERE id = :id AND state = 'running'
   AND (:gone = 1 OR (lease_s IS NOT NULL AND {now} - heartbeat_at > lease_s))
RETURNING id
"""

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
    place = here()
    dead = [(w, why) for w in running_workers(db) if (why := is_dead(w, place))]
    released = [release_worker(db, w, why, gone=here_and_gone(w, place)) for w, why in dead]
    marked = [w.id for (w, _), r in zip(dead, released, strict=True) if r is not None]
    requeued = sum(r[0] for r in released if r is not None)
    return Released(marked, requeued, [j for r in released if r is not None for j in r[1]])


def release_worker(
    db: Database, worker: LiveWorker, why: str, *, gone: bool
) -> tuple[int, list[int]] | None:
    """Mark one worker dead and release its jobs: (jobs re-queued, jobs failed for good), or
    None when it was not dead after all (it stopped, or its heartbeat came in meanwhile)."""
    with db.write() as cur:
        marked = cur.all(MARK_DEAD.format(now=db.now), {"id": worker.id, "gone": int(gone)})
        if not marked:
            return None
        msg = f"worker {worker.id} died ({why})"
        requeued, failed = 0, []
        for job_id, state in cur.all(RELEASE.format(now=db.now), {"id": worker.id, "why": msg}):
            if state == "failed":
                failed += [job_id, *graph.fail_dependents(cur, job_id)]
            else:
                requeued += 1
    return requeued, failed


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
    """(GPU, pid, worker) for each wanted GPU that a live worker on this machine holds."""
    place, out = here(), []
    for w in running_workers(db):
        if w.gpus and _holds_gpus_here(w, place):
            out += [(g, w.pid, w.id) for g in w.gpus.split(",") if g in wanted]
    return out


def _holds_gpus_here(w: LiveWorker, place: Place) -> bool:
    """Alive on this machine: by its pid where it may share our pid namespace; by a heartbeat
    within its lease where it runs in another container of this boot (its pid means nothing
    here, its GPUs are this machine's)."""
    if _maybe_here(w.place, place):
        return pid_alive(w.pid)
    same_boot = w.host == place.host and w.place.boot_id is not None
    if same_boot and w.place.boot_id == place.boot_id:
        return not w.lease_s or w.heartbeat_age_s <= w.lease_s
    return False


def _maybe_here(theirs: Place, ours: Place) -> bool:
    """Could be this place: the same host, and the same boot and pid namespace where the row
    says (a row from before they were kept says nothing). For refusing GPUs, where a doubt
    refuses; freeing jobs asks for the very same place (`here_and_gone`)."""
    return (
        theirs.host == ours.host
        and theirs.boot_id in (None, ours.boot_id)
        and theirs.pid_ns in (None, ours.pid_ns)
    )
