"""Bad input gets a clear error and loses nothing.

Every case runs the real `egoqa` entry point (in this process, `inproc.InProcess`: the same
parsing, commands and error boundary as the console script) against real files: a SQLite
database that already holds finished work, or none. Each asserts: one `error:` line naming the
problem and what to do where the command fails (exit 1; 2 for a usage error), exit 0 where the
command as a whole succeeded, no traceback, and the finished work still there, unchanged. Only
the supervisor's case starts a process of its own: its worker processes are what it tests.

Sections by command: the database (`--db`, every command), `enqueue` (annotation files, video
files, configs and prompt styles), `work` (videos that go bad after enqueue, a model that cannot
load, devices and batch sizes, a full disk), `sql`, and the commands that write files (`report`,
`export`, `cluster`).
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
from importlib import resources
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.dev.synth import SynthPaths, write_synth_dataset
from egoqa.errors import ConfigError
from egoqa.plan.styles import style_names
from egoqa.store.db import head_revision

from conftest import Cli, copy_db
from helpers import error_line

FAKE = ("--set", "backend=fake")
FUTURE_REVISION = "ffffffffffff"


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


# --- fixtures: a pristine dataset and databases with finished work ----------------------------


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
    egoqa = InProcess(root / "egoqa.db", root)
    egoqa(*enqueue(pristine, "--limit", "1"))
    egoqa("work", "--until-done")
    return root / "egoqa.db"


@pytest.fixture(scope="module")
def pending_db(finished_db, pristine, tmp_path_factory) -> Path:
    """The finished database with run `demo` grown to every query: clips 2 and 3 pending."""
    root = tmp_path_factory.mktemp("pending")
    copy_db(finished_db, root / "egoqa.db")
    InProcess(root / "egoqa.db", root)(*enqueue(pristine))
    return root / "egoqa.db"


@pytest.fixture(scope="module")
def empty_db(tmp_path_factory) -> Path:
    """A database with the schema and nothing in it: nothing pending."""
    root = tmp_path_factory.mktemp("empty")
    InProcess(root / "egoqa.db", root)("db", "upgrade")
    return root / "egoqa.db"


@pytest.fixture
def egoqa(db_path, tmp_path) -> InProcess:
    """The `egoqa` command on the database at `db_path` (none until a fixture or a test puts
    one there)."""
    return InProcess(db_path, tmp_path)


@pytest.fixture
def db(finished_db, db_path) -> Path:
    """A private copy of the finished database at the `egoqa` fixture's path."""
    copy_db(finished_db, db_path)
    assert len(done(db_path)) == 4
    return db_path


@pytest.fixture
def pending(pending_db, db_path) -> Path:
    """A private copy of the database with pending jobs at the `egoqa` fixture's path."""
    copy_db(pending_db, db_path)
    return db_path


