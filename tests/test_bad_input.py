"""Bad input gets a clear error and loses nothing.

Every case runs the real `egoqa` command in a subprocess against a real SQLite file that already
holds finished work. Each asserts: one `error:` line naming the problem and what to do where the
command fails (exit 1), exit 0 where the command as a whole succeeded, no traceback, and the
finished work still there, unchanged.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import sqlite3
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from egoqa.dev.synth import SynthPaths, write_synth_dataset
from egoqa.plan.styles import style_names
from egoqa.store.db import head_revision

from conftest import Cli

FAKE = ("--set", "backend=fake")
FUTURE_REVISION = "ffffffffffff"


# --- fixtures: a pristine dataset and a database with finished work ----------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> SynthPaths:
    """3 clips × 1 query of 6 s: the smallest dataset with several clips to keep or break."""
    return write_synth_dataset(
        tmp_path_factory.mktemp("pristine"), clips=3, queries_per_clip=1, duration_sec=6.0, seed=3
    )


@pytest.fixture(scope="module")
def finished_db(pristine, tmp_path_factory) -> Path:
    """A database where the first query's four turns are done (fake backend)."""
    root = tmp_path_factory.mktemp("finished")
    cli = Cli(root / "egoqa.db", root)
    cli(*enqueue(pristine, "--limit", "1"))
    cli("work", "--until-done")
    return root / "egoqa.db"


@pytest.fixture
def db(finished_db, db_path) -> Path:
    """A private copy of the finished database at the `cli` fixture's path."""
    src, dst = sqlite3.connect(finished_db), sqlite3.connect(db_path)
    src.backup(dst)
    src.close()
    dst.close()
    assert len(done(db_path)) == 4
    return db_path


def fresh_dataset(pristine: SynthPaths, tmp_path: Path) -> SynthPaths:
    """A copy of the pristine dataset that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(pristine.root, root)
    return SynthPaths(
        root, root / "annotations" / "nlq_val.json", root / "videos", root / "ego4d.json"
    )


def enqueue(data: SynthPaths, *extra: str, config: str = "demo", fake: bool = True) -> list[str]:
    args = ["enqueue", "--annotations", str(data.annotations), "--videos", str(data.videos)]
    return [*args, "--config", config, *(FAKE if fake else ()), *extra]


# --- what a database holds --------------------------------------------------------------------


def rows(db_path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def done(db_path: Path) -> list[tuple]:
    return rows(db_path, "SELECT id, response FROM jobs WHERE state = 'done' ORDER BY id")


def snapshot(db_path: Path) -> dict:
    """Everything a bad command might change."""
    return {
        "jobs": rows(
            db_path, "SELECT id, key, state, response, attempts, error FROM jobs ORDER BY id"
        ),
        "runs": rows(db_path, "SELECT id, name, config_hash FROM runs ORDER BY id"),
        "clips": rows(db_path, "SELECT id, clip_uid, video_path, identity FROM clips ORDER BY id"),
        "schema": rows(db_path, "SELECT version_num FROM alembic_version"),
    }


def kinds_by_clip(db_path: Path) -> dict[int, set]:
    out: dict[int, set] = {}
    for clip_id, state, kind in rows(db_path, "SELECT clip_id, state, error_kind FROM jobs"):
        out.setdefault(clip_id, set()).add(kind or state)
    return out


def video_of(db_path: Path, clip_id: int) -> Path:
    return Path(rows(db_path, f"SELECT video_path FROM clips WHERE id = {clip_id}")[0][0])


# --- what the user sees -----------------------------------------------------------------------


def error_line(p: subprocess.CompletedProcess, *needles: str, only: bool = True) -> str:
    """The command failed with exit 1 and exactly one `error:` line holding every needle."""
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 1, (p.returncode, p.stderr)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, p.stderr
    if only:
        assert p.stderr.strip() == errors[0], p.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def succeeded(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "error:" not in p.stderr, p.stderr
    return p


# --- videos that go bad after enqueue: only their jobs fail ----------------------------------


def break_a_video_after_enqueue(cli, db, pristine, tmp_path, damage) -> list:
    """With clip 1 done, plan clips 2 and 3 from a copy of the videos, then damage clip 2's."""
    before = done(db)
    cli(*enqueue(fresh_dataset(pristine, tmp_path)))  # identities are read now: damage after
    damage(video_of(db, 2))
    return before


