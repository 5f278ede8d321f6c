"""The tables `egoqa report` prints, from a built report (JSON carries the same numbers as
fractions). Breakdown tables mark their label column to be cut short, so a long template name
never pushes a table past an 80-column terminal."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from egoqa.report.summary import (
    BEST_METRICS,
    METRIC_NAMES,
    METRICS,
    load_run,
    oracle_label,
    require_finished,
    summary,
)
from egoqa.report.ungraded import answer_tables
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


def _with_interval(value: float | None, interval: list[float] | None) -> str:
    """A rate in percent with its 95 % interval in brackets: `23.4 [21.1–25.8]`."""
    if value is None or interval is None:
        return _pct(value)
    return f"{_pct(value)} [{_pct(interval[0])}–{_pct(interval[1])}]"


def _signed(value: float) -> str:
    return f"{100 * value:+.1f}"


def _p_value(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.2g}" if p < 0.01 else f"{p:.3f}"


def paired_tables(pairs: list[dict]) -> list[TableSpec]:
    """The paired differences of compared runs (A − B with intervals) and McNemar's test."""
    from egoqa.report.compare import METHOD

    diffs, tests = [], []
    for p in pairs:
        name = f"{p['a']} − {p['b']}"
        for metric, m in p["metrics"].items():
            low, high = m["interval"]
            shown = (_pct(m["a"]), _pct(m["b"]), _signed(m["diff"]))
            diffs.append(
                (name, METRIC_NAMES[metric][1], *shown, f"[{_signed(low)}, {_signed(high)}]")
            )
        if p["mcnemar"]:
            t = p["mcnemar"]
            counts = (t["both"], t["only_a"], t["only_b"], t["neither"])
            tests.append((name, p["n"], p["clips"], *counts, _p_value(t["p_value"])))
    return [
        TableSpec(
            f"paired: A − B (%) over the queries both finished; {METHOD.split(';')[0]}",
            ["A − B", "metric", "A", "B", "A − B", "95 % interval"],
            diffs,
            True,
        ),
        TableSpec(
            "paired: R@1 IoU>0.3 hits, McNemar's exact test (only A / only B: right in one run)",
            ["A − B", "n", "clips", "both", "only A", "only B", "neither", "p"],
            tests,
            True,
        ),
    ]


_PUBLISHED = ("r1_03", "r1_05", "r5_03", "r5_05", "miou")


def published_table(report: dict) -> TableSpec:
    """The run (and the runs compared) beside published results of the same split."""
    pub = report["published"]
    runs = report["compare"] or [{"run": report["summary"]["run"], **report["summary"]}]
    rows = [(f"{r['run']} (here, n={r['n']})", *(_pct(r[m]) for m in _PUBLISHED)) for r in runs]
    for p in pub["results"]:
        values = p["values"]
        shown = (f"{values[m]:g}" if m in values else "" for m in _PUBLISHED)
        rows.append((p["method"], *shown))
    where = " ".join(x for x in ("NLQ", pub["version"], pub["split"]) if x)
    columns = ["method", *(METRIC_NAMES[m][1] for m in _PUBLISHED)]
    title = f"{pub['label']} ({where}, %; sources in --json and egoqa/report/published/nlq.toml)"
    return TableSpec(title, columns, rows, True)


def headline_heads(s: dict) -> tuple[str, str]:
    """The two columns' heads: every query of the file as exported (what the official script
    prints), and the enqueued queries alone."""
    file_n, enqueued_n = s["headline"]["queries"], s["enqueued_only"]["queries"]
    return f"official ({file_n:,})", f"enqueued ({enqueued_n:,}) [95 % CI]"


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
    spans = s.get("intervals") or {}  # 95 % intervals, over the enqueued queries
    for k in METRICS:
        shown = _with_interval(enqueued[k], spans.get(k))
        rows.append((METRIC_NAMES[k][0] + " %", _pct(head[k]), shown))
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


def _run(report: dict) -> list[TableSpec]:
    return [TableSpec(f"run {report['summary']['run']}", *_summary_table(report["summary"]))]


