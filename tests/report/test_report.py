"""`egoqa report` and `egoqa export`: metrics on hand-built predictions agree three ways (report,
the `results` view, answers.metrics.summarize), rescoring needs no model, the files of a real run, and
the light commands never import torch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.answers.metrics import (
    best_of_n,
    failed_scores,
    parse_segments,
    score,
    summarize,
    validate_nlq_predictions,
)
from egoqa.answers.scoring import score_items
from egoqa.store import queue
from egoqa.store.db import open_db

from conftest import Cli, copy_db, enqueue_args

CLIP_SEC = 24.0  # the synthetic clips' length (conftest's `synth`)

ONE_TURN_STYLE = """
name = "one_turn"
description = "One text-only graded turn drawing three samples (tests)."

[[turns]]
name = "ground"
media = "none"
reads_query = true
samples = 3
graded = true
template = "Question: {query}\\nReply with [start] - [end]."
"""

# Per query: the ground truth set in the database, then the graded job's three samples (the
# first is the graded response), a failure, or None (left pending).
CASES = [
    # tIoU exactly 0.3 (3 s of a 10 s window): not counted at 0.3; sample 2 is exact
    ((10.0, 20.0), ["[10s] - [13s]", "[10s] - [20s]", "nothing"]),
    # tIoU exactly 0.5 at rank 1 (not counted at 0.5); rank 2 has 0.8 (Recall@5 at 0.5)
    ((10.0, 20.0), ["[10s] - [15s]\n[11s] - [19s]", "[0s] - [2s]", "[0s] - [2s]"]),
    # a zero-length ground truth: covered by a window around it, tIoU 0
    ((12.0, 12.0), ["[10s] - [14s]", "[12s] - [12s]", "[0s] - [1s]"]),
    # no parseable segment (a zero-length prediction in sample 2 overlaps nothing)
    ((4.0, 8.0), ["I cannot tell from these frames.", "[5s] - [5s]", "no idea"]),
    ((2.0, 6.0), "fail"),
    ((2.0, 6.0), None),
]


def _expected(best: bool = False) -> dict:
    """The run's metrics computed here from CASES with evaluate alone (pending/failed: misses)."""
    rows = []
    for (gs, ge), texts in CASES:
        if not isinstance(texts, list):
            rows.append(failed_scores())
            continue
        samples = [score(parse_segments(t, CLIP_SEC), gs, ge) for t in texts]
        rows.append(best_of_n(samples) if best else samples[0])
    return summarize(rows)


def _build_hand_run(egoqa: InProcess, synth, db_path: Path, style: Path) -> None:
    style.write_text(ONE_TURN_STYLE)
    egoqa(
        *enqueue_args(synth, "baseline", "--set", f"style={json.dumps(str(style))}"),
        *("--set", "backend=fake", "--run", "hand", "--limit", str(len(CASES))),
    )
    db = open_db(db_path)
    with db.write() as cur:
        items = cur.all(
            """SELECT ri.query_id, ri.graded_job_id, j.engine FROM run_items ri
                 JOIN jobs j ON j.id = ri.graded_job_id ORDER BY ri.query_id"""
        )
        assert len(items) == len(CASES)
        for (qid, _, _), ((gs, ge), _) in zip(items, CASES, strict=True):
            cur.execute(
                "UPDATE queries SET gt_start = :s, gt_end = :e WHERE id = :q",
                {"s": gs, "e": ge, "q": qid},
            )
    claim = queue.claim(db, "test-worker", items[0][2], 100, lease_s=600)
    assert {j.id for j in claim.jobs} == {job for _, job, _ in items}
    done = []
    for (_, job, _), (_, texts) in zip(items, CASES, strict=True):
        if texts == "fail":
            assert queue.fail(db, claim, job, "video", "clip.mp4 is truncated at 3.0 s")
        elif texts is None:
            assert queue.release(db, claim, [job]) == 1
        else:
            done.append(queue.Completion(job, texts[0], texts, prompt=f"prompt of job {job}"))
    assert queue.complete(db, claim, done) == {c.job_id for c in done}
    score_items(db, run="hand")
    db.dispose()