def fresh_dataset(pristine: SynthPaths, tmp_path: Path) -> SynthPaths:
    """A copy of the pristine dataset that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(pristine.root, root)
    return SynthPaths(
        root, root / "annotations" / "nlq_val.json", root / "videos", root / "ego4d.json"
    )


def enqueue(data: SynthPaths, *extra, config: str = "demo", fake: bool = True) -> list:
    args = ["enqueue", "--annotations", str(data.annotations), "--videos", str(data.videos)]
    return [*args, "--config", config, *(FAKE if fake else ()), *extra]


def with_annotations(data: SynthPaths, path: Path) -> SynthPaths:
    return SynthPaths(data.root, path, data.videos, data.metadata)


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


def state(db_path: Path) -> tuple:
    """Jobs, runs, clips and the workers that ever started: what a refused command must not touch."""
    return snapshot(db_path), rows(db_path, "SELECT id FROM workers ORDER BY id")


def kinds_by_clip(db_path: Path) -> dict[int, set]:
    out: dict[int, set] = {}
    for clip_id, job_state, kind in rows(db_path, "SELECT clip_id, state, error_kind FROM jobs"):
        out.setdefault(clip_id, set()).add(kind or job_state)
    return out


def video_of(db_path: Path, clip_id: int) -> Path:
    return Path(rows(db_path, f"SELECT video_path FROM clips WHERE id = {clip_id}")[0][0])


# --- what the user sees -----------------------------------------------------------------------


def succeeded(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, p.stderr
    assert "Traceback" not in p.stderr and "error:" not in p.stderr, p.stderr
    return p


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


# === the database (--db), for every command =====================================================


def test_a_schema_newer_than_the_code_is_refused_by_every_command(egoqa, db, pristine):
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
        error_line(egoqa(*args, check=False), message)
    current = succeeded(egoqa("db", "current", check=False)).stdout
    assert (
        f"schema {FUTURE_REVISION}" in current and "newer than this egoqa: upgrade egoqa" in current
    )
    assert snapshot(db) == before


def test_a_read_only_database_file_refuses_writers_and_still_serves_readers(egoqa, db, pristine):
    before = snapshot(db)
    with read_only(db):
        error_line(
            egoqa(*enqueue(pristine), check=False),
            f"database {db} is read-only: make it writable",
        )
        error_line(egoqa("work", "--until-done", check=False), f"database {db} is read-only")
        assert "all jobs: done 4" in succeeded(egoqa("status", check=False)).stdout
        rows_json = egoqa.json("sql", "SELECT COUNT(*) AS n FROM jobs WHERE state = 'done'")
        assert rows_json == [{"n": 4}]
    assert snapshot(db) == before


def test_a_database_in_a_read_only_directory_refuses_writers_and_still_serves_readers(
    egoqa, db, pristine
):
    before = snapshot(db)
    with read_only(db.parent):
        error_line(
            egoqa(*enqueue(pristine), check=False),
            f"database directory {db.parent} is read-only",
            "make it writable, or use `egoqa status`/`sql` to read it",
        )
        assert "all jobs: done 4" in succeeded(egoqa("status", check=False)).stdout
        assert egoqa.json("sql", "SELECT COUNT(*) AS n FROM jobs") == [{"n": 4}]
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


def test_a_database_in_a_missing_directory_names_the_directory(tmp_path, pristine):
    missing = tmp_path / "x" / "nope"
    elsewhere = InProcess(missing / "egoqa.db", tmp_path)
    for args in (enqueue(pristine), ["status"]):
        error_line(
            elsewhere(*args, check=False),
            f"database directory {missing} does not exist: create it or pass --db",
        )
    assert not missing.parent.exists()


@pytest.mark.parametrize("command", [["work", "--until-done"], ["retry"]])
def test_a_misspelled_db_creates_no_file_before_refusing(tmp_path, command):
    typo = tmp_path / "egoqq.db"
    p = InProcess(typo, tmp_path)(*command, check=False)
    error_line(p, f"no database at {typo}: run `egoqa enqueue` first or pass --db")
    assert os.listdir(tmp_path) == []


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
    odd = InProcess(path, tmp_path)
    for args in (["status"], ["db", "current"]) if target == "not-a-db.txt" else (["status"],):
        error_line(odd(*args, check=False), message)
    assert (tmp_path / "not-a-db.txt").read_text() == "hello\n"


def test_a_postgres_connection_error_never_shows_the_password(tmp_path):
    from pg import free_port

    url = f"postgresql+psycopg://egoqa:s3cret-pw@127.0.0.1:{free_port()}/egoqa"
    for args in (["status"], ["db", "current"], ["work"]):
        p = InProcess(url, tmp_path)(*args, check=False)
        error_line(p, "cannot open postgresql+psycopg://egoqa:***@127.0.0.1:")
        assert "s3cret-pw" not in p.stderr + p.stdout
    p = InProcess("postgresql://egoqa:s3cret-pw@[::1", tmp_path)("status", check=False)
    assert "s3cret-pw" not in p.stderr and p.returncode == 1


@pytest.mark.parametrize("url", ["mysql://me:s3cret@localhost/egoqa", "mariadb://db/egoqa"])
def test_a_mysql_url_says_only_sqlite_and_postgresql_are_supported(tmp_path, url):
    p = InProcess(url, tmp_path)("status", check=False)
    error_line(p, "only SQLite and PostgreSQL are supported")
    assert "pip install" not in p.stderr and "s3cret" not in p.stderr


# === enqueue: annotation files — whole-file problems fail, single records are skipped ===========


def test_an_annotation_file_that_is_not_json_is_refused(egoqa, db, pristine, tmp_path):
    before = snapshot(db)
    bad = tmp_path / "nlq_val.json"
    bad.write_text('{"videos": [')
    error_line(
        egoqa(*enqueue(with_annotations(pristine, bad)), check=False),
        f"annotation file {bad} is not valid JSON (line 1",
        "re-download or fix the file",
    )
    assert snapshot(db) == before


@pytest.mark.parametrize("content", [[{"video_uid": "v"}], {"version": "v2", "clips": []}])
def test_json_of_the_wrong_shape_is_refused(egoqa, db, pristine, tmp_path, content):
    before = snapshot(db)
    bad = tmp_path / "nlq_val.json"
    bad.write_text(json.dumps(content))
    error_line(
        egoqa(*enqueue(with_annotations(pristine, bad)), check=False),
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
    return with_annotations(pristine, path)


def assert_skipped_and_rest_enqueued(egoqa, db, data, reason: str, detail: str) -> None:
    before = done(db)
    p = succeeded(egoqa(*enqueue(data), check=False))
    assert f"run demo: 3 queries on 3 clips (skipped: {reason} 1)" in p.stdout
    where = r"\(clip [\w-]+, annotation [\w-]+, query \d+\)"  # the record, to find it
    assert re.search(rf"skipped {reason} {where}: {re.escape(detail)}", p.stderr), p.stderr
    assert rows(db, "SELECT COUNT(*) FROM run_items") == [(3,)]
    assert done(db) == before


def test_a_query_without_text_is_skipped_with_its_reason_and_the_rest_enqueued(
    egoqa, db, pristine, tmp_path
):
    data = with_one_bad_query(pristine, tmp_path, lambda q: q.pop("query"))
    assert_skipped_and_rest_enqueued(
        egoqa, db, data, "no_query_text", "language query has no query text"
    )


def test_an_inverted_window_is_skipped_and_reported(egoqa, db, pristine, tmp_path):
    def invert(q: dict) -> None:
        q["clip_start_sec"], q["clip_end_sec"] = 4.0, 1.0

    data = with_one_bad_query(pristine, tmp_path, invert)
    assert_skipped_and_rest_enqueued(
        egoqa, db, data, "inverted_window", "answer window 4.00 s .. 1.00 s ends before it starts"
    )


def test_a_window_outside_the_clip_is_skipped_and_reported(egoqa, db, pristine, tmp_path):
    def overrun(q: dict) -> None:
        q["clip_start_sec"], q["clip_end_sec"] = 5.0, 11.0

    data = with_one_bad_query(pristine, tmp_path, overrun)
    assert_skipped_and_rest_enqueued(
        egoqa,
        db,
        data,
        "window_outside_clip",
        "answer window 5.00 s .. 11.00 s is outside the 6.00 s clip",
    )


def with_first_clip(data: SynthPaths, tmp_path: Path, key: str, raw: str) -> SynthPaths:
    """The annotation file with a second query on the first clip (a copy of its first) and that
    clip's `key` written as the JSON text `raw`."""
    doc = json.loads(data.annotations.read_text())
    clip = doc["videos"][0]["clips"][0]
    queries = clip["annotations"][0]["language_queries"]
    queries.append({**queries[0], "query": "Where else was it?"})
    clip[key] = "@@"
    path = tmp_path / "nlq_val.json"
    path.write_text(json.dumps(doc).replace('"@@"', raw))
    return with_annotations(data, path)


