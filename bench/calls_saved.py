"""Model calls saved: jobs egoqa creates vs the unique-prompt lower bound, no sharing, and the
original pipeline's per-video cache — for every built-in prompt style.

Workload: the shape of Ego4D NLQ v2 val (4,554 queries over 415 clips of 303 videos,
queries per clip lognormally skewed, mean ~11; 6 queries without text, 72 repeated texts),
built in memory (see `_common.nlq_shaped_dataset`). Each style is enqueued with the preset the
original pipeline used for it into a fresh temporary SQLite file; egoqa's count is the jobs it
wrote. The other columns are computed here, independently of egoqa's planner:

- lower bound: one call per distinct prompt — distinct clips for per-clip turns, distinct
  (clip, query text) for turns that read the query (or a turn that did);
- no sharing: one call per query per turn;
- original: per-clip turns cached under `video_uid:turn` (so clips of one video share — and
  get another clip's answer), every other turn once per query.

Visual tokens are the prefill tokens of the frames each call shows (egoqa.work.batching.visual_tokens;
0 for text turns), times the samples drawn (the backend runs each sample as a row).
The script asserts egoqa == lower bound.

Reproduce: `.venv/bin/python bench/calls_saved.py` (`--quick`: a 40-clip workload, seconds).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from _common import banner, nlq_shaped_dataset, shared_video, table

from egoqa.plan.config import RunConfig, load_config
from egoqa.plan.dataset import Clip, Dataset
from egoqa.plan.planner import enqueue_run
from egoqa.plan.styles import Style, Turn, load_style
from egoqa.store.db import open_db
from egoqa.work.batching import frames_in, visual_tokens

# Each built-in style with the preset the original pipeline ran it under.
STYLES = {
    "baseline": "baseline",
    "frame_labeling": "dense",
    "stage_analysis": "coarse",
    "coarse_cot": "coarse_cot",
}


def reads_query(style: Style) -> dict[str, bool]:
    """A turn depends on the query if it reads it or reads (or takes segments from) one that does."""
    out: dict[str, bool] = {}
    for t in style.turns:
        parents = [*t.reads, *([t.segments_from] if t.segments_from else [])]
        out[t.name] = t.reads_query or any(out[p] for p in parents)
    return out


def call_tokens(turn: Turn, config: RunConfig, clip: Clip) -> int:
    """Visual tokens one call of `turn` on `clip` prefills (all its samples)."""
    if turn.media == "none":
        return 0
    sampler = {**config.sampler.model_dump(), **turn.sampler}
    media = {"kind": turn.media, "sampler": sampler, "duration": clip.duration_sec}
    return visual_tokens(frames_in(media), sampler["max_edge"]) * turn.samples


def strategies(ds: Dataset, style: Style, config: RunConfig) -> dict[str, tuple[int, int]]:
    """(calls, visual tokens) of the lower bound, of no sharing, and of the original's cache."""
    per_query = reads_query(style)
    clips = [ds.clips[q.clip_uid] for q in ds.queries]
    content = [(c.video_path, c.offset_sec, c.duration_sec) for c in clips]
    out = {"bound": [0, 0], "none": [0, 0], "original": [0, 0]}
    for t in style.turns:
        q_dep = per_query[t.name]
        # a call is identified by what its prompt depends on; the value is one query it serves
        keys = {
            "bound": {
                (content[i], q.text) if q_dep else content[i]: i for i, q in enumerate(ds.queries)
            },
            "none": {i: i for i in range(len(ds.queries))},
            "original": {i if q_dep else clips[i].video_uid: i for i in range(len(ds.queries))},
        }
        for name, calls in keys.items():
            out[name][0] += len(calls)
            out[name][1] += sum(call_tokens(t, config, clips[i]) for i in calls.values())
    return {k: (v[0], v[1]) for k, v in out.items()}


