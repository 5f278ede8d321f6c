"""Learned batch sizes: the largest batch that fit and the smallest that ran out of memory, per
engine (model, dtype, ...) and media spec, shared by every worker through the database."""

from __future__ import annotations

from egoqa.store.db import Database

UPSERT = """
INSERT INTO batch_limits (engine, media_key, max_ok, min_fail, updated_at)
VALUES (:e, :k, :ok, :failed, {now})
ON CONFLICT (engine, media_key) DO UPDATE SET
  max_ok = CASE WHEN excluded.max_ok IS NULL THEN batch_limits.max_ok
                WHEN batch_limits.max_ok IS NULL OR excluded.max_ok > batch_limits.max_ok
                THEN excluded.max_ok ELSE batch_limits.max_ok END,
  min_fail = CASE WHEN excluded.min_fail IS NULL THEN batch_limits.min_fail
                  WHEN batch_limits.min_fail IS NULL OR excluded.min_fail < batch_limits.min_fail
                  THEN excluded.min_fail ELSE batch_limits.min_fail END,
  updated_at = excluded.updated_at
"""


def batch_limit(db: Database, engine: str, media_key: str) -> tuple[int | None, int | None]:
    with db.read() as cur:
        row = cur.execute(
            "SELECT max_ok, min_fail FROM batch_limits WHERE engine = :e AND media_key = :k",
            {"e": engine, "k": media_key},
        ).fetchone()
    return (row[0], row[1]) if row else (None, None)


def record_batch(
    db: Database, engine: str, media_key: str, *, ok: int | None = None, failed: int | None = None
) -> None:
    """Remember the largest batch that fit and the smallest that ran out of memory."""
    with db.write() as cur:
        cur.execute(
            UPSERT.format(now=db.now), {"e": engine, "k": media_key, "ok": ok, "failed": failed}
        )
