"""The cost of a report's intervals and paired tests at NLQ val scale.

Workload: 5 runs over the 4,548 usable queries of NLQ v2 val, on 415 clips of the skewed sizes
of section 1 (`_common.skewed_counts`), each query's scores planted with a clip effect (easy and
hard clips) as `results` rows. Timed: `egoqa.report.compare.paired_all` (every pair of the 5 runs: 10
paired clip bootstraps of 5 metrics, 10,000 resamples each, and 10 McNemar tests, from the rows),
and each run's `egoqa.report.summary` with its intervals (Wilson for the rates, the clip bootstrap for mIoU and
mean R@1), as `egoqa report --run A --compare B C D E` computes them.

Reproduce: `.venv/bin/python bench/paired_bootstrap.py` (`--quick`: 40 clips, one repeat).
"""

from __future__ import annotations

import argparse
import random
import sys

from _common import NLQ_V2_VAL, banner, repeat, skewed_counts, table

from egoqa.report.compare import paired_all
from egoqa.report.stats import resample_weights
from egoqa.report.summary import RunData, summary

RUNS = 5


def _row(rng: random.Random, clip: int, idx: int, p: float) -> dict:
    iou = rng.random() if rng.random() < p else rng.random() * 0.2
    hit3, hit5 = iou > 0.3, iou > 0.5
    return {
        "clip_uid": f"clip-{clip:05d}",
        "annotation_uid": "ann-0",
        "query_idx": idx,
        "state": "done",
        "gt_start": 1.0,
        "gt_end": 5.0,
        "outcome": "covered" if hit3 else "too_early",
        "correct": int(hit3),
        "iou_top1": iou,
        "r1_03": int(hit3),
        "r1_05": int(hit5),
        "r5_03": int(hit3 or rng.random() < p),
        "r5_05": int(hit5 or rng.random() < p / 2),
        "n_segments": 5,
        "segments": None,
        "clip_duration": 480.0,
    }


def runs(clips: int, queries: int, seed: int = 0) -> list[RunData]:
    counts = skewed_counts(queries, clips, seed)
    rng = random.Random(seed)
    ease = [rng.choice((0.1, 0.4)) for _ in range(clips)]
    style = {"turns": [{"name": "answer", "graded": True}]}
    out = []
    for r in range(RUNS):
        rows = [_row(rng, c, i, ease[c] + 0.03 * r) for c in range(clips) for i in range(counts[c])]
        out.append(RunData(f"run{r}", rows, {}, style, "answer", 0.0, {}))
    return out


def cold(fn, *args):
    """Call fn with no resamples cached from an earlier repeat."""
    resample_weights.cache_clear()
    return fn(*args)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40 clips, one repeat")
    args = parser.parse_args(argv)
    clips = 40 if args.quick else NLQ_V2_VAL["clips"]
    queries = clips * 11 if args.quick else NLQ_V2_VAL["queries"] - NLQ_V2_VAL["no_text"]
    repeats = 1 if args.quick else 3
    data = runs(clips, queries)
    pairs = repeat(lambda: cold(paired_all, data), repeats)
    heads = repeat(lambda: cold(lambda: [summary(d) for d in data]), repeats)
    print(banner("paired_bootstrap", argv))
    rows = [
        ("paired tests, all 10 pairs of 5 runs", pairs.median, pairs.min),
        ("5 runs' summaries with their intervals", heads.median, heads.min),
    ]
    title = f"Intervals and paired tests, seconds ({queries:,} queries, {clips} clips, 5 runs)"
    print(table(title, ["computed", "median", "best"], rows))


if __name__ == "__main__":
    main(sys.argv[1:])
