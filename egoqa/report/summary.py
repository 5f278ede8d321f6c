"""Reading a run: metrics and breakdowns over the `results` view, as plain data and as tables.

Every enqueued query counts: a failed or still pending one is a miss. Metrics are computed by
`answers.metrics.summarize`, so the report, the views and a hand computation agree. A run without
ground truth (the unannotated test split) has counts and answers, no metrics. The records its
annotation files held that could not be enqueued are counted beside the scores. The files a
report writes are `report.files`'s, the official prediction file `report.export`'s. Nothing prints here.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from egoqa.answers.metrics import Outcome, Scores, failed_scores, summarize, union_length
from egoqa.errors import EgoqaError
from egoqa.report.compare import intervals, paired_all
from egoqa.report.rundata import RunData, load_run, needs_scoring, outcome_of, status_of
from egoqa.report.ungraded import answers_report
from egoqa.store import results, skips
from egoqa.store.db import Database
from egoqa.store.read import run_exists

METRICS = ("coverage", "r1_03", "r1_05", "r5_03", "r5_05", "mean_r1", "miou")
BEST_METRICS = ("coverage", "r1_03", "r1_05", "mean_r1", "miou")
OUTCOMES = (*(o.value for o in Outcome), "pending")
ALL = "(all)"  # the total row of the outcome table; parenthesised so no query type can clash
# metric: (its name in the summary table and the charts, its short head in breakdown tables)
METRIC_NAMES = {
    "coverage": ("coverage", "cov"),
    "r1_03": ("R@1 IoU>0.3", "R1@.3"),
    "r1_05": ("R@1 IoU>0.5", "R1@.5"),
    "r5_03": ("R@5 IoU>0.3", "R5@.3"),
    "r5_05": ("R@5 IoU>0.5", "R5@.5"),
    "mean_r1": ("mean R@1", "mR1"),
    "miou": ("mIoU", "mIoU"),
    "pred_length": ("mean predicted length, % of clip", "len"),
}


class NothingToReport(EgoqaError):
    """The run has no finished query yet: run `egoqa work` first."""


class UnscoredResults(EgoqaError):
    """Finished queries carry no scores yet: run `egoqa report --rescore` first."""


class UngradedRun(EgoqaError):
    """The run's style grades no turn (an answer-only baseline): it has answers, no scores."""


# --- loading -----------------------------------------------------------------------------------


def require_scorable(data: RunData) -> None:
    """Something finished, and a graded turn to score it by."""
    require_finished(data)
    if not data.graded:
        raise UngradedRun(
            f"run {data.run!r} is ungraded (its style grades no turn): it has answers, no "
            f"scores or segments; `egoqa report --run {data.run}` lists the answers"
        )


def _finished(data: RunData) -> None:
    require_finished(data)


def require_finished(data: RunData) -> None:
    counts = _counts(data.rows)
    if counts["done"] + counts["failed"] == 0:
        raise NothingToReport(
            f"run {data.run!r} has nothing finished yet ({counts['pending']} queries pending): "
            f"run `egoqa work`, and watch it with `egoqa status --run {data.run}`"
        )


# --- metrics -----------------------------------------------------------------------------------


def row_scores(row: dict, best: bool = False) -> Scores:
    """A results row as evaluate.Scores; pending and unscored rows are misses."""
    if row["outcome"] is None:
        return failed_scores()
    p = "best_" if best else ""
    return Scores(
        correct=bool(row[p + "correct"]),
        iou_top1=float(row[p + "iou_top1"]),
        r1_03=bool(row[p + "r1_03"]),
        r1_05=bool(row[p + "r1_05"]),
        r5_03=False if best else bool(row["r5_03"]),
        r5_05=False if best else bool(row["r5_05"]),
        outcome=Outcome(row["outcome"]),
        n_segments=int(row["n_segments"]),
    )


def metrics(rows: Sequence[dict], best: bool = False) -> dict[str, float]:
    """Fractions over all rows (best-of-n has no Recall@5: only the top window of a sample)."""
    out = summarize(row_scores(r, best) for r in rows)
    return {k: out[k] for k in (BEST_METRICS if best else METRICS)}


def pred_length(rows: Sequence[dict]) -> float | None:
    """Mean length of the predicted segments (their union) as a fraction of the clip, over the
    queries with a prediction: beside coverage it shows what a score cost (the whole clip is 1)."""
    fractions = [
        union_length(json.loads(r["segments"])) / r["clip_duration"]
        for r in rows
        if r["segments"] not in (None, "[]") and r.get("clip_duration")
    ]
    return sum(fractions) / len(fractions) if fractions else None


def _counts(rows: Sequence[dict]) -> dict[str, int]:
    status = Counter(map(status_of, rows))
    return {"n": len(rows), **{k: status[k] for k in ("done", "failed", "pending")}}


