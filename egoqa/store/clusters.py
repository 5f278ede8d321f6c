"""The `query_clusters` table: a run's query texts in, one clustering per (run, method) out.

Writing a method's clustering again replaces it in one transaction; the `results` view shows
the run's latest one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from egoqa.store.db import Database

_TEXTS = """
SELECT q.id, q.text FROM run_items ri JOIN runs r ON r.id = ri.run_id
  JOIN queries q ON q.id = ri.query_id
 WHERE r.name = :run ORDER BY q.id
"""
_INSERT = """
INSERT INTO query_clusters (run_id, method, query_id, cluster, label, computed_at)
VALUES (:run_id, :method, :query_id, :cluster, :label, :now)
"""


def query_texts(db: Database, run: str) -> list[tuple[int, str]]:
    """(query id, text) of every query of the run, in query id order."""
    with db.read() as cur:
        return [(int(i), t) for i, t in cur.all(_TEXTS, {"run": run})]


def save_clusters(
    db: Database,
    run: str,
    method: str,
    assignments: Sequence[tuple[int, int]],
    labels: dict[int, str],
) -> int:
    """Store (query id, cluster) pairs for the run and method, replacing earlier ones."""
    now = time.time()
    with db.write() as cur:
        run_id = cur.one("SELECT id FROM runs WHERE name = :run", {"run": run})
        cur.execute(
            "DELETE FROM query_clusters WHERE run_id = :r AND method = :m",
            {"r": run_id, "m": method},
        )
        rows = [
            {"run_id": run_id, "method": method, "query_id": q, "cluster": c}
            | {"label": labels[c], "now": now}
            for q, c in assignments
        ]
        cur.executemany(_INSERT, rows)
    return len(rows)
