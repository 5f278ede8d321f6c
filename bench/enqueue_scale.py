"""Enqueue at scale: time to plan and write a run, the first time and again (a no-op re-enqueue).

Workloads (built in memory, see `_common.nlq_shaped_dataset`; every clip a window of one small
real mp4, so `video_identity` reads a file per clip as it does for real):

- the shape of Ego4D NLQ v2 val: 4,554 queries over 415 clips of 303 videos;
- 100,000 queries over 9,113 clips of 6,650 videos (the same shape, 22× larger).

Style `stage_analysis` under the `coarse` preset (4 turns: the most jobs per query). "first" is
`enqueue_run` into a fresh SQLite file (clips, queries, jobs, dependencies, run items), "again"
the same call repeated on that file: it must create nothing. Targets: < 3 s and < 60 s.

The command as a user runs it: `egoqa enqueue` in a process of its own on the NLQ v2 val shape
written as an annotation file (every video a link to the one small file), timed whole — start-up
and imports, the schema check, loading the file, planning and writing: into a fresh file (the
schema created too), into a file that holds the schema (a new run), and again (nothing new).
Target: < 1.5 s for the new run. `--baseline DIR` runs a checkout of an earlier egoqa the same
way, interleaved with this one, and prints the ratios (this ÷ baseline).

Reproduce: `.venv/bin/python bench/enqueue_scale.py` (2-3 minutes on 2 cores);
`--quick` for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import Timing, banner, fmt, nlq_shaped_dataset, shared_video, table

from egoqa.plan.config import load_config
from egoqa.plan.dataset import Dataset
from egoqa.plan.planner import enqueue_run
from egoqa.plan.styles import load_style
from egoqa.store.db import open_db


@dataclass(frozen=True)
class Workload:
    name: str
    shape: dict
    target_s: float
    repeats: int


FULL = [
    Workload(
        "NLQ v2 val shape",
        dict(videos=303, clips=415, queries=4554, no_text=6, repeats=72),
        3.0,
        5,
    ),
    Workload(
        "100,000 queries",
        dict(videos=6650, clips=9113, queries=100_000, no_text=130, repeats=1580),
        60.0,
        2,
    ),
]
QUICK = [
    Workload("NLQ shape, 1/10", dict(videos=30, clips=40, queries=440, no_text=1, repeats=7), 3, 1),
    Workload(
        "2,000 queries", dict(videos=130, clips=180, queries=2000, no_text=2, repeats=30), 60, 1
    ),
]


def measure(w: Workload, workdir: Path) -> tuple[Timing, Timing, int, int]:
    """(first, again) timings over fresh databases, and the jobs planned / created again."""
    ds = nlq_shaped_dataset(shared_video(workdir), seed=1, **w.shape)
    config, style = load_config("coarse"), load_style("stage_analysis")
    first, again, jobs, recreated = [], [], 0, 0
    for i in range(w.repeats):
        db = open_db(workdir / f"{w.shape['queries']}-{i}.db", create=True)
        t0 = time.perf_counter()
        report = enqueue_run(db, ds, config, style, "bench")
        t1 = time.perf_counter()
        repeat = enqueue_run(db, ds, config, style, "bench")
        t2 = time.perf_counter()
        db.dispose()
        first.append(t1 - t0)
        again.append(t2 - t1)
        jobs, recreated = report.jobs_total, max(recreated, repeat.jobs_new)
        assert repeat.jobs_reused == report.jobs_total, repeat
    return Timing(first), Timing(again), jobs, recreated


# --- the command, whole ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
CLI_TARGET_S = 1.5
CLI_STEPS = ("fresh file", "new run", "again")


def write_nlq_files(ds: Dataset, video: Path, root: Path) -> tuple[Path, Path]:
    """The dataset as an NLQ annotation file (clips placed in full videos by video_start_sec) and
    a videos folder where every video is a link to `video`."""
    videos = root / "videos"
    videos.mkdir(parents=True)
    by_video: dict[str, list] = {}
    for clip in ds.clips.values():
        by_video.setdefault(clip.video_uid, []).append(clip)
        link = videos / f"{clip.video_uid}.mp4"
        if not link.exists():
            link.symlink_to(video)
    asked: dict[str, dict[int, dict]] = {}
    for q in ds.queries:
        window = {"clip_start_sec": q.gt_start, "clip_end_sec": q.gt_end}
        asked.setdefault(q.clip_uid, {})[q.query_idx] = {
            "query": q.text,
            "template": q.template,
            **window,
        }
    for s in ds.skipped:  # a record without text, as real files have them
        asked.setdefault(s.clip_uid, {})[s.query_idx] = {"clip_start_sec": 0.0, "clip_end_sec": 1.0}
    records = []
    for video_uid, clips in by_video.items():
        entries = []
        for c in clips:
            queries = asked.get(c.clip_uid, {})
            entries.append(
                {
                    "clip_uid": c.clip_uid,
                    "video_start_sec": c.offset_sec,
                    "video_end_sec": c.offset_sec + c.duration_sec,
                    "clip_start_sec": 0.0,
                    "clip_end_sec": c.duration_sec,
                    "annotations": [
                        {
                            "annotation_uid": "ann-0",
                            "language_queries": [queries[i] for i in sorted(queries)],
                        }
                    ],
                }
            )
        records.append({"video_uid": video_uid, "split": "val", "clips": entries})
    annotations = root / "nlq_val.json"
    annotations.write_text(json.dumps({"version": "v2", "videos": records}))
    return annotations, videos


def enqueue_command(
    checkout: Path, db: Path, annotations: Path, videos: Path, run: str
) -> tuple[float, float]:
    """Wall and CPU seconds of `egoqa enqueue` of `checkout`'s code, in a fresh Python process.
    CPU seconds (user + system) drift less than wall time on a machine others are using."""
    cmd = [sys.executable, "-m", "egoqa", "--db", str(db), "enqueue", "-a", str(annotations)]
    cmd += ["--videos", str(videos), "--config", "coarse", "--set", "style=stage_analysis"]
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    before, t0 = _children_cpu(), time.perf_counter()
    # run from the database's folder: `-m` puts the working directory first on sys.path, and a
    # checkout there would shadow the one asked for
    subprocess.run(cmd + ["--run", run], check=True, env=env, capture_output=True, cwd=db.parent)
    return time.perf_counter() - t0, _children_cpu() - before


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_command(
    checkouts: list[Path], ds: Dataset, workdir: Path, repeats: int
) -> list[dict[str, tuple[Timing, Timing]]]:
    """Per checkout and step (into a fresh file, a new run, again), (wall, CPU) timings."""
    annotations, videos = write_nlq_files(ds, shared_video(workdir), workdir / "nlq")
    runs = [{step: ([], []) for step in CLI_STEPS} for _ in checkouts]
    for i in range(repeats):
        for n, (checkout, out) in enumerate(zip(checkouts, runs, strict=True)):  # interleaved
            db = workdir / f"cli-{i}-{n}.db"
            for step, run in zip(CLI_STEPS, ("a", "b", "b"), strict=True):
                wall, cpu = enqueue_command(checkout, db, annotations, videos, run)
                out[step][0].append(wall)
                out[step][1].append(cpu)
    return [{s: (Timing(w), Timing(c)) for s, (w, c) in out.items()} for out in runs]


def command_table(timings: list[dict], baseline: Path | None, repeats: int) -> str:
    names = ["this checkout"] + ([f"baseline ({baseline.name})"] if baseline else [])
    rows = []
    for name, t in zip(names, timings, strict=True):
        cells = [f"{fmt(t[s][0].median)} / {fmt(t[s][1].median)}" for s in CLI_STEPS]
        met = "met" if t["new run"][0].median <= CLI_TARGET_S else "MISSED"
        rows.append([name, *cells, f"<= {CLI_TARGET_S:g} s: {met}", repeats])
    if baseline:
        new, old = timings
        ratios = [
            f"{new[s][0].median / old[s][0].median:.2f}x / {new[s][1].median / old[s][1].median:.2f}x"
            for s in CLI_STEPS
        ]
        rows.append(["this ÷ baseline", *ratios, "", ""])
    head = ["egoqa", *(f"{s}: wall / CPU" for s in CLI_STEPS), "target (new run, wall)", "repeats"]
    title = "`egoqa enqueue`, NLQ v2 val shape (stage_analysis, coarse), median seconds"
    return table(title, head, rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, one repeat")
    parser.add_argument(
        "--baseline", type=Path, help="a checkout of an earlier egoqa to time the command against"
    )
    args = parser.parse_args(argv)
    print(banner("enqueue_scale", argv))
    rows = []
    with tempfile.TemporaryDirectory(prefix="egoqa-bench-") as tmp:
        for w in QUICK if args.quick else FULL:
            first, again, jobs, recreated = measure(w, Path(tmp))
            ok = "met" if first.median < w.target_s and again.median < w.target_s else "MISSED"
            rows.append(
                [
                    w.name,
                    w.shape["queries"],
                    w.shape["clips"],
                    jobs,
                    f"{fmt(first.min)} / {fmt(first.median)}",
                    f"{fmt(again.min)} / {fmt(again.median)}",
                    f"{jobs / first.median:,.0f}",
                    recreated,
                    f"< {w.target_s:g} s: {ok}",
                    w.repeats,
                ]
            )
            print(f"  measured {w.name}", file=sys.stderr, flush=True)
        shape, repeats = (QUICK if args.quick else FULL)[0].shape, 1 if args.quick else 5
        checkouts = [ROOT, *([args.baseline.resolve()] if args.baseline else [])]
        ds = nlq_shaped_dataset(shared_video(Path(tmp)), seed=1, **shape)
        command = measure_command(checkouts, ds, Path(tmp), repeats)
        print("  measured the command", file=sys.stderr, flush=True)
    print()
    print(
        table(
            "Enqueue (stage_analysis, coarse preset), seconds",
            [
                "workload",
                "queries",
                "clips",
                "jobs",
                "first: min / median",
                "again: min / median",
                "jobs/s (first)",
                "jobs created again",
                "target",
                "repeats",
            ],
            rows,
        )
    )
    print()
    print(command_table(command, args.baseline, repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
