"""The original pipeline's scoring, reproduced exactly (`egoqa report --scoring original`).

Its rule: segments are read with its own narrow pattern (`[12s] - [30s]`, or for the coarse_cot
styles the `N. As - Bs:` blocks whose verdict is Relevant), endpoints truncated to whole seconds;
a query is correct when its ground truth lies inside any segment; categories are the query's
first word, lower-cased, punctuation kept; accuracy per category and per video. Every enqueued
query counts (a failed or pending one is a miss), as in egoqa's own scoring.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from egoqa.answers.grammar import original_bracketed, original_verdict_blocks
from egoqa.store import results
from egoqa.store.db import Database

VERDICT_STYLES = "coarse_cot"  # style names starting so are scored by their verdict blocks


@dataclass(frozen=True)
class Parsed:
    """What the original read from one response: its segments and how many it listed."""

    segments: list[tuple[int, int]]
    listed: int


def uses_verdicts(style_name: str) -> bool:
    return style_name.startswith(VERDICT_STYLES)


def shot_ranges(style: dict, config: dict, graded_turn: str) -> bool:
    """The graded turn samples by shots: its blocks carry shot ranges, printed with decimals."""
    turn = next((t for t in style.get("turns", []) if t.get("name") == graded_turn), {})
    override = config.get("turns", {}).get(graded_turn, {}).get("sampler", {})
    kind = override.get("kind") or turn.get("sampler", {}).get("kind")
    return (kind or config.get("sampler", {}).get("kind")) == "shots"


def parse(text: str | None, verdicts: bool, shots: bool = False) -> Parsed:
    if verdicts:
        relevant, listed = original_verdict_blocks(text or "", shots)
        return Parsed(relevant, listed)
    found = original_bracketed(text or "")
    return Parsed(found, len(found))


def category(query: str) -> str:
    """The first word of the query as written, lower-cased, punctuation kept ("" if none)."""
    words = query.split()
    return words[0].lower() if words else ""


def covered(segments: Iterable[tuple[int, int]], gt_start: float, gt_end: float) -> bool:
    return any(start <= gt_start and gt_end <= end for start, end in segments)


def score_instance(row: dict, verdicts: bool, shots: bool = False) -> dict:
    """One query: its category, segments, listed count, correct and any-sample correct."""
    done = row["state"] == "done" and row["gt_start"] is not None
    parsed = parse(row["response"], verdicts, shots) if done else Parsed([], 0)
    samples = (json.loads(row["responses"] or "[]") or [row["response"]]) if done else []
    gt = (row["gt_start"], row["gt_end"])
    return {
        "video_uid": row["video_uid"],
        "clip_uid": row["clip_uid"],
        "annotation_uid": row["annotation_uid"],
        "query_idx": row["query_idx"],
        "query": row["raw_query"],
        "category": category(row["raw_query"]),
        "ground_truth": list(gt),
        "state": row["state"],
        "segments": [list(s) for s in parsed.segments],
        "listed": parsed.listed,
        "correct": done and covered(parsed.segments, *gt),
        "any_sample_correct": done
        and any(covered(parse(t, verdicts, shots).segments, *gt) for t in samples),
    }


def _accuracy(rows: list[dict], key: str) -> dict:
    n = len(rows)
    correct = sum(r[key] for r in rows)
    return {"n": n, "correct": correct, "accuracy": correct / n if n else 0.0}


def _grouped(instances: list[dict], key: str) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for item in instances:
        groups.setdefault(item[key] or "(none)", []).append(item)
    out = [{key: k, **_accuracy(rows, "correct")} for k, rows in groups.items()]
    return sorted(out, key=lambda r: (-r["n"], r[key]))


def summarize(run: str, style: str, samples: int, instances: list[dict]) -> dict:
    """The original's numbers: overall, by category, by video; any-sample where n > 1."""
    states = [i["state"] for i in instances]
    summary = {
        "run": run,
        "style": style,
        "rule": "verdict blocks" if uses_verdicts(style) else "bracketed segments",
        "samples": samples,
        "n": len(instances),
        "done": states.count("done"),
        "failed": states.count("failed"),
        **{k: v for k, v in _accuracy(instances, "correct").items() if k != "n"},
        "segments_listed": sum(i["listed"] for i in instances),
    }
    summary["pending"] = summary["n"] - summary["done"] - summary["failed"]
    if samples > 1:
        summary["any_sample_accuracy"] = _accuracy(instances, "any_sample_correct")["accuracy"]
    return {
        "summary": summary,
        "by_category": _grouped(instances, "category"),
        "by_video": _grouped(instances, "video_uid"),
        "instances": instances,
    }


def _rows(db: Database, run: str) -> list[dict]:
    rows = results.graded_answers(db, run)
    for row in rows:  # the query as the annotation wrote it, tool labels included
        extra, text = json.loads(row.pop("extra") or "{}"), row.pop("text")
        row["raw_query"] = extra.get("query_raw") or text
    return rows


def build(db: Database, run: str) -> dict:
    """`egoqa report --scoring original` as plain data (the run's style decides the rule)."""
    from egoqa.report import summary as report

    data = report.load_run(db, run)
    report.require_scorable(data)
    name = str(data.style.get("name", ""))
    shots = shot_ranges(data.style, data.config, data.graded_turn)
    instances = [score_instance(r, uses_verdicts(name), shots) for r in _rows(db, run)]
    out = summarize(run, name, data.samples, instances)
    out["summary"]["oracle"] = data.oracle
    return out


def write(report: dict, out_dir: Path) -> list[Path]:
    """results_original.json, results_original.csv and accuracy_summary.png (by category)."""
    import pandas as pd

    from egoqa.report.charts import bar_chart

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results_original.json", out_dir / "results_original.csv"]
    paths[0].write_text(json.dumps(report, indent=2, default=str) + "\n")
    pd.DataFrame(report["instances"]).to_csv(paths[1], index=False)
    records = report["by_category"]
    labels = [f"{r['category']} (n={r['n']})" for r in records]
    title = f"run {report['summary']['run']}: accuracy by query category (original scoring)"
    if report["summary"].get("oracle"):
        title += "\n(oracle zoom: the ground truth chose each window)"
    series = {"accuracy": [r["accuracy"] for r in records]}
    return [*paths, bar_chart(out_dir / "accuracy_summary.png", title, labels, series)]


def tables(report: dict) -> list[tuple[str, list[str], list[tuple]]]:
    """(title, columns, rows) of the original's tables, accuracy in percent."""
    s = report["summary"]
    rows: list[tuple] = [
        ("rule", s["rule"]),
        ("queries", s["n"]),
        *((k, s[k]) for k in ("done", "failed", "pending", "correct")),
        ("accuracy %", f"{100 * s['accuracy']:.1f}"),
        ("segments listed", s["segments_listed"]),
    ]
    if "any_sample_accuracy" in s:
        label = f"any of {s['samples']} samples correct %"
        rows.append((label, f"{100 * s['any_sample_accuracy']:.1f}"))
    label = " [oracle zoom: the ground truth chose each window]" if s.get("oracle") else ""
    out = [(f"run {s['run']}: the original pipeline's scoring{label}", ["metric", "value"], rows)]
    for key, title in (("category", "by query category"), ("video_uid", "by video")):
        records = report["by_" + ("category" if key == "category" else "video")]
        body = [(r[key], r["n"], r["correct"], f"{100 * r['accuracy']:.1f}") for r in records]
        out.append((f"{title} (original){label}", [key, "n", "correct", "accuracy %"], body))
    return out
