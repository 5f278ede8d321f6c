"""Keeping the device busy: the next batch is claimed and prepared while one generates, a stop
releases both (even one caught mid-claim in the background thread), segment frames are decoded
side by side before a batch runs, and text-only turns are claimed by their own memory estimate.

Workers are real: `egoqa work` subprocesses or in-process `Worker`s on real SQLite files, with the
fake backend (scheduling is what is tested here) and real frame decoding; answers with claiming
ahead on and off are compared on the tiny model in test_keys_and_sampling.py.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
from contextlib import closing

import pytest
from inproc import InProcess

from egoqa.backends.fake import FakeBackend
from egoqa.store import queue
from egoqa.store.db import open_db
from egoqa.work.worker import Worker, WorkerOptions, resolve_engine

from conftest import Cli, enqueue_args
from helpers import wait_until
from pg import migrated_postgres_url, postgres_server, postgres_url  # noqa: F401 -- fixtures


def running(db_path) -> list[tuple[int, str, str]]:
    with closing(sqlite3.connect(db_path, timeout=30)) as conn:
        return conn.execute(
            "SELECT id, lease_owner, lease_token FROM jobs WHERE state = 'running'"
        ).fetchall()


def test_a_worker_holds_the_next_batch_while_one_generates_and_a_signal_releases_both(
    tmp_path, synth, migrated_db_path
):
    InProcess(migrated_db_path, tmp_path)(*enqueue_args(synth, "baseline", "--set", "backend=fake"))
    proc = Cli(migrated_db_path, tmp_path).popen(  # a worker of its own, to signal
        "work", "--batch-size", "2", "--lease", "7200", env={"EGOQA_FAKE_DELAY_S": "3600"}
    )  # a batch of an hour, a longer lease: a release seen at all came at the signal
    try:
        held = wait_until(
            lambda: (rows := running(tmp_path / "egoqa.db")) and len(rows) == 4 and rows,
            60,
            "two batches of two to be held",
        )
        assert len({owner for _, owner, _ in held}) == 1  # one worker
        assert len({token for *_, token in held}) == 2  # two claims: running, and ahead
        proc.send_signal(signal.SIGINT)
        wait_until(lambda: not running(tmp_path / "egoqa.db"), 60, "both batches to be released")
        assert proc.wait(timeout=30) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with closing(sqlite3.connect(tmp_path / "egoqa.db")) as conn:
        ids = [i for i, *_ in held]
        marks = ",".join("?" * len(ids))
        rows = conn.execute(
            f"SELECT state, lease_token, attempts FROM jobs WHERE id IN ({marks})", ids
        ).fetchall()
    assert set(rows) == {("ready", None, 0)}  # given back, the attempt not counted


class _StopsMidClaimAhead(FakeBackend):
    """Generates the first batch only once the claim-ahead thread has committed its claim, then
    stops the worker the way a user does (SIGTERM to the process)."""

    def __init__(self, committed: threading.Event) -> None:
        super().__init__()
        self.committed = committed

    def generate(self, requests):
        assert self.committed.wait(30), "the claim-ahead thread never claimed"
        signal.raise_signal(signal.SIGTERM)  # the handler raises in this (the main) thread
        return super().generate(requests)


def test_a_stop_while_the_next_batch_is_being_claimed_waits_for_the_claim_and_releases_it(
    tmp_path, synth, monkeypatch, migrated_db_path
):
    """The interleaving, step by step: the background claim commits; the main thread is stopped
    and starts releasing; only then may the background thread hand its claim to the heartbeat."""
    InProcess(migrated_db_path, tmp_path)(*enqueue_args(synth, "baseline", "--set", "backend=fake"))
    db = open_db(migrated_db_path)
    committed, go, claimed_ahead = threading.Event(), threading.Event(), []
    real_claim = queue.claim

    def claim(*args, **kwargs):
        made = real_claim(*args, **kwargs)
        if threading.current_thread().name == "egoqa-claim-ahead":
            claimed_ahead.append(made)
            committed.set()
            assert go.wait(30), "the worker never started to stop"
        return made

    monkeypatch.setattr(queue, "claim", claim)
    worker = Worker(
        db, resolve_engine(db), _StopsMidClaimAhead(committed), WorkerOptions(batch_size=2)
    )
    real_close = worker.ahead.close

    def close():  # the main thread is stopping: let the background claim finish now
        go.set()
        real_close()

    monkeypatch.setattr(worker.ahead, "close", close)
    stats = worker.run()
    assert worker.signals.exit_code == 128 + signal.SIGTERM and stats.done == 0
    assert len(claimed_ahead) == 1 and len(claimed_ahead[0].jobs) == 2
    assert running(tmp_path / "egoqa.db") == []  # both batches were given back
    with db.read() as cur:
        ahead = claimed_ahead[0].ids
        rows = cur.all(
            f"SELECT state, attempts FROM jobs WHERE id IN ({','.join(map(str, ahead))})"
        )
    assert set(rows) == {("ready", 0)}


def test_segment_frames_are_decoded_side_by_side_before_their_batch_runs(
    tmp_path, synth, monkeypatch, migrated_db_path
):
    """Answer turns read frames inside the segments their parent chose: all of a batch's are
    decoded in the decoder's thread pool, none one job at a time while requests are built."""
    import egoqa.media.frames

    decodes: list[tuple[str, tuple]] = []
    real_decode = egoqa.media.frames._decode

    def spy(path, offset, timestamps, max_edge, duration):
        decodes.append((threading.current_thread().name, tuple(timestamps)))
        return real_decode(path, offset, timestamps, max_edge, duration)

    monkeypatch.setattr(egoqa.media.frames, "_decode", spy)
    InProcess(migrated_db_path, tmp_path)(*enqueue_args(synth, "demo", "--set", "backend=fake"))
    db = open_db(migrated_db_path)
    options = WorkerOptions(batch_size=16, until_done=True, decode_threads=2)
    stats = Worker(db, resolve_engine(db), FakeBackend(), options).run()
    assert stats.failed == 0 and stats.done > 0
    with db.read() as cur:
        answers = cur.one("SELECT COUNT(*) FROM jobs WHERE turn_name = 'answer'")
        clips = cur.one("SELECT COUNT(DISTINCT clip_id) FROM jobs")
    assert len(decodes) > clips  # segment frame sets were decoded, not only whole clips
    assert len(decodes) <= clips + answers
    outside = [(thread, ts) for thread, ts in decodes if not thread.startswith("ThreadPool")]
    assert outside == []


