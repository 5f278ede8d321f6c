"""Dead workers are noticed, orphans stop, and a stop says so in the exit status.

Real `egoqa work` processes on the fake backend, slowed with $EGOQA_FAKE_DELAY_S so that they are
mid-batch when they are killed; leases are the default 15 minutes, so nothing here may wait for
one to run out. The commands around them (enqueue, status, retry, sql) run in this process.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.store.db import open_db

from conftest import Cli, enqueue_args
from helpers import wait_until

SLOW = {"EGOQA_FAKE_DELAY_S": "30"}
pytestmark = pytest.mark.usefixtures("short_waits")  # in every worker's environment too


@pytest.fixture
def planned(migrated_db_path, tmp_path, synth) -> InProcess:
    """`egoqa` in this process, on a database where the baseline style is enqueued."""
    egoqa = InProcess(migrated_db_path, tmp_path)
    egoqa(*enqueue_args(synth, "baseline", "--set", "backend=fake"))
    return egoqa


@pytest.fixture
def processes(planned) -> Cli:
    """`egoqa` in a process of its own, on the same database: the workers to kill or stop."""
    return Cli(planned.db, planned.cwd)


def _count(db_path: Path, sql: str) -> int:
    db = open_db(db_path)
    try:
        with db.read() as cur:
            return cur.one(sql)
    finally:
        db.dispose()


def _running(cli) -> int:
    return _count(Path(cli.db), "SELECT COUNT(*) FROM jobs WHERE state = 'running'")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie not yet reaped by its parent is gone too
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_worker_killed_with_sigkill_has_its_jobs_released_at_once(planned, processes):
    victim = processes.popen("work", env=SLOW)
    wait_until(lambda: _running(planned) > 0, what="the worker to claim a batch")
    held = planned.json("status")["held"]
    assert [h["pid"] for h in held] == [victim.pid] and held[0]["lease_ends_in_s"] > 600
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    retried = planned("retry")
    assert "released" in retried.stderr and "1 dead worker" in retried.stderr
    assert _running(planned) == 0
    assert planned.json("status")["held"] == []
    done = planned("work", "--until-done")  # no 15-minute wait for the lease
    assert "0 failed" in done.stderr
    rows = planned.json("sql", "SELECT state, COUNT(*) AS n FROM workers GROUP BY state")
    assert {r["state"]: r["n"] for r in rows} == {"dead": 1, "stopped": 1}


def test_until_done_says_whose_leases_it_waits_on(planned, processes):
    holder = processes.popen("work", env=SLOW)
    wait_until(lambda: _running(planned) > 0, what="the first worker to claim a batch")
    holder.send_signal(signal.SIGSTOP)  # alive but silent: not dead by its pid
    waiter = processes.popen("work", "--until-done")
    try:
        line = ""
        for line in waiter.stderr:  # the waiter says what it waits for, then keeps waiting
            if "waiting on" in line:
                break
        assert f"held by worker {socket.gethostname()}:{holder.pid}" in line
        assert "lease ends in" in line
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.send_signal(signal.SIGTERM)
        holder.wait(timeout=60)
        waiter.communicate(timeout=120)
    assert waiter.returncode == 0
    assert _count(Path(planned.db), "SELECT COUNT(*) FROM jobs WHERE state <> 'done'") == 0


def test_workers_stop_and_release_when_their_supervisor_is_killed(planned, processes):
    supervisor = processes.popen("work", "--workers", "2", "--device", "cpu", env=SLOW)
    wait_until(lambda: _running(planned) > 0, what="the workers to claim")
    wait_until(
        lambda: _count(Path(planned.db), "SELECT COUNT(*) FROM workers") == 2,
        what="both workers to register",
    )
    pids = [r["pid"] for r in planned.json("sql", "SELECT pid FROM workers")]
    supervisor.send_signal(signal.SIGKILL)
    supervisor.wait()
    wait_until(lambda: all(_gone(p) for p in pids), timeout=60, what="the orphans to stop")
    assert _running(planned) == 0, "an orphan's jobs stayed held"
    states = planned.json("sql", "SELECT state FROM workers")
    assert {r["state"] for r in states} == {"stopped"}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_supervisor_stopped_by_a_signal_exits_128_plus_it(planned, processes, sig):
    supervisor = processes.popen("work", "--workers", "2", "--device", "cpu", env=SLOW)
    wait_until(lambda: _running(planned) > 0, what="the workers to claim")
    supervisor.send_signal(sig)
    supervisor.communicate(timeout=120)
    assert supervisor.returncode == 128 + sig
    assert _running(planned) == 0


def test_gpus_held_by_live_workers_of_an_earlier_supervisor_are_refused(planned):
    db = open_db(planned.db)
    with db.write() as cur:  # a live process on this host (this test) registered on GPUs 0,1
        cur.execute(
            f"""INSERT INTO workers (id, host, pid, gpus, lease_s, model, device, state,
                                    started_at, heartbeat_at, jobs_done)
                VALUES ('old', :host, :pid, '0,1', 900, 'm', 'cuda:0', 'running',
                        {db.now}, {db.now}, 0)""",
            {"host": socket.gethostname(), "pid": os.getpid()},
        )
    out = planned("work", "--gpus", "1-2", check=False)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1, out.stderr
    assert f"GPU 1 by pid {os.getpid()}" in lines[0] and "GPU 2" not in lines[0]
    assert _count(Path(planned.db), "SELECT COUNT(*) FROM jobs WHERE state = 'done'") == 0


def test_status_lists_engines_and_held_leases(planned):
    doc = planned.json("status")
    (engine,) = doc["engines"]
    assert engine["ready"] > 0 and engine["dtype"] == "bfloat16" and doc["held"] == []
