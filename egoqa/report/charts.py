"""PNG charts of a report: accuracy by query type, template and cluster with n per bar, runs compared.

matplotlib's Agg canvas is used directly: no pyplot, no global backend state.
"""

from __future__ import annotations

from pathlib import Path

from egoqa.report.stats import wilson
from egoqa.report.summary import METRIC_NAMES, METRICS, headline_text

_CHART_METRICS = ("coverage", "r1_03", "r1_05")
OTHER = "other"
FOLD_SHARE, FOLD_LEAST = 0.01, 20  # a query type with fewer than max(1 % of the run, 20) folds


def fold_small(records: list[dict], key: str) -> list[dict]:
    """Breakdown records sorted by count, those with fewer queries than max(1 % of the run, 20)
    folded into one "other" record (last) whose rates are over their queries together. Nothing
    folds when all would (a small run) or only one would (it keeps its own name)."""
    least = max(FOLD_SHARE * sum(r["n"] for r in records), FOLD_LEAST)
    big = sorted((r for r in records if r["n"] >= least), key=lambda r: -r["n"])
    small = [r for r in records if r["n"] < least]
    if not big or len(small) < 2:
        return sorted(records, key=lambda r: -r["n"])
    n = sum(r["n"] for r in small)
    other = {key: f"{OTHER} ({len(small)} types)", "n": n, "folded": [r[key] for r in small]}
    other |= {m: sum(r[m] * r["n"] for r in small) / n for m in _CHART_METRICS}
    return [*big, other]


def rate_errors(records: list[dict], metrics) -> dict[str, list[tuple[float, float] | None]]:
    """Wilson 95 % intervals of each record's rates (each rate is hits over its n queries)."""
    return {
        METRIC_NAMES[m][0]: [wilson(round(r[m] * r["n"]), r["n"]) for r in records] for m in metrics
    }


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _error_arms(heights: list[float], spans: list | None):
    """matplotlib's asymmetric error arms (below, above) of each bar, in percent."""
    if spans is None:
        return None
    below = [h - 100 * s[0] if s else 0.0 for h, s in zip(heights, spans, strict=True)]
    above = [100 * s[1] - h if s else 0.0 for h, s in zip(heights, spans, strict=True)]
    return [[max(0.0, b) for b in below], [max(0.0, a) for a in above]]


def _grouped_bars(
    ax, labels: list[str], series: dict[str, list[float]], horizontal: bool, unit: str, errors=None
) -> None:
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        positions = [p + (i - (len(series) - 1) / 2) * width for p in range(len(labels))]
        heights = [100 * (v or 0.0) for v in values]
        arms = _error_arms(heights, (errors or {}).get(name))
        draw = ax.barh if horizontal else ax.bar
        bars = draw(positions, heights, width, label=name, **_error_kw(arms, horizontal))
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    ticks = range(len(labels))
    if horizontal:
        ax.set_yticks(ticks, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel(unit)
        ax.set_xlim(0, 105)
    else:
        ax.set_xticks(ticks, labels, fontsize=8, rotation=30 if len(labels) > 6 else 0)
        ax.set_ylabel(unit)
        ax.set_ylim(0, 105)
    ax.legend(fontsize=8)


def _error_kw(arms, horizontal: bool) -> dict:
    if arms is None:
        return {}
    return {"xerr" if horizontal else "yerr": arms, "error_kw": {"elinewidth": 0.8, "capsize": 2}}


def bar_chart(path: Path, title: str, labels: list[str], series: dict[str, list[float]]) -> Path:
    """Vertical grouped bars of fractions (shown as percent), one group per label."""
    return _chart(path, title, labels, series, False)


def _chart(
    path: Path, title: str, labels: list[str], series: dict, horizontal: bool, errors=None
) -> Path:
    n = len(labels) * max(1, len(series)) / 3  # bar groups, in widths of three bars
    fig = _figure(*((10, 1.2 + 0.45 * len(labels)) if horizontal else (max(6, 1.1 * n), 4.5)))
    ax = fig.subplots()
    unit = "% of queries" + ("" if "mIoU" not in series else " (mIoU: mean top-1 tIoU x 100)")
    _grouped_bars(ax, labels, series, horizontal, unit, errors)
    ax.set_title(title + ("\n(whiskers: 95 % intervals)" if errors else ""))
    fig.savefig(path)
    return path


def chart_title(summary: dict, key: str) -> str:
    """A breakdown's title: its bars are over the enqueued queries (every one counts); the
    line under it gives the headline, over every query of the file as exported."""
    n = summary["enqueued_only"]["queries"]
    title = f"run {summary['run']}: accuracy by {key.replace('_', ' ')} ({n:,} enqueued queries)"
    return f"{title}\n{headline_text(summary)}"


def charts(report: dict, out_dir: Path) -> list[Path]:
    """Accuracy by query type and by template, with n per bar; runs side by side if compared.
    None for a run without ground truth: it has no accuracy to draw."""
    import textwrap

    if not report["summary"]["ground_truth"]:
        return []
    paths = []
    for key in ("query_type", "template", "cluster"):
        records = report.get("by_" + key)
        if not records:
            continue
        if key == "query_type":
            records = fold_small(records, key)
        labels = [f"{textwrap.shorten(str(r[key]), 60)} (n={r['n']})" for r in records]
        series = {METRIC_NAMES[m][0]: [r[m] for r in records] for m in _CHART_METRICS}
        title = chart_title(report["summary"], key)
        if report["summary"].get("oracle"):
            title += "\n(oracle zoom: the ground truth chose each window)"
        path = out_dir / f"accuracy_by_{key}.png"
        errors = rate_errors(records, _CHART_METRICS)
        paths.append(_chart(path, title, labels, series, key != "query_type", errors))
    if report["compare"]:
        compared = report["compare"]
        from egoqa.report.summary import oracle_label

        labels = [f"{oracle_label(r)} (n={r['n']})" for r in compared]
        series = {METRIC_NAMES[m][0]: [r[m] for r in compared] for m in METRICS}
        errors = {
            METRIC_NAMES[m][0]: [(r.get("intervals") or {}).get(m) for r in compared]
            for m in METRICS
        }
        path = out_dir / "runs_compared.png"
        title = "runs compared (each over its enqueued queries)"
        paths.append(_chart(path, title, labels, series, False, errors))
    return paths
