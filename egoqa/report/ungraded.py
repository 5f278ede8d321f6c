"""Reading an ungraded run (an answer-only baseline): every query's answer, no scores.

The results rows of such a run show the answer turn's response; nothing is parsed or scored.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from egoqa.report.rundata import status_of

ANSWER_CHARS = 120  # a table cell; results.json and --json carry the whole answer


def answers_report(data) -> dict[str, Any]:
    """The counts and the answers of an ungraded run (`data` is a `RunData`)."""
    status = Counter(map(status_of, data.rows))
    summary = {
        "run": data.run,
        "graded": False,
        "answer_turn": data.graded_turn,
        "n": len(data.rows),
        **{k: status[k] for k in ("done", "failed", "pending")},
    }
    answers = [
        {
            **{k: r[k] for k in ("clip_uid", "annotation_uid", "query_idx", "query")},
            "status": status_of(r),
            "answer": r["response"],
        }
        for r in data.rows
    ]
    return {"summary": summary, "answers": answers, "compare": []}


def answer_tables(report: dict) -> list[tuple[str, list[str], list[tuple]]]:
    s = report["summary"]
    counts = [("queries", s["n"]), *((k, s[k]) for k in ("done", "failed", "pending"))]
    rows = [
        (a["clip_uid"][:8], a["query"], a["status"], _cell(a["answer"])) for a in report["answers"]
    ]
    return [
        (
            f"run {s['run']} (ungraded: answers of turn {s['answer_turn']!r}, no scores)",
            *_kv(counts),
        ),
        ("answers", ["clip", "query", "status", "answer"], rows),
    ]


def _kv(rows: list[tuple]) -> tuple[list[str], list[tuple]]:
    return ["metric", "value"], rows


def _cell(text: str | None) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= ANSWER_CHARS else text[: ANSWER_CHARS - 1] + "…"
