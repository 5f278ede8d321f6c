"""The run explorer: a static site (`egoqa report --run NAME --html DIR`) that opens from file://.

DIR/index.html with the shipped script and style (egoqa/report/explorer_assets), the report's charts,
`data/index.js` (the summary tables and one small record per query: what the filters, the
timelines and the pager need) and `data/clip-N.js` per clip (every turn's prompt, responses and
frame thumbnails), loaded by the page only when a card's turns are opened. Data files are
scripts, not JSON: browsers refuse to fetch files from a file:// page but do run its scripts.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from egoqa import __version__
from egoqa.answers.metrics import parse_segments
from egoqa.errors import EgoqaError
from egoqa.media.thumbnails import ClipThumbs, spread, timestamp_ms
from egoqa.plan import samplers
from egoqa.report import summary as rp
from egoqa.report.output import ensure_folder
from egoqa.report.tables import tables
from egoqa.store.db import Database
from egoqa.store.explore import run_clips, run_jobs, zoom_levels

ASSETS = Path(__file__).resolve().parent / "explorer_assets"
SCRIPTS = ("explorer.js", "explorer.css")
TOP = 5  # ranked windows kept per prediction: Recall@5 looks no further
RESPONSE_EXCERPT = 600


def write_explorer(
    db: Database, run: str, site: Path, compare: Sequence[str] = (), thumbs: int = 8
) -> Path:
    """Write the explorer of `run` (and the runs in `compare`) into `site`; returns index.html."""
    _check_site(site)
    compare = [c for c in compare if c != run]
    built = rp.build(db, run, compare, require_finished=False)
    data = rp.load_run(db, run)
    clips, jobs = run_clips(db, run), run_jobs(db, run)
    clip_no = {c["clip_uid"]: n for n, c in enumerate(clips)}
    frames, notes = _frames(db, jobs, clips, clip_no, site, thumbs)
    chains = _chains(jobs)
    index = {
        "run": run,
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "version": __version__,
        "summary": built["summary"],
        "headline": rp.headline_text(built["summary"]),
        "tables": [[t.title, t.columns, t.rows] for t in tables(built)],
        "charts": _charts(built, site),
        "compare": compare,
        "oracle": _oracle_runs(data, built),
        "turns": [t.get("name") for t in data.style.get("turns", [])],
        "clips": [[c["clip_uid"], c["duration_sec"], notes.get(c["clip_uid"])] for c in clips],
        "items": _items(data, chains, clip_no, _compare_rows(db, compare), _zooms(db, jobs)),
    }
    _write_js(site / "data" / "index.js", "EGOQA.index(", index)
    by_clip: dict[str, list[dict]] = {}
    for job in jobs:
        by_clip.setdefault(job["clip_uid"], []).append(job)
    for uid, n in clip_no.items():
        detail = _clip_detail(by_clip.get(uid, []), frames, notes.get(uid))
        _write_js(site / "data" / f"clip-{n}.js", f"EGOQA.clip({n}, ", detail)
    return _page(site, run, bool(index["oracle"]))


def _oracle_runs(data: rp.RunData, built: dict) -> list[str]:
    """The runs on the page (this one, the compared) whose zoom chose windows by the truth."""
    compared = [r["run"] for r in built.get("compare", [])[1:] if r.get("oracle")]
    return [data.run] * data.oracle + compared


# --- per query ---------------------------------------------------------------------------------


def _chains(jobs: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for job in jobs:
        out.setdefault((job["clip_uid"], job["annotation_uid"], job["query_idx"]), []).append(job)
    return out


def _ids(row: dict) -> tuple:
    return row["clip_uid"], row["annotation_uid"], row["query_idx"]


def _windows(segments: str | None) -> list[list[float]]:
    return [[round(s, 3), round(e, 3)] for s, e, *_ in json.loads(segments or "[]")[:TOP]]


def _zooms(db: Database, jobs: list[dict]) -> dict[int, dict]:
    """Each zoom level's chain as a card shows it: every level's window, chosen window and
    stop reason ("zl"), and the final window ("zf") once the zoom has ended."""
    ids = sorted({j["job_id"] for j in jobs if "zoom" in j["spec"]})
    out = {}
    for job_id, notes in zoom_levels(db, ids).items():
        done = [n for n in notes if n]
        levels = [{"d": n["depth"], "w": n["window"], "c": n["chosen"]} for n in done]
        last = done[-1] if done and done[-1].get("final") else None
        if last is not None:
            levels[-1]["r"] = last["reason"]
        out[job_id] = {"zl": levels} | ({"zf": last["final_window"]} if last else {})
    return out


def _items(
    data: rp.RunData, chains: dict, clip_no: dict, compared: list[dict], zooms: dict
) -> list[dict]:
    items = []
    for row in data.rows:
        chain = chains.get(_ids(row), [])
        item = {
            "c": clip_no[row["clip_uid"]],
            "a": row["annotation_uid"],
            "x": row["query_idx"],
            "q": row["query"],
            "t": row["query_type"] or "(none)",
            "p": row["template"] or "(none)",
            "k": rp.cluster_name(row),
            "g": None if row["gt_start"] is None else [row["gt_start"], row["gt_end"]],
            "st": row["state"],
            "o": rp.outcome_of(row),
            "u": row["iou_top1"],
            "w": _windows(row["segments"]),
            "j": [job["job_id"] for job in chain],
        }
        item |= _problem(row, chain) | _samples(data, row, chain)
        for job in chain:
            item |= zooms.get(job["job_id"], {})
        if compared:
            item["cmp"] = [_compared(by_ids.get(_ids(row))) for by_ids in compared]
        items.append(item)
    return items


def _problem(row: dict, chain: list[dict]) -> dict:
    """Why a query has no scored prediction: the failure at its root, or the unparsed answer.
    (A turn after the graded one that failed shows in the card's turns, not as the outcome.)"""
    failed = [job for job in chain if job["state"] == "failed"]
    if failed and rp.status_of(row) == "failed":
        first = failed[0]
        kind = first["error_kind"] or "failed"
        return {"e": f"turn {first['turn']!r} {first['state']} ({kind}): {first['error'] or ''}"}
    if rp.outcome_of(row) == "no_segment":
        return {"r": (row["response"] or "(empty response)")[:RESPONSE_EXCERPT]}
    return {}


def _samples(data: rp.RunData, row: dict, chain: list[dict]) -> dict:
    """The graded turn's other samples' windows (drawn faintly beside the chosen answer's)."""
    if data.samples < 2 or row["state"] != "done":
        return {}
    graded = [job for job in chain if job["job_id"] == row["graded_job_id"]]
    texts = graded[0]["responses"] if graded else []
    duration = row["clip_duration"]
    others = [t for t in texts if t != row["response"]]
    windows = [[[s.start, s.end] for s in parse_segments(t, duration)[:TOP]] for t in others]
    return {"n": windows}


def _compare_rows(db: Database, runs: Sequence[str]) -> list[dict]:
    return [{_ids(r): r for r in rp.load_run(db, run).rows} for run in runs]


def _compared(row: dict | None) -> dict | None:
    if row is None:
        return None  # the query is not part of that run
    return {"o": rp.outcome_of(row), "ok": row["correct"], "u": row["iou_top1"]} | {
        "w": _windows(row["segments"])
    }


# --- per clip: turns and frames ----------------------------------------------------------------


def _job_timestamps(db, job: dict, duration: float, responses: dict[str, str]) -> list[float]:
    """The clip times of the frames a finished turn showed the model ([] for a text-only turn);
    a shots turn's keyframes come from the shot detection stored when it ran."""
    from egoqa.media.rendering import SEGMENTS, media_timestamps

    media = job["spec"].get("media") or {"kind": "none"}
    if media["kind"] == "none" or job["state"] != "done":
        return []
    if samplers.kind(media["sampler"]["kind"]).detected:
        from egoqa.media.shots import stored_shots

        shots = stored_shots(db, media, duration)
        if shots is None:
            raise ExplorerError("no shot detection of its window is stored in this database")
        return shots.keyframes
    parents = {SEGMENTS: responses.get(media["from"]) or ""} if "from" in media else {}
    return media_timestamps(job["spec"], duration, parents)


def _frames(db, jobs: list[dict], clips: list[dict], clip_no: dict, site: Path, limit: int):
    """Thumbnails of each job's frames (at most `limit` per turn), and a note per clip that has
    frames none of which could be shown. Returns ({job id: [[t, path], ...] or a note}, notes)."""
    responses = {job["key"]: job["response"] for job in jobs}
    wanted: dict[int, tuple[str, list[float], int]] = {}
    missing: dict[int, dict] = {}
    by_clip = {c["clip_uid"]: c for c in clips}
    for job in jobs:
        if job["job_id"] in wanted or limit < 1:
            continue
        try:
            times = _job_timestamps(db, job, by_clip[job["clip_uid"]]["duration_sec"], responses)
        except EgoqaError as exc:  # said on the turn: an empty strip would look like no frames
            missing[job["job_id"]] = {"fnote": f"its frames cannot be shown: {exc}"}
            times = []
        if times:
            wanted[job["job_id"]] = (job["clip_uid"], spread(times, limit), len(set(times)))
    thumbs = _decode_all(wanted, by_clip, clip_no, site)
    frames = {}
    for job_id, (clip_uid, shown, total) in wanted.items():
        got = thumbs[clip_uid]
        paths = [[t, got.paths[timestamp_ms(t)]] for t in shown if timestamp_ms(t) in got.paths]
        frames[job_id] = {"f": paths, "of": total}
    return missing | frames, {uid: t.note for uid, t in thumbs.items() if t.note}


def _decode_all(wanted: dict, clips: dict, clip_no: dict, site: Path) -> dict[str, ClipThumbs]:
    needed: dict[str, set[float]] = {}
    for clip_uid, shown, _ in wanted.values():
        needed.setdefault(clip_uid, set()).update(shown)
    if not needed:
        return {}
    from egoqa.media.thumbnails import new_decoder, write_clip_thumbs

    def one(uid: str) -> ClipThumbs:
        folder = f"thumbs/{clip_no[uid]}"
        return write_clip_thumbs(new_decoder(), clips[uid], sorted(needed[uid]), site, folder)

    # decord decodes without the GIL: clips side by side, one decoder each.
    with ThreadPoolExecutor(max(1, min(len(needed), os.cpu_count() or 1))) as pool:
        return dict(zip(needed, pool.map(one, needed), strict=True))


def _clip_detail(jobs: list[dict], frames: dict, note: str | None) -> dict:
    """Every job of one clip's queries, once each (a per-clip turn serves them all)."""
    out: dict[str, dict] = {}
    for job in jobs:
        if str(job["job_id"]) in out:
            continue
        detail = {k: job[k] for k in ("turn", "turn_index", "state", "prompt", "response")}
        detail |= {k: job[k] for k in ("responses", "finish_reason", "error_kind", "error")}
        detail |= frames.get(job["job_id"], {})
        out[str(job["job_id"])] = detail
    return {"jobs": out, "note": note}


# --- files -------------------------------------------------------------------------------------

GENERATOR = '<meta name="generator" content="egoqa explorer">'


class ExplorerError(EgoqaError):
    """The explorer cannot be written where asked; the message says where to write it instead."""


def _check_site(site: Path) -> None:
    """Refuse a file, or a folder whose index.html egoqa did not write (it would be replaced)."""
    if site.exists() and not site.is_dir():
        raise ExplorerError(f"--html {site} is a file: pass a directory (it is created if new)")
    page = site / "index.html"
    if page.is_file() and GENERATOR not in page.read_text(errors="replace"):
        raise ExplorerError(
            f"{page} exists and was not written by egoqa: pass a new or empty directory to --html"
        )
    ensure_folder(site / "data", "--html")  # a place that cannot hold it, said before any work


def _charts(built: dict, site: Path) -> list[str]:
    if not any(r["done"] + r["failed"] for r in built["by_query_type"]):
        return []  # nothing finished: bars of zero would say nothing
    from egoqa.report.charts import charts

    (site / "charts").mkdir(parents=True, exist_ok=True)
    return [f"charts/{p.name}" for p in charts(built, site / "charts")]


def _write_js(path: Path, call: str, obj) -> None:
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False, default=str)
    path.write_text(f"{call}{text});\n")


def _page(site: Path, run: str, oracle: bool = False) -> Path:
    (site / "assets").mkdir(parents=True, exist_ok=True)
    for name in SCRIPTS:
        shutil.copyfile(ASSETS / name, site / "assets" / name)
    template = (ASSETS / "index.html").read_text()
    page = site / "index.html"
    title = f"egoqa run {run}" + (" (oracle zoom: an upper bound)" if oracle else "")
    page.write_text(template.replace("{{TITLE}}", html.escape(title)))
    return page