def assert_only_clip_2_failed(db_path: Path, before: list, kind: str) -> None:
    kinds = kinds_by_clip(db_path)
    assert kinds[1] == {"done"} and kinds[3] == {"done"}, kinds
    assert kind in kinds[2] and kinds[2] <= {kind, "upstream"}, kinds
    assert set(before) <= set(done(db_path))


def test_a_video_deleted_after_enqueue_fails_only_its_jobs_as_video_missing(
    cli, db, pristine, tmp_path
):
    before = break_a_video_after_enqueue(cli, db, pristine, tmp_path, Path.unlink)
    p = succeeded(cli("work", "--until-done", check=False))
    assert re.search(
        r"video_missing: video file .*\.mp4 does not exist; check the videos", p.stderr
    )
    assert_only_clip_2_failed(db, before, "video_missing")


def test_a_video_overwritten_with_random_bytes_fails_only_its_jobs_as_unreadable(
    cli, db, pristine, tmp_path
):
    def corrupt(path: Path) -> None:
        path.write_bytes(random.Random(0).randbytes(path.stat().st_size))

    before = break_a_video_after_enqueue(cli, db, pristine, tmp_path, corrupt)
    p = succeeded(cli("work", "--until-done", check=False))
    assert re.search(r"video_unreadable: video file .*\.mp4 is unreadable: .*re-download", p.stderr)
    assert_only_clip_2_failed(db, before, "video_unreadable")


def test_a_video_truncated_to_zero_bytes_fails_only_its_jobs(cli, db, pristine, tmp_path):
    before = break_a_video_after_enqueue(cli, db, pristine, tmp_path, lambda p: p.write_bytes(b""))
    p = succeeded(cli("work", "--until-done", check=False))
    assert "is empty (0 bytes); re-download or re-extract it" in p.stderr
    assert_only_clip_2_failed(db, before, "video_unreadable")


# --- annotation files: whole-file problems fail, single records are skipped -------------------


def test_an_annotation_file_that_is_not_json_is_refused(cli, db, pristine, tmp_path):
    before = snapshot(db)
    bad = tmp_path / "nlq_val.json"
    bad.write_text('{"videos": [')
    data = SynthPaths(pristine.root, bad, pristine.videos, pristine.metadata)
    error_line(
        cli(*enqueue(data), check=False),
        f"annotation file {bad} is not valid JSON (line 1",
        "re-download or fix the file",
    )
    assert snapshot(db) == before


@pytest.mark.parametrize("content", [[{"video_uid": "v"}], {"version": "v2", "clips": []}])
def test_json_of_the_wrong_shape_is_refused(cli, db, pristine, tmp_path, content):
    before = snapshot(db)
    bad = tmp_path / "nlq_val.json"
    bad.write_text(json.dumps(content))
    data = SynthPaths(pristine.root, bad, pristine.videos, pristine.metadata)
    error_line(
        cli(*enqueue(data), check=False),
        f"annotation file {bad} has no top-level 'videos' list",
        "pass an Ego4D nlq_*.json file",
    )
    assert snapshot(db) == before


def with_one_bad_query(pristine: SynthPaths, tmp_path: Path, change) -> SynthPaths:
    """The pristine annotations plus one extra query on the first clip, changed by `change`."""
    data = json.loads(pristine.annotations.read_text())
    queries = data["videos"][0]["clips"][0]["annotations"][0]["language_queries"]
    extra = dict(queries[0])
    change(extra)
    queries.append(extra)
    path = tmp_path / "nlq_val.json"
    path.write_text(json.dumps(data))
    return SynthPaths(pristine.root, path, pristine.videos, pristine.metadata)


def assert_skipped_and_rest_enqueued(cli, db, data, reason: str, detail: str) -> None:
    before = done(db)
    p = succeeded(cli(*enqueue(data), check=False))
    assert f"run demo: 3 queries on 3 clips (skipped: {reason} 1)" in p.stdout
    where = r"\(clip [\w-]+, annotation [\w-]+, query \d+\)"  # the record, to find it
    assert re.search(rf"skipped {reason} {where}: {re.escape(detail)}", p.stderr), p.stderr
    assert rows(db, "SELECT COUNT(*) FROM run_items") == [(3,)]
    assert done(db) == before


