"""How sure a report's numbers are: 95 % intervals on a run's rates and paired comparisons of runs.

Rates over queries get Wilson intervals; means (mIoU, mean R@1) the clip bootstrap of
`egoqa.report.stats`. Two runs are compared over the queries both finished, by a paired clip
bootstrap of each metric's difference and McNemar's exact test on R@1 IoU>0.3 hits. Every
resample is seeded, so a report reads the same each time. Nothing prints here.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np

from egoqa.report import stats
from egoqa.report.rundata import RunData, has_truth, status_of

PROPORTIONS = ("coverage", "r1_03", "r1_05", "r5_03", "r5_05")
PAIRED_METRICS = ("r1_03", "r1_05", "r5_03", "r5_05", "miou")
TEST_METRIC = "r1_03"  # McNemar's hits
METHOD = (
    f"95 % intervals by a paired bootstrap of clips ({stats.RESAMPLES:,} resamples, seed "
    f"{stats.SEED}); p: McNemar's exact test on R@1 IoU>0.3"
)


def _ids(row: dict) -> tuple:
    return row["clip_uid"], row["annotation_uid"], row["query_idx"]


_COLUMNS = {"coverage": "correct", "miou": "iou_top1"}  # metric: its results column


def score_matrix(rows: Sequence[dict], metrics: Sequence[str]) -> np.ndarray:
    """(queries, metrics): each row's score (hits as 0/1, mIoU as the top-1 tIoU, mean R@1 as
    the mean of the two R@1 hits); a pending, failed or unscored query scores 0, as in
    `report.row_scores`."""
    scored = [r for r in rows if r["outcome"] is not None]
    out = np.zeros((len(rows), len(metrics)))
    at = np.array([i for i, r in enumerate(rows) if r["outcome"] is not None], dtype=np.intp)
    for j, m in enumerate(metrics):
        if m == "mean_r1":
            values = [(bool(r["r1_03"]) + bool(r["r1_05"])) / 2 for r in scored]
        else:
            values = [float(r[_COLUMNS.get(m, m)]) for r in scored]
        if scored:
            out[at, j] = values
    return out


def intervals(rows: Sequence[dict], values: dict[str, float]) -> dict[str, list[float] | None]:
    """The 95 % interval of each headline metric over `rows`: Wilson for the rates over queries,
    the clip bootstrap for mIoU and mean R@1 (None without rows)."""
    n = len(rows)
    out: dict[str, list[float] | None] = {}
    for m in PROPORTIONS:
        bounds = stats.wilson(round(values[m] * n), n)
        out[m] = None if bounds is None else list(bounds)
    if n:
        groups = stats.group_codes([r["clip_uid"] for r in rows])
        low, high = stats.bootstrap_interval(score_matrix(rows, ("miou", "mean_r1")), groups)
        out["miou"], out["mean_r1"] = [low[0], high[0]], [low[1], high[1]]
    else:
        out["miou"] = out["mean_r1"] = None
    return out


class _Scored:
    """A run's finished queries with ground truth: their ids and their score matrix."""

    def __init__(self, data: RunData) -> None:
        rows = [r for r in data.rows if status_of(r) in ("done", "failed") and has_truth(r)]
        self.run = data.run
        self.at = {_ids(r): i for i, r in enumerate(rows)}
        self.scores = score_matrix(rows, PAIRED_METRICS)


def pair(a: RunData, b: RunData) -> dict:
    """Run a against run b over the queries both finished (a failure counts as a miss)."""
    return _pair(_Scored(a), _Scored(b))


def _pair(a: _Scored, b: _Scored) -> dict:
    common = [k for k in a.at if k in b.at]
    out = {"a": a.run, "b": b.run, "n": len(common), "metric_tested": TEST_METRIC}
    if not common:
        return out | {"clips": 0, "metrics": {}, "mcnemar": None}
    groups = stats.group_codes([k[0] for k in common])
    score_a = a.scores[[a.at[k] for k in common]]
    score_b = b.scores[[b.at[k] for k in common]]
    test = stats.paired(score_a, score_b, groups, PAIRED_METRICS.index(TEST_METRIC))
    metrics = {
        m: {
            "a": float(score_a[:, j].mean()),
            "b": float(score_b[:, j].mean()),
            "diff": float(test.diff[j]),
            "interval": [float(test.low[j]), float(test.high[j])],
        }
        for j, m in enumerate(PAIRED_METRICS)
    }
    counts = {k: getattr(test, k) for k in ("both", "only_a", "only_b", "neither")}
    return out | {
        "clips": test.clips,
        "metrics": metrics,
        "mcnemar": counts | {"p_value": test.p_value},
    }


def paired_all(runs: Sequence[RunData]) -> list[dict]:
    """Every pair of runs with ground truth, in the order given (first against later)."""
    scored = [_Scored(r) for r in runs if r.graded and r.ground_truth]
    return [_pair(a, b) for a, b in combinations(scored, 2)]
