"""`report --compare`'s paired comparison and the report's intervals, on real runs (prior-only
baselines need no model), checked against numbers worked out here from the `results` rows."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.plan.dataset import load_nlq
from egoqa.plan.priors import enqueue_prior_run, parse_prior
from egoqa.report import summary as rp
from egoqa.report.tables import tables
from egoqa.store.db import open_db

from conftest import copy_db, enqueue_args
from pg import postgres_server, postgres_url  # noqa: F401 -- fixtures

Z = 1.959963984540054


@pytest.fixture
def run(db_path, tmp_path) -> InProcess:
    return InProcess(db_path, tmp_path)


@pytest.fixture(scope="module")
def priors_db(synth, tmp_path_factory) -> Path:
    """The runs `prior:whole_clip` and `prior:uniform_random` over the session's dataset."""
    root = tmp_path_factory.mktemp("priors")
    enqueue = InProcess(root / "egoqa.db", root)
    enqueue(*enqueue_args(synth, "prior:whole_clip"))
    enqueue(*enqueue_args(synth, "prior:uniform_random"))
    return root / "egoqa.db"


@pytest.fixture
def priors(priors_db, run) -> InProcess:
    """The `run` fixture on a private copy of the two priors' database."""
    copy_db(priors_db, run.db)
    return run


def _hits(db_path: Path, run: str) -> dict[tuple, dict]:
    with sqlite3.connect(db_path) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute(
            "SELECT clip_uid, annotation_uid, query_idx, r1_03, r1_05, iou_top1, correct "
            "FROM results WHERE run = ?",
            (run,),
        ).fetchall()
    con.close()
    return {(r["clip_uid"], r["annotation_uid"], r["query_idx"]): dict(r) for r in rows}


def _mcnemar_by_hand(b: int, c: int) -> float:
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n)


def test_compare_reports_paired_differences_mcnemar_and_who_alone_was_right(priors, db_path):
    run = priors
    report = run.json("report", "--run", "prior:whole_clip", "--compare", "prior:uniform_random")
    [pair] = report["paired"]
    whole, rand = _hits(db_path, "prior:whole_clip"), _hits(db_path, "prior:uniform_random")
    assert pair["a"] == "prior:whole_clip" and pair["b"] == "prior:uniform_random"
    assert pair["n"] == len(whole) == 13 and pair["clips"] == 4
    only_a = sum(whole[k]["r1_03"] and not rand[k]["r1_03"] for k in whole)
    only_b = sum(rand[k]["r1_03"] and not whole[k]["r1_03"] for k in whole)
    both = sum(whole[k]["r1_03"] and rand[k]["r1_03"] for k in whole)
    test = pair["mcnemar"]
    assert (test["only_a"], test["only_b"], test["both"]) == (only_a, only_b, both)
    assert test["neither"] == 13 - only_a - only_b - both
    assert test["p_value"] == pytest.approx(_mcnemar_by_hand(only_a, only_b))
    for metric, column in (("r1_03", "r1_03"), ("r1_05", "r1_05"), ("miou", "iou_top1")):
        diff = sum(whole[k][column] - rand[k][column] for k in whole) / 13
        shown = pair["metrics"][metric]
        assert shown["diff"] == pytest.approx(diff)
        low, high = shown["interval"]
        assert low <= diff <= high
    # the tables say the same, and the seeded bootstrap reads the same each time
    text = run("report", "--run", "prior:whole_clip", "--compare", "prior:uniform_random").stdout
    assert "McNemar" in text and "prior:whole_clip − prior:unifo" in text  # cut to 80 columns
    again = run.json("report", "--run", "prior:whole_clip", "--compare", "prior:uniform_random")
    assert again["paired"] == report["paired"]


def test_identical_runs_differ_by_zero_with_p_one(run, synth):
    run(*enqueue_args(synth, "prior:uniform_random", "--run", "one"))
    run(*enqueue_args(synth, "prior:uniform_random", "--run", "two"))
    [pair] = run.json("report", "--run", "one", "--compare", "two")["paired"]
    assert pair["mcnemar"]["p_value"] == 1.0
    assert pair["mcnemar"]["only_a"] == pair["mcnemar"]["only_b"] == 0
    for shown in pair["metrics"].values():
        assert shown["diff"] == 0.0 and shown["interval"] == [0.0, 0.0]


def test_headline_rates_carry_wilson_and_clip_bootstrap_intervals(priors, db_path):
    run = priors
    s = run.json("report", "--run", "prior:uniform_random")["summary"]
    rows = _hits(db_path, "prior:uniform_random")
    n, k = len(rows), sum(r["r1_03"] for r in rows.values())
    p = k / n
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    assert s["intervals"]["r1_03"] == pytest.approx([max(0, centre - half), centre + half])
    low, high = s["intervals"]["miou"]
    assert low <= s["miou"] <= high and low < high
    per_clip = {}
    for key, r in rows.items():
        per_clip.setdefault(key[0], []).append(r["iou_top1"])
    means = [sum(v) / len(v) for v in per_clip.values()]  # every resample mixes these clips
    assert min(means) - 1e-9 <= low and high <= max(means) + 1e-9
    text = run("report", "--run", "prior:uniform_random").stdout
    assert f"{100 * p:.1f} [{100 * max(0, centre - half):.1f}–{100 * (centre + half):.1f}]" in text


@pytest.mark.postgres
def test_paired_comparison_reads_the_same_on_postgresql(synth, db_path, postgres_url):  # noqa: F811
    data = load_nlq(synth.annotations, synth.videos)
    seen = []
    for url in (str(db_path), postgres_url):
        db = open_db(url, create=True)
        for name in ("whole_clip", "uniform_random"):
            enqueue_prior_run(db, data, parse_prior(f"prior:{name}", [], None), name, None)
        built = rp.build(db, "whole_clip", ["uniform_random"])
        seen.append((built["paired"], built["summary"]["intervals"]))
        titles = [t.title for t in tables(built)]
        assert any(t.startswith("paired: A − B") for t in titles)
        db.dispose()
    assert seen[0] == seen[1] and seen[0][0][0]["n"] == 13
