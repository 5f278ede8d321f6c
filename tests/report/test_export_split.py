"""Exports count every query of the annotation file: the unannotated test split exports without
scores, and the records that could not be enqueued are written as misses (and counted by
`report`), checked the way the official evaluation script reads a prediction file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.dev.synth import SynthPaths, write_synth_dataset
from egoqa.plan.dataset import load_nlq

FAKE = ("--set", "backend=fake")
# What the synthetic file's quirks skip (egoqa.dev.synth._add_quirks): one query without text, two
# bad windows on the first clip, and the two queries of a clip whose video is missing.
VAL_SKIPS = {"inverted_window": 1, "missing_video": 2, "no_query_text": 1, "window_outside_clip": 1}
TEST_SKIPS = {"missing_video": 2, "no_query_text": 1}  # the test split has no windows to be bad


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SynthPaths:
    """2 clips × 2 queries of 6 s with the quirks, as a val split and as a test split."""
    return write_synth_dataset(
        tmp_path_factory.mktemp("split"),
        clips=2,
        queries_per_clip=2,
        duration_sec=6.0,
        quirks=True,
        test_split=True,
        seed=5,
    )


def worked(root: Path, annotations: Path, videos: Path, run: str) -> InProcess:
    """A database where `run` was enqueued from `annotations` and worked (fake backend)."""
    egoqa = InProcess(root / "egoqa.db", root)
    egoqa("enqueue", "-a", annotations, "--videos", videos, "--config", "demo", *FAKE, "--run", run)
    egoqa("work", "--until-done")
    return egoqa


@pytest.fixture(scope="module")
def test_run(data, tmp_path_factory) -> InProcess:
    """The test split enqueued and worked: no query has an answer window."""
    return worked(tmp_path_factory.mktemp("test-run"), data.test_annotations, data.videos, "test")


@pytest.fixture(scope="module")
def val_run(data, tmp_path_factory) -> InProcess:
    """The val split enqueued from a copy of its file that is gone before anything is exported."""
    root = tmp_path_factory.mktemp("val-run")
    moved = root / "nlq_val.json"
    shutil.copy(data.annotations, moved)
    cli = worked(root, moved, data.videos, "val")
    moved.unlink()
    return cli


def file_ids(annotations: Path) -> set[tuple[str, str, int]]:
    """Every query of an annotation file, with or without text: what the evaluation expects."""
    doc = json.loads(annotations.read_text())
    return {
        (clip["clip_uid"], ann["annotation_uid"], idx)
        for video in doc["videos"]
        for clip in video["clips"]
        for ann in clip["annotations"]
        for idx in range(len(ann["language_queries"]))
    }


def official_read(predictions: dict, annotations: Path) -> dict[tuple, list]:
    """Read a prediction file as the official NLQ script does (its asserts and look-ups: by
    clip_uid and annotation_uid, then language_queries[query_idx], then predicted_times[0]);
    returns the windows per query id."""
    assert predictions["version"] == "1.0"
    assert predictions["challenge"] == "ego4d_nlq_challenge"
    doc = json.loads(annotations.read_text())
    truth = {
        (clip["clip_uid"], ann["annotation_uid"]): ann["language_queries"]
        for video in doc["videos"]
        for clip in video["clips"]
        for ann in clip["annotations"]
    }
    out: dict[tuple, list] = {}
    for p in predictions["results"]:
        queries = truth[(p["clip_uid"], p["annotation_uid"])]
        assert 0 <= p["query_idx"] < len(queries)
        times = p["predicted_times"]
        start, end = times[0]
        assert all(isinstance(t, float) for w in times for t in w) and start <= end
        key = (p["clip_uid"], p["annotation_uid"], p["query_idx"])
        assert key not in out, f"{key} predicted twice"
        out[key] = times
    return out


def enqueued_ids(cli: InProcess, run: str) -> set[tuple[str, str, int]]:
    rows = cli.json(
        "sql", f"SELECT clip_uid, annotation_uid, query_idx FROM results WHERE run = '{run}'"
    )
    return {(r["clip_uid"], r["annotation_uid"], r["query_idx"]) for r in rows}


def test_the_unannotated_test_split_exports_every_query_in_the_official_format(
    data, test_run, tmp_path
):
    out = tmp_path / "preds.json"
    p = test_run("export", "--run", "test", "-o", out)
    windows = official_read(json.loads(out.read_text()), data.test_annotations)
    every = file_ids(data.test_annotations)
    assert set(windows) == every and len(every) == 10  # "Evaluated: 10 / 10 instances"
    skipped = every - enqueued_ids(test_run, "test")
    assert len(skipped) == 3 and all(windows[k] == [[0.0, 0.0]] for k in skipped)
    assert "7 enqueued" in p.stderr
    assert "3 skipped when enqueued, written as misses (missing_video 2, no_query_text 1)" in (
        p.stderr
    )


def test_a_run_without_ground_truth_reports_counts_and_answers_not_scores(test_run):
    report = test_run.json("report", "--run", "test")
    s = report["summary"]
    assert (s["n"], s["done"], s["failed"], s["pending"]) == (7, 7, 0, 0)
    assert s["ground_truth"] is False and s["unscored"] == 0
    assert s["coverage"] is None and s["r1_03"] is None and s["best_of_n"] is None
    assert (s["skipped"], s["skipped_by_reason"]) == (3, TEST_SKIPS)
    assert len(report["answers"]) == 7 and report["outcomes"] == []
    assert all(isinstance(a["predicted_times"], list) for a in report["answers"])
    table = test_run("report", "--run", "test")
    assert "ground truth" in table.stdout and "none (a test split)" in table.stdout
    assert "answers" in table.stdout and "R@1" not in table.stdout
    assert "--rescore" not in table.stderr and "has no ground truth" in table.stderr


def test_export_writes_the_skipped_queries_as_misses_and_says_why(data, val_run, tmp_path):
    out = tmp_path / "preds.json"
    p = val_run("export", "--run", "val", "-o", out)
    windows = official_read(json.loads(out.read_text()), data.annotations)
    every = file_ids(data.annotations)
    assert set(windows) == every and len(every) == 10
    skipped = every - enqueued_ids(val_run, "val")
    assert len(skipped) == 5 and all(windows[k] == [[0.0, 0.0]] for k in skipped)
    reasons = ", ".join(f"{k} {v}" for k, v in VAL_SKIPS.items())
    assert f"5 skipped when enqueued, written as misses ({reasons})" in p.stderr


def test_only_enqueued_leaves_the_skipped_queries_out_and_says_so(data, val_run, tmp_path):
    out = tmp_path / "preds.json"
    p = val_run("export", "--run", "val", "--only-enqueued", "-o", out)
    windows = official_read(json.loads(out.read_text()), data.annotations)
    assert set(windows) == enqueued_ids(val_run, "val") and len(windows) == 5
    assert "5 skipped queries left out by --only-enqueued" in p.stderr


def test_report_shows_the_skipped_count_beside_the_scores(val_run):
    s = val_run.json("report", "--run", "val")["summary"]
    assert s["ground_truth"] is True and s["n"] == 5 and s["coverage"] is not None
    assert (s["skipped"], s["skipped_by_reason"]) == (5, VAL_SKIPS)
    table = val_run("report", "--run", "val").stdout
    assert "skipped at enqueue (misses)" in table and "coverage %" in table


def test_enqueueing_the_same_file_again_records_its_skipped_records_once(data, tmp_path):
    from egoqa.plan.config import load_config
    from egoqa.plan.planner import enqueue_run
    from egoqa.plan.styles import load_style
    from egoqa.store.db import open_db
    from egoqa.store.skips import skipped_queries

    cfg = load_config("demo", ["backend=fake"])
    dataset = load_nlq(data.annotations, data.videos)
    db = open_db(tmp_path / "egoqa.db", create=True)
    for _ in range(2):
        enqueue_run(
            db, dataset, cfg, load_style(cfg.style), "val", annotations=str(data.annotations)
        )
    assert len(skipped_queries(db, "val")) == sum(VAL_SKIPS.values())
    db.dispose()
