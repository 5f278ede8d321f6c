"""The role `egoqa sql` runs as on PostgreSQL: it can log in and read egoqa's tables and views, and
nothing else, so a user's statement cannot write, run programs or read files — whatever role the
database URL names (a superuser's `COPY ... TO PROGRAM` runs a shell command).

`egoqa db upgrade` creates the role (named after the database) with a random password kept in
the `sql_readers` table, which only the owner reads. The server draws the password itself and
is given only its SCRAM-SHA-256 verifier, so the password never appears in a statement (nor in
a server log with `log_statement = 'all'`). The role's statements, lock waits and idle
transactions are time-limited (`ReaderLimits`), so a forgotten read cannot hold the locks a
migration or a worker's claim waits for. `egoqa sql` connects as that role, or as the URL's own
role when that role is already harmless, or as $EGOQA_SQL_URL; otherwise it refuses. SQLite
needs none of this: `egoqa sql` opens the file read-only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import re
import secrets
from dataclasses import dataclass

from sqlalchemy.engine import make_url

from egoqa.errors import DatabaseError
from egoqa.store.engine import Database, make_engine

log = logging.getLogger("egoqa.store")

SQL_URL_ENV = "EGOQA_SQL_URL"
# Membership in these lets a role read or write server files or run programs.
DANGEROUS_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")
PRIVATE_TABLES = ("sql_readers",)


@dataclass(frozen=True)
class ReaderLimits:
    """Set on the read-only role, so they hold for every session of it, whatever the client:
    a statement runs at most `statement_s` (`egoqa sql --timeout` may ask for more), waits for
    a lock at most `lock_s`, and a transaction left open is ended after `idle_s`."""

    statement_s: float = 60.0
    lock_s: float = 5.0
    idle_s: float = 60.0

    def settings(self) -> dict[str, int]:
        """PostgreSQL's settings, in milliseconds."""
        return {
            "statement_timeout": _ms(self.statement_s),
            "lock_timeout": _ms(self.lock_s),
            "idle_in_transaction_session_timeout": _ms(self.idle_s),
        }


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


SCRAM_ITERATIONS = 4096  # PostgreSQL's own default


def scram_verifier(password: str, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS):
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (RFC 5802 / 7677): what
    `PASSWORD '...'` may be given instead of the password. `password` must be ASCII (SASLprep
    leaves it as it is)."""
    salt = secrets.token_bytes(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("ascii"), salt, iterations)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    b64 = [base64.b64encode(b).decode("ascii") for b in (salt, stored_key, server_key)]
    return f"SCRAM-SHA-256${iterations}:{b64[0]}${b64[1]}:{b64[2]}"


# The password is drawn by the server (gen_random_uuid: its strong random source) and comes
# back only in the result, so no statement carries it: 64 hex digits, 244 random bits.
NEW_PASSWORD = """
INSERT INTO sql_readers (role, password, created_at)
VALUES (:r, replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), {now})
RETURNING password
"""


def reader_name(database: str) -> str:
    """A role name per database (role names are cluster-wide), at most 63 bytes."""
    safe = re.sub(r"[^a-z0-9_]", "_", database.lower())[:40]
    return f"egoqa_sql_{safe}_{hashlib.sha1(database.encode()).hexdigest()[:8]}"


def ensure_reader(db: Database, limits: ReaderLimits | None = None) -> str | None:
    """Create (or refresh) the database's read-only role; None where this role may not.

    Called after migrations by `egoqa db upgrade` and by the first `enqueue`.
    """
    limits = limits or ReaderLimits()
    if db.is_sqlite:
        return None
    with db.read() as cur:
        may = cur.one("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
        dbname = cur.one("SELECT current_database()")
    if not may:
        log.warning(
            "this role may not create roles, so `egoqa sql` has no read-only role here: run "
            "`egoqa db upgrade` as a role with CREATEROLE, or set %s",
            SQL_URL_ENV,
        )
        return None
    role = reader_name(dbname)
    with db.write() as cur:
        cur.execute("DELETE FROM sql_readers WHERE role = :r", {"r": role})
        password = cur.one(NEW_PASSWORD.format(now=db.now), {"r": role})
        for stmt in _grants(cur, role, scram_verifier(password), dbname, limits):
            cur.execute(stmt)
    return role


def _grants(cur, role: str, verifier: str, dbname: str, limits: ReaderLimits) -> list[str]:
    exists = cur.one("SELECT 1 FROM pg_roles WHERE rolname = :r", {"r": role})
    verb = "ALTER" if exists else "CREATE"
    attrs = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"
    stmts = [
        f"{verb} ROLE {role} WITH {attrs} PASSWORD '{verifier}'",
        f"ALTER ROLE {role} SET default_transaction_read_only = on",
        *(f"ALTER ROLE {role} SET {name} = {ms}" for name, ms in limits.settings().items()),
        f'GRANT CONNECT ON DATABASE "{dbname}" TO {role}',
        f"GRANT USAGE ON SCHEMA public TO {role}",
        f"REVOKE CREATE ON SCHEMA public FROM {role}",
    ]
    names = [
        r[0]
        for r in cur.all(
            """SELECT table_name FROM information_schema.tables
                WHERE table_schema = 'public' ORDER BY table_name"""
        )
    ]
    for name in names:
        if name in PRIVATE_TABLES:
            stmts.append(f'REVOKE ALL ON "{name}" FROM {role}')
        else:
            stmts.append(f'GRANT SELECT ON "{name}" TO {role}')
    return stmts


def open_sql_db(db: Database) -> Database:
    """A read-only handle on which `egoqa sql` may run anything a user types."""
    if db.is_sqlite:
        return db
    override = os.environ.get(SQL_URL_ENV)
    if override:
        handle = Database(override, make_engine(override, readonly=True), readonly=True)
        _require_harmless(handle, f"{SQL_URL_ENV} names a role that")
        return handle
    if _harmless(db):
        return db
    with db.read() as cur:
        row = cur.execute("SELECT role, password FROM sql_readers LIMIT 1").fetchone()
    if row is None:
        raise DatabaseError(
            "egoqa sql runs as a read-only role on PostgreSQL and this database has none: run "
            f"`egoqa db upgrade` as a role that may create roles, or set {SQL_URL_ENV} to the "
            "URL of a role that can only read"
        )
    url = make_url(db.url).set(username=row[0], password=row[1])
    text = url.render_as_string(hide_password=False)
    handle = Database(text, make_engine(text, readonly=True), readonly=True)
    _require_harmless(handle, "the read-only role")
    return handle


def _harmless(db: Database) -> bool:
    """True when the connected role can neither write egoqa's tables nor reach the server's
    files and programs."""
    with db.read() as cur:
        row = cur.execute(
            f"""SELECT r.rolsuper OR r.rolcreaterole OR r.rolbypassrls
                       OR has_table_privilege('jobs', 'INSERT, UPDATE, DELETE, TRUNCATE')
                       OR EXISTS (SELECT 1 FROM pg_roles d
                                   WHERE d.rolname IN {DANGEROUS_ROLES!r}
                                     AND pg_has_role(r.oid, d.oid, 'USAGE'))
                  FROM pg_roles r WHERE r.rolname = current_user"""
        ).fetchone()
    return row is not None and not row[0]


def _require_harmless(handle: Database, who: str) -> None:
    if not _harmless(handle):
        raise DatabaseError(
            f"{who} can write or reach the server's files, so egoqa sql will not run as it: "
            f"use a role that can only read (see `egoqa db upgrade`)"
        )
