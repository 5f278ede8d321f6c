"""What a run's annotation files held that could not be enqueued: one `run_sources` row per file
a run was enqueued from, and its `skipped_records` with their query ids and reasons.

They are written in the transaction that plans the run, so the export can count every query of
the file (a skipped one as a miss) even after the file has moved or changed.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from egoqa.store.db import Cursor, Database


@dataclass(frozen=True)
class SkippedQuery:
    """A skipped record; its query id is complete only where the record carried one."""

    clip_uid: str | None
    annotation_uid: str | None
    query_idx: int | None
    reason: str

    @property
    def key(self) -> tuple[str, str, int] | None:
        """(clip_uid, annotation_uid, query_idx), or None where a part is unknown."""
        if self.clip_uid is None or self.annotation_uid is None or self.query_idx is None:
            return None
        return self.clip_uid, self.annotation_uid, self.query_idx


def record_source(
    cur: Cursor, run_id: int, annotations: str, queries: int, skipped: Sequence
) -> None:
    """Record (or replace, on a re-enqueue of the same file) what one file gave a run.

    `skipped` holds the loader's records: objects with clip_uid, annotation_uid, query_idx,
    reason and detail.
    """
    params = {"run": run_id, "ann": annotations, "now": time.time()}
    cur.execute(
        """INSERT INTO run_sources (run_id, annotations, enqueued_at, queries, skipped)
           VALUES (:run, :ann, :now, :queries, :skipped)
           ON CONFLICT (run_id, annotations) DO UPDATE SET enqueued_at = excluded.enqueued_at,
             queries = excluded.queries, skipped = excluded.skipped""",
        params | {"queries": queries, "skipped": len(skipped)},
    )
    source = cur.one(
        "SELECT id FROM run_sources WHERE run_id = :run AND annotations = :ann", params
    )
    cur.execute("DELETE FROM skipped_records WHERE source_id = :s", {"s": source})
    cur.executemany(
        """INSERT INTO skipped_records (source_id, clip_uid, annotation_uid, query_idx, reason,
                                        detail)
           VALUES (:s, :clip, :ann, :idx, :reason, :detail)""",
        [
            {
                "s": source,
                "clip": s.clip_uid,
                "ann": s.annotation_uid,
                "idx": s.query_idx,
                "reason": s.reason,
                "detail": s.detail,
            }
            for s in skipped
        ],
    )


def skipped_queries(db: Database, run: str) -> list[SkippedQuery]:
    """Every record skipped while the run was enqueued, from all its files, in file order."""
    with db.read() as cur:
        rows = cur.all(
            """SELECT s.clip_uid, s.annotation_uid, s.query_idx, s.reason
                 FROM skipped_records s JOIN run_sources src ON src.id = s.source_id
                 JOIN runs r ON r.id = src.run_id
                WHERE r.name = :run ORDER BY src.id, s.id""",
            {"run": run},
        )
    return [SkippedQuery(*row) for row in rows]


def written_as_misses(
    skipped: Sequence[SkippedQuery], enqueued: set[tuple[str, str, int]]
) -> list[SkippedQuery]:
    """The skipped records the export writes as misses: each query once (a record repeated, or
    enqueued from another file, is not written again), and only those with a full query id."""
    out, seen = [], set(enqueued)
    for s in skipped:
        if s.key is not None and s.key not in seen:
            out.append(s)
            seen.add(s.key)
    return out


def skipped_counts(skipped: Sequence[SkippedQuery]) -> dict[str, int]:
    """How many records were skipped, per reason."""
    return dict(sorted(Counter(s.reason for s in skipped).items()))


def sources_recorded(db: Database, run: str) -> int:
    """How many annotation files the run has records of (0 for runs enqueued before they were
    kept: enqueue such a run again, a no-op for its jobs, to record them)."""
    with db.read() as cur:
        return cur.one(
            """SELECT COUNT(*) FROM run_sources src JOIN runs r ON r.id = src.run_id
                WHERE r.name = :run""",
            {"run": run},
        )