@pytest.mark.parametrize(
    "key, raw, what",
    [
        ("clip_end_sec", "1" + "0" * 400, "too large a number"),
        ("clip_end_sec", "1e308", "1e+308 s, past any video's length"),
        ("clip_start_sec", "-5", "negative"),
        ("video_start_sec", "-5", "negative"),
    ],
)
def test_broken_clip_times_skip_the_clip_naming_the_field(
    egoqa, pristine, tmp_path, key, raw, what
):
    data = with_first_clip(pristine, tmp_path, key, raw)
    out = egoqa(*enqueue(data, config="baseline"), check=False)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    # both queries of the first clip are skipped, the other two clips' queries enqueued
    assert "2 queries on 2 clips (skipped: bad_time 2)" in out.stdout
    skipped = egoqa.json("sql", "SELECT reason, detail FROM skipped_records")
    assert [r["reason"] for r in skipped] == ["bad_time"] * 2
    assert all(f"{key} is {what}" in r["detail"] for r in skipped), skipped


# === enqueue: video files =======================================================================


def test_a_missing_videos_directory_is_refused(egoqa, db, pristine, tmp_path):
    before = snapshot(db)
    nowhere = tmp_path / "no-videos"
    data = SynthPaths(pristine.root, pristine.annotations, nowhere, pristine.metadata)
    error_line(
        egoqa(*enqueue(data), check=False),
        f"videos folder {nowhere} does not exist",
        "pass the folder holding <clip_uid>.mp4",
    )
    assert snapshot(db) == before