def test_a_query_without_text_is_skipped_with_its_reason_and_the_rest_enqueued(
    cli, db, pristine, tmp_path
):
    data = with_one_bad_query(pristine, tmp_path, lambda q: q.pop("query"))
    assert_skipped_and_rest_enqueued(
        cli, db, data, "no_query_text", "language query has no query text"
    )


def test_an_inverted_window_is_skipped_and_reported(cli, db, pristine, tmp_path):
    def invert(q: dict) -> None:
        q["clip_start_sec"], q["clip_end_sec"] = 4.0, 1.0

    data = with_one_bad_query(pristine, tmp_path, invert)
    assert_skipped_and_rest_enqueued(
        cli, db, data, "inverted_window", "answer window 4.00 s .. 1.00 s ends before it starts"
    )


def test_a_window_outside_the_clip_is_skipped_and_reported(cli, db, pristine, tmp_path):
    def overrun(q: dict) -> None:
        q["clip_start_sec"], q["clip_end_sec"] = 5.0, 11.0

    data = with_one_bad_query(pristine, tmp_path, overrun)
    assert_skipped_and_rest_enqueued(
        cli,
        db,
        data,
        "window_outside_clip",
        "answer window 5.00 s .. 11.00 s is outside the 6.00 s clip",
    )


def test_a_missing_videos_directory_is_refused(cli, db, pristine, tmp_path):
    before = snapshot(db)
    nowhere = tmp_path / "no-videos"
    data = SynthPaths(pristine.root, pristine.annotations, nowhere, pristine.metadata)
    error_line(
        cli(*enqueue(data), check=False),
        f"videos folder {nowhere} does not exist",
        "pass the folder holding <clip_uid>.mp4",
    )
    assert snapshot(db) == before


# --- configuration and prompt styles ---------------------------------------------------------


def test_an_unknown_prompt_style_lists_the_available_ones(cli, db, pristine, tmp_path):
    before = snapshot(db)
    available = ", ".join(style_names())
    p = cli(*enqueue(pristine, "--set", "style=nope"), check=False)
    error_line(p, "unknown prompt style 'nope'", f"use one of {available}")
    missing = tmp_path / "mine.toml"
    p = cli(*enqueue(pristine, "--set", f"style={json.dumps(str(missing))}"), check=False)
    error_line(p, f"style file {missing} does not exist", f"use one of {available}")
    assert snapshot(db) == before


def test_an_unknown_config_key_suggests_the_keys_near_it(cli, db, pristine, tmp_path):
    before = snapshot(db)
    p = cli(*enqueue(pristine, "--set", "sampler.frame=3"), check=False)
    error_line(p, "--set: unknown key 'sampler.frame'; did you mean sampler.frames?")
    toml = tmp_path / "mine.toml"
    toml.write_text('model = "m"\nbackend = "fake"\n[sampler]\nframe = 3\n')
    p = cli(*enqueue(pristine, config=str(toml), fake=False), check=False)
    error_line(p, f"{toml}: unknown key 'sampler.frame' (did you mean sampler.frames?)")
    assert snapshot(db) == before


def test_a_config_value_of_the_wrong_type_names_the_key(cli, db, pristine, tmp_path):
    before = snapshot(db)
    toml = tmp_path / "mine.toml"
    toml.write_text('model = "m"\nbackend = "fake"\n[sampler]\nframes = "many"\n')
    p = cli(*enqueue(pristine, config=str(toml), fake=False), check=False)
    error_line(p, f"{toml}: sampler.frames: Input should be a valid integer")
    assert snapshot(db) == before


def test_a_config_file_that_is_not_utf8_is_refused(cli, db, pristine, tmp_path):
    before = snapshot(db)
    toml = tmp_path / "mine.toml"
    toml.write_bytes(b'model = "\xff\xfe"\n')
    p = cli(*enqueue(pristine, config=str(toml), fake=False), check=False)
    error_line(p, f"config file {toml} cannot be read", "save it as UTF-8 TOML")
    assert snapshot(db) == before


