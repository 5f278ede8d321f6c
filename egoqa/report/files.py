"""The files `egoqa report --out` writes: results.json (every query with every turn's prompt and
responses, plus provenance), results.csv and the PNG charts. Nothing prints here.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

from egoqa import __version__
from egoqa.report.output import ensure_folder, errors_as_one_line
from egoqa.report.provenance import git_hash, package_versions
from egoqa.report.summary import RunData, load_run, outcome_of, status_of
from egoqa.store import results
from egoqa.store.db import Database


def provenance(db: Database, data: RunData) -> dict[str, Any]:
    """What produced these results: config, code version, packages, and the workers that ran it."""
    workers = results.run_workers(db, data.run)
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


def _turns_by_item(db: Database, run: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for t in results.turns_of_items(db, run):
        key = (t["clip_uid"], t["annotation_uid"], t["query_idx"])
        turn = {"turn_index": t["turn_index"], "turn": t["turn_name"], "job_id": t["id"]}
        turn |= {k: t[k] for k in ("state", "prompt", "response")}
        turn["responses"] = json.loads(t["responses"]) if t["responses"] else []
        turn |= {k: t[k] for k in ("finish_reason", "error_kind", "error")}
        out.setdefault(key, []).append(turn)
    return out


def _zoom_chains(db: Database, turns: dict[tuple, list[dict]]) -> dict[int, list[dict]]:
    """Each zoom level's job id -> the notes of its levels from depth 0 (finished ones)."""
    from egoqa.store.explore import zoom_levels

    ids = sorted({t["job_id"] for ts in turns.values() for t in ts})
    chains = {j: [n for n in notes if n] for j, notes in zoom_levels(db, ids).items()}
    return {j: notes for j, notes in chains.items() if notes and "depth" in notes[0]}


_SCORE_KEYS = ("correct", "iou_top1", "r1_03", "r1_05", "r5_03", "r5_05", "outcome", "n_segments")
_BEST_KEYS = ("correct", "iou_top1", "r1_03", "r1_05")


def instances(db: Database, data: RunData) -> list[dict]:
    """Every query of the run: ids, query, ground truth, segments, scores and every turn."""
    turns = _turns_by_item(db, data.run)
    zooms = _zoom_chains(db, turns)
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
        chain = [zooms[t["job_id"]] for t in item["turns"] if t["job_id"] in zooms]
        if chain:  # every level: its window, the chosen shot, and why the zoom stopped
            item["zoom_levels"] = chain[0]
        out.append(item)
    return out


def write(db: Database, report: dict, out_dir: Path) -> list[Path]:
    """results.json, results.csv and the charts of a built report; returns the paths written."""
    import pandas as pd

    from egoqa.report.charts import charts

    run = report["summary"]["run"]
    data = load_run(db, run)
    ensure_folder(out_dir, "--out")
    doc = {"provenance": provenance(db, data), **report, "instances": instances(db, data)}
    paths = [out_dir / "results.json", out_dir / "results.csv"]
    with errors_as_one_line(out_dir, "--out"):
        paths[0].write_text(json.dumps(doc, indent=2, default=str) + "\n")
        frame = pd.DataFrame(data.rows)
        status = [status_of(r) for r in data.rows]
        frame.insert(frame.columns.get_loc("state") + 1, "status", status)
        frame.to_csv(paths[1], index=False)
        return paths + (charts(report, out_dir) if data.graded else [])
