"""Runs stay apart: each run reports the queries it was enqueued with, forever, whatever file is
enqueued after it (query rows are versioned by content), on SQLite and PostgreSQL; and `status`
reads a database that holds a prior-only run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from inproc import InProcess

from alembic import command
from egoqa.dev.synth import SynthPaths, write_synth_dataset
from egoqa.store.db import alembic_config, open_db, resolve_url

from pg import migrated_postgres_url, postgres_server, postgres_url  # noqa: F401 -- fixtures

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
PRIOR = ("--config", "prior:whole_clip")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SynthPaths:
    """2 clips x 2 queries of 6 s, with the same clips as an unannotated test split."""
    root = tmp_path_factory.mktemp("apart")
    return write_synth_dataset(
        root, clips=2, queries_per_clip=2, duration_sec=6.0, seed=5, test_split=True
    )


@pytest.fixture
def cli(store_backend, request, tmp_path) -> InProcess:
    """`egoqa` on a fresh database at the schema's head, with the read-only role `sql` runs as
    on PostgreSQL (`db upgrade` makes it, as a first enqueue would)."""
    if store_backend == "sqlite":
        return InProcess(request.getfixturevalue("migrated_db_path"), tmp_path)
    egoqa = InProcess(request.getfixturevalue("migrated_postgres_url"), tmp_path)
    egoqa("db", "upgrade")
    return egoqa


def enqueue(cli: InProcess, data: SynthPaths, annotations: Path, run: str, *extra: str):
    return cli("enqueue", "-a", annotations, "--videos", data.videos, *PRIOR, "--run", run, *extra)


def summary(cli: InProcess, run: str) -> dict:
    return cli.json("report", "--run", run)["summary"]


def results(cli: InProcess, run: str) -> dict[tuple, dict]:
    """The run's `results` rows: (clip_uid, annotation_uid, query_idx) -> query and window."""
    sql = f"""SELECT clip_uid, annotation_uid, query_idx, query, gt_start, gt_end FROM results
               WHERE run = '{run}'"""
    rows = cli.json("sql", sql)
    return {(r.pop("clip_uid"), r.pop("annotation_uid"), r.pop("query_idx")): r for r in rows}


NEW = {"query": "where did I put the red kettle", "gt_start": 0.5, "gt_end": 1.0}


def changed_copy(data: SynthPaths, tmp_path: Path) -> Path:
    """The val file with its first query reworded and its answer window moved (NEW)."""
    doc = json.loads(data.annotations.read_text())
    query = doc["videos"][0]["clips"][0]["annotations"][0]["language_queries"][0]
    query["query"] = NEW["query"]
    query["clip_start_sec"], query["clip_end_sec"] = NEW["gt_start"], NEW["gt_end"]
    path = tmp_path / "nlq_val.json"
    path.write_text(json.dumps(doc))
    return path


def first_key(data: SynthPaths) -> tuple:
    clip = json.loads(data.annotations.read_text())["videos"][0]["clips"][0]
    return clip["clip_uid"], clip["annotations"][0]["annotation_uid"], 0


def test_a_test_split_run_keeps_no_ground_truth_when_a_val_run_of_its_clips_comes_after(cli, data):
    enqueue(cli, data, data.test_annotations, "T")
    enqueue(cli, data, data.annotations, "V")
    enqueue(cli, data, data.test_annotations, "T2")
    for run in ("T", "T2"):
        s = summary(cli, run)
        assert (s["n"], s["ground_truth"], s["unscored"], s["coverage"]) == (4, False, 0, None)
    s = summary(cli, "V")
    assert (s["n"], s["ground_truth"], s["unscored"], s["coverage"]) == (4, True, 0, 1.0)


def test_a_run_shows_its_own_query_texts_and_windows_after_a_changed_copy_is_enqueued(
    cli, data, tmp_path
):
    enqueue(cli, data, data.annotations, "A")
    before = results(cli, "A")
    enqueue(cli, data, changed_copy(data, tmp_path), "B")
    cli("report", "--run", "A", "--rescore")
    assert results(cli, "A") == before
    assert results(cli, "B") == before | {first_key(data): NEW}
    assert before[first_key(data)] != NEW


def test_a_run_enqueued_again_from_a_changed_file_shows_the_new_version_once(cli, data, tmp_path):
    enqueue(cli, data, data.annotations, "A")
    before = results(cli, "A")
    enqueue(cli, data, changed_copy(data, tmp_path), "A")
    assert results(cli, "A") == before | {first_key(data): NEW}  # one row a query, the new one
    assert summary(cli, "A")["unscored"] == 0  # a prior's items are scored again at enqueue


def test_status_reads_a_database_holding_a_prior_run(cli, data):
    enqueue(cli, data, data.annotations, "P")
    for args in ((), ("--run", "P")):
        out = cli("status", *args)
        assert "all jobs: done 4" in out.stdout
    engines = cli.json("status")["engines"]
    assert [(e["engine"], e["dtype"], e["done"]) for e in engines] == [
        ("prior:whole_clip", None, 4)
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_query_versions_survive_a_downgrade_and_upgrade_with_runs_in_the_database(
    backend, data, tmp_path, request
):
    url = (
        resolve_url(tmp_path / "egoqa.db")
        if backend == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    cli = InProcess(url, tmp_path)
    enqueue(cli, data, data.annotations, "A")
    enqueue(cli, data, changed_copy(data, tmp_path), "B")
    a, b = results(cli, "A"), results(cli, "B")
    db = open_db(url)
    cfg = alembic_config(url, db.engine)
    command.downgrade(cfg, "0007")  # one row per query again: both runs show the latest version
    command.upgrade(cfg, "head")
    db.dispose()
    assert results(cli, "B") == b
    assert results(cli, "A") == b  # the old schema's one row per query: the latest content
    enqueue(cli, data, data.annotations, "C")  # the first content again: a version of its own
    assert results(cli, "C") == a
