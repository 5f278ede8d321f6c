"""Crash safety with real worker processes: kills, pauses, signals, and many writers at once.

Workers here are the real `egoqa work` subprocesses on the fake backend, slowed per batch with
$EGOQA_FAKE_DELAY_S so that kills and signals land mid-batch, with the short waits of
`conftest.SHORT_WAITS`; the many-writer runs drive the store's claim/complete from spawned
processes.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from claiming_processes import run_claimers
from inproc import InProcess
from store_helpers import MODEL, assert_each_job_claimed_once, enqueue_independent

from egoqa.dev.synth import write_synth_dataset
from egoqa.store.db import open_db, resolve_url

from conftest import copy_db, enqueue_args
from helpers import wait_until
from pg import migrated_postgres_url, postgres_server, postgres_url  # noqa: F401 -- fixtures

DELAY_ENV = "EGOQA_FAKE_DELAY_S"
pytestmark = pytest.mark.usefixtures("short_waits")  # in every worker's environment too


@pytest.fixture(scope="session")
def chaos_synth(tmp_path_factory):
    """10 clips × 14 queries: about 300 jobs of the demo's four-turn style (clips of 8 s: the
    fake backend reads their frames, and nothing here depends on their length)."""
    return write_synth_dataset(
        tmp_path_factory.mktemp("chaos"), clips=10, queries_per_clip=14, duration_sec=8.0
    )


class Workers:
    """`egoqa work` subprocesses on one database, each logging to its own file."""

    def __init__(self, db: Path, logs: Path, delay_s: float = 0.0) -> None:
        self.db, self.logs, self.delay_s = db, logs, delay_s
        self.logs.mkdir(exist_ok=True)
        self.started = 0

    def start(self, *args: str, delay_s: float | None = None) -> subprocess.Popen:
        self.started += 1
        log = (self.logs / f"worker-{self.started:03d}.log").open("w")
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            DELAY_ENV: str(self.delay_s if delay_s is None else delay_s),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "egoqa", "--db", str(self.db), "work", *args],
            cwd=self.logs,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.log_path = Path(log.name)  # type: ignore[attr-defined]
        log.close()
        return proc

    def tail(self, n: int = 3000) -> str:
        parts = [f"--- {p.name}\n{p.read_text()[-n:]}" for p in sorted(self.logs.glob("*.log"))]
        return "\n".join(parts[-6:])


def plan(db: Path, dataset, *settings: str) -> dict:
    """Enqueue the demo style on the fake backend as run `r` (in this process)."""
    args = enqueue_args(dataset, "demo", "--set", "backend=fake", "--run", "r")
    for s in settings:
        args += ["--set", s]
    return InProcess(db, db.parent).json(*args)


def query(db_path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(db_path, timeout=30)) as conn:
        return conn.execute(sql, params).fetchall()


def owner_pid(lease_owner: str) -> int:
    return int(lease_owner.split(":")[-2])


def holders(db_path: Path) -> dict[int, list[int]]:
    """pid → ids of the running jobs it holds."""
    out: dict[int, list[int]] = {}
    for job_id, owner in query(db_path, "SELECT id, lease_owner FROM jobs WHERE state='running'"):
        out.setdefault(owner_pid(owner), []).append(job_id)
    return out


def answers(db_path: Path) -> dict[str, tuple]:
    return {
        key: (state, response, responses)
        for key, state, response, responses in query(
            db_path, "SELECT key, state, response, responses FROM jobs"
        )
    }


def assert_one_result_per_job(db_path: Path, n_jobs: int) -> None:
    per_job = query(db_path, "SELECT job_id, COUNT(*) FROM job_results GROUP BY job_id")
    twice = [job_id for job_id, n in per_job if n != 1]
    assert twice == [], f"results written twice for jobs {twice}"
    assert len(per_job) == n_jobs
    mismatched = query(
        db_path,
        """SELECT j.id FROM jobs j JOIN job_results r ON r.job_id = j.id
            WHERE r.response IS NOT j.response OR r.worker_id IS NOT j.worker_id""",
    )
    assert mismatched == [], "job_results disagrees with the jobs it records"


def integrity(db_path: Path) -> list[tuple]:
    return query(db_path, "PRAGMA integrity_check")


# --- 1. chaos ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_workers_killed_at_random_moments_lose_nothing_and_write_nothing_twice(
    chaos_synth, tmp_path, record_property, migrated_template
):
    seed = int(os.environ.get("EGOQA_CHAOS_SEED", time.time_ns() % 100_000))
    rng = random.Random(seed)
    db, ref = tmp_path / "chaos.db", tmp_path / "reference.db"
    for path in (db, ref):
        copy_db(migrated_template, path)
    planned = plan(db, chaos_synth, "max_attempts=50")
    plan(ref, chaos_synth, "max_attempts=50")
    n_jobs = planned["jobs_total"]
    assert n_jobs >= 200

    reference = Workers(ref, tmp_path / "ref-logs").start("--single", "--until-done")
    workers = Workers(db, tmp_path / "logs", delay_s=0.15)
    args = ("--single", "--until-done", "--batch-size", "3", "--lease", "3")
    procs = [workers.start(*args) for _ in range(4)]
    kills = 0
    t0 = deadline = time.monotonic()
    deadline += 90
    try:
        while kills < 12:  # each a worker process restarted: most of the test's time
            assert time.monotonic() < deadline, f"chaos did not finish (seed {seed})"
            time.sleep(rng.uniform(0.05, 0.4))
            live = {p.pid: i for i, p in enumerate(procs) if p.poll() is None}
            holding = [pid for pid in holders(db) if pid in live]
            if not holding:
                assert live, f"all workers exited after {kills} kills (seed {seed})"
                continue
            i = live[rng.choice(holding)]
            procs[i].send_signal(signal.SIGKILL)
            procs[i].wait()
            kills += 1
            procs[i] = workers.start(*args)
        t_chaos = time.monotonic() - t0
        for p in procs:
            assert p.wait(timeout=90) == 0, f"a worker failed (seed {seed}):\n{workers.tail()}"
        t_done = time.monotonic() - t0
        assert reference.wait(timeout=90) == 0
    finally:
        for p in [*procs, reference]:
            if p.poll() is None:
                p.kill()
    states = dict(query(db, "SELECT state, COUNT(*) FROM jobs GROUP BY state"))
    assert states == {"done": n_jobs}, f"seed {seed}\n{workers.tail()}"
    assert_one_result_per_job(db, n_jobs)
    assert answers(db) == answers(ref), "results differ from an uninterrupted run of the plan"
    lost_attempts = query(db, "SELECT SUM(attempts) - COUNT(*) FROM jobs")[0][0]
    assert lost_attempts > 0, "no kill landed while a worker held jobs"
    assert integrity(db) == [("ok",)]
    figures = (
        f"chaos: {kills} SIGKILLs of workers holding leases, {lost_attempts} "
        f"attempts lost and redone, {n_jobs} jobs done once each, 0 duplicates; kills over "
        f"{t_chaos:.1f}s, all done after {t_done:.1f}s (seed {seed})"
    )
    record_property("chaos", figures)
    print(figures)


# --- 2. zombie --------------------------------------------------------------------------------


def leases_expired(db_path: Path) -> bool:
    (latest,) = query(db_path, "SELECT MAX(lease_expires_at) FROM jobs WHERE state='running'")[0]
    return latest is not None and latest < time.time()


def stop_outside_a_write(proc: subprocess.Popen, db_path: Path) -> None:
    """SIGSTOP, retried until the paused process holds no SQLite write lock (a paused writer
    would block everyone: a property of SQLite itself, not what this test is about)."""
    for _ in range(50):
        proc.send_signal(signal.SIGSTOP)
        try:
            conn = sqlite3.connect(db_path, timeout=0.5, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            conn.close()
            return
        except sqlite3.OperationalError:
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.1)
    raise AssertionError("could not pause the worker outside a write transaction")


@pytest.mark.slow
def test_paused_worker_that_lost_its_lease_cannot_overwrite_and_carries_on(
    synth, migrated_db_path, tmp_path
):
    db_path = migrated_db_path
    planned = plan(db_path, synth, "style=baseline")
    n_jobs = planned["jobs_total"]
    workers = Workers(db_path, tmp_path / "logs")
    zombie = workers.start(
        "--single", "--until-done", "--batch-size", "4", "--lease", "3", delay_s=4
    )
    rescuer = None
    try:
        held = wait_until(lambda: holders(db_path).get(zombie.pid), 60, "the worker to claim")
        time.sleep(0.3)  # into the slow generate
        stop_outside_a_write(zombie, db_path)
        held = holders(db_path)[zombie.pid]
        wait_until(lambda: leases_expired(db_path), 10, "the paused worker's lease to expire")
        rescuer = workers.start("--single", "--until-done", "--batch-size", "4", delay_s=0)
        assert rescuer.wait(timeout=120) == 0, workers.tail()
        writers = query(db_path, "SELECT DISTINCT worker_id FROM job_results")
        assert [owner_pid(w) for (w,) in writers] == [rescuer.pid]
        zombie.send_signal(signal.SIGCONT)
        assert zombie.wait(timeout=60) == 0, workers.tail()
    finally:
        for p in (zombie, rescuer):
            if p is not None and p.poll() is None:
                p.kill()
    log = zombie.log_path.read_text()
    assert re.search(rf"\b{len(held)} lost lease", log), log[-2000:]
    assert "Traceback" not in log
    assert dict(query(db_path, "SELECT state, COUNT(*) FROM jobs GROUP BY state")) == {
        "done": n_jobs
    }
    assert_one_result_per_job(db_path, n_jobs)
    late = query(
        db_path,
        f"SELECT worker_id FROM job_results WHERE job_id IN ({','.join('?' * len(held))})",
        tuple(held),
    )
    assert {owner_pid(w) for (w,) in late} == {rescuer.pid}


# --- 3. graceful stop and restart -------------------------------------------------------------

GRACEFUL = [  # the supervisor forwards SIGTERM, so a lone worker's SIGTERM is covered too
    pytest.param(signal.SIGTERM, 2, 1, id="SIGTERM-supervisor-of-2-then-1-worker"),
    pytest.param(signal.SIGINT, 2, 3, id="SIGINT-supervisor-of-2-then-3-workers"),
    pytest.param(signal.SIGINT, 1, 2, id="SIGINT-single-worker-then-2-workers"),
]


def kill_leftovers(proc: subprocess.Popen, worker_pids: list[int]) -> None:
    """After a failure: the supervisor's workers run in their own sessions, so kill them too."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in worker_pids:
        if pid != proc.pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def work_args(workers: int, *extra: str) -> tuple[str, ...]:
    many = ("--workers", str(workers), "--device", "cpu") if workers > 1 else ("--single",)
    return (*many, "--batch-size", "2", *extra)


