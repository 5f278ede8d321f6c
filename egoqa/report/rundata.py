"""A run as the report reads it: its rows of the `results` view (plain dicts, in query order),
its settings, and what each row's state means (done, failed or pending; scored or not).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from egoqa.store import results, skips
from egoqa.store.db import Database
from egoqa.store.read import run_exists


@dataclass
class RunData:
    """One run's rows of the `results` view (plain dicts, in query order) and its settings."""

    run: str
    rows: list[dict]
    config: dict
    style: dict
    graded_turn: str
    created_at: float
    enqueued_with: dict
    skipped: list[skips.SkippedQuery] = field(default_factory=list)

    @property
    def oracle(self) -> bool:
        """True when a zoom turn chose its windows by the ground truth (the original's oracle):
        its scores are an upper bound, not a result, and every table and chart says so."""
        return any(t.get("zoom") == "oracle" for t in self.style.get("turns", []))

    @property
    def graded(self) -> bool:
        """False for an answer-only style: its results rows show answers and carry no scores."""
        return any(t.get("graded") for t in self.style.get("turns", []))

    @property
    def ground_truth(self) -> bool:
        """False for a run over queries without answer windows (the unannotated test split)."""
        return any(has_truth(r) for r in self.rows)

    @property
    def samples(self) -> int:
        """How many samples the graded turn drew (best-of-n is reported when more than one)."""
        turns = [t for t in self.style.get("turns", []) if t.get("name") == self.graded_turn]
        return int(turns[0].get("samples", 1)) if turns else 1


def status_of(row: dict) -> str:
    """done, failed or pending (blocked, ready or running)."""
    state = row["state"]
    return state if state in ("done", "failed") else "pending"


def has_truth(row: dict) -> bool:
    """The query has an answer window to score against."""
    return row["gt_start"] is not None and row["gt_end"] is not None


def needs_scoring(row: dict) -> bool:
    """Finished, but its scores (or, without ground truth, its segments) are not stored yet."""
    if status_of(row) != "done":
        return False
    return row["outcome"] is None if has_truth(row) else row["segments"] is None


def outcome_of(row: dict) -> str:
    """The scored outcome, or pending / unscored where the query has no scores yet."""
    if row["outcome"] is not None:
        return row["outcome"]
    return "unscored" if status_of(row) == "done" else "pending"


def load_run(db: Database, run: str) -> RunData:
    """The run's results rows and settings; UnknownRun names the runs there are."""
    run_exists(db, run)
    meta = results.run_settings(db, run)
    rows = results.run_results(db, run)
    return RunData(
        run=run,
        rows=rows,
        config=json.loads(meta["config"]),
        style=json.loads(meta["style"]),
        graded_turn=meta["graded_turn"],
        created_at=meta["created_at"],
        enqueued_with=json.loads(meta["provenance"] or "{}"),
        skipped=skips.skipped_queries(db, run),
    )
