"""Connections: URLs, engines (SQLite pragmas and explicit write transactions), and the
handle every command uses (`Database`, `Cursor`).

SQLite follows SQLAlchemy's documented recipe: the driver's own transaction handling is
switched off and every transaction is opened explicitly, `BEGIN IMMEDIATE` for writes, so two
workers can never both read a job as ready and both claim it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import QueuePool

from egoqa.errors import DatabaseError

DEFAULT_DB = "egoqa.db"
BUSY_TIMEOUT_MS = 30_000
UNSUPPORTED = ("mysql", "mariadb", "mssql", "oracle")  # SQLAlchemy knows them; egoqa does not
_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def shown_url(url: str) -> str:
    """A database URL fit for messages: its password, if any, as ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return _PASSWORD.sub(r"\1***@", url)


def _without_password(text: str, url: str) -> str:
    """A driver's message, with the URL's password taken out wherever it was repeated."""
    try:
        password = make_url(url).password
    except (ArgumentError, ValueError):
        password = None
    return text.replace(str(password), "***") if password else text


def resolve_url(db: str | os.PathLike | None) -> str:
    """A path or URL (or $EGOQA_DB, or ./egoqa.db) as a SQLAlchemy URL string.

    A plain path becomes a URL with its characters escaped (`%`, `?`, `#` are file-name
    characters, not URL syntax), so the URL names exactly that file.
    """
    db = str(db or os.environ.get("EGOQA_DB") or DEFAULT_DB)
    if "://" not in db:
        path = str(Path(db).expanduser().absolute())
        return URL.create("sqlite", database=path).render_as_string(hide_password=False)
    try:
        make_url(db)
    except (ArgumentError, ValueError):  # a port that is not a number is a ValueError
        raise DatabaseError(
            f"cannot parse database URL {shown_url(db)!r}: pass a file path, sqlite:///PATH or "
            "postgresql://USER@HOST/DATABASE"
        ) from None
    return db


def sqlite_path(url: str) -> Path | None:
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def _check_sqlite_location(path: Path, readonly: bool) -> None:
    if not path.parent.is_dir():
        raise DatabaseError(
            f"database directory {path.parent} does not exist: create it or pass --db with "
            "an existing directory"
        )
    if path.is_dir():
        raise DatabaseError(
            f"database path {path} is a directory: pass --db with a file path, "
            f"e.g. {path / DEFAULT_DB}"
        )
    if readonly and not path.exists():
        raise DatabaseError(f"no database at {path}: run `egoqa enqueue` first or pass --db")
    if not readonly and path.exists() and not os.access(path, os.W_OK):
        raise DatabaseError(
            f"database {path} is read-only: make it writable, or use `egoqa sql`/`report` to read it"
        )
    if not readonly and not os.access(path.parent, os.W_OK):
        raise DatabaseError(
            f"database directory {path.parent} is read-only (SQLite keeps its write-ahead log "
            "beside the database): make it writable, or use `egoqa status`/`sql` to read it"
        )


def _readonly_uri(path: Path) -> str:
    # A WAL reader needs a -shm file beside the database. In a read-only directory SQLite
    # cannot create one, and no writer can work there either, so the file cannot change
    # under us: read it as immutable instead of failing.
    if not os.access(path.parent, os.W_OK) and not Path(f"{path}-shm").exists():
        return f"file:{quote(str(path))}?mode=ro&immutable=1"
    return f"file:{quote(str(path))}?mode=ro"


