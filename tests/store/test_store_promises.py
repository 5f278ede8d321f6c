"""The store's promises in the situations real runs create: a lease lost mid-write, nodes with
skewed clocks, a run re-enqueued after its inputs changed, stop signals on a busy process, claims
sized to the device, and paths that mean what they say.

Interleavings are driven step by step on two connections (and, on PostgreSQL, by waiting until
the server reports one of them blocked), never by sleeping and hoping.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from inproc import InProcess
from store_helpers import (
    MODEL,
    add_clips,
    claim,
    complete_all,
    done,
    enqueue,
    expire_leases,
    job,
    reap,
    row,
    states,
)

from egoqa.store import graph, queue
from egoqa.store.db import open_db

from conftest import Cli, enqueue_args
from helpers import STACKS_ON_ABORT, communicate_or_dump, running_jobs, wait_until
from pg import migrated_postgres_url, postgres_server, postgres_url  # noqa: F401 -- fixtures

# --- 2. a job's state changes only under its lease ----------------------------------------------


def _wait_until_blocked(db, thread: threading.Thread) -> None:
    """PostgreSQL: until the server shows a statement waiting on a lock (or the thread ended)."""
    if db.is_sqlite:
        return  # SQLite serialises writers: the late write cannot start before B commits
    deadline = time.monotonic() + 60
    while thread.is_alive() and time.monotonic() < deadline:
        with db.read() as cur:
            waiting = cur.one(
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
        if waiting:
            return
        time.sleep(0.01)
    raise AssertionError("the late write neither blocked on B's lock nor finished")


@pytest.mark.parametrize("late", ["fail", "complete"])
def test_a_write_racing_the_reaper_changes_nothing_once_the_lease_is_lost(db, late):
    """A's lease expires; B reaps and claims the job in one open transaction; A's late write
    starts while B still holds it. Once B commits, A's write must find nothing to change."""
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip), job("child", clip, 1, parents=("a",))]).ids
    a = claim(db, owner="A", lease_s=60)
    expire_leases(db)
    db_a, db_b = open_db(db.url), open_db(db.url)
    outcome: dict = {}

    def late_write() -> None:
        if late == "fail":
            outcome["got"] = queue.fail(db_a, a, ids["a"], "backend_error", "late failure")
        else:
            outcome["got"] = complete_all(db_a, a, prefix="late")

    lock = "" if db.is_sqlite else " FOR UPDATE SKIP LOCKED"
    b = queue.Claim(token=queue.new_token(), owner="B")
    with db_b.write() as cur:  # step 1: B reaps and claims, not yet committed
        cur.all(queue.REAP.format(now=db_b.now))
        params = {"owner": "B", "token": b.token, "lease": 60.0, "engine": MODEL}
        claimed = cur.all(
            queue.CLAIM.format(lock=lock, now=db_b.now), {**params, "media_key": "none", "n": 1}
        )
        assert [r[0] for r in claimed] == [ids["a"]]
        writer = threading.Thread(target=late_write)
        writer.start()  # step 2: A's late write starts
        _wait_until_blocked(db, writer)
    writer.join(timeout=60)  # step 3: B has committed; A's write goes on
    assert outcome["got"] in (None, set()), "a worker without the lease changed the job"
    r = row(db, ids["a"])
    assert (r["state"], r["lease_token"], r["lease_owner"]) == ("running", b.token, "B")
    assert queue.renew(db_a, a, [ids["a"]], 600) == set()
    assert queue.release(db_a, a) == 0
    assert row(db, ids["a"]) == r
    assert queue.complete(db_b, b, [done("from B", ids["a"])]) == {ids["a"]}
    assert states(db, ids) == {"a": "done", "child": "ready"}
    complete_all(db, claim(db, owner="C"))
    assert states(db, ids) == {"a": "done", "child": "done"}
    db_a.dispose()
    db_b.dispose()


# --- 3. leases use the database's clock ---------------------------------------------------------


def _db_now(db) -> float:
    with db.read() as cur:
        return cur.one(f"SELECT {db.now}")