def videos_with_first(data: SynthPaths, tmp_path: Path, make) -> tuple[Path, str]:
    """A copy of the videos where the first clip's file is replaced by what `make` puts there."""
    videos = tmp_path / "videos"
    shutil.copytree(data.videos, videos)
    doc = json.loads(data.annotations.read_text())
    name = doc["videos"][0]["clips"][0]["clip_uid"] + ".mp4"
    (videos / name).unlink()
    make(videos / name)
    return videos, name


@pytest.mark.parametrize(
    "make, problem",
    [
        (Path.mkdir, "is a folder, not a video file"),
        (lambda p: p.symlink_to(p.name), "cannot be opened (Too many levels of symbolic links)"),
        (lambda p: p.symlink_to("gone.mp4"), "is a broken symbolic link"),
    ],
    ids=["folder", "symlink-loop", "broken-symlink"],
)
def test_a_video_path_that_is_not_a_file_skips_its_clip_and_names_it(
    egoqa, pristine, tmp_path, make, problem
):
    videos, name = videos_with_first(pristine, tmp_path, make)
    data = SynthPaths(pristine.root, pristine.annotations, videos, pristine.metadata)
    p = egoqa(*enqueue(data, config="baseline"), check=False)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "run baseline: 2 queries on 2 clips (skipped: bad_video 1)" in p.stdout
    assert f"skipped bad_video (clip {name[:-4]}, " in p.stderr
    assert f"{videos / name} {problem}: replace it with the video file" in p.stderr


# === enqueue: configuration and prompt styles ===================================================


def test_an_unknown_prompt_style_lists_the_available_ones(egoqa, db, pristine, tmp_path):
    before = snapshot(db)
    available = ", ".join(style_names())
    p = egoqa(*enqueue(pristine, "--set", "style=nope"), check=False)
    error_line(p, "unknown prompt style 'nope'", f"use one of {available}")
    missing = tmp_path / "mine.toml"
    p = egoqa(*enqueue(pristine, "--set", f"style={json.dumps(str(missing))}"), check=False)
    error_line(p, f"style file {missing} does not exist", f"use one of {available}")
    assert snapshot(db) == before


def test_a_style_path_that_is_a_folder_says_so(egoqa, pristine, tmp_path):
    folder = tmp_path / "styles"
    folder.mkdir()
    setting = f"style={json.dumps(str(folder))}"
    p = egoqa(*enqueue(pristine, "--set", setting, config="baseline"), check=False)
    error_line(p, f"prompt style file {folder} is a folder, not a TOML file")


