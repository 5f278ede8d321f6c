"""What a worker reads besides its claims: which engine to serve, the settings of the runs that use
it, a clip's video, and the chosen responses its jobs embed."""

from __future__ import annotations

import json
from dataclasses import dataclass

from egoqa.store.db import Database, in_list

PENDING = "('ready', 'running', 'blocked')"


@dataclass(frozen=True)
class EngineRow:
    engine: str  # the engine's id
    spec: dict  # model, revision, dtype, attention, quantisation, max pixels, backend
    run_config: str | None  # the newest run's config JSON that uses it (batch policy, lease)
    pending: int


def choose_engine(db: Database, model: str | None = None) -> EngineRow | None:
    """The engine with most pending jobs (of `model`, when given); None when nothing is pending."""
    where = " AND model = :m" if model is not None else ""
    with db.read() as cur:
        row = cur.execute(
            f"""SELECT engine, COUNT(*) FROM jobs WHERE state IN {PENDING}{where}
                 GROUP BY engine ORDER BY COUNT(*) DESC, engine LIMIT 1""",
            {"m": model},
        ).fetchone()
        if row is None:
            return None
        return _engine_row(cur, row[0], row[1])


def engine_row(db: Database, engine: str) -> EngineRow | None:
    """An engine by id (any job of it, pending or not)."""
    with db.read() as cur:
        n = cur.one(
            f"SELECT COUNT(*) FROM jobs WHERE engine = :e AND state IN {PENDING}", {"e": engine}
        )
        if not cur.one("SELECT COUNT(*) FROM jobs WHERE engine = :e", {"e": engine}):
            return None
        return _engine_row(cur, engine, n)


def _engine_row(cur, engine: str, pending: int) -> EngineRow:
    spec = cur.one("SELECT spec FROM jobs WHERE engine = :e LIMIT 1", {"e": engine})
    config = cur.one(
        """SELECT r.config FROM runs r JOIN run_items ri ON ri.run_id = r.id
             JOIN item_jobs ij ON ij.item_id = ri.id JOIN jobs j ON j.id = ij.job_id
            WHERE j.engine = :e ORDER BY r.id DESC LIMIT 1""",
        {"e": engine},
    )
    return EngineRow(engine, json.loads(spec)["engine"], config, pending)


def pending_engines(db: Database) -> list[tuple[str, str, int]]:
    """(engine id, model, pending jobs) of every engine with pending jobs, most first."""
    with db.read() as cur:
        return cur.all(
            f"""SELECT engine, model, COUNT(*) FROM jobs WHERE state IN {PENDING}
                 GROUP BY engine, model ORDER BY COUNT(*) DESC, engine"""
        )


def engines_starting(db: Database, prefix: str) -> list[str]:
    """Engine ids that begin with `prefix` (an id cut short, as a narrow `status` shows it)."""
    with db.read() as cur:
        ids = [r[0] for r in cur.all("SELECT DISTINCT engine FROM jobs")]
    return sorted(e for e in ids if e.startswith(prefix))


def engines_of_model(db: Database, model: str) -> list[str]:
    with db.read() as cur:
        return [
            r[0] for r in cur.all("SELECT DISTINCT engine FROM jobs WHERE model = :m", {"m": model})
        ]


def clip_video(db: Database, clip_id: int) -> tuple[str, float, float]:
    """(video path, offset in the file, clip duration) of a clip."""
    with db.read() as cur:
        row = cur.execute(
            "SELECT video_path, offset_sec, duration_sec FROM clips WHERE id = :id", {"id": clip_id}
        ).fetchone()
    return row[0], row[1], row[2]


def responses_by_key(db: Database, keys: list[str]) -> dict[str, str | None]:
    """The chosen response of each job, by key (None where a job has none)."""
    if not keys:
        return {}
    frag, params = in_list("k", keys)
    with db.read() as cur:
        return dict(cur.all(f"SELECT key, response FROM jobs WHERE key IN {frag}", params))
