"""Opening a database: URLs, SQLite pragmas and write transactions, schema checks, migrations.

SQLite follows SQLAlchemy's documented recipe: the driver's own transaction handling is
switched off and every transaction is opened explicitly, `BEGIN IMMEDIATE` for writes, so two
workers can never both read a job as ready and both claim it.
"""

from __future__ import annotations

import ast
import functools
import os
import re
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import QueuePool

from egoqa.errors import DatabaseError, SchemaMismatch

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


# --- migrations -------------------------------------------------------------------------------


def _migration_dirs() -> tuple[Path, Path]:
    pkg = Path(__file__).resolve().parent.parent
    installed = (pkg / "_alembic", pkg / "_migrations")
    if installed[0].is_dir():
        return installed
    return pkg.parent / "alembic", pkg.parent / "migrations"


def alembic_config(url: str, engine: Engine | None = None):
    from alembic.config import Config

    script_dir, versions_dir = _migration_dirs()
    cfg = Config()
    cfg.set_main_option("script_location", str(script_dir))
    cfg.set_main_option("version_locations", str(versions_dir))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = url
    if engine is not None:
        cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    """The newest migration's revision (read from the files' text: see `_revision_graph`)."""
    graph = _revision_graph()
    heads = set(graph) - set(graph.values())
    if len(heads) == 1:
        return heads.pop()
    from alembic.script import ScriptDirectory  # a branched history: alembic says what holds

    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


_REVISION = re.compile(r"^(down_revision|revision)\b[^=\n]*=\s*(.+?)\s*$", re.MULTILINE)


@functools.cache
def _revision_graph() -> dict[str, str | None]:
    """revision -> down_revision of every migration, read from the files as text.

    Every command checks the schema; importing alembic and the migrations to learn the head
    took half a second of each. A file this does not read plainly (no single quoted revision,
    a merge of several) sends the question to alembic.
    """
    graph: dict[str, str | None] = {}
    for path in sorted(_migration_dirs()[1].glob("*.py")):
        found = dict(m.groups() for m in _REVISION.finditer(path.read_text(encoding="utf-8")))
        rev, down = found.get("revision"), found.get("down_revision")
        if rev is None or down is None:
            return _alembic_graph()
        try:
            rev, down = ast.literal_eval(rev), ast.literal_eval(down)
        except (ValueError, SyntaxError):
            return _alembic_graph()
        if not isinstance(rev, str) or not (down is None or isinstance(down, str)):
            return _alembic_graph()
        graph[rev] = down
    return graph


def _alembic_graph() -> dict[str, str | None]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    out: dict[str, str | None] = {}
    for rev in script.walk_revisions():
        down = rev.down_revision
        out[rev.revision] = down if down is None or isinstance(down, str) else ",".join(down)
    return out


def current_revision(engine: Engine) -> str | None:
    from sqlalchemy import inspect, text

    with engine.connect().execution_options(egoqa_read=True) as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine, url: str) -> None:
    from alembic import command

    command.upgrade(alembic_config(url, engine), "head")


@dataclass(frozen=True)
class SchemaState:
    current: str | None
    head: str

    @property
    def ok(self) -> bool:
        return self.current == self.head

    @property
    def newer(self) -> bool:
        """The database was made by a later egoqa: a revision this code does not know."""
        return self.current is not None and self.current not in known_revisions()


def known_revisions() -> set[str]:
    return set(_revision_graph())


def schema_state(engine: Engine) -> SchemaState:
    return SchemaState(current_revision(engine), head_revision())


def ensure_schema(engine: Engine, url: str, *, create: bool) -> bool:
    """Upgrade when `create` (enqueue) and the schema is missing or old; else refuse a mismatch.
    Returns whether it upgraded."""
    state = schema_state(engine)
    if state.ok:
        return False
    if state.newer:
        raise SchemaMismatch(
            f"database schema {state.current} is newer than this egoqa (head {state.head}): "
            "upgrade egoqa (pip install -U egoqa) to use this database"
        )
    if create:
        upgrade(engine, url)
        return True
    if state.current is None:
        raise SchemaMismatch(
            f"{engine.url} holds no egoqa schema: run `egoqa enqueue` or `egoqa db upgrade` first"
        )
    raise SchemaMismatch(
        f"database schema {state.current} is older than this egoqa ({state.head}): "
        "run `egoqa db upgrade`"
    )


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


def open_db(
    db: str | os.PathLike | None = None, *, create: bool = False, readonly: bool = False
) -> Database:
    """Open (and with `create`, create or upgrade) a database; refuse a schema mismatch."""
    url = resolve_url(db)
    engine = make_engine(url, readonly=readonly)
    path = sqlite_path(url)
    if path is not None and not create and not path.exists():  # SQLite would create it, empty
        raise DatabaseError(f"no database at {path}: run `egoqa enqueue` first or pass --db")
    with friendly_errors(url):
        upgraded = ensure_schema(engine, url, create=create and not readonly)
    handle = Database(url, engine, readonly)
    if upgraded and not handle.is_sqlite:
        from egoqa.store.sqlrole import ensure_reader

        with friendly_errors(url):
            ensure_reader(handle)  # `egoqa sql` runs as it: reads egoqa's tables, nothing else
    return handle


@contextmanager
def friendly_errors(url: str):
    """Driver errors while opening or inspecting a database, as one-line `DatabaseError`s."""
    from sqlalchemy.exc import DBAPIError

    try:
        yield
    except sqlite3.DatabaseError as exc:  # "file is not a database" is not an OperationalError
        raise _friendly_sqlite_error(exc, url) from None
    except DBAPIError as exc:
        orig = exc.orig
        if isinstance(orig, sqlite3.DatabaseError):
            raise _friendly_sqlite_error(orig, url) from None
        first = (str(orig).strip().splitlines() or [type(orig).__name__])[0]
        first = _without_password(first, url)
        raise DatabaseError(f"cannot open {shown_url(url)}: {first}") from None