@pytest.fixture(scope="module")
def hand_db(synth, tmp_path_factory) -> Path:
    """Run `hand` built once: six queries whose graded job is completed, failed or left pending
    by hand through the queue (no backend), then scored."""
    root = tmp_path_factory.mktemp("hand")
    egoqa = InProcess(root / "egoqa.db", root)
    _build_hand_run(egoqa, synth, root / "egoqa.db", root / "one_turn.toml")
    return root / "egoqa.db"


@pytest.fixture
def egoqa(db_path, tmp_path) -> InProcess:
    return InProcess(db_path, tmp_path)


@pytest.fixture
def hand_run(hand_db, db_path) -> str:
    """A private copy of the `hand` database at the `egoqa` fixture's path; returns the run name."""
    copy_db(hand_db, db_path)
    return "hand"


def _view_metrics(egoqa, run: str) -> dict:
    sql = f"""SELECT COUNT(*) AS n, AVG(COALESCE(correct, 0)) AS coverage,
                     AVG(COALESCE(r1_03, 0)) AS r1_03, AVG(COALESCE(r1_05, 0)) AS r1_05,
                     AVG(COALESCE(r5_03, 0)) AS r5_03, AVG(COALESCE(r5_05, 0)) AS r5_05,
                     AVG(COALESCE(iou_top1, 0)) AS miou,
                     AVG(COALESCE(best_correct, 0)) AS best_coverage
                FROM results WHERE run = '{run}'"""
    return egoqa.json("sql", sql)[0]


def test_metrics_agree_between_report_results_view_and_evaluate(egoqa, hand_run):
    report = egoqa.json("report", "--run", hand_run)
    s, view, expected = report["summary"], _view_metrics(egoqa, hand_run), _expected()
    assert (s["n"], s["done"], s["failed"], s["pending"]) == (6, 4, 1, 1)
    for key in ("coverage", "r1_03", "r1_05", "r5_03", "r5_05", "miou"):
        assert s[key] == pytest.approx(expected[key], abs=1e-12), key
        assert view[key] == pytest.approx(expected[key], abs=1e-12), key
    assert s["mean_r1"] == pytest.approx(expected["mean_r1"], abs=1e-12)
    # the numbers themselves: strict thresholds, zero-length windows, every query counted
    assert s["r1_03"] == pytest.approx(1 / 6)  # 0.5 counts at 0.3; exactly 0.3 does not
    assert s["r1_05"] == 0.0  # exactly 0.5 does not count at 0.5
    assert s["r5_05"] == pytest.approx(1 / 6)  # rank 2 at 0.8
    assert s["coverage"] == pytest.approx(1 / 6)  # the zero-length truth inside [10, 14]
    assert s["miou"] == pytest.approx((0.3 + 0.5) / 6)


def test_best_of_n_is_reported_beside_the_first_sample(egoqa, hand_run):
    s = egoqa.json("report", "--run", hand_run)["summary"]
    best, expected = s["best_of_n"], _expected(best=True)
    assert s["samples"] == 3 and s["graded_turn"] == "ground"
    for key in ("coverage", "r1_03", "r1_05", "miou"):
        assert best[key] == pytest.approx(expected[key], abs=1e-12), key
    assert best["coverage"] == pytest.approx(2 / 6) and s["coverage"] == pytest.approx(1 / 6)
    assert best["r1_05"] == pytest.approx(1 / 6)
    assert _view_metrics(egoqa, hand_run)["best_coverage"] == pytest.approx(2 / 6)
    table = egoqa("report", "--run", hand_run).stdout
    assert "best of 3 samples of 'ground'" in table


