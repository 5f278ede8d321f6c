"""The read-only role of `egoqa sql` on PostgreSQL: its statements, lock waits and idle
transactions are time-limited on the role itself, and its password never appears in a
statement (so not in a server log that records every statement) — on the suite's real server.
"""

from __future__ import annotations

import base64
import re

import pytest
from inproc import InProcess

from egoqa.errors import DatabaseError, StatementTimeout
from egoqa.store.db import open_db
from egoqa.store.read import read_only_sql
from egoqa.store.sqlrole import ReaderLimits, ensure_reader, open_sql_db, scram_verifier

from pg import migrated_postgres_url, postgres_server  # noqa: F401 -- fixtures

pytestmark = pytest.mark.postgres


def reader_settings(db, role: str) -> dict[str, str]:
    with db.read() as cur:
        rows = cur.all(
            """SELECT unnest(s.setconfig) FROM pg_db_role_setting s
                 JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = :r""",
            {"r": role},
        )
    return dict(row[0].split("=", 1) for row in rows)


def test_db_upgrade_sets_the_readers_time_limits_on_the_role(migrated_postgres_url, tmp_path):  # noqa: F811
    InProcess(migrated_postgres_url, tmp_path)("db", "upgrade")  # the schema's copy has no role
    db = open_db(migrated_postgres_url)
    with db.read() as cur:
        (role,) = cur.all("SELECT role FROM sql_readers")[0]
    settings = reader_settings(db, role)
    db.dispose()
    assert settings["default_transaction_read_only"] == "on"
    assert {k: settings.get(k) for k in ReaderLimits().settings()} == {
        "statement_timeout": "60000",  # one minute
        "lock_timeout": "5000",
        "idle_in_transaction_session_timeout": "60000",
    }


def test_a_readers_long_statement_is_cancelled_by_the_role_limit(migrated_postgres_url):  # noqa: F811
    owner = open_db(migrated_postgres_url)
    ensure_reader(owner, ReaderLimits(statement_s=0.2))
    reader = open_sql_db(owner)
    try:
        with pytest.raises(StatementTimeout, match="read-only role's statement_timeout"):
            read_only_sql(reader, "SELECT pg_sleep(30)")  # no --timeout: the role's own limit
    finally:
        reader.dispose()
        owner.dispose()


def test_a_reader_waiting_on_a_lock_gives_up_by_the_role_limit(migrated_postgres_url):  # noqa: F811
    """A reader queued behind an ALTER TABLE's lock must not wait for it (and so must not hold
    up every later claim queued behind both)."""
    owner = open_db(migrated_postgres_url)
    ensure_reader(owner, ReaderLimits(lock_s=0.2))
    reader = open_sql_db(owner)
    try:
        with owner.write() as cur:  # a migration's lock, held while the reader asks
            cur.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(DatabaseError, match="lock timeout"):
                read_only_sql(reader, "SELECT COUNT(*) FROM jobs")
    finally:
        reader.dispose()
        owner.dispose()


def test_the_password_is_never_in_a_logged_statement(
    migrated_postgres_url,  # noqa: F811
    postgres_server,  # noqa: F811
    tmp_path,
):
    url = migrated_postgres_url
    name = url.rsplit("/", 1)[1]
    postgres_server.admin(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'")
    log = postgres_server.root / "server.log"
    start = log.stat().st_size
    cli = InProcess(url, tmp_path)
    cli("db", "upgrade")
    cli("db", "upgrade")  # a second one refreshes the password
    assert cli.json("sql", "SELECT 1 AS one") == [{"one": 1}]
    db = open_db(url)
    with db.read() as cur:
        role, password = cur.all("SELECT role, password FROM sql_readers")[0]
    db.dispose()
    with log.open("rb") as f:
        f.seek(start)
        logged = f.read().decode("utf-8", "replace")
    assert re.search(rf"statement: (CREATE|ALTER) ROLE {role} ", logged), "nothing was logged"
    assert password not in logged
    assert re.fullmatch(r"[0-9a-f]{64}", password)  # drawn by the server: 244 random bits


def test_the_verifier_is_the_one_postgresql_computes(postgres_server):  # noqa: F811
    """The server computes a verifier for a password given in clear; ours, with its salt and
    iteration count, must be the same text."""
    role = "egoqa_scram_check"
    postgres_server.admin(f"DROP ROLE IF EXISTS {role}")
    try:
        postgres_server.admin(
            f"SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} PASSWORD 'pencil-4f2a'"
        )
        stored = _rolpassword(postgres_server, role)
        iterations, salt = re.match(r"SCRAM-SHA-256\$(\d+):([^$]+)\$", stored).groups()
        assert scram_verifier("pencil-4f2a", base64.b64decode(salt), int(iterations)) == stored
    finally:
        postgres_server.admin(f"DROP ROLE IF EXISTS {role}")


def _rolpassword(server, role: str) -> str:
    import psycopg

    with psycopg.connect(
        host="127.0.0.1", port=server.port, user="postgres", dbname="postgres"
    ) as conn:
        return conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
        ).fetchone()[0]