def wrong_reuse(ds: Dataset, style: Style) -> int:
    """Per-clip results the original served to a clip from another clip of the same video."""
    per_clip_turns = sum(not v for v in reads_query(style).values())
    used = {q.clip_uid for q in ds.queries}
    videos = {ds.clips[c].video_uid for c in used}
    return (len(used) - len(videos)) * per_clip_turns


def egoqa_jobs(db_path: Path, ds: Dataset, style: Style, config: RunConfig) -> tuple[int, int]:
    """Enqueue for real; count the jobs written and the visual tokens their specs imply."""
    db = open_db(db_path, create=True)
    report = enqueue_run(db, ds, config, style, style.name)
    with db.read() as cur:
        specs = [json.loads(s) for (s,) in cur.all("SELECT spec FROM jobs")]
    db.dispose()
    tokens = sum(
        visual_tokens(frames_in(s["media"]), s["media"]["sampler"]["max_edge"]) * s["samples"]
        for s in specs
        if s["media"]["kind"] != "none"
    )
    assert report.jobs_total == report.jobs_new == len(specs), report
    return len(specs), tokens


def run(quick: bool, workdir: Path) -> list[list]:
    video = shared_video(workdir)
    if quick:
        ds = nlq_shaped_dataset(video, videos=30, clips=40, queries=440, no_text=2, repeats=8)
    else:
        ds = nlq_shaped_dataset(video)
    rows = []
    for style_name, preset in STYLES.items():
        config, style = load_config(preset), load_style(style_name)
        ours = egoqa_jobs(workdir / f"{style_name}.db", ds, style, config)
        other = strategies(ds, style, config)
        assert ours == other["bound"], f"{style_name}: egoqa {ours} != lower bound {other['bound']}"
        rows.append([style_name, preset, len(style.turns), ours, other, wrong_reuse(ds, style)])
    return rows


def report(rows: list[list], ds_line: str) -> str:
    calls = [
        [
            f"{s} ({p})",
            n,
            o[0],
            b["bound"][0],
            b["none"][0],
            b["original"][0],
            f"{b['none'][0] / o[0]:.2f}×",
            f"{b['original'][0] / o[0]:.2f}×",
            w,
        ]
        for s, p, n, o, b, w in rows
    ]
    tokens = [
        [
            f"{s} ({p})",
            o[1] / 1e6,
            b["bound"][1] / 1e6,
            b["none"][1] / 1e6,
            b["original"][1] / 1e6,
            f"{b['none'][1] / o[1]:.2f}×" if o[1] else "–",
            f"{b['original'][1] / o[1]:.2f}×" if o[1] else "–",
        ]
        for s, p, n, o, b, w in rows
    ]
    return "\n\n".join(
        [
            ds_line,
            table(
                "Model calls",
                [
                    "style (preset)",
                    "turns",
                    "egoqa jobs",
                    "lower bound",
                    "no sharing",
                    "original (per-video cache)",
                    "no sharing ÷ egoqa",
                    "original ÷ egoqa",
                    "original: per-clip answers taken from another clip",
                ],
                calls,
            ),
            table(
                "Visual tokens prefilled (millions)",
                [
                    "style (preset)",
                    "egoqa",
                    "lower bound",
                    "no sharing",
                    "original",
                    "no sharing ÷ egoqa",
                    "original ÷ egoqa",
                ],
                tokens,
            ),
            "egoqa == lower bound for every style: OK",
        ]
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 40-clip workload (smoke run)")
    args = parser.parse_args(argv)
    print(banner("calls_saved", argv))
    with tempfile.TemporaryDirectory(prefix="egoqa-bench-") as tmp:
        rows = run(args.quick, Path(tmp))
    shape = "40 clips, 440 queries" if args.quick else "415 clips of 303 videos, 4,554 queries"
    print(report(rows, f"Workload: NLQ-v2-val-shaped, {shape} (usable: see egoqa's skips)."))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