@pytest.mark.parametrize("skew", [-300.0, 300.0])
def test_a_node_with_a_skewed_clock_neither_reaps_live_leases_nor_holds_dead_ones(
    db, monkeypatch, skew
):
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip), job("b", clip, 1)]).ids
    right = time.time

    def skewed(fn, *args, **kwargs):
        monkeypatch.setattr(time, "time", lambda: right() + skew)
        try:
            return fn(*args, **kwargs)
        finally:
            monkeypatch.setattr(time, "time", right)

    held = skewed(claim, db, n=1, owner="skewed", lease_s=60)
    assert 50 < row(db, ids["a"])["lease_expires_at"] - _db_now(db) <= 60
    assert reap(db) == (0, 0), "a right-clocked node reaped a skewed node's live lease"
    right_held = claim(db, n=1, owner="right", lease_s=60)
    assert skewed(reap, db) == (0, 0), "a skewed node reaped a live lease"
    assert skewed(queue.renew, db, held, [ids["a"]], 30) == {ids["a"]}
    assert 20 < row(db, ids["a"])["lease_expires_at"] - _db_now(db) <= 30
    expire_leases(db, 31)  # a's lease (30 s) is now over by the database's clock; b's is not
    assert skewed(reap, db) == (1, 0)
    assert states(db, ids) == {"a": "ready", "b": "running"}
    assert complete_all(db, right_held) == {ids["b"]}


# --- 10. reap and recompute say what they did ---------------------------------------------------


def test_a_job_failed_by_the_reaper_has_a_finish_time(db):
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip, max_attempts=1)]).ids
    claim(db, lease_s=5)
    expire_leases(db)
    assert reap(db) == (0, 1)
    r = row(db, ids["a"])
    with db.read() as cur:
        finished = cur.one("SELECT finished_at FROM jobs WHERE id = :i", {"i": ids["a"]})
    assert r["state"] == "failed" and finished is not None
    assert abs(finished - _db_now(db)) < 60


def test_recompute_counts_only_the_jobs_it_requeued(db):
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip), job("b", clip, 1), job("c", clip, 2)]).ids
    complete_all(db, claim(db, n=1))  # a done
    running = claim(db, n=1)  # b running; c still ready
    assert graph.recompute(db, list(ids.values())) == 1
    assert states(db, ids) == {"a": "ready", "b": "running", "c": "ready"}
    assert complete_all(db, running) == {ids["b"]}


# --- 1. long batches keep their connection ------------------------------------------------------


@pytest.mark.slow
def test_a_worker_whose_batches_outlive_many_lease_renewals_finishes_without_a_restart(
    tmp_path, synth, migrated_db_path
):
    egoqa = InProcess(migrated_db_path, tmp_path)
    plan = egoqa.json(*enqueue_args(synth, "baseline", "--set", "backend=fake", "--run", "long"))
    assert plan["jobs_total"] >= 10
    # Each batch (one job) takes 0.2 s: the heartbeat, every 0.05 s, renews its lease about four
    # times (and that of the batch claimed ahead, if any).
    out = egoqa(
        "-vv", "work", "--until-done", "--batch-size", "1", "--lease", "1",
        env={"EGOQA_FAKE_DELAY_S": "0.2", "EGOQA_HEARTBEAT_S": "0.05"},
    )  # fmt: skip
    assert f"{plan['jobs_total']} done, 0 failed" in out.stderr
    renewals = re.findall(r"heartbeat: renewed [12] batch lease\(s\)", out.stderr)
    assert len(renewals) >= 2 * plan["jobs_total"]  # several a batch
    db = open_db(migrated_db_path)
    with db.read() as cur:
        assert cur.one("SELECT COUNT(*) FROM jobs WHERE state <> 'done'") == 0
        assert cur.one("SELECT COUNT(*) FROM workers") == 1
        assert cur.one("SELECT MAX(attempts) FROM jobs") == 1


def test_a_database_used_by_many_threads_keeps_the_main_threads_connection(migrated_db_path):
    db = open_db(migrated_db_path)
    with db.write() as cur:
        cur.execute("SELECT 1")

    def use() -> None:
        with db.write() as cur:
            cur.execute("SELECT 1")

    for _ in range(12):  # one new thread after another, as every batch's heartbeat once was
        t = threading.Thread(target=use)
        t.start()
        t.join()
    with db.read() as cur:
        assert cur.one("SELECT COUNT(*) FROM jobs") == 0


# --- 10. paths and names mean what they say -----------------------------------------------------


@pytest.mark.parametrize("name", ["a%41b.db", "50%.db", "what?.db", "x#1.db"])
def test_a_database_path_opens_exactly_that_file(tmp_path, name):
    InProcess(tmp_path / name, tmp_path)("db", "upgrade")
    assert [p.name for p in tmp_path.glob("*.db")] == [name]


def test_a_preset_name_means_the_preset_even_beside_a_file_of_that_name(
    tmp_path, synth, migrated_db_path
):
    (tmp_path / "baseline").write_text("this is not TOML {")
    egoqa = InProcess(migrated_db_path, tmp_path)  # run in tmp_path, beside the file
    assert egoqa.json(*enqueue_args(synth, "baseline", "--set", "backend=fake"))["jobs_total"] > 0


