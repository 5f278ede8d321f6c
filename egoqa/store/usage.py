"""Tokens a run's turns used (from the `turns` view), split by whether the run computed them or
found them in the cache (jobs enqueued before the run, by another run)."""

from __future__ import annotations

from egoqa.store.db import Database
from egoqa.store.results import records

TURN_TOKENS = """
SELECT t.turn_index AS turn_index, t.turn AS turn,
       CASE WHEN j.created_at < r.created_at THEN 1 ELSE 0 END AS cached,
       COUNT(*) AS jobs, COALESCE(SUM(t.prompt_tokens), 0) AS prompt_tokens,
       COALESCE(SUM(t.completion_tokens), 0) AS completion_tokens
  FROM turns t JOIN jobs j ON j.id = t.job_id JOIN runs r ON r.name = t.run
 WHERE t.run = :run AND t.state = 'done'
 GROUP BY t.turn_index, t.turn, CASE WHEN j.created_at < r.created_at THEN 1 ELSE 0 END
 ORDER BY t.turn_index, cached
"""


def turn_tokens(db: Database, run: str) -> list[dict]:
    """Per turn and cached (0/1): done jobs, prompt and completion tokens."""
    return records(db, TURN_TOKENS, {"run": run})


FINGERPRINTS = """
SELECT engine, model, COUNT(DISTINCT system_fingerprint) AS fingerprints,
       COUNT(DISTINCT served_model) AS served_models
  FROM jobs WHERE state = 'done' AND (system_fingerprint IS NOT NULL OR served_model IS NOT NULL)
 GROUP BY engine, model
HAVING COUNT(DISTINCT system_fingerprint) > 1 OR COUNT(DISTINCT served_model) > 1
"""


def mixed_fingerprints(db: Database) -> list[dict]:
    """Engines whose results came from more than one server configuration or served model."""
    return records(db, FINGERPRINTS)
