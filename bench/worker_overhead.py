"""Worker overhead: the share of a worker's wall time spent outside the backend's `generate`.

A real in-process `egoqa.worker.Worker` runs a small synthetic dataset (rendered clips, see
`egoqa.synth.write_synth_dataset`) to the end with the tiny Qwen2.5-VL on CPU (built offline
by `egoqa.tinymodel.build_tiny_model`; both cached under `bench/.cache/`), on the `demo`
preset: stage_analysis, 8 uniform frames at 112 px, batches of 8, 24 new tokens.

The worker's own parts are timed by wrapping them (nothing in egoqa is changed): claim and
the other queue calls, preparing requests (parents' responses, frame decoding — shown
separately — and prompt rendering), generate, complete, scoring. The tiny model generates in
milliseconds, so this is the harshest case: with a real 7B-72B model `generate` takes 10-1000×
longer per batch while the rest stays the same.

Reproduce: `.venv/bin/python bench/worker_overhead.py` (under a minute on 2 cores);
`--quick` for a smoke run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from _common import CACHE, banner, table

from egoqa import rendering, scoring
from egoqa.config import load_config
from egoqa.dataset import load_nlq
from egoqa.plan import enqueue_run
from egoqa.prompts import load_style
from egoqa.store import limits, queue
from egoqa.store.db import open_db
from egoqa.synth import write_synth_dataset
from egoqa.tinymodel import build_tiny_model
from egoqa.worker import (
    Worker,
    WorkerOptions,
    load_backend_for,
    resolve_engine,
    served_from_config,
)

PARTS = (
    "claim", "prepare (excl. frames)", "frames (prefetch)", "frames (decode)", "generate", "complete",
    "scoring",
)  # fmt: skip
QUEUE_CALLS = {  # store functions the worker calls, and the part they count towards
    (queue, "claim"): "claim",
    (queue, "reap"): "claim",
    (queue, "pending"): "claim",
    (queue, "complete"): "complete",
    (queue, "fail"): "complete",
    (limits, "batch_limit"): "complete",
    (limits, "record_batch"): "complete",
}


class Timers:
    """Wraps functions so their wall time adds up under a part name (main thread only)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self._undo: list = []

    def wrap(self, owner, attr: str, part: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.total[part] += time.perf_counter() - t0

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


def one_run(data, config, backend, db_path: Path) -> dict[str, float]:
    """Enqueue into a fresh database, run one worker until done; seconds per part and wall."""
    db = open_db(db_path, create=True)
    dataset = load_nlq(data.annotations, data.videos, data.metadata)
    report = enqueue_run(db, dataset, config, load_style(config.style), "bench")
    worker = Worker(db, resolve_engine(db), backend, WorkerOptions(until_done=True))
    timers = Timers()
    for (module, name), part in QUEUE_CALLS.items():
        timers.wrap(module, name, part)
    timers.wrap(rendering, "build_request", "prepare")
    timers.wrap(worker.runner.decoder, "frames", "frames (decode)")
    timers.wrap(worker.runner.decoder, "prefetch", "frames (prefetch)")
    timers.wrap(backend, "generate", "generate")
    timers.wrap(scoring, "score_items", "scoring")
    t0 = time.perf_counter()
    try:
        stats = worker.run()
    finally:
        wall = time.perf_counter() - t0
        timers.restore()
    db.dispose()
    assert stats.done == report.jobs_total and stats.failed == 0, (stats, report)
    parts = dict(timers.total)
    parts["prepare (excl. frames)"] = parts.pop("prepare", 0.0) - parts.get("frames (decode)", 0)
    parts["other (loop, heartbeat, registry)"] = wall - sum(parts.values())
    parts["wall"], parts["jobs"], parts["batches"] = wall, stats.done, stats.batches
    parts["generate (worker's own count)"] = stats.generate_s
    parts["decodes"] = worker.runner.decoder.decodes
    return parts


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 clips, one run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    clips, per_clip, repeats = (2, 2, 1) if args.quick else (6, 4, args.repeats)
    print(banner("worker_overhead", argv), flush=True)
    import torch

    torch.set_num_threads(2)
    model = build_tiny_model(CACHE / "tiny-qwen2.5-vl")
    data = write_synth_dataset(
        CACHE / f"synth-{clips}x{per_clip}", clips=clips, queries_per_clip=per_clip
    )
    config = load_config("demo", [f'model="{model}"'])
    backend = load_backend_for(served_from_config(config), "cpu")
    runs = []
    with tempfile.TemporaryDirectory(prefix="egoqa-bench-") as tmp:
        warmup = 0 if args.quick else 1  # a warm-up run (not reported) loads lazy parts
        for i in range(warmup + repeats):
            result = one_run(data, config, backend, Path(tmp) / f"w{i}.db")
            if i >= warmup:
                runs.append(result)
    print(report(runs, clips, per_clip))
    return 0


def report(runs: list[dict], clips: int, per_clip: int) -> str:
    def stat(key: str) -> str:
        values = [r[key] for r in runs]
        shares = [r[key] / r["wall"] for r in runs]
        return (
            f"{min(values):.3f} / {statistics.median(values):.3f}",
            f"{min(shares):.1%} / {statistics.median(shares):.1%}",
        )

    names = [*PARTS, "other (loop, heartbeat, registry)"]
    rows = [[n, *stat(n)] for n in names]
    rows.append(["**wall**", *stat("wall")])
    outside = [1 - r["generate"] / r["wall"] for r in runs]
    first = runs[0]
    lines = [
        f"{clips} clips × {per_clip} queries, stage_analysis: {first['jobs']} jobs in "
        f"{first['batches']} batches, {first['decodes']} frame decodes; {len(runs)} run(s) "
        "(after a warm-up run, except with --quick)",
        "",
        table(
            "Worker wall time by part (tiny model, CPU)",
            ["part", "seconds: min / median", "share of wall: min / median"],
            rows,
        ),
        "",
        table(
            "Each run",
            ["run", "wall s", "generate s", "frames s", "rest s", "outside generate"],
            [
                [
                    i + 1,
                    r["wall"],
                    r["generate"],
                    r["frames (decode)"] + r.get("frames (prefetch)", 0.0),
                    r["wall"]
                    - r["generate"]
                    - r["frames (decode)"]
                    - r.get("frames (prefetch)", 0.0),
                    f"{1 - r['generate'] / r['wall']:.1%}",
                ]
                for i, r in enumerate(runs)
            ],
        ),
        "",
        f"Outside generate: {min(outside):.1%} min / {statistics.median(outside):.1%} median "
        f"(target <= 5 %: {'met' if statistics.median(outside) <= 0.05 else 'MISSED'})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
