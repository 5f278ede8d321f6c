"""`egoqa sql` stops a statement that would run forever: Ctrl-C cancels it (exit 130) and
`--timeout` does too (exit 1), on SQLite and on PostgreSQL, with the real command in a
subprocess running a real endless recursive query."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pytest
from inproc import InProcess

from egoqa.store.db import open_db
from egoqa.store.sqlrole import ensure_reader

from pg import migrated_postgres_url, postgres_server, postgres_url  # noqa: F401 -- fixtures

# Counts an endless recursion: no row ever comes back, and memory stays flat.
ENDLESS = "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n FROM r) SELECT COUNT(*) AS n FROM r"
MARKER = "running the statement"  # logged (with -v) just before the statement starts


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    """An empty egoqa database (at the schema's head): a SQLite file, or a fresh database on the
    test server, with the read-only role `sql` runs as there."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("migrated_db_path"))
    target = request.getfixturevalue("migrated_postgres_url")
    db = open_db(target)
    ensure_reader(db)  # what the first enqueue (or `egoqa db upgrade`) makes
    db.dispose()
    return target


def one_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


class Lines:
    """A process's stderr, read line by line on a side thread (so a process that never prints
    what the test waits for fails the test instead of hanging it)."""

    def __init__(self, stream) -> None:
        self.lines: list[str] = []
        self.new = threading.Condition()
        self.reader = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.reader.start()

    def _read(self, stream) -> None:
        for line in stream:
            with self.new:
                self.lines.append(line)
                self.new.notify_all()

    def wait_for(self, needle: str, timeout: float) -> None:
        with self.new:
            if not self.new.wait_for(lambda: any(needle in x for x in self.lines), timeout):
                raise AssertionError(f"no {needle!r} within {timeout}s: {''.join(self.lines)}")

    def text(self) -> str:
        self.reader.join(timeout=10)
        return "".join(self.lines)


def test_ctrl_c_cancels_an_endless_statement_and_exits_130(url, tmp_path):
    cmd = [sys.executable, "-m", "egoqa", "--db", url, "-v", "sql", ENDLESS]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    try:
        stderr = Lines(proc.stderr)
        stderr.wait_for(MARKER, 60)  # the statement has started: a step, not a guessed sleep
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    text = stderr.text()
    assert code == 130, text
    assert one_error(text) == "error: interrupted: the statement was cancelled; nothing was changed"


def test_timeout_cancels_an_endless_statement_with_one_line(url, tmp_path):
    egoqa = InProcess(url, tmp_path)  # the same entry point; no signal involved here
    assert egoqa.json("sql", "--timeout", "30", "SELECT COUNT(*) AS n FROM jobs") == [{"n": 0}]
    p = egoqa("sql", "--timeout", "0.5", ENDLESS, check=False)
    assert p.returncode == 1, p.stderr
    line = one_error(p.stderr)
    assert line.startswith("error: the statement ran longer than --timeout 0.5 s and was cancelled")
    assert "narrow it (WHERE, LIMIT) or give it more time" in line


def test_ctrl_c_as_the_statement_starts_still_cancels_and_says_so(url, tmp_path, monkeypatch):
    """Ctrl-C arriving as the statement's thread starts (a busy machine can hold the main
    thread there while the statement begins) is acted on like any other."""
    from egoqa.store import statement

    real_start = threading.Thread.start

    def start_then_ctrl_c(self):
        real_start(self)
        if self.name == "egoqa-sql":
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # bytecodes for the handler to run on, inside start()
                pass

    monkeypatch.setattr(statement.threading.Thread, "start", start_then_ctrl_c)
    p = InProcess(url, tmp_path)("sql", ENDLESS, check=False)
    assert p.returncode == 130, p.stderr
    assert (
        one_error(p.stderr)
        == "error: interrupted: the statement was cancelled; nothing was changed"
    )