@pytest.mark.parametrize(("signum", "before", "after"), GRACEFUL)
@pytest.mark.slow
def test_signal_releases_held_jobs_at_once_and_a_different_pool_finishes(
    signum, before, after, synth, migrated_db_path, tmp_path
):
    db_path = migrated_db_path
    planned = plan(db_path, synth, "style=baseline")
    n_jobs = planned["jobs_total"]
    # a batch generates for an hour and the lease is longer: a release seen at all came at the
    # signal, neither when the batch nor when the lease would have ended (no clock is read)
    workers = Workers(db_path, tmp_path / "logs", delay_s=3600)
    proc = workers.start(*work_args(before, "--lease", "7200"))
    pids: list[int] = []
    try:
        # each worker holds the batch it generates (2 jobs) and, once claimed, the next one
        wait_until(
            lambda: (h := holders(db_path)) and len(h) == before and min(map(len, h.values())) >= 2,
            60,
            f"{before} worker(s) to hold jobs",
        )
        holding = holders(db_path)
        pids += holding
        held = [i for ids in holding.values() for i in ids]
        proc.send_signal(signum)
        try:
            wait_until(lambda: not holders(db_path), 60, "the held jobs to be released")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{workers.tail()}") from None
        assert proc.wait(timeout=30) == 128 + signum, workers.tail()  # stopped, not finished
    finally:
        kill_leftovers(proc, pids)
    marks = ",".join("?" * len(held))
    rows = query(
        db_path,
        f"SELECT state, lease_owner, lease_token, lease_expires_at, attempts FROM jobs "
        f"WHERE id IN ({marks})",
        tuple(held),
    )
    assert set(rows) == {("ready", None, None, None, 0)}

    finisher = workers.start(*work_args(after, "--until-done"), delay_s=0)
    assert finisher.wait(timeout=120) == 0, workers.tail()
    assert dict(query(db_path, "SELECT state, COUNT(*) FROM jobs GROUP BY state")) == {
        "done": n_jobs
    }
    assert query(db_path, "SELECT DISTINCT attempts FROM jobs") == [(1,)]
    assert_one_result_per_job(db_path, n_jobs)