def style(tmp_path: Path, template: str) -> str:
    path = tmp_path / "mine.toml"
    body = {"name": "a", "reads_query": True, "graded": True, "template": template}
    lines = [f"{k} = {json.dumps(v)}" for k, v in body.items()]
    path.write_text('name = "mine"\n[[turns]]\n' + "\n".join(lines) + "\n")
    return f"style={json.dumps(str(path))}"


@pytest.mark.parametrize(
    "template, message",
    [
        ("Answer {query", "template has an unbalanced brace (expected '}' before end of string)"),
        ("Answer } {query}", "template has an unbalanced brace (Single '}' encountered"),
        ('Reply as {"start": 1} for {query}', 'template holds {"start": 1}, which is not a field'),
        ("{query} in {}", "template holds {}, which is not a field"),
        ("{query!x}", "template cannot be filled in (Unknown conversion specifier x)"),
    ],
)
def test_a_style_template_with_stray_braces_says_to_escape_them(
    egoqa, pristine, tmp_path, template, message
):
    setting = style(tmp_path, template)
    p = egoqa(*enqueue(pristine, "--set", setting, config="baseline"), check=False)
    error_line(p, message, "write a literal brace as {{ or }}")
    assert not (tmp_path / "egoqa.db").exists()


def shots_style(tmp_path: Path, window: str) -> Path:
    text = (resources.files("egoqa.plan") / "styles" / "coarse_cot_shots.toml").read_text()
    path = tmp_path / f"zoom_{window.strip('+-')}.toml"
    path.write_text(text.replace("window_sec = 20", f"window_sec = {window}"))
    return path


@pytest.mark.parametrize("window", ["nan", "inf", "+inf"])
def test_a_style_with_a_non_finite_zoom_window_is_refused(egoqa, pristine, tmp_path, window):
    setting = f"style={shots_style(tmp_path, window)}"
    p = egoqa(*enqueue(pristine, "--set", setting, config="baseline"), check=False)
    error_line(p, "repeat_until.window_sec", "not a finite number")
    assert not (tmp_path / "egoqa.db").exists()  # refused before a database is made


def test_an_unknown_config_key_suggests_the_keys_near_it(egoqa, db, pristine, tmp_path):
    before = snapshot(db)
    p = egoqa(*enqueue(pristine, "--set", "sampler.frame=3"), check=False)
    error_line(p, "--set: unknown key 'sampler.frame'; did you mean sampler.frames?")
    toml = tmp_path / "mine.toml"
    toml.write_text('model = "m"\nbackend = "fake"\n[sampler]\nframe = 3\n')
    p = egoqa(*enqueue(pristine, config=str(toml), fake=False), check=False)
    error_line(p, f"{toml}: unknown key 'sampler.frame' (did you mean sampler.frames?)")
    assert snapshot(db) == before


def test_a_config_value_of_the_wrong_type_names_the_key(egoqa, db, pristine, tmp_path):
    before = snapshot(db)
    toml = tmp_path / "mine.toml"
    toml.write_text('model = "m"\nbackend = "fake"\n[sampler]\nframes = "many"\n')
    p = egoqa(*enqueue(pristine, config=str(toml), fake=False), check=False)
    error_line(p, f"{toml}: sampler.frames: Input should be a valid integer")
    assert snapshot(db) == before


def test_a_config_file_that_is_not_utf8_is_refused(egoqa, db, pristine, tmp_path):
    before = snapshot(db)
    toml = tmp_path / "mine.toml"
    toml.write_bytes(b'model = "\xff\xfe"\n')
    p = egoqa(*enqueue(pristine, config=str(toml), fake=False), check=False)
    error_line(p, f"config file {toml} cannot be read", "save it as UTF-8 TOML")
    assert snapshot(db) == before


@pytest.mark.parametrize(
    "assignment", ["batch.per_sample_gb=inf", "batch.gb_per_1k_visual_tokens=inf"]
)
def test_set_refuses_non_finite_numbers(egoqa, pristine, assignment):
    p = egoqa(*enqueue(pristine, "--set", assignment, config="baseline"), check=False)
    error_line(p, assignment.split("=")[0], "not a finite number")


