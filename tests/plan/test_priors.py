"""Prior-only baselines (`enqueue --config prior:NAME`): computed at enqueue as done jobs that no
worker claims, scored and reported like any run; length_prior learns from --fit only. (A prior
beside a model run in `report --compare` is tested with the explorer's run.)"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.answers.metrics import union_length
from egoqa.plan.dataset import load_nlq
from egoqa.plan.priors import enqueue_prior_run, parse_prior
from egoqa.report.clusters import cluster_run
from egoqa.report.export import export_nlq
from egoqa.store import queue
from egoqa.store.db import open_db

from conftest import enqueue_args
from pg import migrated_postgres_url, postgres_server, postgres_url  # noqa: F401 -- fixtures

CLIP_SEC = 24.0  # the synthetic clips' length (conftest's `synth`)


@pytest.fixture
def cli(db_path, tmp_path) -> InProcess:
    """`egoqa` in this process, on `db_path`."""
    return InProcess(db_path, tmp_path)


def _rows(db_path: Path, run: str) -> list[dict]:
    with sqlite3.connect(db_path) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute(
            """SELECT clip_uid, annotation_uid, query_idx, gt_start, gt_end, state, response,
                      segments, correct, outcome FROM results WHERE run = ?
                ORDER BY clip_uid, annotation_uid, query_idx""",
            (run,),
        ).fetchall()
    con.close()
    return [dict(r) for r in rows]


def _windows(rows: list[dict]) -> list[list[float]]:
    return [[s[0], s[1]] for r in rows for s in json.loads(r["segments"])]


def test_whole_clip_prior_is_done_at_enqueue_and_covers_every_query(cli, synth, migrated_db_path):
    db_path = migrated_db_path
    out = cli(*enqueue_args(synth, "prior:whole_clip"))
    assert "no worker needed" in out.stdout
    rows = _rows(db_path, "prior:whole_clip")
    assert len(rows) == 13  # the synthetic file's usable queries
    assert {r["state"] for r in rows} == {"done"}
    assert _windows(rows) == [[0.0, CLIP_SEC]] * len(rows)
    assert all(r["correct"] == 1 and r["outcome"] == "covered" for r in rows)
    # nothing for a worker to claim: no job of the prior is pending, and `work` finds nothing
    with sqlite3.connect(db_path) as con:
        assert con.execute("SELECT COUNT(*) FROM jobs WHERE state <> 'done'").fetchone() == (0,)
    con.close()
    work = cli("work", "--until-done")
    assert "nothing to do" in work.stderr
    asked = cli("work", "--model", "prior:whole_clip", check=False)
    assert asked.returncode == 1 and "needs no worker" in asked.stderr
    assert "Traceback" not in asked.stderr
    summary = cli.json("report", "--run", "prior:whole_clip")["summary"]
    assert summary["coverage"] == 1.0 and summary["pred_length"] == pytest.approx(1.0)
    exported = export_nlq(
        open_db(db_path, readonly=True), "prior:whole_clip", only_enqueued=True
    ).predictions["results"]
    assert [p["predicted_times"] for p in exported] == [[[0.0, CLIP_SEC]]] * 13


def test_uniform_random_is_seeded_per_query(synth, migrated_db_path):
    db_path = migrated_db_path
    db = open_db(db_path)
    data, few = (
        load_nlq(synth.annotations, synth.videos),
        load_nlq(synth.annotations, synth.videos, limit=4),
    )
    for run, seed, dataset in (("r0", 0, data), ("r0b", 0, data), ("r1", 1, data), ("few", 0, few)):
        prior = parse_prior("prior:uniform_random", [f"seed={seed}"], None)
        plan = enqueue_prior_run(db, dataset, prior, run, None)
        assert plan.jobs_new == (13 if run in ("r0", "r1") else 0)  # same seed: same jobs
    r0, r0b, r1 = (_windows(_rows(db_path, run)) for run in ("r0", "r0b", "r1"))
    assert len(r0) == 13 and r0 == r0b and r0 != r1
    assert all(0.0 <= s <= e <= CLIP_SEC for s, e in r0 + r1)
    assert len({(s, e) for s, e in r0}) == len(r0)  # a window per query, not one for all
    # a query's window does not depend on which other queries the run holds
    ids = ("clip_uid", "annotation_uid", "query_idx")
    full = {tuple(r[k] for k in ids): r["segments"] for r in _rows(db_path, "r0")}
    part = {tuple(r[k] for k in ids): r["segments"] for r in _rows(db_path, "few")}
    assert len(part) == 4 and all(full[k] == v for k, v in part.items())


def _training_file(path: Path) -> Path:
    """Four 100 s clips' answer windows: lengths 2, 4, 6 and 30 s (median 5), centres at 0.72,
    0.74 and 0.76 of the clip (the 0.7-0.8 bin) and one at 0.15."""
    windows = [(71.0, 73.0), (72.0, 76.0), (73.0, 79.0), (0.0, 30.0)]
    clips = [
        {
            "clip_uid": f"train-clip-{i}",
            "video_start_sec": 0.0,
            "video_end_sec": 100.0,
            "clip_start_sec": 0.0,
            "clip_end_sec": 100.0,
            "annotations": [
                {
                    "annotation_uid": f"train-ann-{i}",
                    "language_queries": [
                        {
                            "query": "Where did I put the cup?",
                            "clip_start_sec": s,
                            "clip_end_sec": e,
                        }
                    ],
                }
            ],
        }
        for i, (s, e) in enumerate(windows)
    ]
    path.write_text(json.dumps({"version": "2", "videos": [{"video_uid": "v", "clips": clips}]}))
    return path


def test_length_prior_learns_length_and_position_from_the_fit_file(
    cli, synth, migrated_db_path, tmp_path
):
    db_path = migrated_db_path
    fit = _training_file(tmp_path / "nlq_train.json")
    cli(*enqueue_args(synth, "prior:length_prior", "--fit", str(fit), "--run", "lp"))
    rows = _rows(db_path, "lp")
    # median length 5 s, centred at 0.74 of each 24 s clip: 17.76 - 2.5 .. 17.76 + 2.5
    for start, end in _windows(rows):
        assert start == pytest.approx(15.26, abs=1e-6) and end == pytest.approx(20.26, abs=1e-6)
    # learned from the fit file, never from the run's own ground truth (which varies per query)
    assert len({(r["gt_start"], r["gt_end"]) for r in rows}) > 1
    with sqlite3.connect(db_path) as con:
        (config,) = con.execute("SELECT config FROM runs WHERE name = 'lp'").fetchone()
    con.close()
    assert json.loads(config)["fit_windows"] == 4


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--config", "prior:length_prior"), "add --fit"),
        (("--config", "prior:median"), "unknown prior 'median'"),
        (("--config", "prior:whole_clip", "--set", "sampler.frames=4"), "only --set seed=N"),
        (("--config", "prior:whole_clip", "--fit", "x.json"), "only for prior:length_prior"),
        (("--config", "demo", "--fit", "x.json"), "--fit is for prior runs"),
    ],
)
def test_bad_prior_requests_are_one_line_and_write_nothing(cli, synth, db_path, args, says):
    base = ["enqueue", "--annotations", str(synth.annotations), "--videos", str(synth.videos)]
    proc = cli(*base, *args, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert says in line, line
    assert not db_path.exists()  # refused before the database was even created


def test_union_length_counts_overlapping_windows_once():
    assert union_length([[0, 4], [2, 6], [10, 11, 7.0]]) == 7
    assert union_length([[5, 5], [1, 2]]) == 1
    assert union_length([]) == 0


@pytest.mark.postgres
def test_a_prior_run_and_its_clusters_read_the_same_on_postgresql(
    synth,
    migrated_db_path,
    migrated_postgres_url,  # noqa: F811
):
    data = load_nlq(synth.annotations, synth.videos)
    prior = parse_prior("prior:uniform_random", ["seed=7"], None)
    select = """SELECT clip_uid, annotation_uid, query_idx, state, response, segments, correct,
                       iou_top1, outcome, clip_duration, cluster, cluster_label, cluster_method
                  FROM results ORDER BY clip_uid, annotation_uid, query_idx"""
    seen = []
    for url in (str(migrated_db_path), migrated_postgres_url):
        db = open_db(url)
        enqueue_prior_run(db, data, prior, "r", None)
        cluster_run(db, "r", k=3)
        assert queue.claim(db, "a-worker", prior.model, 100, lease_s=60).jobs == []
        with db.read() as cur:
            seen.append([tuple(row) for row in cur.all(select)])
        db.dispose()
    sqlite_rows, pg_rows = seen
    assert len(sqlite_rows) == 13 and {r[3] for r in sqlite_rows} == {"done"}
    assert {r[10] for r in sqlite_rows} == {0, 1, 2}
    assert pg_rows == sqlite_rows
