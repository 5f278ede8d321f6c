"""A throwaway PostgreSQL server for tests: initdb + pg_ctl on a free localhost port.

Import the fixtures into a test module with `from pg import postgres_server, postgres_url`.
The server starts once per session (in a temp dir, as the `postgres` user when running as root,
since PostgreSQL refuses to run as root); each `postgres_url` is a fresh, empty database that is
dropped afterwards. A `migrated_postgres_url` is a fresh database already at the schema's head:
a copy (`CREATE DATABASE ... TEMPLATE`) of one database migrated once per session, so a test
that is not about migrating pays for no migration. Without server binaries the tests skip,
saying what to install.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

NO_BINARIES = "no PostgreSQL server binaries (initdb/pg_ctl) found: install postgresql to run these"
SUPERUSER = "postgres"


def find_bin_dir() -> Path | None:
    """The directory holding initdb and pg_ctl: $PATH first, then the Debian/Ubuntu layout."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(initdb).resolve().parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin") + glob.glob("/usr/pgsql-*/bin")
    candidates.sort(key=_version_of, reverse=True)
    for d in map(Path, candidates):
        if (d / "initdb").is_file() and (d / "pg_ctl").is_file():
            return d
    return None


def _version_of(path: str) -> tuple[int, ...]:
    digits = "".join(c if c.isdigit() else " " for c in path).split()
    return tuple(int(d) for d in digits)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_as() -> dict:
    """PostgreSQL refuses to run as root: drop to the `postgres` user when we are root."""
    if os.geteuid() != 0:
        return {}
    try:
        import pwd

        pw = pwd.getpwnam(SUPERUSER)
    except KeyError:
        pytest.skip("running as root and no 'postgres' user to run the PostgreSQL server as")
    return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}


@dataclass
class PgServer:
    bin_dir: Path
    root: Path
    port: int = 0
    as_user: dict = field(default_factory=dict)
    _names: Iterator[int] = field(default_factory=itertools.count)
    _template: str | None = None  # the migrated database that others copy (`migrated_template`)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _cmd(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        return subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=self.root,
            check=check,
            **self.as_user,
        )

    def init(self) -> None:
        self.data.mkdir()
        if self.as_user:
            for p in (self.root, self.data):
                os.chown(p, self.as_user["user"], self.as_user["group"])
        os.chmod(self.data, 0o700)
        self._cmd(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        """Start on a free port (retrying if another process takes the port first)."""
        last = ""
        for _ in range(5):
            self.port = free_port()
            opts = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
                "-c max_connections=200 -c fsync=off -c full_page_writes=off"
            )
            proc = self._cmd(
                "pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"),
                "-o", opts, "-w", "-t", "60", "start", check=False,
            )  # fmt: skip
            if proc.returncode == 0:
                return
            last = proc.stdout + self.log_tail()
        raise RuntimeError(f"PostgreSQL did not start:\n{last}")

    def stop(self) -> None:
        self._cmd("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)

    def log_tail(self, n: int = 4000) -> str:
        log = self.root / "server.log"
        return log.read_text(errors="replace")[-n:] if log.exists() else ""

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user=SUPERUSER, dbname="postgres", autocommit=True
        ) as conn:
            conn.execute(sql)

    def create_database(self, template: str | None = None) -> tuple[str, str]:
        """A new database: empty, or a copy of `template` (which no one may be connected to)."""
        name = f"egoqa_test_{os.getpid()}_{next(self._names)}"
        copy = f' TEMPLATE "{template}"' if template else ""
        self.admin(f'CREATE DATABASE "{name}"{copy}')
        return name, self.url(name)

    def migrated_template(self) -> str:
        """The name of a database migrated to head, made on first use and kept for the session:
        the schema as a first `enqueue` leaves it, less the read-only role of `egoqa sql` (a role
        is named after its database: `egoqa db upgrade` makes one for a copy)."""
        if self._template is None:
            from egoqa.store.db import ensure_schema, make_engine

            name, url = self.create_database()
            engine = make_engine(url)
            try:
                ensure_schema(engine, url, create=True)
            finally:
                engine.dispose()  # a template is copied only while no one is connected to it
            self._template = name
        return self._template

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_server() -> PgServer:
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(NO_BINARIES)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'egoqa[postgres]' to run these")
    as_user = _run_as()
    # Not under pytest's tmp dir: that one is private to us (0700), and the server user must
    # be able to reach its data directory.
    root = Path(tempfile.mkdtemp(prefix="egoqa-pg-"))
    server = PgServer(bin_dir=bin_dir, root=root, as_user=as_user)
    try:
        server.init()
        server.start()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


@dataclass
class _Shared:
    server: PgServer | None = None
    users: int = 0


# pytest keeps a fixture per place it is defined, and every module that imports
# `postgres_server` defines it again: each would start a server of its own. They share this one.
_SHARED = _Shared()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    """One PostgreSQL server for the whole session, whichever modules import this fixture
    (skips where no binaries exist); the last of them to end stops it."""
    if _SHARED.server is None:
        _SHARED.server = start_server()
    _SHARED.users += 1
    try:
        yield _SHARED.server
    finally:
        _SHARED.users -= 1
        if _SHARED.users == 0:
            server, _SHARED.server = _SHARED.server, None
            server.stop()
            shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PgServer) -> Iterator[str]:
    """A fresh, empty database on the session's server, as a `postgresql+psycopg://` URL."""
    name, url = postgres_server.create_database()
    try:
        yield url
    finally:
        _drop_when_free(postgres_server, name)


@pytest.fixture
def migrated_postgres_url(postgres_server: PgServer) -> Iterator[str]:
    """A fresh database at the schema's head (a copy of the session's migrated template)."""
    name, url = postgres_server.create_database(template=postgres_server.migrated_template())
    try:
        yield url
    finally:
        _drop_when_free(postgres_server, name)


def _drop_when_free(server: PgServer, name: str) -> None:
    for attempt in range(3):
        try:
            server.drop_database(name)
            return
        except Exception:
            if attempt == 2:
                raise
            time.sleep(0.5)
