"""PNG charts of a report: accuracy by query type, template and cluster with n per bar, runs compared.

matplotlib's Agg canvas is used directly: no pyplot, no global backend state.
"""

from __future__ import annotations

from pathlib import Path

from egoqa.report import METRIC_NAMES, METRICS, headline_text

_CHART_METRICS = ("coverage", "r1_03", "r1_05")


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _grouped_bars(
    ax, labels: list[str], series: dict[str, list[float]], horizontal: bool, unit: str
) -> None:
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        positions = [p + (i - (len(series) - 1) / 2) * width for p in range(len(labels))]
        heights = [100 * (v or 0.0) for v in values]
        bars = (ax.barh if horizontal else ax.bar)(positions, heights, width, label=name)
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


def bar_chart(path: Path, title: str, labels: list[str], series: dict[str, list[float]]) -> Path:
    """Vertical grouped bars of fractions (shown as percent), one group per label."""
    return _chart(path, title, labels, series, False)


def _chart(path: Path, title: str, labels: list[str], series: dict, horizontal: bool) -> Path:
    n = len(labels) * max(1, len(series)) / 3  # bar groups, in widths of three bars
    fig = _figure(*((10, 1.2 + 0.45 * len(labels)) if horizontal else (max(6, 1.1 * n), 4.5)))
    ax = fig.subplots()
    unit = "% of queries" + ("" if "mIoU" not in series else " (mIoU: mean top-1 tIoU x 100)")
    _grouped_bars(ax, labels, series, horizontal, unit)
    ax.set_title(title)
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
        labels = [f"{textwrap.shorten(str(r[key]), 60)} (n={r['n']})" for r in records]
        series = {METRIC_NAMES[m][0]: [r[m] for r in records] for m in _CHART_METRICS}
        title = chart_title(report["summary"], key)
        if report["summary"].get("oracle"):
            title += "\n(oracle zoom: the ground truth chose each window)"
        paths.append(
            _chart(out_dir / f"accuracy_by_{key}.png", title, labels, series, key != "query_type")
        )
    if report["compare"]:
        labels = [f"{r['run']} (n={r['n']})" for r in report["compare"]]
        series = {METRIC_NAMES[m][0]: [r[m] for r in report["compare"]] for m in METRICS}
        title = "runs compared (each over its enqueued queries)"
        paths.append(_chart(out_dir / "runs_compared.png", title, labels, series, False))
    return paths
