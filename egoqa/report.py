"""Reading a run: metrics and breakdowns over the `results` view, the files a report writes
(results.json, results.csv, PNG charts) and the official Ego4D NLQ prediction file.

Every enqueued query counts: a failed or still pending one is a miss. Metrics are computed by
`evaluate.summarize`, so the report, the views and a hand computation agree. Nothing prints here.
"""

from __future__ import annotations

import json
import platform
import subprocess
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from egoqa import __version__
from egoqa.errors import EgoqaError
from egoqa.evaluate import (
    NLQ_CHALLENGE,
    NLQ_VERSION,
    Outcome,
    Scores,
    Segment,
    failed_scores,
    nlq_prediction,
    summarize,
    union_length,
    validate_nlq_predictions,
)
from egoqa.status import run_exists
from egoqa.store.db import Database

METRICS = ("coverage", "r1_03", "r1_05", "r5_03", "r5_05", "mean_r1", "miou")
BEST_METRICS = ("coverage", "r1_03", "r1_05", "mean_r1", "miou")
OUTCOMES = (*(o.value for o in Outcome), "pending")
ALL = "(all)"  # the total row of the outcome table; parenthesised so no query type can clash
# Versions recorded in results.json, read from package metadata (nothing is imported).
PACKAGES = (
    "egoqa", "torch", "transformers", "accelerate", "qwen-vl-utils", "decord", "av", "tokenizers",
    "sqlalchemy", "alembic", "pandas", "numpy", "matplotlib", "pydantic",
)  # fmt: skip
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

    @property
    def samples(self) -> int:
        """How many samples the graded turn drew (best-of-n is reported when more than one)."""
        turns = [t for t in self.style.get("turns", []) if t.get("name") == self.graded_turn]
        return int(turns[0].get("samples", 1)) if turns else 1


# --- loading -----------------------------------------------------------------------------------


def _records(db: Database, sql: str, params: dict | None = None) -> list[dict]:
    with db.read() as cur:
        raw = cur.execute(sql, params)
        columns = [d[0] for d in raw.description]
        return [dict(zip(columns, r, strict=True)) for r in raw.fetchall()]


def status_of(row: dict) -> str:
    """done, failed (cancelled counts as failed: it will not finish) or pending."""
    state = row["state"]
    return state if state in ("done", "failed") else "failed" if state == "cancelled" else "pending"


def outcome_of(row: dict) -> str:
    """The scored outcome, or pending / unscored where the query has no scores yet."""
    if row["outcome"] is not None:
        return row["outcome"]
    return "unscored" if status_of(row) == "done" else "pending"


def load_run(db: Database, run: str) -> RunData:
    """The run's results rows and settings; UnknownRun names the runs there are."""
    run_exists(db, run)
    meta = _records(
        db,
        "SELECT config, style, graded_turn, created_at, provenance FROM runs WHERE name = :run",
        {"run": run},
    )[0]
    rows = _records(
        db,
        "SELECT * FROM results WHERE run = :run ORDER BY clip_uid, annotation_uid, query_idx",
        {"run": run},
    )
    return RunData(
        run=run,
        rows=rows,
        config=json.loads(meta["config"]),
        style=json.loads(meta["style"]),
        graded_turn=meta["graded_turn"],
        created_at=meta["created_at"],
        enqueued_with=json.loads(meta["provenance"] or "{}"),
    )


def _require_finished(data: RunData) -> None:
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


def summary(data: RunData) -> dict[str, Any]:
    """Counts, the official metrics and coverage, and best-of-n where the graded turn sampled n."""
    unscored = sum(1 for r in data.rows if outcome_of(r) == "unscored")
    return {
        "run": data.run,
        "graded_turn": data.graded_turn,
        "samples": data.samples,
        **_counts(data.rows),
        "unscored": unscored,
        **metrics(data.rows),
        "pred_length": pred_length(data.rows),
        "best_of_n": metrics(data.rows, best=True) if data.samples > 1 else None,
    }


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
        out.append({key: label, **_counts(rows), **metrics(rows), "pred_length": pred_length(rows)})
    return sorted(out, key=lambda r: -r["n"])


def _by_cluster(data: RunData) -> list[dict]:
    """The breakdown by semantic cluster (`egoqa cluster`), or [] when the run has none."""
    if not any(r.get("cluster") is not None for r in data.rows):
        return []
    return _breakdown(data, "cluster", cluster_name)


def outcomes(data: RunData) -> list[dict]:
    """How predictions miss, by query type: the confusion of outcomes, with a total row."""
    import pandas as pd

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
    jobs = _records(
        db,
        "SELECT kind, turn, message FROM failures WHERE run = :run ORDER BY job_id",
        {"run": data.run},
    )
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