@pytest.mark.slow
def test_a_model_directory_given_relative_is_found_from_any_directory(tmp_path, synth, tiny_model):
    here, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    shutil.copytree(tiny_model, here / "models" / "tiny")
    elsewhere.mkdir()
    db = tmp_path / "egoqa.db"
    InProcess(db, here)(
        *enqueue_args(synth, "demo", "--set", "model=models/tiny", "--set", "style=baseline",
                      "--set", "generation.do_sample=false"),
        "--limit", "1",
    )  # fmt: skip
    out = InProcess(db, elsewhere)("work", "--until-done", "--max-batches", "1")
    assert "1 done, 0 failed" in out.stderr
    with open_db(db).read() as cur:
        (spec,) = [json.loads(r[0]) for r in cur.all("SELECT spec FROM jobs")]
    assert spec["engine"]["model"] == str((here / "models" / "tiny").resolve())


# --- 7. stop signals never strand a batch --------------------------------------------------------


def test_a_stop_signal_during_the_claim_with_another_thread_alive_releases_the_batch(
    tmp_path, synth, monkeypatch, migrated_db_path
):
    """The signal is sent while the claim is being made; another thread is alive, so the
    kernel may hand it to that thread, and Python runs the handler in the main thread anyway."""
    from egoqa.backends.fake import FakeBackend
    from egoqa.work.worker import Worker, WorkerOptions, resolve_engine

    InProcess(migrated_db_path, tmp_path)(*enqueue_args(synth, "baseline", "--set", "backend=fake"))
    db = open_db(migrated_db_path)
    idle = threading.Event()
    bystander = threading.Thread(target=idle.wait, daemon=True)
    bystander.start()
    real_claim = queue.claim

    def claim_then_signal(*args, **kwargs):
        got = real_claim(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)  # the claim's bookkeeping goes on; the kernel delivers the signal here
        return got

    monkeypatch.setattr(queue, "claim", claim_then_signal)
    worker = Worker(db, resolve_engine(db), FakeBackend(), WorkerOptions(batch_size=4))
    try:
        worker.run()
    finally:
        idle.set()
    with db.read() as cur:
        running = cur.one("SELECT COUNT(*) FROM jobs WHERE state = 'running'")
        done_ = cur.one("SELECT COUNT(*) FROM jobs WHERE state = 'done'")
    assert running == 0, "a claimed batch was stranded until its lease ends"
    assert done_ == 0 and worker.signals.exit_code == 128 + signal.SIGTERM


def test_a_stop_signal_handled_inside_a_finaliser_is_not_lost(tmp_path, synth, migrated_db_path):
    """Python runs a handler at any bytecode, a finaliser's included, where an exception it
    raised is printed and dropped: the stop must be noted, not raised, to survive there."""
    from egoqa.backends.fake import FakeBackend
    from egoqa.work.worker import Worker, WorkerOptions, resolve_engine

    class SignalledInFinaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # bytecodes for the handler to run on, inside __del__
                pass

    class Backend(FakeBackend):
        def generate(self, requests):
            if self.calls == 0:
                SignalledInFinaliser()  # dropped at once: its finaliser runs here
            return super().generate(requests)

    InProcess(migrated_db_path, tmp_path)(*enqueue_args(synth, "baseline", "--set", "backend=fake"))
    db = open_db(migrated_db_path)
    worker = Worker(db, resolve_engine(db), Backend(), WorkerOptions(batch_size=2, until_done=True))
    stats = worker.run()
    assert worker.signals.exit_code == 128 + signal.SIGINT
    assert stats.done == 0 and running_jobs(db) == 0


def _until_a_batch_is_held(db_path):
    """The database, once a worker holds a batch (raises after two minutes)."""
    db = open_db(db_path)
    wait_until(lambda: running_jobs(db), 120, "the worker to hold a batch")
    return db


def test_worker_stopped_by_a_signal_exits_128_plus_the_signal_after_releasing(
    tmp_path, synth, migrated_db_path
):
    InProcess(migrated_db_path, tmp_path)(*enqueue_args(synth, "baseline", "--set", "backend=fake"))
    cli = Cli(migrated_db_path, tmp_path)  # the worker: a process of its own, to signal
    for sig in (signal.SIGINT, signal.SIGTERM):
        proc = cli.popen("work", env={"EGOQA_FAKE_DELAY_S": "30", **STACKS_ON_ABORT})
        db = _until_a_batch_is_held(tmp_path / "egoqa.db")
        proc.send_signal(sig)
        _, err = communicate_or_dump(proc, 60)
        assert proc.returncode == 128 + sig, err
        assert running_jobs(db) == 0


