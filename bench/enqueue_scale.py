"""Enqueue at scale: time to plan and write a run, the first time and again (a no-op re-enqueue).

Workloads (built in memory, see `_common.nlq_shaped_dataset`; every clip a window of one small
real mp4, so `video_identity` reads a file per clip as it does for real):

- the shape of Ego4D NLQ v2 val: 4,554 queries over 415 clips of 303 videos;
- 100,000 queries over 9,113 clips of 6,650 videos (the same shape, 22× larger).

Style `stage_analysis` under the `coarse` preset (4 turns: the most jobs per query). "first" is
`enqueue_run` into a fresh SQLite file (clips, queries, jobs, dependencies, run items), "again"
the same call repeated on that file: it must create nothing. Targets: < 3 s and < 60 s.

Reproduce: `.venv/bin/python bench/enqueue_scale.py` (1-2 minutes on 2 cores);
`--quick` for a smoke run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import Timing, banner, fmt, nlq_shaped_dataset, shared_video, table

from egoqa.config import load_config
from egoqa.plan import enqueue_run
from egoqa.prompts import load_style
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, one repeat")
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
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