# --- a model that cannot load: the worker stops at once, jobs stay ready ---------------------

MISSING_MODEL = "model path /nonexistent/egoqa-model does not exist; pass an existing checkpoint"


def enqueue_missing_model(cli, pristine) -> dict:
    cli(
        *enqueue(pristine, "--set", "model=/nonexistent/egoqa-model", "--run", "broken", fake=False)
    )
    return snapshot(Path(cli.db))


@pytest.mark.slow
def test_a_model_path_that_does_not_exist_stops_the_worker_with_one_line(cli, db, pristine):
    before = enqueue_missing_model(cli, pristine)
    p = cli("work", "--until-done", check=False)
    error_line(p, MISSING_MODEL)
    assert snapshot(db) == before  # the broken run's jobs are still ready; nothing lost
    assert ("ready",) in rows(db, "SELECT DISTINCT state FROM jobs")


@pytest.mark.slow
def test_the_supervisor_does_not_restart_workers_that_cannot_load_the_model(cli, db, pristine):
    before = enqueue_missing_model(cli, pristine)
    p = cli("work", "--workers", "2", "--device", "cpu", "--until-done", check=False, timeout=120)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, p.stderr  # one per child, one from the supervisor
    assert all(MISSING_MODEL in e for e in errors[:2]), errors
    assert errors[2].startswith("error: 2 of 2 worker(s) gave up (their errors are above)")
    assert "run `egoqa work` again; finished jobs are kept" in errors[2]
    assert "restarting in" not in p.stderr
    assert snapshot(db) == before


# --- the database itself ---------------------------------------------------------------------


def test_a_schema_newer_than_the_code_is_refused_by_every_command(cli, db, pristine):
    conn = sqlite3.connect(db)
    conn.execute("UPDATE alembic_version SET version_num = ?", (FUTURE_REVISION,))
    conn.commit()
    conn.close()
    before = snapshot(db)
    message = (
        f"database schema {FUTURE_REVISION} is newer than this egoqa (head {head_revision()}): "
        "upgrade egoqa"
    )
    for args in (
        ["status"],
        ["runs"],
        ["sql", "SELECT 1"],
        ["retry"],
        ["work", "--until-done"],
        ["db", "upgrade"],
        enqueue(pristine),
    ):
        error_line(cli(*args, check=False), message)
    current = succeeded(cli("db", "current", check=False)).stdout
    assert (
        f"schema {FUTURE_REVISION}" in current and "newer than this egoqa: upgrade egoqa" in current
    )
    assert snapshot(db) == before


@contextmanager
def read_only(*paths: Path):
    """Make files and directories unwritable: chmod, and where that is no bar (root), chattr +i."""
    modes = {p: p.stat().st_mode for p in paths}
    chattr, immutable = shutil.which("chattr"), False
    names = [str(p) for p in paths]
    try:
        for p in paths:
            p.chmod(0o555 if p.is_dir() else 0o444)
        if any(os.access(p, os.W_OK) for p in paths):
            immutable = bool(chattr) and subprocess.run([chattr, "+i", *names]).returncode == 0
            if not immutable:
                pytest.skip(
                    "chmod does not stop writes here (root) and chattr +i is not available; "
                    "test_a_write_on_a_read_only_connection_says_read_only still covers the message"
                )
        yield
    finally:
        if immutable:
            subprocess.run([chattr, "-i", *names], check=True)
        for p, mode in modes.items():
            p.chmod(mode)


def test_a_read_only_database_file_refuses_writers_and_still_serves_readers(cli, db, pristine):
    before = snapshot(db)
    with read_only(db):
        error_line(
            cli(*enqueue(pristine), check=False),
            f"database {db} is read-only: make it writable",
        )
        error_line(cli("work", "--until-done", check=False), f"database {db} is read-only")
        assert "all jobs: done 4" in succeeded(cli("status", check=False)).stdout
        rows_json = cli.json("sql", "SELECT COUNT(*) AS n FROM jobs WHERE state = 'done'")
        assert rows_json == [{"n": 4}]
    assert snapshot(db) == before


