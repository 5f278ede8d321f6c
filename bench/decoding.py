"""Frame decoding: dense 1 fps sampling of an 8-minute 30 fps 640x360 clip, and decodes per clip.

Part 1 — 480 frames (1 fps) resized to a 224 px long edge from a rendered H.264 clip (keyframe
every 250 frames, as long-GOP as Ego4D's), by:

- egoqa: `egoqa.media.frames.FrameDecoder` (decord, resized at decode, `get_batch`), cold; and the
  same decoder asked again (its per-process cache);
- the original pipeline: OpenCV seek to each frame + a JPEG write per frame, then the JPEGs
  read back and resized;
- OpenCV sequential: grab every frame, retrieve the sampled ones;
- PyAV sequential: decode every frame, convert the sampled ones (scaled by libswscale).

Every method's frames are checked against the frame index burned into the clip.

Part 2 — decodes per clip: a real `Worker` (deterministic fake backend, so the answers choose
segments) runs frame_labeling (3 turns: per-clip stages from frames, per-query segments from
text, per-query answer from frames inside the segments) for 10 queries on one clip under the
`dense` preset, on a 1-minute clip. `FrameDecoder.decodes` is compared with the distinct frame
sets the jobs ask for (computed here from the stored jobs) — the target — and with what a
pipeline without sharing would decode (one per job that shows frames, per query).

Reproduce: `.venv/bin/python bench/decoding.py` (renders the clip once into `bench/.cache/`,
about a minute; then 1-2 minutes on 2 cores); `--quick` uses a 20 s clip for both parts and one
repeat (a smoke run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import CACHE, banner, table

from egoqa.dev.synth import is_rendered, read_frame_index, render_clip
from egoqa.media.frames import FrameDecoder, SamplerConfig, resized_size, sample_timestamps
from egoqa.plan.dataset import Clip, Dataset, Query

FPS, SIZE, GOP, MAX_EDGE = 30, (640, 360), 250, 224
ORIGINAL = "original: OpenCV seek per frame + JPEG write, read back"


def clip(duration: float) -> Path:
    path = CACHE / f"clip-{duration:g}s-{FPS}fps-{SIZE[0]}x{SIZE[1]}-gop{GOP}.mp4"
    if not is_rendered(path, duration, fps=FPS, size=SIZE, gop=GOP):
        t0 = time.perf_counter()
        render_clip(path, duration, fps=FPS, size=SIZE, gop=GOP)
        print(f"  rendered {path.name} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return path


# --- part 1: the methods -------------------------------------------------------------------------


def wanted(timestamps: list[float]) -> list[int]:
    return [round(t * FPS) for t in timestamps]


def egoqa_cold(path: Path, timestamps: list[float], duration: float) -> np.ndarray:
    return FrameDecoder().frames(path, 0.0, timestamps, MAX_EDGE, duration).array


def egoqa_warm_factory() -> Callable:
    decoder = FrameDecoder()

    def warm(path: Path, timestamps: list[float], duration: float) -> np.ndarray:
        decoder.frames(path, 0.0, timestamps, MAX_EDGE, duration)  # fills the cache (untimed)
        t0 = time.perf_counter()
        array = decoder.frames(path, 0.0, timestamps, MAX_EDGE, duration).array
        warm.last_s = time.perf_counter() - t0
        return array

    return warm


def _size() -> tuple[int, int]:
    return resized_size(*SIZE, MAX_EDGE)


def original(path: Path, timestamps: list[float], duration: float) -> np.ndarray:
    """Seek + read + JPEG write per frame (the once-per-video extraction), then read back."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    with tempfile.TemporaryDirectory(prefix="egoqa-jpeg-") as tmp:
        files = []
        for i, index in enumerate(wanted(timestamps)):
            cap.set(cv2.CAP_PROP_POS_FRAMES, index)
            ok, frame = cap.read()
            assert ok, f"no frame {index}"
            files.append(f"{tmp}/{i:05d}.jpg")
            cv2.imwrite(files[-1], frame)
        cap.release()
        return np.stack([_resized_rgb(cv2.imread(f)) for f in files])


def _resized_rgb(bgr) -> np.ndarray:
    import cv2

    return cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), _size(), interpolation=cv2.INTER_AREA)


def opencv_sequential(path: Path, timestamps: list[float], duration: float) -> np.ndarray:
    import cv2

    cap, want, out, index = cv2.VideoCapture(str(path)), set(wanted(timestamps)), [], 0
    while cap.grab():
        if index in want:
            out.append(_resized_rgb(cap.retrieve()[1]))
        index += 1
    cap.release()
    return np.stack(out)


def pyav_sequential(path: Path, timestamps: list[float], duration: float) -> np.ndarray:
    import av

    want, out = set(wanted(timestamps)), []
    width, height = _size()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index in want:
                out.append(frame.to_ndarray(format="rgb24", width=width, height=height))
    return np.stack(out)


