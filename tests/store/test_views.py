"""The report views (`results`, `turns`, `failures`): created by migration 0002 without touching
the models, one row per run x query or per job and run, misses counted, the same on PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from inproc import InProcess

from alembic import command
from egoqa.store import graph, queue
from egoqa.store.db import alembic_config, open_db, resolve_url

from conftest import copy_db, enqueue_args
from pg import migrated_postgres_url, postgres_server, postgres_url  # noqa: F401 -- fixtures

VIEWS = {"results", "turns", "failures"}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def _views(db) -> set[str]:
    with db.read() as cur:
        return {r[0] for r in cur.all("SELECT name FROM sqlite_master WHERE type = 'view'")}


def test_migration_adds_the_views_and_leaves_the_schema_equal_to_the_models(db_path):
    url = resolve_url(db_path)
    cfg = alembic_config(url)
    command.upgrade(cfg, "head")
    command.check(cfg)  # raises when the tables differ from the models; views are ignored
    db = open_db(db_path, readonly=True)
    assert VIEWS | {"progress"} <= _views(db)
    with db.read() as cur:
        sql = cur.one("SELECT sql FROM sqlite_master WHERE name = 'results'")
    assert sql.splitlines()[1].startswith("-- results: one row per run x query")
    command.downgrade(cfg, "0001")
    assert _views(db) & VIEWS == set()
    command.upgrade(cfg, "head")
    assert _views(db) >= VIEWS


@pytest.fixture(scope="module")
def worked_db(synth, tmp_path_factory) -> Path:
    """Two runs of one config (so they share every job), done by the fake backend; built once."""
    root = tmp_path_factory.mktemp("worked")
    cli = InProcess(root / "egoqa.db", root)
    for run in ("a", "b"):
        cli(*enqueue_args(synth, "demo", "--set", "backend=fake", "--run", run))
    cli("work", "--until-done")
    return root / "egoqa.db"


@pytest.fixture
def cli(db_path, tmp_path) -> InProcess:
    """`egoqa` in this process, on `db_path`."""
    return InProcess(db_path, tmp_path)


@pytest.fixture
def worked(worked_db, db_path) -> None:
    """A private copy of `worked_db` at the `cli` fixture's path."""
    copy_db(worked_db, db_path)


def test_results_has_one_scored_row_per_run_and_query(cli, worked):
    rows = cli.json("sql", "SELECT * FROM results ORDER BY run, clip_uid, annotation_uid")
    per_run = {run: [r for r in rows if r["run"] == run] for run in ("a", "b")}
    queries = cli.json("sql", "SELECT COUNT(*) AS n FROM queries")[0]["n"]
    assert len(per_run["a"]) == len(per_run["b"]) == queries
    for a, b in zip(per_run["a"], per_run["b"], strict=True):
        assert {**a, "run": "b"} == b  # shared jobs: the same response and scores
    for r in per_run["a"]:
        assert r["state"] == "done" and r["response"] and r["outcome"]
        assert r["n_segments"] == len(json.loads(r["segments"]))
        assert r["correct"] in (0, 1) and 0.0 <= r["iou_top1"] <= 1.0
        assert r["best_correct"] >= r["correct"] and r["best_iou_top1"] >= r["iou_top1"]


def test_turns_lists_every_job_once_per_run_with_per_clip_jobs_once(cli, worked):
    rows = cli.json("sql", "SELECT * FROM turns WHERE run = 'a'")
    jobs = cli.json("sql", "SELECT COUNT(*) AS n FROM jobs")[0]["n"]
    assert len(rows) == len({r["job_id"] for r in rows}) == jobs
    clips = {r["clip_uid"] for r in rows}
    for turn in ("scenario", "transitions"):
        per_clip = [r for r in rows if r["turn"] == turn]
        assert len(per_clip) == len(clips)
        assert all(r["annotation_uid"] is None and r["query"] is None for r in per_clip)
    for r in rows:
        assert r["state"] == "done" and r["prompt"] and r["response"] and r["worker_id"]
        assert ISO_UTC.match(r["started_at"]) and ISO_UTC.match(r["finished_at"])
        assert r["started_at"] <= r["finished_at"]
    assert cli.json("sql", "SELECT COUNT(*) AS n FROM turns")[0]["n"] == 2 * jobs
    assert cli.json("sql", "SELECT COUNT(*) AS n FROM failures")[0]["n"] == 0


