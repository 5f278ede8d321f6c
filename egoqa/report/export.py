"""The official Ego4D NLQ prediction file of a run, for the evaluation server.

The official script averages over the predictions it is given, so the file holds every query of
the run's annotation files: the enqueued ones with their predicted windows (a miss as
[[0.0, 0.0]]), and the records that could not be enqueued as misses too, unless the caller asks
for the enqueued ones only. A run without ground truth (the test split) needs no scores, only
its parsed segments. Nothing prints here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from egoqa.answers.metrics import (
    MISS_WINDOW,
    NLQ_CHALLENGE,
    NLQ_VERSION,
    Segment,
    nlq_prediction,
    validate_nlq_predictions,
)
from egoqa.errors import EgoqaError
from egoqa.report.summary import UnscoredResults, load_run, needs_scoring, require_scorable
from egoqa.store import skips
from egoqa.store.db import Database


@dataclass
class NlqExport:
    """The prediction file, and what it holds: how many queries were enqueued (and missed), the
    skipped records written as misses and those left out, per reason."""

    predictions: dict
    enqueued: int
    misses: int
    skipped: dict[str, int] = field(default_factory=dict)
    left_out: dict[str, int] = field(default_factory=dict)
    no_query_id: dict[str, int] = field(default_factory=dict)
    skips_recorded: bool = True

    @property
    def written(self) -> int:
        return len(self.predictions["results"])


def _segments(text: str | None) -> list[Segment]:
    return [Segment(s, e, c) for s, e, c in json.loads(text or "[]")]


def _enqueued(rows: list[dict]) -> list[dict]:
    return [
        nlq_prediction(r["clip_uid"], r["annotation_uid"], r["query_idx"], _segments(r["segments"]))
        for r in rows
    ]


def _add_skipped(
    results: list[dict], skipped: list[skips.SkippedQuery], out: NlqExport, only_enqueued: bool
) -> None:
    """Append the skipped records as misses (each query once, never one that was enqueued)."""
    enqueued = {(p["clip_uid"], p["annotation_uid"], p["query_idx"]) for p in results}
    misses = skips.written_as_misses(skipped, enqueued)
    if not only_enqueued:
        results += [nlq_prediction(*s.key, []) for s in misses]
    counts = skips.skipped_counts(misses)
    out.skipped, out.left_out = ({}, counts) if only_enqueued else (counts, {})
    out.no_query_id = skips.skipped_counts([s for s in skipped if s.key is None])


class OracleRun(EgoqaError):
    """The run's zoom was chosen by the ground truth: not a fair submission."""


def export_nlq(
    db: Database, run: str, *, only_enqueued: bool = False, allow_oracle: bool = False
) -> NlqExport:
    """The Ego4D NLQ prediction file for every query of the run's annotation files (misses as
    [[0.0, 0.0]]; with `only_enqueued`, the enqueued queries alone), checked against the
    official format and the query ids before it is returned."""
    data = load_run(db, run)
    require_scorable(data)
    if data.oracle and not allow_oracle:
        raise OracleRun(
            f"run {run!r} zoomed by the ground truth (zoom = 'oracle'): its windows were chosen "
            "knowing the answer, so its predictions are not a fair submission; pass "
            "--allow-oracle to export them anyway"
        )
    unscored = sum(map(needs_scoring, data.rows))
    if unscored:
        raise UnscoredResults(
            f"{unscored} finished queries of run {run!r} have no scores yet: "
            f"run `egoqa report --run {run} --rescore`, then export again"
        )
    results = _enqueued(data.rows)
    misses = sum(p["predicted_times"] == [MISS_WINDOW] for p in results)
    out = NlqExport({}, enqueued=len(results), misses=misses)
    out.skips_recorded = skips.sources_recorded(db, run) > 0
    _add_skipped(results, data.skipped, out, only_enqueued)
    results.sort(key=lambda p: (p["clip_uid"], p["annotation_uid"], p["query_idx"]))
    out.predictions = {"version": NLQ_VERSION, "challenge": NLQ_CHALLENGE, "results": results}
    ids = [(p["clip_uid"], p["annotation_uid"], p["query_idx"]) for p in results]
    validate_nlq_predictions(out.predictions, ids)
    return out