def test_a_config_file_with_a_non_finite_number_is_refused(egoqa, pristine, tmp_path):
    preset = (resources.files("egoqa.plan") / "presets" / "baseline.toml").read_text()
    path = tmp_path / "mine.toml"
    path.write_text(preset + "\n[batch]\nper_sample_gb = inf\n")
    p = egoqa(*enqueue(pristine, config=str(path)), check=False)
    error_line(p, "batch.per_sample_gb", "not a finite number")


# === work: videos that go bad after enqueue — only their jobs fail ==============================


def break_a_video_after_enqueue(egoqa, db, pristine, tmp_path, damage) -> list:
    """With clip 1 done, plan clips 2 and 3 from a copy of the videos, then damage clip 2's."""
    before = done(db)
    egoqa(*enqueue(fresh_dataset(pristine, tmp_path)))  # identities are read now: damage after
    damage(video_of(db, 2))
    return before


def assert_only_clip_2_failed(db_path: Path, before: list, kind: str) -> None:
    kinds = kinds_by_clip(db_path)
    assert kinds[1] == {"done"} and kinds[3] == {"done"}, kinds
    assert kind in kinds[2] and kinds[2] <= {kind, "upstream"}, kinds
    assert set(before) <= set(done(db_path))


def test_a_video_deleted_after_enqueue_fails_only_its_jobs_as_video_missing(
    egoqa, db, pristine, tmp_path
):
    before = break_a_video_after_enqueue(egoqa, db, pristine, tmp_path, Path.unlink)
    p = succeeded(egoqa("work", "--until-done", check=False))
    assert re.search(
        r"video_missing: video file .*\.mp4 does not exist; check the videos", p.stderr
    )
    assert_only_clip_2_failed(db, before, "video_missing")


def test_a_video_overwritten_with_random_bytes_fails_only_its_jobs_as_unreadable(
    egoqa, db, pristine, tmp_path
):
    def corrupt(path: Path) -> None:
        path.write_bytes(random.Random(0).randbytes(path.stat().st_size))

    before = break_a_video_after_enqueue(egoqa, db, pristine, tmp_path, corrupt)
    p = succeeded(egoqa("work", "--until-done", check=False))
    assert re.search(r"video_unreadable: video file .*\.mp4 is unreadable: .*re-download", p.stderr)
    assert_only_clip_2_failed(db, before, "video_unreadable")


def test_a_video_truncated_to_zero_bytes_fails_only_its_jobs(egoqa, db, pristine, tmp_path):
    damage = lambda p: p.write_bytes(b"")  # noqa: E731
    before = break_a_video_after_enqueue(egoqa, db, pristine, tmp_path, damage)
    p = succeeded(egoqa("work", "--until-done", check=False))
    assert "is empty (0 bytes); re-download or re-extract it" in p.stderr
    assert_only_clip_2_failed(db, before, "video_unreadable")


def test_a_video_that_became_a_symlink_loop_fails_as_unreadable_not_as_a_bug(tmp_path):
    from egoqa.errors import VideoError
    from egoqa.media.frames import FrameDecoder

    loop = tmp_path / "clip.mp4"
    loop.symlink_to(loop.name)  # what the worker meets when the file is replaced after enqueue
    with pytest.raises(VideoError, match="cannot be opened .Too many levels") as err:
        FrameDecoder().frames(loop, 0.0, [1.0], 112, 4.0)
    assert err.value.kind == "video_unreadable"  # its jobs fail as such; the worker goes on


# === work: a model that cannot load — the worker stops at once, jobs stay ready =================

MISSING_MODEL = "model path /nonexistent/egoqa-model does not exist; pass an existing checkpoint"


def enqueue_missing_model(egoqa, db, pristine) -> dict:
    missing = ("--set", "model=/nonexistent/egoqa-model", "--run", "broken")
    egoqa(*enqueue(pristine, *missing, fake=False))
    return snapshot(db)


