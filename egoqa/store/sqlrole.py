"""The role `egoqa sql` runs as on PostgreSQL: it can log in and read egoqa's tables and views, and
nothing else, so a user's statement cannot write, run programs or read files — whatever role the
database URL names (a superuser's `COPY ... TO PROGRAM` runs a shell command).

`egoqa db upgrade` creates the role (named after the database) with a random password kept in
the `sql_readers` table, which only the owner reads. `egoqa sql` connects as that role, or as
the URL's own role when that role is already harmless, or as $EGOQA_SQL_URL; otherwise it
refuses. SQLite needs none of this: `egoqa sql` opens the file read-only.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets

from sqlalchemy.engine import make_url

from egoqa.errors import DatabaseError
from egoqa.store.db import Database, make_engine

log = logging.getLogger("egoqa.store")

SQL_URL_ENV = "EGOQA_SQL_URL"
# Membership in these lets a role read or write server files or run programs.
DANGEROUS_ROLES = ("pg_read_server_files", "pg_write_server_files", "pg_execute_server_program")
PRIVATE_TABLES = ("sql_readers",)


def reader_name(database: str) -> str:
    """A role name per database (role names are cluster-wide), at most 63 bytes."""
    safe = re.sub(r"[^a-z0-9_]", "_", database.lower())[:40]
    return f"egoqa_sql_{safe}_{hashlib.sha1(database.encode()).hexdigest()[:8]}"


def ensure_reader(db: Database) -> str | None:
    """Create (or refresh) the database's read-only role; None where this role may not.

    Called after migrations by `egoqa db upgrade` and by the first `enqueue`.
    """
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
    role, password = reader_name(dbname), secrets.token_urlsafe(24)
    with db.write() as cur:
        for stmt in _grants(cur, role, password, dbname):
            cur.execute(stmt)
        cur.execute("DELETE FROM sql_readers WHERE role = :r", {"r": role})
        cur.execute(
            f"INSERT INTO sql_readers (role, password, created_at) VALUES (:r, :p, {db.now})",
            {"r": role, "p": password},
        )
    return role


def _grants(cur, role: str, password: str, dbname: str) -> list[str]:
    exists = cur.one("SELECT 1 FROM pg_roles WHERE rolname = :r", {"r": role})
    verb = "ALTER" if exists else "CREATE"
    quoted = password.replace("'", "''")
    attrs = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT"
    stmts = [
        f"{verb} ROLE {role} WITH {attrs} PASSWORD '{quoted}'",
        f"ALTER ROLE {role} SET default_transaction_read_only = on",
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
