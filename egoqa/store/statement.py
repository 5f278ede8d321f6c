"""One read-only statement that Ctrl-C or a time limit can stop (`egoqa sql`).

SQLite and psycopg hold the calling thread inside the driver while a statement runs, where
Python cannot deliver Ctrl-C. So the statement runs on a helper thread and the main thread
waits: on Ctrl-C or at the time limit it cancels the statement on the server side (SQLite's
`interrupt()`, PostgreSQL's cancel request, plus `statement_timeout` so the server stops it
even if this process dies) and waits for the helper to let go of the connection.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from egoqa.errors import Interrupted, StatementTimeout
from egoqa.store.db import Database

log = logging.getLogger("egoqa.sql")

_POLL_S = 0.05  # how often the waiting thread looks up (and re-sends a cancel)


@dataclass
class _Running:
    """The helper thread's side: the connection in use, and the statement's outcome."""

    connection: object | None = None
    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    error: BaseException | None = None
    cancelled: bool = False

    def run(self, db: Database, statement: str, timeout_s: float | None) -> None:
        try:
            with db.read() as cur:
                if timeout_s is not None and not db.is_sqlite:
                    ms = str(max(1, round(timeout_s * 1000)))
                    cur.execute("SELECT set_config('statement_timeout', :ms, true)", {"ms": ms})
                self.connection = cur.raw.connection
                if self.cancelled:
                    return
                log.info("running the statement (Ctrl-C cancels it)")
                raw = cur.execute(statement)
                self.columns = [d[0] for d in raw.description] if raw.description else []
                self.rows = [tuple(r) for r in raw.fetchall()] if self.columns else []
        except BaseException as exc:  # handed to the main thread, which decides what it means
            self.error = exc

    def cancel(self) -> None:
        self.cancelled = True
        conn = self.connection
        if conn is None:
            return
        if hasattr(conn, "interrupt"):  # sqlite3
            conn.interrupt()
        elif hasattr(conn, "cancel_safe"):  # psycopg >= 3.2
            conn.cancel_safe(timeout=5.0)
        else:
            conn.cancel()


def _stop(thread: threading.Thread, running: _Running) -> None:
    """Cancel until the helper lets go: a cancel sent before the statement began does nothing."""
    while thread.is_alive():
        try:
            running.cancel()
        except Exception as exc:  # noqa: BLE001 -- a failed cancel is retried; the wait goes on
            log.debug("cancel failed: %s", exc)
        thread.join(_POLL_S)


def run_statement(
    db: Database, statement: str, timeout_s: float | None = None
) -> tuple[list[str], list[tuple]]:
    """(columns, rows) of one statement; Interrupted on Ctrl-C, StatementTimeout past the limit.
    Driver errors are raised as they came (the caller words them)."""
    running = _Running()
    thread = threading.Thread(
        target=running.run, args=(db, statement, timeout_s), name="egoqa-sql", daemon=True
    )
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with _ctrl_c_noted() as interrupted:
        try:
            thread.start()
            while thread.is_alive() and (deadline is None or time.monotonic() < deadline):
                if interrupted():
                    raise KeyboardInterrupt
                thread.join(_POLL_S)
            if interrupted():
                raise KeyboardInterrupt
        except KeyboardInterrupt:
            _stop(thread, running)
            raise Interrupted(
                "interrupted: the statement was cancelled; nothing was changed"
            ) from None
    if thread.is_alive() or _timed_out(running.error):
        _stop(thread, running)
        if timeout_s is None:  # the server's own limit: the read-only role's statement_timeout
            raise StatementTimeout(
                "the statement ran longer than the read-only role's statement_timeout and was "
                "cancelled: narrow it (WHERE, LIMIT) or give it more time with --timeout SECONDS"
            )
        raise StatementTimeout(
            f"the statement ran longer than --timeout {timeout_s:g} s and was cancelled: "
            "narrow it (WHERE, LIMIT) or give it more time"
        )
    if running.error is not None:
        raise running.error
    return running.columns, running.rows


@contextmanager
def _ctrl_c_noted():
    """While the statement runs, Ctrl-C is only noted (the wait loop acts on it). Raised as
    KeyboardInterrupt it could land anywhere, before the loop's `try` included, and the
    command then exited 130 without cancelling or saying so."""
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False  # no signal reaches this thread's code
        return
    noted: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, _frame: noted.append(signum))
    try:
        yield lambda: bool(noted)
    finally:
        signal.signal(signal.SIGINT, old)


def _timed_out(error: BaseException | None) -> bool:
    """PostgreSQL's own statement_timeout fired (it may beat the waiting thread to it)."""
    return type(error).__name__ == "QueryCanceled" and "timeout" in str(error)