def test_a_model_path_that_does_not_exist_stops_the_worker_with_one_line(egoqa, db, pristine):
    before = enqueue_missing_model(egoqa, db, pristine)
    p = egoqa("work", "--until-done", check=False)
    error_line(p, MISSING_MODEL)
    assert snapshot(db) == before  # the broken run's jobs are still ready; nothing lost
    assert ("ready",) in rows(db, "SELECT DISTINCT state FROM jobs")


@pytest.mark.slow
def test_the_supervisor_does_not_restart_workers_that_cannot_load_the_model(
    egoqa, db, pristine, tmp_path
):
    before = enqueue_missing_model(egoqa, db, pristine)
    supervisor = Cli(db, tmp_path)  # a process of its own: it starts worker processes
    p = supervisor("work", "--workers", "2", "--device", "cpu", "--until-done", check=False)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3, p.stderr  # one per child, one from the supervisor
    assert all(MISSING_MODEL in e for e in errors[:2]), errors
    assert errors[2].startswith("error: 2 of 2 worker(s) gave up (their errors are above)")
    assert "run `egoqa work` again; finished jobs are kept" in errors[2]
    assert "restarting in" not in p.stderr
    assert snapshot(db) == before


# === work: devices, GPUs and batch sizes — refused before a worker starts =======================


@pytest.mark.skipif("has_cuda()", reason="this machine has CUDA: nothing to refuse")
@pytest.mark.parametrize(
    "args, asked",
    [
        (["--gpus", "0-7"], "--gpus 0-7 asks for a CUDA GPU, but this machine has none"),
        (["--device", "cuda"], "--device cuda asks for a CUDA GPU, but this machine has none"),
        (["--device", "cuda", "--workers", "2"], "--device cuda --workers 2 asks for a CUDA GPU"),
    ],
)
def test_gpus_on_a_machine_without_cuda_are_refused_before_any_worker_starts(
    egoqa, pending, empty_db, tmp_path, args, asked
):
    before = state(pending)
    copy_db(empty_db, tmp_path / "empty.db")
    empty = InProcess(tmp_path / "empty.db", tmp_path)
    for cli in (egoqa, empty):  # jobs pending, and none: nothing to do is no excuse for a bad flag
        p = cli("work", "--until-done", *args, check=False)
        error_line(p, asked, "run on the CPU with --device cpu --workers N")
    assert state(pending) == before


def test_gpu_device_files_are_counted_and_too_few_are_refused(tmp_path):
    from egoqa.work.devices import device_file_count, require_gpus

    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-modeset"):
        (tmp_path / name).touch()
    assert device_file_count(tmp_path) == 2
    require_gpus("--gpus 0-1", 2, dev=tmp_path)  # enough: no torch asked, nothing raised
    if has_cuda():
        pytest.skip("torch sees this machine's own GPUs beside the two files")
    with pytest.raises(ConfigError, match=r"only 2 are visible \(ids 0-1\): ask for those"):
        require_gpus("--gpus 0-3", 4, dev=tmp_path)


@pytest.mark.parametrize("size", ["0", "-3", "00", "99999999999999999999"])
def test_a_batch_size_that_is_not_positive_or_too_large_is_refused_even_with_nothing_pending(
    pending, empty_db, tmp_path, size
):
    before = state(pending)
    copy_db(empty_db, tmp_path / "empty.db")
    for target in (pending, tmp_path / "empty.db"):
        p = InProcess(target, tmp_path)("work", "--until-done", "--batch-size", size, check=False)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert "--batch-size takes 'auto' or a positive number (at most 4096" in p.stderr
    assert state(pending) == before  # nothing claimed, nothing lost