def test_outcomes_and_failures_count_every_query(egoqa, hand_run):
    report = egoqa.json("report", "--run", hand_run)
    total = report["outcomes"][-1]
    assert total["query_type"] == "(all)"
    assert {
        k: total[k] for k in ("n", "covered", "overlap", "no_segment", "failed", "pending")
    } == {
        "n": 6,
        "covered": 1,
        "overlap": 2,
        "no_segment": 1,
        "failed": 1,
        "pending": 1,
    }
    assert sum(r["n"] for r in report["by_query_type"]) == 6
    assert sum(r["n"] for r in report["by_template"]) == 6
    (failure,) = report["failures"]
    assert failure["kind"] == "video" and failure["jobs"] == 1 and failure["queries"] == 1
    rows = egoqa.json("sql", "SELECT state, outcome, correct, r1_03 FROM results ORDER BY state")
    assert {(r["state"], r["outcome"], r["correct"]) for r in rows if r["state"] != "done"} == {
        ("failed", "failed", 0),
        ("ready", None, None),
    }


def test_rescore_recomputes_from_stored_responses_without_a_model(egoqa, hand_run, db_path):
    db = open_db(db_path)
    with db.write() as cur:
        job, results_before = cur.execute(
            """SELECT ri.graded_job_id, (SELECT COUNT(*) FROM job_results) FROM run_items ri
                 JOIN queries q ON q.id = ri.query_id WHERE q.gt_start = 4.0"""
        ).fetchone()
        cur.execute(
            "UPDATE jobs SET response = :r, responses = :rs WHERE id = :j",
            {"r": "[4s] - [8s]", "rs": json.dumps(["[4s] - [8s]"]), "j": job},
        )
        # the other items as if their scores were never written (a worker died in between)
        cur.execute("UPDATE run_items SET scored_at = NULL WHERE graded_job_id <> :j", {"j": job})
    stale = egoqa("report", "--run", hand_run, "--json")
    assert json.loads(stale.stdout)["summary"]["unscored"] == 3  # the three done, not the failed
    assert "--rescore" in stale.stderr
    refused = egoqa("export", "--run", hand_run, check=False)
    assert refused.returncode == 1 and "have no scores yet" in refused.stderr
    after = egoqa.json("report", "--run", hand_run, "--rescore")["summary"]
    assert after["unscored"] == 0
    assert after["coverage"] == pytest.approx(_expected()["coverage"] + 1 / 6)
    assert after["r1_05"] == pytest.approx(1 / 6)
    row = egoqa.json(
        "sql", f"SELECT correct, iou_top1, outcome FROM results WHERE graded_job_id = {job}"
    )
    assert row == [{"correct": 1, "iou_top1": 1.0, "outcome": "covered"}]
    with db.read() as cur:
        assert cur.one("SELECT COUNT(*) FROM job_results") == results_before
        assert cur.one("SELECT state FROM jobs WHERE id = :j", {"j": job}) == "done"


def test_export_covers_every_query_with_misses_as_zero_windows(egoqa, hand_run, tmp_path):
    # --only-enqueued: the records skipped before --limit was reached are test_export_split's
    out = tmp_path / "preds.json"
    egoqa("export", "--run", hand_run, "--format", "nlq", "--only-enqueued", "-o", out)
    obj = json.loads(out.read_text())
    ids = [
        (r["clip_uid"], r["annotation_uid"], r["query_idx"])
        for r in egoqa.json("sql", "SELECT clip_uid, annotation_uid, query_idx FROM results")
    ]
    validate_nlq_predictions(obj, ids)
    by_window = sorted(json.dumps(p["predicted_times"]) for p in obj["results"])
    assert by_window.count("[[0.0, 0.0]]") == 3  # no segment, failed, pending
    stdout = egoqa("export", "--run", hand_run, "--only-enqueued").stdout  # stdout without -o
    assert json.loads(stdout) == obj


