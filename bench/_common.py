"""Shared pieces of the benchmarks: an NLQ-v2-val-shaped workload, timing, and result tables.

Not a benchmark itself; the scripts next to it import it (they run as `python bench/NAME.py`,
which puts this folder on `sys.path`).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
import random
import sqlite3
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from egoqa.dev.synth import TEMPLATES
from egoqa.plan.dataset import Clip, Dataset, Query, Skipped

CACHE = Path(__file__).resolve().parent / ".cache"

# The shape of Ego4D NLQ v2 val (see the project notes): 4,554 queries over 415 clips of 303
# videos; 6 queries have no text (the loader skips them) and 72 repeat a text already asked on
# the same clip, so 4,548 queries are usable and 4,476 (clip, text) pairs are distinct.
NLQ_V2_VAL = {"videos": 303, "clips": 415, "queries": 4554, "no_text": 6, "repeats": 72}


def skewed_counts(total: int, bins: int, seed: int, sigma: float = 0.7) -> list[int]:
    """`bins` counts >= 1 summing to `total`, lognormally skewed (a few clips carry many queries)."""
    rng = random.Random(seed)
    weights = [rng.lognormvariate(0.0, sigma) for _ in range(bins)]
    scale = (total - bins) / sum(weights)
    raw = [w * scale for w in weights]
    counts = [1 + math.floor(r) for r in raw]
    order = sorted(range(bins), key=lambda i: raw[i] - math.floor(raw[i]), reverse=True)
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _clip_durations(rng: random.Random, n: int) -> list[float]:
    """Mostly the canonical 480 s clips, some shorter or longer (mean ~500 s, max 1,200 s)."""
    return [480.0 if rng.random() < 0.8 else float(rng.randrange(120, 1201)) for _ in range(n)]


def _video_of_clip(rng: random.Random, videos: int, clips: int) -> list[int]:
    """Every video gets a clip; the remaining clips go to random videos (several per video)."""
    owners = list(range(videos)) + [rng.randrange(videos) for _ in range(clips - videos)]
    return sorted(owners)


def _text(rng: random.Random, used: set[str]) -> tuple[str, str]:
    objects = ("knife", "cup", "phone", "drawer", "fridge", "bag", "screwdriver", "bowl", "tape")
    events = ("washed the dishes", "opened the door", "cut the onion", "picked up the box")
    while True:
        template, _, pattern = rng.choices(TEMPLATES, weights=[t[1] for t in TEMPLATES])[0]
        colour = rng.choice(("red", "blue", "small", "old", "white", "metal", "green", "big"))
        x = f"{colour} {rng.choice(objects)} #{rng.randrange(10_000)}"
        text = pattern.format(x=x, y=rng.choice(events))
        if text not in used:
            return template, text


def nlq_shaped_dataset(
    video_path: Path,
    *,
    videos: int = NLQ_V2_VAL["videos"],
    clips: int = NLQ_V2_VAL["clips"],
    queries: int = NLQ_V2_VAL["queries"],
    no_text: int = NLQ_V2_VAL["no_text"],
    repeats: int = NLQ_V2_VAL["repeats"],
    seed: int = 0,
) -> Dataset:
    """An in-memory dataset with the shape of NLQ v2 val; every clip points at one small file.

    The clips are windows of that one file at distinct offsets (as clips inside full-scale videos
    are), so their content keys differ; `video_uid` groups them into `videos` videos.
    """
    rng = random.Random(seed)
    counts = skewed_counts(queries, clips, seed)
    owners = _video_of_clip(rng, videos, clips)
    durations = _clip_durations(rng, clips)
    ds = Dataset(clips={}, queries=[], skipped=[], version="v2")
    skip_at = set(rng.sample(range(queries), no_text))
    repeat_at = set(rng.sample(_repeatable(counts, skip_at), repeats))
    n, offset = 0, 0.0
    for c in range(clips):
        uid = f"clip-{c:05d}"
        ds.clips[uid] = Clip(uid, f"video-{owners[c]:05d}", video_path, offset, durations[c], "val")
        offset += durations[c] + 10.0
        asked: list[str] = []
        for idx in range(counts[c]):
            if n in skip_at:
                ds.skipped.append(Skipped(uid, "ann-0", idx, "no_query_text", "no text"))
            else:
                template, text = _text(rng, set(asked))
                if n in repeat_at:
                    text = rng.choice(asked)
                asked.append(text)
                start = round(rng.uniform(0, durations[c] - 10), 2)
                ds.queries.append(Query(uid, "ann-0", idx, text, template, start, start + 4.0, {}))
            n += 1
    return ds


def _repeatable(counts: list[int], skip_at: set[int]) -> list[int]:
    """Global query positions with an earlier usable query on the same clip (can repeat it)."""
    out, n = [], 0
    for count in counts:
        seen = False
        for _ in range(count):
            if seen and n not in skip_at:
                out.append(n)
            seen = seen or n not in skip_at
            n += 1
    return out


def shared_video(directory: Path) -> Path:
    """A tiny real mp4 that every synthetic clip points at (enqueue reads its identity only)."""
    from egoqa.dev.synth import is_rendered, render_clip

    path = Path(directory) / "shared.mp4"
    if not is_rendered(path, 1.0, fps=5, size=(64, 48)):
        render_clip(path, 1.0, fps=5, size=(64, 48))
    return path


# --- timing and tables -------------------------------------------------------------------------


@dataclass(frozen=True)
class Timing:
    runs: list[float]

    @property
    def min(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def repeat(fn: Callable[[], object], n: int) -> Timing:
    """Wall time of `fn` over `n` runs."""
    runs = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t0)
    return Timing(runs)


def fmt(value: object) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (paste it into bench/README.md as is)."""
    cells = [[fmt(v) for v in row] for row in rows]
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |"]
    lines.append("| " + " | ".join("---" for _ in header) + " |")
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def banner(name: str, argv: Sequence[str]) -> str:
    """What ran, where and when: the line to quote above a results table."""
    today = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    command = " ".join(["python", f"bench/{name}.py", *argv])
    return (
        f"{name} — {today} — `{command}`"
        + f"\n(Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, {platform.machine()})"
    )