# What a child inherits from a parent thread that blocked SIGINT and SIGTERM (the mask survives
# exec): such a worker would never see a stop unless it unblocks them itself. The mask is set in
# the child's own interpreter, which then execs the worker (no `preexec_fn`, which is unsafe in a
# parent with threads).
_EXEC_WITH_STOP_SIGNALS_BLOCKED = (
    "import os, signal, sys\n"
    "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})\n"
    "os.execv(sys.executable, [sys.executable, '-m', 'egoqa', *sys.argv[1:]])\n"
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_worker_started_with_stop_signals_blocked_still_stops_on_them(
    tmp_path, synth, sig, migrated_db_path
):
    InProcess(migrated_db_path, tmp_path)(*enqueue_args(synth, "baseline", "--set", "backend=fake"))
    cli = Cli(migrated_db_path, tmp_path)  # the worker: a process of its own, to signal
    env = {"EGOQA_FAKE_DELAY_S": "30", **STACKS_ON_ABORT}
    proc = subprocess.Popen(
        [sys.executable, "-c", _EXEC_WITH_STOP_SIGNALS_BLOCKED, "--db", cli.db, "work"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = _until_a_batch_is_held(tmp_path / "egoqa.db")
    proc.send_signal(sig)
    _, err = communicate_or_dump(proc, 60)
    assert proc.returncode == 128 + sig, err
    assert running_jobs(db) == 0


# --- 9. claims fit the device ---------------------------------------------------------------------


def test_auto_batch_size_claims_what_the_worker_will_run_not_the_policy_maximum(
    tmp_path, synth, migrated_db_path
):
    from egoqa.backends.fake import FakeBackend
    from egoqa.plan.jobs import media_key
    from egoqa.store import limits
    from egoqa.work.worker import Worker, WorkerOptions, resolve_engine

    class ThreeGigabytesFree(FakeBackend):
        def free_memory_bytes(self) -> int:
            return 3 * 2**30

    egoqa = InProcess(migrated_db_path, tmp_path)
    egoqa(
        *enqueue_args(synth, "baseline", "--set", "backend=fake", "--set", "batch.per_sample_gb=1")
    )
    db = open_db(migrated_db_path)
    served = resolve_engine(db)
    assert served.config.batch.max == 64
    worker = Worker(db, served, ThreeGigabytesFree(), WorkerOptions(max_batches=1))
    worker.run()
    with db.read() as cur:
        specs = [json.loads(r[0]) for r in cur.all("SELECT spec FROM jobs WHERE state = 'done'")]
        ready = cur.one("SELECT COUNT(*) FROM jobs WHERE state = 'ready'")
    n_done = len(specs)
    assert n_done == 3 and ready > 0  # free memory ÷ 1 GB per sample, not 64
    (key,) = {media_key(spec["media"]) for spec in specs}
    limits.record_batch(db, served.engine, key, ok=1, failed=2)  # learned: 2 does not fit
    Worker(db, served, ThreeGigabytesFree(), WorkerOptions(max_batches=1)).run()
    with db.read() as cur:
        assert cur.one("SELECT COUNT(*) FROM jobs WHERE state = 'done'") == n_done + 1


def test_a_failure_scores_only_the_items_it_touches(tmp_path, synth, monkeypatch, migrated_db_path):
    """Recording a failure scores the run items whose graded job failed with it, not the run."""
    from egoqa.answers import scoring
    from egoqa.backends.fake import FakeBackend
    from egoqa.work.worker import Worker, WorkerOptions, resolve_engine

    calls: list[dict] = []
    real = scoring.score_items
    monkeypatch.setattr(scoring, "score_items", lambda db, **kw: calls.append(kw) or real(db, **kw))
    InProcess(migrated_db_path, tmp_path)(*enqueue_args(synth, "demo", "--set", "backend=fake"))
    db = open_db(migrated_db_path)
    worker = Worker(db, resolve_engine(db), FakeBackend(), WorkerOptions(max_batches=1))
    claim_ = queue.claim(db, "t", worker.served.engine, 1, 60)
    worker.runner.recorder.fail(claim_, claim_.jobs[0].id, "video", "unreadable")
    (kw,) = calls
    assert kw.keys() == {"job_ids"} and claim_.jobs[0].id in kw["job_ids"]
    with db.read() as cur:
        failed = {r[0] for r in cur.all("SELECT id FROM jobs WHERE state = 'failed'")}
        scored = cur.one("SELECT COUNT(*) FROM run_items WHERE scored_at IS NOT NULL")
        graded_failed = cur.one(
            "SELECT COUNT(*) FROM run_items ri JOIN jobs j ON j.id = ri.graded_job_id "
            "WHERE j.state = 'failed'"
        )
    assert set(kw["job_ids"]) == failed and scored == graded_failed > 0