# --- 4 and 5. many writers at once ------------------------------------------------------------

MANY = [
    pytest.param("sqlite", 8, 10_000, marks=pytest.mark.slow, id="sqlite-8x10000"),
    pytest.param(
        "postgres", 8, 4_000, marks=[pytest.mark.slow, pytest.mark.postgres], id="postgres-8x4000"
    ),
]


@pytest.mark.parametrize(("backend", "procs", "n_jobs"), MANY)
def test_many_writers_claim_every_job_once_without_lock_errors(
    backend, procs, n_jobs, request, record_property
):
    if backend == "sqlite":
        url = resolve_url(request.getfixturevalue("migrated_db_path"))
    else:
        url = request.getfixturevalue("migrated_postgres_url")
    db = open_db(url)
    enqueue_independent(db, n_jobs, clips=100)
    reports, seconds = run_claimers(url, MODEL, batches=[16] * procs)
    errors = [e for r in reports for e in r["errors"]]
    locked = sum("locked" in e for e in errors)
    rate = n_jobs / seconds
    figures = (
        f"{backend}: {procs} writer processes, {n_jobs} jobs claimed+completed in batches of 16 "
        f"in {seconds:.2f}s = {rate:,.0f} jobs/s; {locked} 'database is locked' errors"
    )
    record_property("throughput_jobs_per_s", round(rate))
    record_property("many_writers", figures)
    print(figures)
    assert locked == 0, figures
    assert_each_job_claimed_once(db, reports, n_jobs)
    if db.is_sqlite:
        assert integrity(Path(db.engine.url.database)) == [("ok",)]
    db.dispose()
