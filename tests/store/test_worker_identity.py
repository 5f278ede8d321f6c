"""A worker is taken for dead by its pid only from its own place (host name, boot and pid
namespace), and a heartbeat that lands before the releasing statement keeps it alive.

Each test drives the releaser and the worker on connections of their own, step by step, on
SQLite and on PostgreSQL: the interleavings are made, not hoped for.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest

from egoqa.store import queue
from egoqa.store import workers as registry
from egoqa.store.db import Database, open_db

from pg import migrated_postgres_url, postgres_server, postgres_url  # noqa: F401 -- fixtures

ENGINE = "identity-engine"
WORKER = "host:1234:abcdef"


@pytest.fixture
def other(db):
    """A second connection to the same database: the worker's side of an interleaving."""
    handle = open_db(db.url)
    yield handle
    handle.dispose()


def held_job(db: Database, lease_s: float = 60.0) -> int:
    """One job, claimed by WORKER, registered here with a lease of `lease_s`."""
    with db.write() as cur:
        cur.execute(
            """INSERT INTO clips (clip_uid, video_path, offset_sec, duration_sec, identity)
               VALUES ('clip-1', 'clip-1.mp4', 0, 24, 'id-1')"""
        )
        clip_id = cur.one("SELECT id FROM clips")
        spec = json.dumps({"name": "j"})
        job = queue.NewJob("j", ENGINE, "m", "answer", 0, clip_id, None, spec, "none")
        queue.enqueue(cur, [job])
    registry.register_worker(db, WORKER, ENGINE, "m", "cpu", lease_s)
    claim = queue.claim(db, WORKER, ENGINE, 1, lease_s)
    assert len(claim.jobs) == 1
    return claim.jobs[0].id


def state(db: Database, job_id: int) -> tuple[str, str | None, str]:
    with db.read() as cur:
        (job,) = cur.all("SELECT state, lease_owner FROM jobs WHERE id = :i", {"i": job_id})
        return (*job, cur.one("SELECT state FROM workers WHERE id = :w", {"w": WORKER}))


def gone_pid() -> int:
    """A pid that named a process a moment ago and names none now."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def set_pid(db: Database, pid: int) -> None:
    with db.write() as cur:
        cur.execute("UPDATE workers SET pid = :p WHERE id = :w", {"p": pid, "w": WORKER})


def seen_from_another_pid_namespace(monkeypatch) -> None:
    """This process, from here on, as a container with the same host name and boot as the
    worker's but a pid namespace of its own (host networking): its /proc/self/ns/pid differs."""
    real = os.readlink

    def readlink(path, *args, **kwargs):
        if os.fspath(path) == "/proc/self/ns/pid":
            return "pid:[4026599999]"
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "readlink", readlink)


def test_a_worker_is_not_taken_for_dead_from_another_pid_namespace(db, monkeypatch):
    job_id = held_job(db)
    set_pid(db, gone_pid())  # its pid in its own namespace; in this one it names no process
    seen_from_another_pid_namespace(monkeypatch)
    released = registry.release_dead(db)
    assert released.workers == [] and released.requeued == 0
    assert state(db, job_id) == ("running", WORKER, "running")


def test_a_worker_of_this_place_whose_process_is_gone_is_released(db):
    job_id = held_job(db)
    set_pid(db, gone_pid())
    released = registry.release_dead(db)
    assert released.workers == [WORKER] and released.requeued == 1
    assert state(db, job_id) == ("ready", None, "dead")


def test_a_heartbeat_after_the_releaser_looked_keeps_the_worker_alive(db, other, monkeypatch):
    """Releaser reads a stale heartbeat; the worker beats and commits; the releaser writes."""
    job_id = held_job(db, lease_s=30.0)
    with db.write() as cur:  # silent for 100 s: longer than its lease
        cur.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 100")
    read = registry.running_workers

    def read_then_worker_beats(handle):
        seen = read(handle)  # step 1: the releaser sees the stale heartbeat
        assert [w.heartbeat_age_s > w.lease_s for w in seen] == [True]
        registry.beat(other, WORKER)  # step 2: the worker's heartbeat lands, committed
        return seen  # step 3: the releaser goes on with what it saw

    monkeypatch.setattr(registry, "running_workers", read_then_worker_beats)
    released = registry.release_dead(db)
    assert released.workers == [] and released.requeued == 0
    assert state(db, job_id) == ("running", WORKER, "running")


@pytest.mark.postgres
def test_a_heartbeat_in_flight_holds_the_release_until_it_commits(migrated_postgres_url):  # noqa: F811
    """PostgreSQL: the worker's beat is written but not committed when the releasing statement
    runs; that statement waits on the worker's row, then finds the heartbeat fresh. (SQLite
    runs one write transaction at a time: there the stepped test above is the interleaving.)"""
    db, worker, watcher = (open_db(migrated_postgres_url) for _ in range(3))
    try:
        job_id = held_job(db, lease_s=30.0)
        with db.write() as cur:
            cur.execute("UPDATE workers SET heartbeat_at = heartbeat_at - 100")
        (seen,) = registry.running_workers(db)
        why = registry.is_dead(seen, registry.here())
        assert why is not None and why.startswith("no heartbeat")
        outcome: list = []
        releaser = threading.Thread(
            target=lambda: outcome.append(registry.release_worker(db, seen, why, gone=False))
        )
        with worker.write() as cur:  # the worker's beat, in a transaction still open
            cur.execute(
                f"UPDATE workers SET heartbeat_at = {worker.now} WHERE id = :w", {"w": WORKER}
            )
            releaser.start()
            wait_for_a_lock_wait(watcher)  # the releasing UPDATE waits on the worker's row
        releaser.join(timeout=60)
        assert not releaser.is_alive(), "the releasing statement never finished"
        assert outcome == [None]
        assert state(db, job_id) == ("running", WORKER, "running")
    finally:
        for handle in (db, worker, watcher):
            handle.dispose()


def wait_for_a_lock_wait(watcher: Database, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with watcher.read() as cur:
            waiting = cur.one(
                """SELECT COUNT(*) FROM pg_stat_activity
                    WHERE datname = current_database() AND wait_event_type = 'Lock'"""
            )
        if waiting:
            return
        if time.monotonic() > deadline:
            raise AssertionError("the releasing statement never waited on the worker's row")
        time.sleep(0.02)


def test_gpus_of_a_live_worker_in_another_container_stay_refused(db, monkeypatch):
    """Its pid names nothing here, but its heartbeat is fresh and its GPUs are this machine's."""
    held_job(db)
    with db.write() as cur:
        cur.execute("UPDATE workers SET gpus = '0,1', pid = :p", {"p": gone_pid()})
    assert registry.gpus_in_use(db, ["1", "2"]) == []  # here: its process is gone
    seen_from_another_pid_namespace(monkeypatch)
    (held,) = registry.gpus_in_use(db, ["1", "2"])
    assert held[0] == "1" and held[2] == WORKER