def check(array: np.ndarray, timestamps: list[float]) -> None:
    """The frames are the sampled ones (indices burned in by render_clip), at the right size."""
    width, height = _size()
    assert array.shape == (len(timestamps), height, width, 3), array.shape
    for i in range(0, len(timestamps), max(1, len(timestamps) // 16)):
        got, want = read_frame_index(array[i]), round(timestamps[i] * FPS)
        assert abs(got - want) <= 1, f"frame {i}: index {got}, wanted {want}"


def part1(path: Path, duration: float, repeats: int) -> tuple[list[list], int]:
    timestamps = sample_timestamps(
        SamplerConfig(kind="dense", fps=1.0, max_edge=MAX_EDGE), duration
    )
    warm = egoqa_warm_factory()
    methods = {
        "egoqa FrameDecoder (decord, resize at decode), cold": egoqa_cold,
        ORIGINAL: original,
        "OpenCV sequential (grab all, retrieve sampled)": opencv_sequential,
        "PyAV sequential": pyav_sequential,
        "egoqa FrameDecoder, same clip again (cache hit)": warm,
    }
    if importlib.util.find_spec("cv2") is None:
        print("skipped the OpenCV methods: opencv is not installed (pip install 'egoqa[bench]')")
        methods = {k: v for k, v in methods.items() if v not in (original, opencv_sequential)}
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):  # interleaved, so machine load hits every method alike
        for name, fn in methods.items():
            t0 = time.perf_counter()
            array = fn(path, timestamps, duration)
            times[name].append(getattr(fn, "last_s", time.perf_counter() - t0))
            check(array, timestamps)
    base = statistics.median(times[ORIGINAL]) if ORIGINAL in times else None
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        if base is None:
            speed = "–"
        else:
            speed = f"{base / med:.1f}×" if med and base / med < 1000 else "> 1,000×"
        rows.append([name, f"{min(ts):.3g} / {med:.3g}", speed])
    return rows, len(timestamps)


# --- part 2: decodes per clip --------------------------------------------------------------------


def part2(path: Path, duration: float, style_name: str, queries: int = 10) -> dict[str, object]:
    """Run a real worker (fake backend) over `queries` queries on one clip; count decodes."""
    from egoqa.backends.fake import FakeBackend
    from egoqa.media import rendering
    from egoqa.plan.config import load_config
    from egoqa.plan.planner import enqueue_run
    from egoqa.plan.styles import load_style
    from egoqa.store.db import open_db
    from egoqa.work.worker import Worker, WorkerOptions, resolve_engine

    config = load_config("dense", ["backend=fake"])
    style = load_style(style_name)
    c = Clip("clip-0", "video-0", path, 0.0, duration, "val")
    things = ("cup", "knife", "bag", "phone", "tape", "bowl", "box", "pen", "book", "key")
    qs = [
        Query("clip-0", "ann-0", i, f"Where did I put the {things[i % 10]} #{i}?", None, 1, 3, {})
        for i in range(queries)
    ]
    with tempfile.TemporaryDirectory(prefix="egoqa-bench-") as tmp:
        db = open_db(Path(tmp) / "d.db", create=True)
        plan = enqueue_run(db, Dataset({"clip-0": c}, qs, [], "v2"), config, style, "bench")
        worker = Worker(db, resolve_engine(db), FakeBackend(), WorkerOptions(until_done=True))
        t0 = time.perf_counter()
        stats = worker.run()
        wall = time.perf_counter() - t0
        with db.read() as cur:
            specs = [json.loads(s) for (s,) in cur.all("SELECT spec FROM jobs")]
        framed = [s for s in specs if s["media"]["kind"] != "none"]
        distinct = {
            tuple(rendering.media_timestamps(s, duration, rendering.parent_responses(db, s)))
            for s in framed
        }
        db.dispose()
    assert stats.done == plan.jobs_total and stats.failed == 0, stats
    return {
        "turns (frames turns)": f"{len(style.turns)} ({sum(t.media != 'none' for t in style.turns)})",
        "jobs (per-clip turns shared)": plan.jobs_total,
        "jobs that show frames (frame requests)": len(framed),
        "distinct frame sets asked for (the target)": len(distinct),
        "egoqa decodes (FrameDecoder.decodes)": worker.runner.decoder.decodes,
        "egoqa cache hits": worker.runner.decoder.hits,
        "decodes without sharing (each query, each frames turn)": queries
        * sum(t.media != "none" for t in style.turns),
        "original: extraction passes (every 1 fps frame to JPEG, once per video)": 1,
        "decodes == distinct frame sets": "met"
        if worker.runner.decoder.decodes == len(distinct)
        else "MISSED",
        "worker wall, s": f"{wall:.2f}",
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 20 s clip, one repeat")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(banner("decoding", argv), flush=True)
    duration, repeats = (20.0, 1) if args.quick else (480.0, args.repeats)
    path = clip(duration)
    rows, n = part1(path, duration, repeats)
    print()
    print(
        table(
            f"Dense 1 fps: {n} frames of a {duration:g} s {FPS} fps {SIZE[0]}×{SIZE[1]} H.264 clip "
            f"(keyframe every {GOP}) → {MAX_EDGE} px long edge; seconds, {repeats} repeat(s)",
            ["method", "seconds: min / median", "speed-up vs original (medians)"],
            rows,
        )
    )
    print()
    shared = duration if args.quick else 60.0  # part 2's clip
    counts = {
        name: part2(clip(shared), shared, name) for name in ("frame_labeling", "stage_analysis")
    }
    print(
        table(
            f"Decodes per clip: 10 queries on one {shared:g} s clip, dense preset (1 fps, 112 px)",
            ["", *counts],
            [[row, *(c[row] for c in counts.values())] for row in next(iter(counts.values()))],
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