def test_a_failed_clip_counts_its_queries_as_misses_and_pending_ones_as_null(
    cli, synth, migrated_db_path
):
    db_path = migrated_db_path
    cli(*enqueue_args(synth, "demo", "--set", "backend=fake", "--run", "a"))
    db = open_db(db_path)
    engine = cli.json("sql", "SELECT DISTINCT engine FROM jobs")[0]["engine"]
    claim = queue.claim(db, "test-worker", engine, 1, lease_s=60)
    (job,) = claim.jobs
    assert queue.fail(db, claim, job.id, "video", "clip.mp4 cannot be decoded")

    rows = cli.json("sql", "SELECT * FROM results")
    failed = [r for r in rows if r["state"] == "failed"]
    pending = [r for r in rows if r["state"] != "failed"]
    assert failed and pending
    for r in failed:  # failed upstream: nobody scored them, the view still counts a miss
        assert (r["correct"], r["iou_top1"], r["r1_03"], r["r5_05"]) == (0, 0.0, 0, 0)
        assert (r["outcome"], r["segments"], r["error_kind"]) == ("failed", "[]", "upstream")
    for r in pending:
        assert r["state"] in ("ready", "blocked")
        assert r["correct"] is None and r["outcome"] is None and r["response"] is None

    failures = cli.json("sql", "SELECT * FROM failures ORDER BY job_id")
    assert failures[0] == {
        "run": "a",
        "job_id": job.id,
        "turn": "scenario",
        "clip_uid": failed[0]["clip_uid"],
        "kind": "video",
        "message": "clip.mp4 cannot be decoded",
        "attempts": 1,
    }
    assert {f["kind"] for f in failures[1:]} == {"upstream"}
    assert len(failures) == 1 + 1 + 2 * len(failed)  # transitions, then segments + answer each


def test_a_requeued_graded_job_does_not_show_its_old_scores(cli, worked, db_path):
    graded = cli.json("sql", "SELECT graded_job_id FROM results WHERE run = 'a' LIMIT 1")[0]
    job = graded["graded_job_id"]
    graph.recompute(open_db(db_path), [job])
    (row,) = cli.json("sql", f"SELECT * FROM results WHERE run = 'a' AND graded_job_id = {job}")
    assert row["state"] in ("ready", "blocked")
    assert row["correct"] is None and row["segments"] is None and row["response"] is None
    stored = cli.json("sql", f"SELECT correct FROM run_items WHERE graded_job_id = {job}")
    assert stored[0]["correct"] is not None  # kept for history, hidden by the view


@pytest.mark.postgres
def test_views_read_the_same_on_postgresql_as_on_sqlite(
    cli,
    worked,
    synth,
    migrated_postgres_url,  # noqa: F811
    tmp_path,
):
    columns = (
        "clip_uid, annotation_uid, query_idx, state, response, segments, n_segments, correct, "
    )
    columns += "iou_top1, r1_03, r1_05, r5_03, r5_05, outcome, best_correct, best_iou_top1"
    select = f"SELECT {columns} FROM results WHERE run = 'a' ORDER BY clip_uid, annotation_uid, query_idx"
    pg = InProcess(migrated_postgres_url, tmp_path)
    pg("db", "upgrade")  # the read-only role `sql` runs as, as a first enqueue would make it
    pg(*enqueue_args(synth, "demo", "--set", "backend=fake", "--run", "a"))
    pg("work", "--until-done")
    pg_rows = pg.json("sql", select)
    turns = pg.json("sql", "SELECT started_at, finished_at FROM turns")
    assert all(ISO_UTC.match(t["started_at"]) and ISO_UTC.match(t["finished_at"]) for t in turns)
    sqlite_rows = cli.json("sql", select)
    assert len(sqlite_rows) > 0 and sqlite_rows == pg_rows


def test_alembic_writes_to_the_stdout_of_the_call_not_of_its_first_import(db_path):
    """egoqa run in process (a notebook, the tests) redirects stdout between calls: alembic's
    messages follow, instead of going to a stream that may be closed by then."""
    import contextlib
    import io

    import alembic.config  # noqa: F401 -- imported before the redirect, as in a long-lived process

    here = io.StringIO()
    with contextlib.redirect_stdout(here):
        alembic_config(resolve_url(db_path)).print_stdout("a message")
    assert here.getvalue() == "a message\n"
