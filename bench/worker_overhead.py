"""Worker overhead: the share of a worker's wall time spent outside the backend's `generate`.

A real in-process `egoqa.work.worker.Worker` runs a small synthetic dataset (rendered clips, see
`egoqa.dev.synth.write_synth_dataset`) to the end with the tiny Qwen2.5-VL on CPU (built offline
by `egoqa.dev.tinymodel.build_tiny_model`; both cached under `bench/.cache/`), on the `demo`
preset: stage_analysis, 8 uniform frames at 112 px, batches of 8, 24 new tokens.

The worker's own parts are timed by wrapping them (nothing in egoqa is changed): claim and
the other queue calls, preparing requests (parents' responses, frame decoding — shown
separately — and prompt rendering), generate, complete, scoring. Parts are counted where the
device would wait for them, in the main thread; what the worker does in its claim-ahead thread
while a batch generates is shown apart. Each repeat runs the worker with claiming ahead and
without, side by side. The tiny model generates in milliseconds, so this is the harshest case:
with a real 7B-72B model `generate` takes 10-1000× longer per batch while the rest stays the same.

Reproduce: `.venv/bin/python bench/worker_overhead.py` (a few minutes on 2 cores);
`--quick` for a smoke run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

from _common import CACHE, banner, table

from egoqa.answers import scoring
from egoqa.dev.synth import write_synth_dataset
from egoqa.dev.tinymodel import build_tiny_model
from egoqa.media import rendering
from egoqa.plan.config import load_config
from egoqa.plan.dataset import load_nlq
from egoqa.plan.planner import enqueue_run
from egoqa.plan.styles import load_style
from egoqa.store import limits, queue
from egoqa.store.db import open_db
from egoqa.work.worker import (
    Worker,
    WorkerOptions,
    load_backend_for,
    resolve_engine,
    served_from_config,
)

PARTS = (
    "claim", "prepare (excl. frames)", "frames (prefetch)", "frames (decode)", "encode inputs",
    "generate", "complete", "scoring",
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
    """Wraps functions so their wall time adds up under a part name: in the main thread, or under
    "<part> [ahead]" when the claim-ahead thread (or a pool it started) ran it."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self._undo: list = []

    def wrap(self, owner, attr: str, part: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            main = threading.current_thread() is threading.main_thread()
            try:
                return original(*args, **kwargs)
            finally:
                self.total[part if main else f"{part} [ahead]"] += time.perf_counter() - t0

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, original))

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()


def one_run(data, config, backend, db_path: Path, ahead: bool) -> dict[str, float]:
    """Enqueue into a fresh database, run one worker until done; seconds per part and wall."""
    db = open_db(db_path, create=True)
    dataset = load_nlq(data.annotations, data.videos, data.metadata)
    report = enqueue_run(db, dataset, config, load_style(config.style), "bench")
    options = WorkerOptions(until_done=True, claim_ahead=ahead)
    worker = Worker(db, resolve_engine(db), backend, options)
    timers = Timers()
    for (module, name), part in QUEUE_CALLS.items():
        timers.wrap(module, name, part)
    timers.wrap(rendering, "build_requests", "prepare")
    timers.wrap(backend, "encode", "encode inputs")
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
    with db.read() as cur:  # every job done: the tiny model answers every one
        ended = cur.all("SELECT state, error_kind, COUNT(*) FROM jobs GROUP BY state, error_kind")
    db.dispose()
    assert ended == [("done", None, report.jobs_total)], (ended, report)
    parts = dict(timers.total)
    for where in ("", " [ahead]"):
        prepare = parts.pop(f"prepare{where}", 0.0) - parts.get(f"frames (decode){where}", 0.0)
        parts[f"prepare (excl. frames){where}"] = prepare
    main = {k: v for k, v in parts.items() if not k.endswith("[ahead]")}
    parts["other (loop, heartbeat, registry)"] = wall - sum(main.values())
    parts["wall"], parts["jobs"], parts["batches"] = wall, stats.done, stats.batches
    parts["generate (worker's own count)"] = stats.generate_s
    parts["waiting for a batch"], parts["claimed ahead"] = stats.wait_s, stats.claimed_ahead
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
    runs: dict[bool, list] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="egoqa-bench-") as tmp:
        warmup = 0 if args.quick else 1  # a warm-up run (not reported) loads lazy parts
        for i in range(warmup + repeats):
            for ahead in (True, False):  # side by side: the machine's load hits both alike
                result = one_run(data, config, backend, Path(tmp) / f"w{i}{ahead}.db", ahead)
                if i >= warmup:
                    runs[ahead].append(result)
    for ahead in (False, True):
        print(report(runs[ahead], clips, per_clip, ahead), flush=True)
    print(comparison(runs))
    return 0


def comparison(runs: dict[bool, list]) -> str:
    def cell(rs, key, share=False):
        values = [r[key] / r["wall"] if share else r[key] for r in rs]
        fmt = "{:.1%}" if share else "{:.3f}"
        return f"{fmt.format(min(values))} / {fmt.format(statistics.median(values))}"

    rows = []
    for ahead in (False, True):
        rs = runs[ahead]
        for r in rs:
            r["outside generate"] = r["wall"] - r["generate"]
        rows.append([
            "claiming ahead" if ahead else "one batch at a time", cell(rs, "wall"),
            cell(rs, "generate"), cell(rs, "outside generate"),
            cell(rs, "outside generate", share=True), cell(rs, "waiting for a batch"),
            cell(rs, "waiting for a batch", share=True), rs[0]["claimed ahead"],
        ])  # fmt: skip
    head = ["worker", "wall s", "generate s", "outside generate s", "outside generate",
            "waiting for a batch s", "waiting, share of wall", "batches claimed ahead"]  # fmt: skip
    return table("Claiming ahead: before / after (min / median)", head, rows)


def report(runs: list[dict], clips: int, per_clip: int, ahead: bool) -> str:
    def stat(key: str) -> str:
        values = [r.get(key, 0.0) for r in runs]
        shares = [r.get(key, 0.0) / r["wall"] for r in runs]
        return (
            f"{min(values):.3f} / {statistics.median(values):.3f}",
            f"{min(shares):.1%} / {statistics.median(shares):.1%}",
        )

    names = [*PARTS, "other (loop, heartbeat, registry)"]
    rows = [[n, *stat(n)] for n in names]
    rows.append(["**wall**", *stat("wall")])
    background = sorted({k for r in runs for k in r if k.endswith("[ahead]")})
    rows += [[f"{n} (while a batch generates)", *stat(n)] for n in background]
    outside = [1 - r["generate"] / r["wall"] for r in runs]
    first = runs[0]
    mode = "claiming ahead" if ahead else "one batch at a time"
    lines = [
        f"{clips} clips × {per_clip} queries, stage_analysis: {first['jobs']} jobs in "
        f"{first['batches']} batches, {first['decodes']} frame decodes; {len(runs)} run(s) "
        "(after a warm-up run, except with --quick)",
        "",
        table(
            f"Worker wall time by part (tiny model, CPU): {mode}",
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
                    r.get("frames (decode)", 0.0) + r.get("frames (prefetch)", 0.0),
                    r["wall"]
                    - r["generate"]
                    - r.get("frames (decode)", 0.0)
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