def _unit(report: dict) -> str:
    return " (%)" if report["summary"]["ground_truth"] else ""


def _by(key: str) -> Callable[[dict], list[TableSpec]]:
    def table(report: dict) -> list[TableSpec]:
        columns, rows = _metric_table(report["by_" + key], key)
        return [TableSpec(f"by {key.replace('_', ' ')}{_unit(report)}", columns, rows, True)]

    return table


def _by_cluster(report: dict) -> list[TableSpec]:
    if not report.get("by_cluster"):
        return []
    title = f"by cluster of meaning ({report['cluster_method']}{', %' if _unit(report) else ''})"
    return [TableSpec(title, *_metric_table(report["by_cluster"], "cluster"), True)]


def _outcomes(report: dict) -> list[TableSpec]:
    if not report["outcomes"]:
        return []
    # "type" for query_type: the nine columns then fit an 80-column terminal whole
    columns = ["type" if c == "query_type" else c for c in report["outcomes"][0]]
    rows = [tuple(r.values()) for r in report["outcomes"]]
    return [TableSpec("outcomes by query type", columns, rows, True)]


def _answers(report: dict) -> list[TableSpec]:
    return [_answers_table(report)] if report["answers"] else []


def _failures(report: dict) -> list[TableSpec]:
    if not report["failures"]:
        return []
    rows = [
        (f["kind"], f["jobs"], ", ".join(f["turns"]), f["queries"], (f["example"] or "")[:100])
        for f in report["failures"]
    ]
    return [TableSpec("failures", ["kind", "jobs", "turns", "queries lost", "example"], rows)]


def _paired(report: dict) -> list[TableSpec]:
    return paired_tables(report["paired"]) if report.get("paired") else []


def _compared(report: dict) -> list[TableSpec]:
    if not report["compare"]:
        return []
    shown = [r | {"run": oracle_label(r)} for r in report["compare"]]
    return [TableSpec("runs compared (%)", *_metric_table(shown, "run"), True)]


def _published(report: dict) -> list[TableSpec]:
    return [published_table(report)] if report.get("published") else []


def _cost(report: dict) -> list[TableSpec]:
    return [_cost_table(report["cost"])] if report.get("cost") else []


# The tables of a graded run's report, in the order `egoqa report` prints them: a new table is
# one entry here (its builder reads the built report; it returns no table when it has nothing).
TABLES: tuple[tuple[str, Callable[[dict], list[TableSpec]]], ...] = (
    ("run", _run),
    ("by_query_type", _by("query_type")),
    ("by_template", _by("template")),
    ("by_cluster", _by_cluster),
    ("outcomes", _outcomes),
    ("answers", _answers),
    ("failures", _failures),
    ("paired", _paired),
    ("compared", _compared),
    ("published", _published),
    ("cost", _cost),
)


def tables(report: dict) -> list[TableSpec]:
    """Each table of `egoqa report`, in the order shown."""
    if report["summary"].get("graded") is False:  # an answer-only run
        return [TableSpec(*table) for table in answer_tables(report)]
    out = [table for _, build in TABLES for table in build(report)]
    if report["summary"].get("oracle"):
        out = [dataclasses.replace(t, title=t.title + ORACLE) for t in out]
    return out


def _cost_table(cost: dict) -> TableSpec:
    """Tokens and dollars per turn; the cache's share is what the run reused, not paid."""
    p = cost["price_per_mtok"]
    rows = [
        (
            t["turn"],
            t["jobs"],
            t["prompt_tokens"],
            t["completion_tokens"],
            f"{t['cost']:.4f}",
            f"{t['saved']:.4f}",
        )
        for t in cost["by_turn"]
    ]
    rows.append(("all", "", "", "", f"{cost['total']:.4f}", f"{cost['saved_by_cache']:.4f}"))
    title = f"cost in $ (at ${p['input']:g} / ${p['output']:g} per million tokens in / out)"
    columns = ["turn", "jobs", "prompt tok", "completion tok", "cost", "saved by cache"]
    return TableSpec(title, columns, rows)


ORACLE = " [oracle zoom: the ground truth chose each window]"