class _ThirtyGigabytesFree(FakeBackend):
    def free_memory_bytes(self) -> int:
        return 30 * 2**30


def test_text_turns_are_claimed_by_their_own_tokens_not_the_frames_turns_figure(
    tmp_path, synth, migrated_db_path
):
    """Under `per_sample_gb = 12` (a frames turn's figure) and 30 GB free, frames turns run two
    at a time; the 5-sample text-only turn, estimated from its tokens, runs in larger batches."""
    InProcess(migrated_db_path, tmp_path)(
        *enqueue_args(synth, "demo", "--set", "backend=fake", "--set", 'batch.size="auto"',
                      "--set", "batch.per_sample_gb=12")
    )  # fmt: skip
    db = open_db(migrated_db_path)
    options = WorkerOptions(until_done=True, claim_ahead=False)
    stats = Worker(db, resolve_engine(db), _ThirtyGigabytesFree(), options).run()
    assert stats.failed == 0
    with db.read() as cur:
        sizes = cur.all("SELECT turn_name, MAX(batch_size), COUNT(*) FROM jobs GROUP BY 1")
        spec = json.loads(cur.one("SELECT spec FROM jobs WHERE turn_name = 'segments'"))
    by_turn = {name: (size, n) for name, size, n in sizes}
    assert spec["media"]["kind"] == "none" and spec["samples"] == 5
    assert by_turn["scenario"][0] == by_turn["transitions"][0] == 2  # 30 GB / 12 GB
    assert by_turn["segments"][0] > 2 * by_turn["scenario"][0]


@pytest.mark.parametrize("ahead", [True, False])
def test_the_summary_reports_batches_claimed_ahead_and_left_padding(
    tmp_path, synth, ahead, migrated_db_path
):
    InProcess(migrated_db_path, tmp_path)(*enqueue_args(synth, "baseline", "--set", "backend=fake"))
    db = open_db(migrated_db_path)
    options = WorkerOptions(batch_size=2, until_done=True, claim_ahead=ahead)
    stats = Worker(db, resolve_engine(db), FakeBackend(), options).run()
    assert (stats.claimed_ahead > 0) == ahead and stats.done > 0
    assert stats.prompt_tokens > 0 and stats.padding_tokens > 0
    line = stats.summary()
    assert f"({stats.claimed_ahead} claimed ahead)" in line and "left padding" in line


@pytest.mark.postgres
def test_claiming_ahead_on_postgres_runs_every_job_once(migrated_postgres_url, tmp_path, synth):  # noqa: F811
    """The claim-ahead thread claims on its own pooled connection (FOR UPDATE SKIP LOCKED)."""
    InProcess(migrated_postgres_url, tmp_path)(
        *enqueue_args(synth, "demo", "--set", "backend=fake")
    )
    db = open_db(migrated_postgres_url)
    options = WorkerOptions(batch_size=2, until_done=True)
    stats = Worker(db, resolve_engine(db), FakeBackend(), options).run()
    with db.read() as cur:
        states = dict(cur.all("SELECT state, COUNT(*) FROM jobs GROUP BY state"))
        twice = cur.all("SELECT job_id FROM job_results GROUP BY job_id HAVING COUNT(*) > 1")
    db.dispose()
    assert stats.claimed_ahead > 0 and stats.failed == 0
    assert states == {"done": stats.done} and twice == []
