"""The run explorer at the scale of a full NLQ v2 val run: page size and load time in Chromium.

Workload: the NLQ-v2-val-shaped dataset of `_common` (4,548 usable queries over 415 clips)
enqueued with style `stage_analysis` under the `coarse` preset (4 turns, the graded one drawn 5
times), its responses planted through the queue (no model): realistic answers with windows near
the truth, 5 % of the graded answers unparseable, the clips of 1 % of the queries failing on an
unreadable video, the jobs of 2 % of the clips left pending (a run still working). Then scored,
clustered and written by `egoqa.report.explorer.write_explorer` without thumbnails (every clip of the
workload is a window of one tiny file). Thumbnails are measured apart: 5 clips of 11 queries on a
rendered 480 s clip, 8 thumbnails per turn, and their cost per clip is scaled to 415 clips.

In headless Chromium (Debian's, driven by Playwright; skipped, saying why, where absent) the page
is opened from file:// `--loads` times: "ready" is the time from navigation start until the
first page of cards is drawn (`body[data-ready-ms]`); then a filter change, a search, the next
page and the opening of a card's turns (which loads its clip's data file) are timed in the page.

Reproduce: `.venv/bin/python bench/explorer_scale.py` (2-4 minutes on 2 cores, plus about 30 s
to render the 480 s clip once into `bench/.cache/`); `--quick` for a smoke run (110 queries,
one page load, one 20 s clip of 4 queries for thumbnails).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import CACHE, banner, nlq_shaped_dataset, shared_video, table

from egoqa.answers.scoring import score_items
from egoqa.dev.synth import TEMPLATES
from egoqa.plan.config import load_config
from egoqa.plan.dataset import Clip, Dataset, Query
from egoqa.plan.planner import enqueue_run
from egoqa.plan.styles import load_style
from egoqa.report.clusters import cluster_run
from egoqa.report.explorer import write_explorer
from egoqa.store import queue
from egoqa.store.db import open_db

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARGS += ["--disable-component-update", "--disable-sync", "--no-first-run"]


# --- planting a finished (mostly) run ------------------------------------------------------------


def _answer(rng: random.Random, gt: tuple[float, float], duration: float) -> str:
    if rng.random() < 0.05:
        return "I cannot determine when this happens from the frames and stages given."
    lines = ["Expected scene: the person handles the object near the counter.", "Segments:"]
    for _ in range(rng.randint(1, 3)):
        centre = min(duration, max(0.0, rng.gauss((gt[0] + gt[1]) / 2, duration / 6)))
        half = rng.uniform(2, 40)
        lines.append(f"[{max(0, centre - half):.0f}s] - [{min(duration, centre + half):.0f}s]: ")
        lines[-1] += "the object is visible on the counter while the person reaches for it."
    return "\n".join(lines)


def _text(rng: random.Random, turn: str, gt, duration: float) -> str:
    if turn == "scenario":
        stages = "\n".join(f"{i}. Stage {i}: preparing, moving, tidying up" for i in range(1, 7))
        return "Scenario: cooking a meal in a home kitchen\nStages:\n" + stages
    if turn == "transitions":
        step = duration / 8
        return "\n".join(
            f"{i * step:.0f} - {(i + 1) * step:.0f}: [Stage {i % 6 + 1}] -> [Stage {(i + 1) % 6 + 1}]"
            for i in range(8)
        )
    if turn == "answer":
        return "It is on the left side of the counter, next to the sink."
    return _answer(rng, gt, duration)


def plant(db, data: Dataset, problems: bool, seed: int = 0) -> dict[str, int]:
    """Complete the run's jobs through the queue with planted answers; with `problems`, fail
    and leave pending a few clips' jobs. Returns the counts of done, failed and pending jobs."""
    rng = random.Random(seed)
    uids = sorted(data.clips)
    failing = set(rng.sample(uids, max(1, len(uids) // 100))) if problems else set()
    rest = sorted(set(uids) - failing)
    waiting = set(rng.sample(rest, max(1, len(uids) // 50))) if problems else set()
    gt = {(q.clip_uid, q.text): (q.gt_start, q.gt_end) for q in data.queries}
    with db.read() as cur:
        clip_of = dict(cur.all("SELECT id, clip_uid FROM clips"))
        engine = cur.one("SELECT engine FROM jobs LIMIT 1")
    counts = {"done": 0, "failed": 0, "pending": 0}
    while True:
        claim = queue.claim(db, "planter", engine, 4000, lease_s=3600)
        held = [j for j in claim.jobs if clip_of[j.clip_id] not in waiting]
        queue.release(db, claim, [j.id for j in claim.jobs if clip_of[j.clip_id] in waiting])
        if not held:
            break
        done = []
        for job in held:
            uid = clip_of[job.clip_id]
            if uid in failing and job.spec["turn"] == "scenario":
                queue.fail(
                    db, claim, job.id, "video_unreadable", f"video file {uid}.mp4 is unreadable"
                )
                counts["failed"] += 1
                continue
            duration = data.clips[uid].duration_sec
            window = gt.get((uid, job.spec.get("query")), (0.0, 4.0))
            texts = [
                _text(rng, job.spec["turn"], window, duration) for _ in range(job.spec["samples"])
            ]
            prompt = job.spec["template"] + "\n" + texts[0][:800]
            done.append(
                queue.Completion(job.id, texts[0], texts, prompt=prompt, finish_reason="stop")
            )
        queue.complete(db, claim, done)
        counts["done"] += len(done)
    with db.read() as cur:
        counts["pending"] = cur.one(
            "SELECT COUNT(*) FROM jobs WHERE state IN ('ready', 'blocked', 'running')"
        )
    return counts


def build_run(directory: Path, data: Dataset, run: str = "full", problems: bool = True):
    directory.mkdir(parents=True, exist_ok=True)
    db = open_db(directory / "egoqa.db", create=True)
    config = load_config("coarse", ["backend=fake"])
    enqueue_run(db, data, config, load_style(config.style), run)
    counts = plant(db, data, problems)
    score_items(db, run=run)
    cluster_run(db, run)
    return db, counts


# --- measuring --------------------------------------------------------------------------------


def site_sizes(site: Path) -> dict[str, float]:
    files = [p for p in site.rglob("*") if p.is_file()]
    first = ["index.html", "assets/explorer.js", "assets/explorer.css", "data/index.js"]
    clips = [p.stat().st_size for p in (site / "data").glob("clip-*.js")]
    return {
        "files": len(files),
        "site MB": sum(p.stat().st_size for p in files) / 1e6,
        "first load MB": sum((site / f).stat().st_size for f in first) / 1e6,
        "data/index.js MB": (site / "data" / "index.js").stat().st_size / 1e6,
        "largest clip file kB": max(clips) / 1e3,
        "median clip file kB": statistics.median(clips) / 1e3,
    }


TIMED = """async () => {
  const t = [];
  const tick = () => t.push(performance.now());
  const out = {};
  tick(); const o = document.getElementById('f-outcome'); o.value = 'overlap';
  o.dispatchEvent(new Event('change')); tick(); out.filter_ms = t[1] - t[0];
  const s = document.getElementById('search'); s.value = 'drawer';
  s.dispatchEvent(new Event('input')); tick(); out.search_ms = t[2] - t[1];
  out.matching = EGOQA.state().view.length;
  s.value = ''; s.dispatchEvent(new Event('input')); o.value = '';
  o.dispatchEvent(new Event('change'));
  tick(); document.getElementById('next').click(); tick(); out.next_page_ms = t[4] - t[3];
  out.cards = document.querySelectorAll('article.card').length;
  const box = document.querySelector('details.turns');
  const t0 = performance.now(); box.open = true;
  while (!box.querySelector('.turn')) await new Promise(r => setTimeout(r, 5));
  out.open_turns_ms = performance.now() - t0;
  out.heap_mb = performance.memory ? performance.memory.usedJSHeapSize / 1e6 : null;
  return out;
}"""


def browse(site: Path, loads: int) -> dict[str, float] | str:
    if not CHROMIUM.exists():
        return "skipped: no /usr/bin/chromium (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return "skipped: playwright is not installed (pip install -e '.[test]')"
    ready, timed = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        for _ in range(loads):
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto((site / "index.html").as_uri())
            page.wait_for_selector("body[data-ready]", timeout=120_000)
            ready.append(float(page.get_attribute("body", "data-ready-ms")))
            timed.append(page.evaluate(TIMED))
            page.close()
        browser.close()
    out = {"ready ms (median)": statistics.median(ready), "ready ms (best)": min(ready)}
    for key in ("filter_ms", "search_ms", "next_page_ms", "open_turns_ms", "heap_mb"):
        values = [t[key] for t in timed if t[key] is not None]
        if values:
            out[f"{key} (median)"] = statistics.median(values)
    out["cards per page"] = timed[0]["cards"]
    return out


def thumbnail_cost(
    directory: Path, clips: int, queries: int, seconds: float, repeats: int
) -> dict[str, float]:
    """Thumbnails for `clips` clips of 480 s (one rendered 320x240 10 fps H.264 file), scaled to
    415 clips: the time of writing the explorer with them minus without them (best of two)."""
    from egoqa.dev.synth import is_rendered, render_clip

    video = CACHE / f"explorer-{seconds:.0f}s.mp4"
    CACHE.mkdir(exist_ok=True)
    if not is_rendered(video, seconds, fps=10, size=(320, 240)):
        render_clip(video, seconds, fps=10, size=(320, 240))
    rng = random.Random(1)
    data = Dataset(clips={}, queries=[], skipped=[], version="v2")
    for c in range(clips):
        uid = f"thumb-clip-{c}"
        # a different length per clip: distinct clips, so no job is shared between them
        data.clips[uid] = Clip(uid, f"video-{c}", video, 0.0, seconds - c, "val")
        for i in range(queries):
            start = round(rng.uniform(0, seconds - 10 - c), 2)
            text = TEMPLATES[i % len(TEMPLATES)][2].format(x=f"cup #{c}-{i}", y="opened the door")
            data.queries.append(
                Query(uid, "ann", i, text, TEMPLATES[i % 13][0], start, start + 4, {})
            )
    db, _ = build_run(directory / "thumbs", data, run="thumbs", problems=False)
    took: dict[int, list[float]] = {}
    for limit in (0, 8) * repeats:  # interleaved; the difference is the thumbnails' own cost
        t0 = time.perf_counter()
        write_explorer(db, "thumbs", directory / f"site-{limit}", thumbs=limit)
        took.setdefault(limit, []).append(time.perf_counter() - t0)
    jpegs = list((directory / "site-8" / "thumbs").rglob("*.jpg"))
    per_clip_s = (min(took[8]) - min(took[0])) / clips
    per_clip_mb = sum(p.stat().st_size for p in jpegs) / 1e6 / clips
    return {
        "clips": clips,
        "JPEGs": len(jpegs),
        "s per clip": per_clip_s,
        "MB per clip": per_clip_mb,
        "415 clips, s (scaled)": per_clip_s * 415,
        "415 clips, MB (scaled)": per_clip_mb * 415,
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="110 queries, one load")
    parser.add_argument("--loads", type=int, default=5, help="page loads in Chromium")
    args = parser.parse_args(argv)
    shape = dict(videos=8, clips=10, queries=110, no_text=1, repeats=2) if args.quick else {}
    loads = 1 if args.quick else args.loads
    print(banner("explorer_scale", argv))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        data = nlq_shaped_dataset(shared_video(directory), **shape)
        t0 = time.perf_counter()
        db, counts = build_run(directory, data)
        built = time.perf_counter() - t0
        t0 = time.perf_counter()
        write_explorer(db, "full", directory / "site", thumbs=0)
        written = time.perf_counter() - t0
        sizes = site_sizes(directory / "site")
        browsed = browse(directory / "site", loads)
        thumbs = thumbnail_cost(directory, *((1, 4, 20.0, 1) if args.quick else (5, 11, 480.0, 2)))
    print(f"\n{len(data.queries)} queries; jobs {counts}; planted and scored in {built:.1f} s\n")
    print(table("Explorer size and load time", ["measure", "value"], [
        ("write the explorer (no thumbnails), s", written), *sizes.items(),
        *(browsed.items() if isinstance(browsed, dict) else [("browser", browsed)]),
    ]))  # fmt: skip
    print()
    title = f"Thumbnails (8 per turn, {'20' if args.quick else '480'} s clips)"
    print(table(title, ["measure", "value"], list(thumbs.items())))


if __name__ == "__main__":
    main(sys.argv[1:])