HEADLINE_SCOPE = (
    "every query of the run's annotation files, as `egoqa export` writes them (the skipped ones "
    "as misses): the number the official NLQ evaluation script prints for the export"
)
ENQUEUED_SCOPE = "the enqueued queries only (the skipped ones left out)"


def exported_misses(data: RunData) -> int:
    """How many skipped records the export writes as misses beside the enqueued queries."""
    enqueued = {(r["clip_uid"], r["annotation_uid"], r["query_idx"]) for r in data.rows}
    return len(skips.written_as_misses(data.skipped, enqueued))


def headline(data: RunData) -> dict[str, Any]:
    """The metrics over what the export holds — every enqueued query, and each skipped record
    with a query id as a miss — which is what the official script averages over."""
    misses = exported_misses(data)
    scores = [*map(row_scores, data.rows), *(failed_scores() for _ in range(misses))]
    out = summarize(scores)
    head = {"scope": HEADLINE_SCOPE, "queries": len(data.rows) + misses}
    return head | {k: out[k] for k in METRICS}


def headline_text(s: dict, metric: str = "r1_03") -> str | None:
    """One line for titles: the headline metric over the file as exported, the enqueued-only
    number beside it (None without ground truth)."""
    head, enqueued = s.get("headline"), s.get("enqueued_only")
    if not head:
        return None
    name = METRIC_NAMES[metric][0]
    return (
        f"{name} {100 * head[metric]:.1f} % over all {head['queries']:,} queries of the file "
        f"(official script, as exported); {100 * enqueued[metric]:.1f} % over the "
        f"{enqueued['queries']:,} enqueued"
    )


def summary(data: RunData) -> dict[str, Any]:
    """Counts, the official metrics and coverage, and best-of-n where the graded turn sampled n;
    with no ground truth the metrics are None.

    `headline` holds the metrics over every query of the run's annotation files as the export
    writes them (the skipped ones as misses): what the official script prints for the export.
    `enqueued_only` holds them over the enqueued queries, as do the flat metric keys (kept for
    the scripts that read them) and every breakdown. `skipped` counts the records that could
    not be enqueued."""
    truth = data.ground_truth
    out = {
        "run": data.run,
        "graded_turn": data.graded_turn,
        "oracle": data.oracle,
        "samples": data.samples,
        **_counts(data.rows),
        "unscored": sum(map(needs_scoring, data.rows)),
        "skipped": len(data.skipped),
        "skipped_by_reason": skips.skipped_counts(data.skipped),
        "ground_truth": truth,
    }
    out |= metrics(data.rows) if truth else dict.fromkeys(METRICS)
    out["headline"] = headline(data) if truth else None
    enqueued = {"scope": ENQUEUED_SCOPE, "queries": len(data.rows)}
    out["enqueued_only"] = enqueued | {k: out[k] for k in METRICS} if truth else None
    out["pred_length"] = pred_length(data.rows)
    out["intervals"] = _intervals(data.rows, out) if truth else None
    out["best_of_n"] = metrics(data.rows, best=True) if truth and data.samples > 1 else None
    return out


def _intervals(rows: Sequence[dict], values: dict) -> dict:

    return intervals(rows, values)


def _label(value: str | None) -> str:
    return value or "(none)"  # no template, or a query without a first word


def cluster_name(row: dict) -> str | None:
    """A query's cluster as the report shows it: its number and its words."""
    return None if row.get("cluster") is None else f"{row['cluster']}: {row['cluster_label']}"


def _breakdown(data: RunData, key: str, value=None) -> list[dict]:
    import pandas as pd

    frame = pd.DataFrame({key: [_label(value(r) if value else r[key]) for r in data.rows]})
    out = []
    for label, positions in frame.groupby(key, sort=True).indices.items():
        rows = [data.rows[i] for i in positions]
        scores = metrics(rows) | {"pred_length": pred_length(rows)} if data.ground_truth else {}
        out.append({key: label, **_counts(rows), **scores})
    return sorted(out, key=lambda r: -r["n"])


def _by_cluster(data: RunData) -> list[dict]:
    """The breakdown by semantic cluster (`egoqa cluster`), or [] when the run has none."""
    if not any(r.get("cluster") is not None for r in data.rows):
        return []
    return _breakdown(data, "cluster", cluster_name)


def outcomes(data: RunData) -> list[dict]:
    """How predictions miss, by query type: the confusion of outcomes, with a total row (none
    without ground truth: nothing can miss it)."""
    import pandas as pd

    if not data.ground_truth:
        return []
    frame = pd.DataFrame(
        {
            "query_type": [_label(r["query_type"]) for r in data.rows],
            "outcome": map(outcome_of, data.rows),
        }
    )
    table = pd.crosstab(frame["query_type"], frame["outcome"], margins=True, margins_name=ALL)
    columns = [*OUTCOMES, *(["unscored"] if "unscored" in table.columns else [])]
    table = table.reindex(columns=[*columns, ALL], fill_value=0)
    rows = [
        {"query_type": qt, "n": int(row[ALL]), **{c: int(row[c]) for c in columns}}
        for qt, row in table.iterrows()
    ]
    return sorted(rows, key=lambda r: (r["query_type"] == ALL, -r["n"], r["query_type"]))