def _sqlite_connect_factory(path: Path, readonly: bool):
    uri = _readonly_uri(path) if readonly else f"file:{quote(str(path))}"

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(
            uri,
            uri=True,
            timeout=BUSY_TIMEOUT_MS / 1000,
            isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA temp_store = MEMORY")
        if readonly:
            conn.execute("PRAGMA query_only = ON")
            # ATTACH would create the named file and open it read-write: refuse it outright.
            conn.setlimit(sqlite3.SQLITE_LIMIT_ATTACHED, 0)
        else:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            _apply_max_page_count(conn)
        return conn

    return connect


MAX_PAGE_COUNT_ENV = "EGOQA_SQLITE_MAX_PAGE_COUNT"


def _apply_max_page_count(conn: sqlite3.Connection) -> None:
    """Test hook: cap the file's size so growing writes fail with SQLITE_FULL, as on a full disk.

    Tests set $EGOQA_SQLITE_MAX_PAGE_COUNT to prove a full disk loses no finished work; it is
    not a setting for users.
    """
    pages = os.environ.get(MAX_PAGE_COUNT_ENV)
    if pages:
        conn.execute(f"PRAGMA max_page_count = {int(pages)}")


def _make_sqlite_engine(url: str, path: Path, readonly: bool) -> Engine:
    _check_sqlite_location(path, readonly)
    # A file database gets a QueuePool: with "sqlite://" and a creator SQLAlchemy would pick
    # SingletonThreadPool, which closes the connection of the oldest thread once five threads
    # have used it (every batch's heartbeat is a new thread), under the thread still using it.
    engine = create_engine(
        "sqlite://",
        creator=_sqlite_connect_factory(path, readonly),
        poolclass=QueuePool,
        pool_size=4,
        max_overflow=16,
    )
    engine.url = make_url(url)  # what the user sees in messages

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        if conn.get_execution_options().get("egoqa_read"):
            conn.exec_driver_sql("BEGIN")
        else:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def _make_server_engine(url: str, readonly: bool) -> Engine:
    backend = make_url(url).get_backend_name()
    if backend in UNSUPPORTED:
        raise DatabaseError(
            f"{shown_url(url)}: only SQLite and PostgreSQL are supported, not {backend}: pass a "
            "file path, sqlite:///PATH or postgresql://..."
        )
    kwargs: dict = {"pool_pre_ping": True}
    if readonly and make_url(url).get_backend_name() == "postgresql":
        kwargs["connect_args"] = {"options": "-c default_transaction_read_only=on"}
    try:
        return create_engine(url, **kwargs)
    except ModuleNotFoundError as exc:
        raise DatabaseError(
            f"no driver for {make_url(url).get_backend_name()} ({exc.name}): "
            "pip install 'egoqa[postgres]'"
        ) from None
    except NoSuchModuleError:
        raise DatabaseError(
            f"unknown kind of database in {shown_url(url)!r}: pass a file path, sqlite:///PATH "
            "or postgresql://..."
        ) from None


def make_engine(url: str, *, readonly: bool = False) -> Engine:
    path = sqlite_path(url)
    if path is not None:
        return _make_sqlite_engine(url, path, readonly)
    return _make_server_engine(url, readonly)


# --- the handle every command uses ------------------------------------------------------------

_PARAM = __import__("re").compile(r"(?<![:\w]):(\w+)")
# The database's clock, as epoch seconds (SQLite 3.40 has no unixepoch('subsec')).
SQLITE_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
POSTGRES_NOW = "extract(epoch FROM clock_timestamp())::double precision"


class Database:
    """An engine plus raw-cursor transactions for the hot paths (the queue's SQL).

    SQL is written once with `:name` parameters (sqlite3's named style) and converted to
    psycopg's `%(name)s` for PostgreSQL.
    """

    def __init__(self, url: str, engine: Engine, readonly: bool = False) -> None:
        self.url = url
        self.engine = engine
        self.readonly = readonly
        self.dialect = engine.dialect.name
        self._converted: dict[str, str] = {}
        self._kept = None  # the main thread's SQLite connection, see _checkout
        self._kept_busy = False  # a transaction is open on it (a nested one gets its own)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def now(self) -> str:
        """SQL for the database's clock in epoch seconds: every lease and finish time uses it,
        so nodes whose own clocks disagree still agree on when a lease ends."""
        return SQLITE_NOW if self.is_sqlite else POSTGRES_NOW

    def sql(self, stmt: str) -> str:
        if self.is_sqlite:
            return stmt
        out = self._converted.get(stmt)
        if out is None:
            # psycopg reads every '%' of a statement with parameters as a placeholder: a literal
            # one (`LIKE '%x%'`) is written '%%' there, so SQL stays the same on both backends.
            out = _PARAM.sub(r"%(\1)s", stmt.replace("%", "%%"))
            self._converted[stmt] = out
        return out

    def _checkout(self):
        """The main thread keeps one SQLite connection (the queue's hot path skips the pool);
        other threads, servers, and a transaction opened inside another check one out."""
        main = threading.current_thread() is threading.main_thread()
        if not self.is_sqlite or not main or self._kept_busy:
            return self.engine.raw_connection(), True
        if self._kept is None:
            self._kept = self.engine.raw_connection()
        self._kept_busy = True
        return self._kept, False

    def _drop_kept(self) -> None:
        kept, self._kept = self._kept, None
        if kept is not None:
            kept.close()

    @contextmanager
    def _transaction(self, begin: str):
        raw, per_transaction = self._checkout()
        try:
            cur = raw.cursor()
            if self.is_sqlite:
                cur.execute(begin)
            try:
                yield Cursor(self, cur)
            except BaseException:
                with suppress(Exception):  # a connection that died cannot roll back; it is dropped
                    raw.rollback()
                raise
            if self.readonly:
                # Never commit on a read-only handle: a statement's session changes
                # (Postgres `set_config('default_transaction_read_only', 'off', false)`)
                # would otherwise outlive it on the pooled connection.
                if self.is_sqlite:
                    cur.execute("ROLLBACK")
                else:
                    raw.rollback()
            elif self.is_sqlite:
                cur.execute("COMMIT")
            else:
                raw.commit()
        except sqlite3.OperationalError as exc:
            per_transaction or self._drop_kept()  # a connection that failed is not kept
            raise _friendly_sqlite_error(exc, self.url) from None
        except BaseException:
            per_transaction or self._drop_kept()
            raise
        finally:
            if per_transaction:
                raw.close()
            else:
                self._kept_busy = False

    def write(self):
        """A write transaction (`BEGIN IMMEDIATE` on SQLite)."""
        return self._transaction("BEGIN IMMEDIATE")

    def read(self):
        return self._transaction("BEGIN")

    def dispose(self) -> None:
        self._drop_kept()
        self.engine.dispose()


def in_list(prefix: str, values: Sequence) -> tuple[str, dict]:
    """`(:p0, :p1, ...)` and its parameters, for `x IN (...)`."""
    names = [f"{prefix}{i}" for i in range(len(values))]
    return "(" + ", ".join(":" + n for n in names) + ")", dict(zip(names, values, strict=True))


def chunks(seq: Sequence, n: int = 500) -> Iterable[Sequence]:
    """Slices of at most n (SQLite limits bound parameters per statement)."""
    for i in range(0, len(seq), n):
        yield seq[i : i + n]


class Cursor:
    """A DBAPI cursor that takes `:name` SQL on every backend."""

    def __init__(self, db: Database, cur) -> None:
        self.db = db
        self.raw = cur

    def execute(self, stmt: str, params: dict | None = None):
        if self.db.is_sqlite:
            self.raw.execute(stmt, params or {})
            return self.raw
        # On a read-only handle a prepared statement holds exactly one command, so
        # `SET TRANSACTION READ WRITE; DELETE ...` cannot slip a write past the read-only
        # transaction. Without parameters the SQL runs as written: a literal '%' is data.
        prepare = True if self.db.readonly else None
        if params:
            self.raw.execute(self.db.sql(stmt), params, prepare=prepare)
        else:
            self.raw.execute(stmt, None, prepare=prepare)
        return self.raw

    def executemany(self, stmt: str, rows: list[dict]) -> None:
        if rows:
            self.raw.executemany(self.db.sql(stmt), rows)

    def all(self, stmt: str, params: dict | None = None) -> list[tuple]:
        return self.execute(stmt, params).fetchall()

    def one(self, stmt: str, params: dict | None = None):
        row = self.execute(stmt, params).fetchone()
        return None if row is None else row[0]

    @property
    def rowcount(self) -> int:
        return self.raw.rowcount


def _friendly_sqlite_error(exc: sqlite3.Error, url: str) -> DatabaseError:
    msg = str(exc)
    if "file is not a database" in msg:
        return DatabaseError(
            f"{url} is not an SQLite database ({msg}): pass --db with an egoqa database, "
            "or a path where a new one may be created"
        )
    if "readonly" in msg:
        return DatabaseError(f"cannot write to {url}: the file is read-only — make it writable")
    if "disk is full" in msg or "disk I/O error" in msg:
        return DatabaseError(
            f"cannot write to {url} ({msg}): free disk space or check the device; "
            "work already written is safe"
        )
    if "unable to open" in msg:
        return DatabaseError(f"cannot open {url} ({msg}): check the path and its permissions")
    return DatabaseError(f"database error on {url}: {msg}")