def test_unknown_run_is_one_clear_line_and_exit_1(egoqa, hand_run):
    for command in (("report", "--run", "nope"), ("export", "--run", "nope")):
        proc = egoqa(*command, check=False)
        assert proc.returncode == 1
        assert proc.stderr.strip().splitlines() == [
            "error: no run named 'nope'; runs here: hand"
        ], proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_run_with_nothing_finished_is_refused_clearly(egoqa, synth):
    egoqa(*enqueue_args(synth, "demo", "--set", "backend=fake", "--run", "fresh"))
    proc = egoqa("report", "--run", "fresh", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "has nothing finished yet" in line and "egoqa work" in line


def test_report_and_sql_do_not_import_torch(hand_run, db_path, tmp_path):
    script = f"""
import sys
from pathlib import Path
from egoqa.cli.app import app
for args in (["report", "--run", "hand", "--out", {str(tmp_path / "o")!r}],
             ["export", "--run", "hand"], ["sql", "SELECT COUNT(*) FROM results"]):
    try:
        app(["--db", {str(db_path)!r}, *args])
    except SystemExit as exc:
        assert not exc.code, exc.code
heavy = sorted(m for m in ("torch", "transformers", "decord") if m in sys.modules)
print("HEAVY", heavy)
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    assert (tmp_path / "o" / "accuracy_by_query_type.png").is_file()


@pytest.mark.model
@pytest.mark.slow
def test_a_report_on_a_completed_demo_run_writes_all_files(
    egoqa, synth, tiny_model, db_path, tmp_path
):
    from PIL import Image

    model = json.dumps(str(tiny_model))
    egoqa(*enqueue_args(synth, "demo", "--set", f"model={model}", "--run", "demo", "--limit", "6"))
    fake = ("--set", 'model="fake-model"', "--set", "backend=fake", "--run", "fake")
    egoqa(*enqueue_args(synth, "demo", *fake, "--limit", "6"))
    egoqa("work", "--until-done", "--model", "fake-model")
    # A process of its own: what it writes to stderr is what a user sees, whatever this process
    # has set up for Hugging Face's bars before.
    worked = Cli(db_path, tmp_path)("work", "--until-done", "--model", str(tiny_model), timeout=600)
    assert "Loading weights" not in worked.stderr  # no Hugging Face bars at default verbosity
    out = tmp_path / "report"
    egoqa("report", "--run", "demo", "--compare", "fake", "--out", out)

    names = {p.name for p in out.iterdir()}
    charts = {"accuracy_by_query_type.png", "accuracy_by_template.png", "runs_compared.png"}
    assert names == {"results.json", "results.csv", *charts}
    for name in charts:
        with Image.open(out / name) as image:
            image.load()
            assert image.width >= 400 and image.height >= 300, (name, image.size)

    doc = json.loads((out / "results.json").read_text())
    rows = egoqa.json(
        "sql", "SELECT clip_uid, annotation_uid, query_idx FROM results WHERE run = 'demo'"
    )
    ids = sorted((r["clip_uid"], r["annotation_uid"], r["query_idx"]) for r in rows)
    got = sorted((i["clip_uid"], i["annotation_uid"], i["query_idx"]) for i in doc["instances"])
    assert got == ids and len(ids) == 6
    for instance in doc["instances"]:
        names = [t["turn"] for t in instance["turns"]]
        assert names == ["scenario", "transitions", "segments", "answer"]
        for t in instance["turns"]:  # the tiny model answers every job (`min_new_tokens`)
            assert t["state"] == "done" and t["prompt"] and t["response"], t
        assert len(instance["turns"][2]["responses"]) == 5  # the graded turn's samples
    prov = doc["provenance"]
    assert prov["config"]["model"] == str(tiny_model) and prov["devices"] == ["cpu"]
    assert prov["packages"]["torch"] and "egoqa_version" in prov and "git_hash" in prov
    assert (out / "results.csv").read_text().count("\n") >= 7

    preds = tmp_path / "preds.json"
    egoqa("export", "--run", "demo", "--format", "nlq", "--only-enqueued", "-o", preds)
    exported = json.loads(preds.read_text())
    validate_nlq_predictions(exported, ids)
    assert len(exported["results"]) == len(ids)