def failures(db: Database, data: RunData) -> list[dict]:
    """Failed jobs by kind: how many, on which turns, how many queries they cost, an example."""
    jobs = results.run_failures(db, data.run)
    lost = Counter(r["error_kind"] or "unknown" for r in data.rows if status_of(r) == "failed")
    out = []
    for kind in dict.fromkeys([*(j["kind"] or "unknown" for j in jobs), *lost]):
        mine = [j for j in jobs if (j["kind"] or "unknown") == kind]
        turns = list(dict.fromkeys(j["turn"] for j in mine))
        example = mine[0]["message"] if mine else None
        out.append(
            {
                "kind": kind,
                "jobs": len(mine),
                "turns": turns,
                "queries": lost[kind],
                "example": example,
            }
        )
    return sorted(out, key=lambda e: (-e["jobs"], e["kind"]))


def answers(data: RunData) -> list[dict]:
    """Every query's predicted windows, best first (top 5, as exported); [] for a pending or
    failed query. What a run without ground truth has to show instead of scores."""
    out = []
    for r in data.rows:
        windows = [[s, e] for s, e, _ in json.loads(r["segments"] or "[]")][:5]
        item = {k: r[k] for k in ("clip_uid", "annotation_uid", "query_idx", "query")}
        out.append(item | {"status": status_of(r), "predicted_times": windows})
    return out


def compare(db: Database, runs: Iterable[str]) -> list[dict]:
    """Runs side by side: counts and metrics of each over its own queries."""
    out = []
    for run in runs:
        data = load_run(db, run)
        if not data.graded:
            require_scorable(data)
        s = summary(data)
        keys = ("n", "done", "failed", "pending", *METRICS, "pred_length", "best_of_n")
        keys += ("intervals",)
        out.append({"run": run, **{k: s[k] for k in keys}, "oracle": data.oracle})
    return out


def query_sets(db: Database, runs: Sequence[str]) -> dict[str, set[tuple]]:
    """Each run's queries as (clip_uid, annotation_uid, query_idx)."""
    out: dict[str, set[tuple]] = {}
    for run in runs:
        rows = results.run_results(db, run)
        out[run] = {(r["clip_uid"], r["annotation_uid"], r["query_idx"]) for r in rows}
    return out


def oracle_label(row: dict) -> str:
    """A compared run's name, marked where its zoom chose windows by the ground truth."""
    return f"{row['run']} (oracle)" if row.get("oracle") else row["run"]


def run_cost(db: Database, run: str, config: dict) -> dict | None:
    from egoqa.report.cost import run_cost as cost

    return cost(db, run, config)


def build(
    db: Database, run: str, compare_with: Sequence[str] = (), *, require_finished: bool = True
) -> dict[str, Any]:
    """Everything `egoqa report` shows: the summary and every breakdown, as plain data."""
    data = load_run(db, run)
    if require_finished:
        _finished(data)
    if not data.graded:
        return answers_report(data)
    methods = {r.get("cluster_method") for r in data.rows} - {None}
    return {
        "summary": summary(data),
        "by_query_type": _breakdown(data, "query_type"),
        "by_template": _breakdown(data, "template"),
        "by_cluster": _by_cluster(data),
        "cluster_method": min(methods) if methods else None,
        "by_clip": _breakdown(data, "clip_uid"),
        "outcomes": outcomes(data),
        "failures": failures(db, data),
        "answers": [] if data.ground_truth else answers(data),
        "compare": compare(db, [run, *[r for r in compare_with if r != run]])
        if compare_with
        else [],
        "paired": _paired(db, data, compare_with),
        "published": _published(db, data),
        "cost": run_cost(db, run, data.config),
    }


def _published(db: Database, data: RunData) -> dict | None:
    """The published results of the run's split (`egoqa.report.published`), or None."""
    from egoqa.report import published

    split, version = published.split_of(results.run_annotations(db, data.run))
    found = published.matching(split, version) if data.ground_truth else []
    if not found:
        return None
    shown = [p.to_dict() for p in found]
    return {"label": published.LABEL, "split": split, "version": version, "results": shown}


def _paired(db: Database, data: RunData, others: Sequence[str]) -> list[dict]:
    """Each pair of the compared runs, over the queries both finished (`egoqa.report.compare`)."""

    names = [r for r in dict.fromkeys(others) if r != data.run]
    return paired_all([data, *(load_run(db, r) for r in names)]) if names else []


def rescore(db: Database, run: str) -> int:
    """Recompute the run's scores from the stored responses (no model call); returns how many."""
    from egoqa.answers.scoring import score_items

    run_exists(db, run)
    return score_items(db, run=run)
