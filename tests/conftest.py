"""Shared fixtures: real SQLite files, the synthetic dataset, the tiny model, the real CLI."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from egoqa.dev.synth import SynthPaths, write_synth_dataset

ROOT = Path(__file__).resolve().parent.parent

# Under `pytest -n N` each test process gets its share of the cores for torch, and so do the
# worker processes it starts (they inherit the variable): N processes each running as many
# threads as there are cores slowed the tiny model's tests several times over on 2 cores. Set
# before anything imports torch (conftest is imported before the test modules).
_TEST_PROCESSES = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _TEST_PROCESSES > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _TEST_PROCESSES)))


@pytest.fixture(scope="session")
def synth(tmp_path_factory) -> SynthPaths:
    """4 clips × 3 queries of 24 s, plus the bad records real files contain (quirks)."""
    return write_synth_dataset(
        tmp_path_factory.mktemp("synth"), clips=4, queries_per_clip=3, quirks=True
    )


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from egoqa.dev.tinymodel import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("model") / "tiny-qwen2.5-vl")


def copy_db(src: Path, dst: Path) -> None:
    """A consistent copy of a SQLite database, WAL included (the backup API)."""
    with sqlite3.connect(src) as a, sqlite3.connect(dst) as b:
        a.backup(b)
    a.close()
    b.close()


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "egoqa.db"


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory) -> Path:
    """A SQLite database migrated to head once per session, for `migrated_db_path` to copy."""
    from egoqa.store.db import open_db

    path = tmp_path_factory.mktemp("template") / "migrated.db"
    open_db(path, create=True).dispose()
    return path


@pytest.fixture
def migrated_db_path(db_path, migrated_template) -> Path:
    """`db_path`, holding a fresh database at the schema's head: a copy of the session's
    migrated one, which every command takes as up to date (a test about migrating itself
    starts from `db_path`, where no database exists)."""
    copy_db(migrated_template, db_path)
    return db_path


# --- the store's two backends: the contract tests run once on each ---------------------------
# A module that takes `url` or `db` imports the PostgreSQL fixtures too:
# `from pg import migrated_postgres_url, postgres_server, postgres_url`.

STORE_BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request) -> str:
    return request.param


@pytest.fixture
def url(store_backend, request, tmp_path) -> str:
    """An empty database (no schema yet), on a SQLite file and on the session's PostgreSQL
    server: for tests that migrate, or that see what a first command makes of it."""
    assert "db" not in request.fixturenames, "with `db`, open `db.url`: `url` is another database"
    if store_backend == "sqlite":
        from egoqa.store.db import resolve_url

        return resolve_url(tmp_path / "egoqa.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def db(store_backend, request):
    """A fresh database at the schema's head, on each backend (a copy of a template migrated
    once per session); a second handle on it opens `db.url`."""
    from egoqa.store.db import open_db

    if store_backend == "sqlite":
        target = str(request.getfixturevalue("migrated_db_path"))
    else:
        target = request.getfixturevalue("migrated_postgres_url")
    handle = open_db(target)
    yield handle
    handle.dispose()


# The workers' and supervisor's fixed waits (`egoqa.work.waits`), short: a test that waits for a
# worker to go idle, to notice the end of the queue, to free a dead worker's jobs or to be
# restarted pays a fraction of the defaults (2 s idle back-off, 5 s between reaps, 5 s before
# saying whose leases it waits on, 1 s supervisor tick). The heartbeat keeps its default unless a
# test is about heartbeats.
SHORT_WAITS = {
    "EGOQA_IDLE_MAX_S": "0.1",
    "EGOQA_REAP_S": "0.5",
    "EGOQA_WAIT_NOTE_S": "0.5",
    "EGOQA_SUPERVISOR_TICK_S": "0.1",
}


@pytest.fixture
def short_waits(monkeypatch) -> dict[str, str]:
    """`SHORT_WAITS` in this test's environment: for workers in this process and in the
    processes it starts."""
    for name, value in SHORT_WAITS.items():
        monkeypatch.setenv(name, value)
    return SHORT_WAITS


class Cli:
    """Runs the real `egoqa` command in a subprocess against one database."""

    def __init__(self, db: Path | str, cwd: Path) -> None:
        self.db, self.cwd = str(db), cwd

    def __call__(
        self,
        *args: str,
        check: bool = True,
        timeout: float = 300,
        env: dict | None = None,
        db: bool = True,
    ) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "egoqa", *(["--db", self.db] if db else []), *map(str, args)]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.run(
            cmd, cwd=self.cwd, capture_output=True, text=True, timeout=timeout, env=full_env
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
            )
        return proc

    def json(self, *args: str, **kw):
        return json.loads(self(*args, "--json", **kw).stdout)

    def popen(self, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "egoqa", "--db", self.db, *map(str, args)]
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        return subprocess.Popen(
            cmd,
            cwd=self.cwd,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )


@pytest.fixture
def cli(db_path, tmp_path) -> Cli:
    return Cli(db_path, tmp_path)


def enqueue_args(synth: SynthPaths, config: str = "demo", *extra: str) -> list[str]:
    return [
        "enqueue",
        "--annotations",
        str(synth.annotations),
        "--videos",
        str(synth.videos),
        "--config",
        config,
        *extra,
    ]


def pytest_collection_modifyitems(items) -> None:
    """Every test that uses the tiny model (directly or through another fixture) is marked
    `model`, so `-m model` / `-m "not model"` select exactly the tests on the real transformers
    path. The `slow` tests run first: under `-n 2` the test processes take tests as they finish
    the last, and a long test taken last leaves the other process idle until it ends."""
    for item in items:
        if "tiny_model" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.model)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
