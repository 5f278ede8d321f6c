"""Opening a database: schema checks, migrations, the reader role; the connection types are
`store.engine`'s (re-exported here, where every caller imports them from).
"""

from __future__ import annotations

import ast
import functools
import os
import re
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from egoqa.errors import DatabaseError, SchemaMismatch
from egoqa.store import sqlrole
from egoqa.store.engine import (  # noqa: F401  (re-exported: callers open and use them from here)
    BUSY_TIMEOUT_MS,
    DEFAULT_DB,
    MAX_PAGE_COUNT_ENV,
    POSTGRES_NOW,
    SQLITE_NOW,
    Cursor,
    Database,
    _friendly_sqlite_error,
    _without_password,
    chunks,
    in_list,
    make_engine,
    resolve_url,
    shown_url,
    sqlite_path,
)

# --- migrations -------------------------------------------------------------------------------


def _migration_dirs() -> tuple[Path, Path]:
    pkg = Path(__file__).resolve().parent.parent
    installed = (pkg / "_alembic", pkg / "_migrations")
    if installed[0].is_dir():
        return installed
    return pkg.parent / "alembic", pkg.parent / "migrations"


def alembic_config(url: str, engine: Engine | None = None):
    import sys

    from alembic.config import Config

    script_dir, versions_dir = _migration_dirs()
    # The stream of now: alembic's default is the sys.stdout of when alembic was first imported,
    # which a caller that redirects its output (egoqa run in process) may since have closed.
    cfg = Config(stdout=sys.stdout)
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

    config = alembic_config(url, engine)
    config.attributes["migrate_only"] = True  # env.py leaves the ORM's models unimported
    command.upgrade(config, "head")


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
        with friendly_errors(url):
            sqlrole.ensure_reader(
                handle
            )  # `egoqa sql` runs as it: reads egoqa's tables, nothing else
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