def compare(db: Database, runs: Iterable[str]) -> list[dict]:
    """Runs side by side: counts and metrics of each over its own queries."""
    out = []
    for run in runs:
        s = summary(load_run(db, run))
        keys = ("n", "done", "failed", "pending", *METRICS, "pred_length", "best_of_n")
        out.append({"run": run, **{k: s[k] for k in keys}})
    return out


def build(
    db: Database, run: str, compare_with: Sequence[str] = (), *, require_finished: bool = True
) -> dict[str, Any]:
    """Everything `egoqa report` shows: the summary and every breakdown, as plain data."""
    data = load_run(db, run)
    if require_finished:
        _require_finished(data)
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
        "compare": compare(db, [run, *[r for r in compare_with if r != run]])
        if compare_with
        else [],
    }


def rescore(db: Database, run: str) -> int:
    """Recompute the run's scores from the stored responses (no model call); returns how many."""
    from egoqa.scoring import score_items

    run_exists(db, run)
    return score_items(db, run=run)


# --- tables (what the CLI renders; JSON carries the same numbers as fractions) ------------------


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def summary_rows(db: Database, run: str) -> tuple[list[str], list[tuple]]:
    """The overall table of a run: counts, then metrics in percent, then best-of-n if sampled."""
    data = load_run(db, run)
    _require_finished(data)
    return _summary_table(summary(data))


def _summary_table(s: dict) -> tuple[list[str], list[tuple]]:
    rows: list[tuple] = [(k, s[k]) for k in ("n", "done", "failed", "pending")]
    rows[0] = ("queries", s["n"])
    if s["unscored"]:
        rows.append(("unscored (run with --rescore)", s["unscored"]))
    rows += [(METRIC_NAMES[k][0] + " %", _pct(s[k])) for k in METRICS]
    at = [r[0] for r in rows].index("coverage %") + 1  # what the coverage cost, beside it
    rows.insert(at, (METRIC_NAMES["pred_length"][0], _pct(s["pred_length"])))
    if s["best_of_n"]:
        label = f"best of {s['samples']} samples of {s['graded_turn']!r}"
        rows += [
            (f"{label}: {METRIC_NAMES[k][0] + ' %'}", _pct(s["best_of_n"][k])) for k in BEST_METRICS
        ]
    return ["metric", "value"], rows


def _metric_table(records: list[dict], key: str) -> tuple[list[str], list[tuple]]:
    # Done and mean R@1 follow from the columns shown (and are in --json): a narrow terminal
    # still fits the rest beside a long template name. "len": mean predicted length, % of clip.
    shown = ["coverage", "pred_length", *(m for m in METRICS[1:] if m != "mean_r1")]
    columns = [key, "n", "failed", "pending", *(METRIC_NAMES[k][1] for k in shown)]
    rows = [
        (r[key], r["n"], r["failed"], r["pending"], *(_pct(r[k]) for k in shown)) for r in records
    ]
    return columns, rows


def tables(report: dict) -> list[tuple[str, list[str], list[tuple]]]:
    """(title, columns, rows) for each table of `egoqa report`, in the order shown."""
    run = report["summary"]["run"]
    out = [(f"run {run}", *_summary_table(report["summary"]))]
    out.append(("by query type (%)", *_metric_table(report["by_query_type"], "query_type")))
    out.append(("by template (%)", *_metric_table(report["by_template"], "template")))
    if report.get("by_cluster"):
        title = f"by cluster of meaning ({report['cluster_method']}, %)"
        out.append((title, *_metric_table(report["by_cluster"], "cluster")))
    columns = list(report["outcomes"][0]) if report["outcomes"] else ["query_type"]
    out.append(("outcomes by query type", columns, [tuple(r.values()) for r in report["outcomes"]]))
    if report["failures"]:
        rows = [
            (f["kind"], f["jobs"], ", ".join(f["turns"]), f["queries"], (f["example"] or "")[:100])
            for f in report["failures"]
        ]
        out.append(("failures", ["kind", "jobs", "turns", "queries lost", "example"], rows))
    if report["compare"]:
        out.append(("runs compared (%)", *_metric_table(report["compare"], "run")))
    return out


# --- files -------------------------------------------------------------------------------------


def git_hash() -> str | None:
    """HEAD of the checkout egoqa runs from, or None (an installed wheel, no git)."""
    package = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = proc.stdout.split()
    if proc.returncode != 0 or len(out) != 2 or Path(out[0]).resolve() != package.parent:
        return None  # not our checkout (e.g. a virtualenv inside someone else's repository)
    return out[1]


