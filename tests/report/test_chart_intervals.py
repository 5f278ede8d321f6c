"""The report's charts: small query types fold into "other", bars sort by count and carry 95 %
intervals (Wilson over each bar's queries)."""

from __future__ import annotations

import math

import pytest
from inproc import InProcess

from egoqa.report.charts import _error_arms, charts, fold_small, rate_errors

from conftest import enqueue_args


def _record(kind: str, n: int, hits: int) -> dict:
    return {"query_type": kind, "n": n, "coverage": hits / n, "r1_03": hits / n, "r1_05": 0.0}


def test_query_types_under_one_percent_or_twenty_fold_into_other_sorted_by_count():
    # the shape of the real val: three stray types of a handful of queries each
    records = [
        _record("where", 2100, 420),
        _record("what", 1200, 120),
        _record("how", 390, 39),
        _record("wherr", 3, 1),
        _record("whree", 2, 0),
        _record("ln", 40, 4),  # 1 % of 3,765 is 37.65: 40 stays
        _record("who", 30, 3),  # under max(37.65, 20): folds
    ]
    shown = fold_small(records, "query_type")
    assert [r["query_type"] for r in shown] == ["where", "what", "how", "ln", "other (3 types)"]
    other = shown[-1]
    assert other["n"] == 35 and sorted(other["folded"]) == ["wherr", "who", "whree"]
    assert other["r1_03"] == pytest.approx(4 / 35)  # 1 + 0 + 3 hits of 35 queries
    # a small run folds nothing (every type would go), nor a lone small type
    small = [_record("where", 5, 1), _record("what", 7, 2)]
    assert [r["query_type"] for r in fold_small(small, "query_type")] == ["what", "where"]
    lone = [_record("where", 500, 1), _record("what", 10, 2)]
    assert [r["query_type"] for r in fold_small(lone, "query_type")] == ["where", "what"]


def test_bars_carry_wilson_intervals_as_whiskers():
    errors = rate_errors([_record("where", 10, 5)], ["r1_03"])
    z = 1.959963984540054
    half = z * math.sqrt(0.025 + z * z / 400) / (1 + z * z / 10)  # 5 of 10, by hand
    assert errors["R@1 IoU>0.3"][0] == pytest.approx((0.5 - half, 0.5 + half))
    below, above = _error_arms([50.0], errors["R@1 IoU>0.3"])
    assert below[0] == pytest.approx(100 * half) and above[0] == pytest.approx(100 * half)
    assert _error_arms([0.0], [None]) == [[0.0], [0.0]]


def test_report_out_draws_the_charts_with_intervals(synth, migrated_db_path, tmp_path):
    run = InProcess(migrated_db_path, tmp_path)
    run(*enqueue_args(synth, "prior:whole_clip"))
    run(*enqueue_args(synth, "prior:uniform_random"))
    built = run.json("report", "--run", "prior:uniform_random", "--compare", "prior:whole_clip")
    assert all(r["intervals"]["miou"] for r in built["compare"])
    paths = charts(built, tmp_path)
    assert {p.name for p in paths} >= {"accuracy_by_query_type.png", "runs_compared.png"}
    assert all(p.stat().st_size > 1000 for p in paths)
