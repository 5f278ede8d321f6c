"""Reading a database for `status`, `runs`, `sql` and the progress display: plain rows, no
rendering."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from egoqa.errors import DatabaseError, ReadOnlyViolation, UnknownRun
from egoqa.store.db import Database


@dataclass
class Table:
    columns: list[str]
    rows: list[tuple]

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]

    def map_column(self, name: str, new_name: str, fn) -> Table:
        """The same table with one column replaced by a function of it."""
        i = self.columns.index(name)
        columns = [*self.columns[:i], new_name, *self.columns[i + 1 :]]
        return Table(columns, [(*r[:i], fn(r[i]), *r[i + 1 :]) for r in self.rows])


def _query(db: Database, sql: str, params: dict | None = None) -> Table:
    with db.read() as cur:
        raw = cur.execute(sql, params)
        cols = [d[0] for d in raw.description] if raw.description else []
        return Table(cols, [tuple(r) for r in raw.fetchall()] if cols else [])


def run_exists(db: Database, run: str) -> None:
    with db.read() as cur:
        if cur.one("SELECT id FROM runs WHERE name = :r", {"r": run}) is None:
            names = [r[0] for r in cur.all("SELECT name FROM runs ORDER BY id")]
            raise UnknownRun(
                f"no run named {run!r}; runs here: {', '.join(names) or 'none (run egoqa enqueue)'}"
            )


def progress(db: Database, run: str | None = None) -> Table:
    if run:
        run_exists(db, run)
    where = "WHERE run = :run" if run else ""
    return _query(
        db,
        f"SELECT run, turn_index, turn, state, n FROM progress {where} ORDER BY run, turn_index, state",
        {"run": run},
    )


def engines(db: Database) -> Table:
    """Each engine's jobs by state: what `egoqa work --engine ID` would serve."""
    return _query(
        db,
        """SELECT engine, model, MIN(spec) AS spec,
                  SUM(CASE WHEN state = 'ready' THEN 1 ELSE 0 END) AS ready,
                  SUM(CASE WHEN state = 'running' THEN 1 ELSE 0 END) AS running,
                  SUM(CASE WHEN state = 'blocked' THEN 1 ELSE 0 END) AS blocked,
                  SUM(CASE WHEN state = 'done' THEN 1 ELSE 0 END) AS done,
                  SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS failed
             FROM jobs GROUP BY engine, model ORDER BY engine""",
    ).map_column("spec", "dtype", _dtype)


def _dtype(spec: str) -> str | None:
    """The engine's dtype of a job's spec; a prior baseline's job has no engine."""
    return (json.loads(spec).get("engine") or {}).get("dtype")


def zoom_stops(db: Database) -> dict[str, int]:
    """Zoom levels that ended short of their target window, by reason (see `failures`)."""
    sql = "SELECT stop_reason, COUNT(*) FROM jobs WHERE stop_reason IS NOT NULL GROUP BY 1"
    return dict(_query(db, sql).rows)


def job_states(db: Database, engine: str | None = None) -> dict[str, int]:
    """Jobs by state (of one engine, when given)."""
    where = "WHERE engine = :e" if engine else ""
    sql = f"SELECT state, COUNT(*) FROM jobs {where} GROUP BY state"
    return dict(_query(db, sql, {"e": engine}).rows)


def runs(db: Database) -> Table:
    return _query(
        db,
        """SELECT r.name AS run, json_extract(r.config, '$.style') AS style,
                  json_extract(r.config, '$.model') AS model, COUNT(ri.id) AS queries,
                  SUM(CASE WHEN j.state = 'done' THEN 1 ELSE 0 END) AS graded_done,
                  SUM(CASE WHEN j.state = 'failed' THEN 1 ELSE 0 END) AS graded_failed
             FROM runs r LEFT JOIN run_items ri ON ri.run_id = r.id
             LEFT JOIN jobs j ON j.id = ri.graded_job_id
            GROUP BY r.id, r.name, r.config ORDER BY r.id"""
        if db.is_sqlite
        else """SELECT r.name AS run, r.config::json->>'style' AS style, r.config::json->>'model' AS model,
                  COUNT(ri.id) AS queries,
                  SUM(CASE WHEN j.state = 'done' THEN 1 ELSE 0 END) AS graded_done,
                  SUM(CASE WHEN j.state = 'failed' THEN 1 ELSE 0 END) AS graded_failed
             FROM runs r LEFT JOIN run_items ri ON ri.run_id = r.id
             LEFT JOIN jobs j ON j.id = ri.graded_job_id
            GROUP BY r.id, r.name, r.config ORDER BY r.id""",
    )


def failed_job_ids(db: Database, run: str | None) -> list[int] | None:
    if run is None:
        return None
    run_exists(db, run)
    t = _query(
        db,
        """SELECT DISTINCT ij.job_id FROM item_jobs ij JOIN run_items ri ON ri.id = ij.item_id
             JOIN runs r ON r.id = ri.run_id JOIN jobs j ON j.id = ij.job_id
            WHERE r.name = :run AND j.state = 'failed'""",
        {"run": run},
    )
    return [r[0] for r in t.rows]


def read_only_sql(db: Database, statement: str, timeout_s: float | None = None) -> Table:
    """Run one statement on a read-only connection; the database itself refuses writes.
    Ctrl-C cancels it (exit 130), and so does `timeout_s` (see store.statement)."""
    from egoqa.store.statement import run_statement

    try:
        return Table(*run_statement(db, statement, timeout_s))
    except DatabaseError as exc:
        if "read-only" in str(exc) or "readonly" in str(exc):
            raise ReadOnlyViolation(
                "egoqa sql is read-only: the statement tried to write; nothing was changed"
            ) from None
        if "too many attached databases" in str(exc):  # the read-only connection allows none
            raise ReadOnlyViolation(
                "egoqa sql is read-only and cannot ATTACH other databases; nothing was changed"
            ) from None
        raise DatabaseError(
            f"{exc} (egoqa sql runs one read-only statement; fix it and retry)"
        ) from None
    except sqlite3.Error as exc:
        raise DatabaseError(f"SQL error: {exc}") from None
    except Exception as exc:  # psycopg errors, without importing psycopg here
        name = type(exc).__name__
        if name == "ReadOnlySqlTransaction":
            raise ReadOnlyViolation(
                "egoqa sql is read-only: the statement tried to write; nothing was changed"
            ) from None
        if type(exc).__module__.startswith("psycopg"):
            raise DatabaseError(f"SQL error: {str(exc).strip().splitlines()[0]}") from None
        raise
