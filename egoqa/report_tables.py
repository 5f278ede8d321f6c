"""The tables `egoqa report` prints, from a built report (JSON carries the same numbers as
fractions). Breakdown tables mark their label column to be cut short, so a long template name
never pushes a table past an 80-column terminal."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from egoqa.report import BEST_METRICS, METRIC_NAMES, METRICS, load_run, require_finished, summary
from egoqa.store.db import Database

ANSWERS_SHOWN = 20  # a test split has thousands of queries: the export holds them all


@dataclass(frozen=True)
class TableSpec:
    """One table: its title, column heads and rows; `fit_first` lets the first column be cut
    short (with an ellipsis) to fit the terminal."""

    title: str
    columns: list[str]
    rows: list[tuple]
    fit_first: bool = False


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}"


def summary_rows(db: Database, run: str) -> tuple[list[str], list[tuple]]:
    """The overall table of a run: counts, then metrics in percent, then best-of-n if sampled."""
    data = load_run(db, run)
    require_finished(data)
    return _summary_table(summary(data))


def _summary_table(s: dict) -> tuple[list[str], list[tuple]]:
    if not s["ground_truth"]:
        return _counts_table(s)
    return _scored_table(s)


def _counts_table(s: dict) -> tuple[list[str], list[tuple]]:
    """A run without ground truth: counts, and no scores."""
    rows: list[tuple] = [("queries", s["n"]), *((k, s[k]) for k in ("done", "failed", "pending"))]
    if s["skipped"]:
        rows.append(("skipped at enqueue (misses)", s["skipped"]))
    if s["unscored"]:
        rows.append(("unscored (run with --rescore)", s["unscored"]))
    rows.append(("ground truth", "none (a test split): no scores"))
    return ["metric", "value"], rows


def headline_heads(s: dict) -> tuple[str, str]:
    """The two columns' heads: every query of the file as exported (what the official script
    prints), and the enqueued queries alone."""
    file_n, enqueued_n = s["headline"]["queries"], s["enqueued_only"]["queries"]
    return f"official, file ({file_n:,})", f"enqueued ({enqueued_n:,})"


def _scored_table(s: dict) -> tuple[list[str], list[tuple]]:
    """Counts, then each metric twice: over every query of the annotation file as `export`
    writes it (the official script's number, the headline) and over the enqueued queries."""
    head, enqueued = s["headline"], s["enqueued_only"]
    rows: list[tuple] = [("queries", head["queries"], enqueued["queries"])]
    rows += [(k, "", s[k]) for k in ("done", "failed", "pending")]
    misses = head["queries"] - enqueued["queries"]
    if s["skipped"]:
        rows.append(("skipped at enqueue (misses)", misses, ""))
    if s["unscored"]:
        rows.append(("unscored (run with --rescore)", "", s["unscored"]))
    for k in METRICS:
        rows.append((METRIC_NAMES[k][0] + " %", _pct(head[k]), _pct(enqueued[k])))
        if k == "coverage":  # what the coverage cost, beside it
            rows.append((METRIC_NAMES["pred_length"][0], "", _pct(s.get("pred_length"))))
    if s["best_of_n"]:  # a heading row, then its metrics: long labels would wrap at 80 columns
        rows.append((f"best of {s['samples']} samples of {s['graded_turn']!r}:", "", ""))
        rows += [(f"  {METRIC_NAMES[k][0]} %", "", _pct(s["best_of_n"][k])) for k in BEST_METRICS]
    return ["metric", *headline_heads(s)], rows


# Done, mean R@1 and Recall@5 are left to the summary and --json: beside them a template name
# would get only a few characters of an 80-column terminal.
# "len" (mean predicted length, % of the clip) sits beside coverage: what a coverage cost.
_BREAKDOWN_METRICS = ("coverage", "pred_length", "r1_03", "r1_05", "miou")


def _metric_table(records: list[dict], key: str) -> tuple[list[str], list[tuple]]:
    shown = [m for m in _BREAKDOWN_METRICS if records and m in records[0]]
    columns = [key, "n", "failed", "pending", *(METRIC_NAMES[k][1] for k in shown)]
    rows = [
        (r[key], r["n"], r["failed"], r["pending"], *(_pct(r[k]) for k in shown)) for r in records
    ]
    return columns, rows


def _window(times: list[list[float]]) -> str:
    return f"{times[0][0]:g}-{times[0][1]:g} s" if times else ""


def _answers_table(report: dict) -> TableSpec:
    items = report["answers"]
    rows = [
        (a["query"], a["clip_uid"][:8], a["query_idx"], a["status"], _window(a["predicted_times"]))
        for a in items[:ANSWERS_SHOWN]
    ]
    more = f"first {len(rows)} of {len(items)}; all: egoqa export" if len(items) > len(rows) else ""
    title = f"answers{f' ({more})' if more else ''}"
    return TableSpec(title, ["query", "clip", "idx", "status", "top window"], rows, True)


def tables(report: dict) -> list[TableSpec]:
    """Each table of `egoqa report`, in the order shown."""
    if report["summary"].get("graded") is False:  # an answer-only run
        from egoqa.answers import answer_tables

        return [TableSpec(*table) for table in answer_tables(report)]
    run = report["summary"]["run"]
    unit = " (%)" if report["summary"]["ground_truth"] else ""
    out = [TableSpec(f"run {run}", *_summary_table(report["summary"]))]
    for key in ("query_type", "template"):
        columns, rows = _metric_table(report["by_" + key], key)
        out.append(TableSpec(f"by {key.replace('_', ' ')}{unit}", columns, rows, True))
    if report.get("by_cluster"):
        title = f"by cluster of meaning ({report['cluster_method']}{', %' if unit else ''})"
        out.append(TableSpec(title, *_metric_table(report["by_cluster"], "cluster"), True))
    if report["outcomes"]:
        # "type" for query_type: the nine columns then fit an 80-column terminal whole
        columns = ["type" if c == "query_type" else c for c in report["outcomes"][0]]
        rows = [tuple(r.values()) for r in report["outcomes"]]
        out.append(TableSpec("outcomes by query type", columns, rows, True))
    if report["answers"]:
        out.append(_answers_table(report))
    if report["failures"]:
        rows = [
            (f["kind"], f["jobs"], ", ".join(f["turns"]), f["queries"], (f["example"] or "")[:100])
            for f in report["failures"]
        ]
        out.append(
            TableSpec("failures", ["kind", "jobs", "turns", "queries lost", "example"], rows)
        )
    if report["compare"]:
        out.append(TableSpec("runs compared (%)", *_metric_table(report["compare"], "run"), True))
    if report["summary"].get("oracle"):
        out = [dataclasses.replace(t, title=t.title + ORACLE) for t in out]
    return out


ORACLE = " [oracle zoom: the ground truth chose each window]"