def test_a_database_in_a_read_only_directory_refuses_writers_and_still_serves_readers(
    cli, db, pristine
):
    before = snapshot(db)
    with read_only(db.parent):
        error_line(
            cli(*enqueue(pristine), check=False),
            f"database directory {db.parent} is read-only",
            "make it writable, or use `egoqa status`/`sql` to read it",
        )
        assert "all jobs: done 4" in succeeded(cli("status", check=False)).stdout
        assert cli.json("sql", "SELECT COUNT(*) AS n FROM jobs") == [{"n": 4}]
    assert snapshot(db) == before


def test_a_write_on_a_read_only_connection_says_read_only(db):
    from egoqa.errors import DatabaseError
    from egoqa.store.db import open_db

    before = snapshot(db)
    ro = open_db(db, readonly=True)
    with (
        pytest.raises(DatabaseError, match="the file is read-only — make it writable"),
        ro.write() as cur,
    ):
        cur.execute("UPDATE jobs SET response = 'tampered'")
    ro.dispose()
    assert snapshot(db) == before


def test_a_database_in_a_missing_directory_names_the_directory(cli, tmp_path, pristine):
    missing = tmp_path / "x" / "nope"
    elsewhere = Cli(missing / "egoqa.db", tmp_path)
    for args in (enqueue(pristine), ["status"]):
        error_line(
            elsewhere(*args, check=False),
            f"database directory {missing} does not exist: create it or pass --db",
        )
    assert not missing.parent.exists()


@pytest.mark.parametrize(
    "target, message",
    [
        ("not-a-db.txt", "is not an SQLite database (file is not a database): pass --db"),
        ("a-directory", "is a directory: pass --db with a file path"),
        ("foo://bar", "unknown kind of database in 'foo://bar': pass a file path"),
    ],
)
def test_a_db_argument_that_is_not_a_database_gets_one_line(tmp_path, target, message):
    (tmp_path / "not-a-db.txt").write_text("hello\n")
    (tmp_path / "a-directory").mkdir()
    path = target if "://" in target else tmp_path / target
    odd = Cli(path, tmp_path)
    for args in (["status"], ["db", "current"]) if target == "not-a-db.txt" else (["status"],):
        error_line(odd(*args, check=False), message)
    assert (tmp_path / "not-a-db.txt").read_text() == "hello\n"


def test_writes_through_egoqa_sql_are_refused_by_the_database(cli, db, tmp_path):
    before = snapshot(db)
    attached = tmp_path / "attached.db"
    for stmt, message in (
        ("INSERT INTO runs (name) VALUES ('x')", "egoqa sql is read-only: the statement tried"),
        ("UPDATE jobs SET response = 'tampered'", "egoqa sql is read-only"),
        ("DROP TABLE jobs", "egoqa sql is read-only"),
        ("PRAGMA user_version = 7", "egoqa sql is read-only"),
        ("PRAGMA journal_mode = DELETE", "egoqa sql is read-only"),
        (f"ATTACH DATABASE '{attached}' AS a", "egoqa sql is read-only and cannot ATTACH"),
    ):
        error_line(cli("sql", stmt, check=False), message)
    assert not attached.exists()
    assert rows(db, "PRAGMA user_version") == [(0,)]
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    assert snapshot(db) == before


def test_a_full_disk_while_writing_results_stops_the_worker_and_loses_nothing(cli, db, pristine):
    cli(*enqueue(pristine))
    before = done(db)
    pages = rows(db, "PRAGMA page_count")[0][0]
    full = {"EGOQA_SQLITE_MAX_PAGE_COUNT": str(pages)}  # the file may not grow: SQLITE_FULL
    p = cli("work", "--until-done", check=False, env=full)
    error_line(
        p,
        f"cannot write to sqlite:///{db} (database or disk is full): free disk space",
        "work already written is safe",
        only=False,
    )
    assert set(before) <= set(done(db))  # nothing written before is lost (writes that fit in
    # the file's free pages may still land)
    assert rows(db, "SELECT COUNT(*) FROM jobs WHERE state = 'running'") == [(0,)]  # released
    succeeded(cli("work", "--until-done", check=False))
    assert rows(db, "SELECT DISTINCT state FROM jobs") == [("done",)]
    assert set(before) <= set(done(db))