def test_a_device_that_does_not_exist_is_refused(egoqa, pending):
    before = state(pending)
    for device in ("foo", "cuda:x", "gpu"):
        p = egoqa("work", "--device", device, check=False)
        error_line(p, f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N")
    p = egoqa("work", "--gpus", "0", "--device", "cpu", check=False)
    error_line(p, "--gpus 0 and --device cpu contradict each other")
    assert state(pending) == before


# === work: a full disk ==========================================================================


def test_a_full_disk_while_writing_results_stops_the_worker_and_loses_nothing(egoqa, db, pristine):
    egoqa(*enqueue(pristine))
    before = done(db)
    pages = rows(db, "PRAGMA page_count")[0][0]
    full = {"EGOQA_SQLITE_MAX_PAGE_COUNT": str(pages)}  # the file may not grow: SQLITE_FULL
    p = egoqa("work", "--until-done", check=False, env=full)
    error_line(
        p,
        f"cannot write to sqlite:///{db} (database or disk is full): free disk space",
        "work already written is safe",
        only=False,
    )
    assert set(before) <= set(done(db))  # nothing written before is lost (writes that fit in
    # the file's free pages may still land)
    assert rows(db, "SELECT COUNT(*) FROM jobs WHERE state = 'running'") == [(0,)]  # released
    succeeded(egoqa("work", "--until-done", check=False))
    assert rows(db, "SELECT DISTINCT state FROM jobs") == [("done",)]
    assert set(before) <= set(done(db))


# === sql ========================================================================================


def test_writes_through_egoqa_sql_are_refused_by_the_database(egoqa, db, tmp_path):
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
        error_line(egoqa("sql", stmt, check=False), message)
    assert not attached.exists()
    assert rows(db, "PRAGMA user_version") == [(0,)]
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    assert snapshot(db) == before


# === report, export, cluster: where output goes, and options out of range =======================


def test_report_out_that_cannot_be_a_folder_is_one_line(egoqa, pending, tmp_path):
    existing = tmp_path / "report.txt"
    existing.write_text("keep me\n")
    error_line(
        egoqa("report", "--run", "demo", "--out", existing, check=False),
        f"--out {existing} is a file, not a folder",
    )
    assert existing.read_text() == "keep me\n"
    error_line(
        egoqa("report", "--run", "demo", "--out", "/proc/x", check=False),
        "cannot create --out folder /proc/x: ",
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        error_line(
            egoqa("report", "--run", "demo", "--out", locked / "report", check=False),
            f"cannot create --out folder {locked / 'report'}: ",
        )
        error_line(
            egoqa("report", "--run", "demo", "--out", locked, check=False),
            f"cannot write --out {locked / 'results.json'}: ",
        )


def test_report_html_into_a_place_that_cannot_hold_files_is_one_line(egoqa, pristine):
    egoqa(*enqueue(pristine, config="prior:whole_clip", fake=False))
    p = egoqa("report", "--run", "prior:whole_clip", "--html", "/proc/x", check=False)
    error_line(p, "--html", "/proc/x", "choose an existing folder")


def test_export_output_that_cannot_be_written_is_one_line_and_keeps_the_old_file(
    egoqa, pending, tmp_path
):
    error_line(
        egoqa("export", "--run", "demo", "-o", tmp_path, check=False),
        f"-o {tmp_path} is a folder: name a file in it",
    )
    missing = tmp_path / "nope" / "preds.json"
    error_line(
        egoqa("export", "--run", "demo", "-o", missing, check=False),
        f"the folder {missing.parent} does not exist: create it first",
    )
    error_line(
        egoqa("export", "--run", "demo", "-o", "/dev/full", check=False),
        "cannot write -o /dev/full: the device is full: free space or choose another place",
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    old = locked / "preds.json"
    old.write_text("the previous predictions\n")
    with read_only(locked, old):
        error_line(
            egoqa("export", "--run", "demo", "-o", old, check=False), f"cannot write -o {old}: "
        )
    assert old.read_text() == "the previous predictions\n"
    assert not missing.parent.exists()


@pytest.mark.parametrize("seed", ["-5", "4294967296"])
def test_cluster_refuses_a_seed_k_means_cannot_take(egoqa, pristine, seed):
    egoqa(*enqueue(pristine, config="prior:whole_clip", fake=False))
    p = egoqa("cluster", "--run", "prior:whole_clip", "--seed", seed, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "--seed" in p.stderr
