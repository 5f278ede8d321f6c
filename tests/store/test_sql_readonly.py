"""`egoqa sql` on PostgreSQL cannot write or reach outside the database, whatever role the URL names.

The URL here names the test server's superuser, the worst case: as that role `COPY ... TO PROGRAM`
runs a shell command. `egoqa sql` must run as the read-only role `egoqa db upgrade` created.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.errors import EgoqaError, ReadOnlyViolation
from egoqa.store.db import open_db
from egoqa.store.read import read_only_sql
from egoqa.store.sqlrole import open_sql_db, reader_name

from pg import migrated_postgres_url, postgres_server  # noqa: F401 -- fixtures

pytestmark = pytest.mark.postgres


def egoqa(url: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `egoqa` command, in this process (no signal or process of its own matters)."""
    return InProcess(url, Path.cwd())(*args, env=env, check=False)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def fingerprint(url: str) -> tuple:
    db = open_db(url)
    with db.read() as cur:
        out = (
            cur.all("SELECT name, config_hash FROM runs ORDER BY id"),
            cur.one("SELECT COUNT(*) FROM jobs"),
            cur.one("SELECT current_setting('log_min_messages')"),
        )
    db.dispose()
    return out


@pytest.fixture
def upgraded(migrated_postgres_url) -> str:  # noqa: F811
    """A database at the schema's head (a copy) after `egoqa db upgrade` made its reader."""
    url = migrated_postgres_url
    proc = egoqa(url, "db", "upgrade")
    assert proc.returncode == 0, proc.stderr
    assert "read-only role egoqa_sql_" in proc.stdout
    db = open_db(url)
    with db.write() as cur:
        cur.execute(
            """INSERT INTO runs (name, config, config_hash, style, graded_turn, provenance,
                                 created_at) VALUES ('r', '{}', 'h', '{}', 'g', '{}', 0)"""
        )
    db.dispose()
    return url


def test_sql_runs_as_the_read_only_role_not_as_the_urls_superuser(upgraded):
    out = egoqa(upgraded, "sql", "SELECT current_user AS who, session_user AS s", "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["who"] == row["s"] and re.fullmatch(r"egoqa_sql_\w+", row["who"])
    names = json.loads(egoqa(upgraded, "sql", "SELECT name FROM runs", "--json").stdout)
    assert names == [{"name": "r"}]


def _hostile(target: Path, superuser: str) -> list[str]:
    return [
        f"COPY (SELECT 1) TO PROGRAM 'touch {target}.program'",
        f"COPY (SELECT 1) TO '{target}.copy'",
        "SELECT pg_read_file('/etc/hostname')",
        "SELECT pg_ls_dir('.')",
        f"SELECT lo_export(lo_from_bytea(0, 'x'::bytea), '{target}.lo')",
        f"SELECT set_config('role', '{superuser}', false)",
        f"SET ROLE {superuser}",
        f"SET SESSION AUTHORIZATION {superuser}",
        "WITH gone AS (DELETE FROM runs RETURNING 1) SELECT count(*) FROM gone",
        "SELECT 1; DELETE FROM runs",
        "SELECT pg_reload_conf()",
        "ALTER SYSTEM SET log_min_messages = 'debug5'",
        "SELECT password FROM sql_readers",
        "CREATE TABLE planted (x int)",
        "SET TRANSACTION READ WRITE; DELETE FROM runs",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
    ]


def test_hostile_statements_are_refused_and_change_nothing(upgraded, postgres_server):  # noqa: F811
    before = fingerprint(upgraded)
    target = Path(tempfile.mkdtemp(prefix="egoqa-sql-")) / "pwned"
    os.chmod(target.parent, 0o777)  # the server's OS user could write here, were it allowed to
    # What `egoqa sql` does, in this process (the CLI path is the test above and below).
    handle = open_sql_db(open_db(upgraded, readonly=True))
    allowed = []
    for stmt in _hostile(target, "postgres"):
        try:
            read_only_sql(handle, stmt)
            allowed.append(stmt)
        except EgoqaError as exc:
            assert "\n" not in str(exc)
        # whatever the statement did, the same handle still cannot write
        with pytest.raises(ReadOnlyViolation):
            read_only_sql(handle, "DELETE FROM runs")
    handle.dispose()
    assert list(target.parent.iterdir()) == [], "a statement reached the server's files"
    # only a no-op may succeed: a session setting that the statement's rollback undoes
    assert allowed <= ["SELECT set_config('default_transaction_read_only', 'off', false)"]
    assert fingerprint(upgraded) == before
    line = one_error_line(egoqa(upgraded, "sql", f"COPY (SELECT 1) TO PROGRAM 'touch {target}'"))
    assert "permission denied" in line or "must be superuser" in line
    assert not target.exists()


def test_reset_role_cannot_climb_back_to_the_urls_role(upgraded):
    # The role logs in as itself (no SET ROLE to undo): a reset is accepted and changes nothing,
    # within its statement (set_config is what RESET ROLE does) or after it.
    for stmt in ("RESET ROLE", "RESET SESSION AUTHORIZATION"):
        reset = egoqa(upgraded, "sql", stmt)
        assert (reset.returncode, reset.stderr) == (0, ""), reset.stderr
    same = "SELECT set_config('role', 'none', false) AS r, current_user AS u, session_user AS s"
    out = egoqa(upgraded, "sql", same, "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    assert row["u"].startswith("egoqa_sql_") and row["s"] == row["u"], row
    out = egoqa(upgraded, "sql", "SELECT current_user AS u", "--json")
    assert json.loads(out.stdout)[0]["u"].startswith("egoqa_sql_")


def test_sql_refuses_in_one_line_when_no_read_only_role_can_be_made(postgres_server):  # noqa: F811
    name = f"egoqa_nocreate_{os.getpid()}"
    postgres_server.admin(f"CREATE ROLE {name} LOGIN")
    postgres_server.admin(f'CREATE DATABASE "{name}" OWNER {name}')
    try:
        url = f"postgresql+psycopg://{name}@127.0.0.1:{postgres_server.port}/{name}"
        up = egoqa(url, "db", "upgrade")
        assert up.returncode == 0, up.stderr
        assert "may not create roles" in up.stderr
        line = one_error_line(egoqa(url, "sql", "SELECT 1"))
        assert "read-only role" in line and "EGOQA_SQL_URL" in line
        # a read-only URL of its own is accepted
        reader = f"{name}_ro"
        postgres_server.admin(f"CREATE ROLE {reader} LOGIN")
        postgres_server.admin(f'GRANT CONNECT ON DATABASE "{name}" TO {reader}')
        ro_url = f"postgresql+psycopg://{reader}@127.0.0.1:{postgres_server.port}/{name}"
        ok = egoqa(url, "sql", "SELECT 1 AS one", "--json", env={"EGOQA_SQL_URL": ro_url})
        assert ok.returncode == 0 and json.loads(ok.stdout) == [{"one": 1}], ok.stderr
        # ... and a superuser's URL given as the read-only one is refused
        su = f"postgresql+psycopg://postgres@127.0.0.1:{postgres_server.port}/{name}"
        line = one_error_line(egoqa(url, "sql", "SELECT 1", env={"EGOQA_SQL_URL": su}))
        assert "can write or reach the server's files" in line
    finally:
        postgres_server.drop_database(name)


def test_reader_names_fit_postgres_limits():
    long = "x" * 200 + "-Ünïcode db"
    name = reader_name(long)
    assert len(name.encode()) <= 63 and re.fullmatch(r"[a-z0-9_]+", name)
    assert reader_name("a") != reader_name("b")