def package_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata without importing the packages."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(db: Database, data: RunData) -> dict[str, Any]:
    """What produced these results: config, code version, packages, and the workers that ran it."""
    workers = _records(
        db,
        """SELECT id, host, device, model, started_at, stopped_at, jobs_done FROM workers
            WHERE id IN (SELECT worker_id FROM turns WHERE run = :run) ORDER BY started_at, id""",
        {"run": data.run},
    )
    return {
        "run": data.run,
        "created_at": data.created_at,
        "config": data.config,
        "style": data.style,
        "graded_turn": data.graded_turn,
        "enqueued_with": data.enqueued_with,
        "egoqa_version": __version__,
        "git_hash": git_hash(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "database": db.dialect,
        "packages": package_versions(),
        "devices": sorted({w["device"] for w in workers}),
        "workers": workers,
    }


_TURNS_OF_ITEMS = """
SELECT c.clip_uid, q.annotation_uid, q.query_idx, ij.turn_index, ij.turn_name, j.id, j.state,
       j.prompt, j.response, j.responses, j.finish_reason, j.error_kind, j.error
  FROM run_items ri JOIN runs r ON r.id = ri.run_id
  JOIN queries q ON q.id = ri.query_id JOIN clips c ON c.id = q.clip_id
  JOIN item_jobs ij ON ij.item_id = ri.id JOIN jobs j ON j.id = ij.job_id
 WHERE r.name = :run
 ORDER BY c.clip_uid, q.annotation_uid, q.query_idx, ij.turn_index
"""


def _turns_by_item(db: Database, run: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for t in _records(db, _TURNS_OF_ITEMS, {"run": run}):
        key = (t["clip_uid"], t["annotation_uid"], t["query_idx"])
        turn = {"turn_index": t["turn_index"], "turn": t["turn_name"], "job_id": t["id"]}
        turn |= {k: t[k] for k in ("state", "prompt", "response")}
        turn["responses"] = json.loads(t["responses"]) if t["responses"] else []
        turn |= {k: t[k] for k in ("finish_reason", "error_kind", "error")}
        out.setdefault(key, []).append(turn)
    return out


_SCORE_KEYS = ("correct", "iou_top1", "r1_03", "r1_05", "r5_03", "r5_05", "outcome", "n_segments")
_BEST_KEYS = ("correct", "iou_top1", "r1_03", "r1_05")


def instances(db: Database, data: RunData) -> list[dict]:
    """Every query of the run: ids, query, ground truth, segments, scores and every turn."""
    turns = _turns_by_item(db, data.run)
    out = []
    for r in data.rows:
        key = (r["clip_uid"], r["annotation_uid"], r["query_idx"])
        item = {k: r[k] for k in ("clip_uid", "annotation_uid", "query_idx", "query")}
        item |= {"query_type": r["query_type"], "template": r["template"]}
        item |= {"ground_truth": [r["gt_start"], r["gt_end"]], "state": r["state"]}
        item |= {"status": status_of(r), "error_kind": r["error_kind"]}
        item["segments"] = json.loads(r["segments"]) if r["segments"] else None
        item["scores"] = {k: r[k] for k in _SCORE_KEYS} | {"outcome": outcome_of(r)}
        if data.samples > 1:
            item["best_of_n"] = {k: r["best_" + k] for k in _BEST_KEYS}
        item["turns"] = turns.get(key, [])
        out.append(item)
    return out


def write(db: Database, report: dict, out_dir: Path) -> list[Path]:
    """results.json, results.csv and the charts of a built report; returns the paths written."""
    import pandas as pd

    run = report["summary"]["run"]
    data = load_run(db, run)
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = {"provenance": provenance(db, data), **report, "instances": instances(db, data)}
    paths = [out_dir / "results.json", out_dir / "results.csv"]
    paths[0].write_text(json.dumps(doc, indent=2, default=str) + "\n")
    frame = pd.DataFrame(data.rows)
    frame.insert(frame.columns.get_loc("state") + 1, "status", [status_of(r) for r in data.rows])
    frame.to_csv(paths[1], index=False)
    from egoqa.charts import charts

    return paths + charts(report, out_dir)


# --- the official prediction file ----------------------------------------------------------------


def _segments(text: str | None) -> list[Segment]:
    return [Segment(s, e, c) for s, e, c in json.loads(text or "[]")]


def export_nlq(db: Database, run: str) -> dict:
    """The Ego4D NLQ prediction file for every query of the run (misses as [[0.0, 0.0]]),
    checked against the official format and the run's query ids before it is returned."""
    data = load_run(db, run)
    _require_finished(data)
    unscored = sum(1 for r in data.rows if outcome_of(r) == "unscored")
    if unscored:
        raise UnscoredResults(
            f"{unscored} finished queries of run {run!r} have no scores yet: "
            f"run `egoqa report --run {run} --rescore`, then export again"
        )
    ids = [(r["clip_uid"], r["annotation_uid"], r["query_idx"]) for r in data.rows]
    results = [
        nlq_prediction(*key, _segments(r["segments"]))
        for key, r in zip(ids, data.rows, strict=True)
    ]
    obj = {"version": NLQ_VERSION, "challenge": NLQ_CHALLENGE, "results": results}
    validate_nlq_predictions(obj, ids)
    return obj
