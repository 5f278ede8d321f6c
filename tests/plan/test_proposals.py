"""A grounding model's proposals: imported, scored as they are (`--config proposals:NAME`), and
reranked by a `media = "proposals"` turn whose answer is a reordering of them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.answers.metrics import Segment
from egoqa.answers.rerank import rerank
from egoqa.dev.synth import write_synth_proposals
from egoqa.plan.config import load_config
from egoqa.store import proposals as store
from egoqa.store.db import open_db

from conftest import enqueue_args
from pg import postgres_server, postgres_url  # noqa: F401 -- fixtures

FAKE = ("--set", "backend=fake", "--set", 'model="fake"')


def _iou(a, b) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(a[1], b[1]) - min(a[0], b[0])
    return inter / union if union > 0 else 0.0


def _results(db_path: Path, run: str) -> dict[tuple, dict]:
    with sqlite3.connect(db_path) as con:
        con.row_factory = sqlite3.Row
        rows = con.execute("SELECT * FROM results WHERE run = ?", (run,)).fetchall()
    con.close()
    return {(r["clip_uid"], r["annotation_uid"], r["query_idx"]): dict(r) for r in rows}


@pytest.fixture
def proposals_file(synth, tmp_path) -> Path:
    return write_synth_proposals(synth.annotations, tmp_path / "proposals.json")


def _ids(entry: dict) -> tuple:
    return entry["clip_uid"], entry["annotation_uid"], entry["query_idx"]


def test_rerank_puts_the_named_proposals_first_and_keeps_every_one():
    proposals = [[0.0, 10.0], [20.0, 30.0], [40.0, 50.0], [60.0, 70.0]]
    answer = [Segment(41.0, 50.0, 9.0), Segment(0.0, 9.0, 4.0), Segment(100.0, 110.0, 8.0)]
    ranked = rerank(answer, proposals)
    assert [[s.start, s.end] for s in ranked] == [proposals[i] for i in (2, 0, 1, 3)]
    assert [s.confidence for s in ranked] == [9.0, 4.0, None, None]
    # an answer that names nothing (unparsed, or all Irrelevant) keeps the specialist's order
    assert [[s.start, s.end] for s in rerank([], proposals)] == proposals
    # a window overlapping a proposal less than tIoU 0.5 names none; a repeat names it once
    loose = [Segment(5.0, 25.0, 1.0), Segment(20.0, 30.0, 2.0), Segment(21.0, 30.0, 3.0)]
    assert [[s.start, s.end] for s in rerank(loose, proposals)][0] == [20.0, 30.0]


def test_the_specialist_alone_scores_its_windows_as_imported(synth, proposals_file, tmp_path):
    db_path = tmp_path / "egoqa.db"
    run = InProcess(db_path, tmp_path)
    out = run("proposals", "import", proposals_file, "--name", "spec")
    assert "proposal set spec: 14 queries" in out.stdout
    out = run(*enqueue_args(synth, "proposals:spec"))
    assert "no_proposals 1" in out.stdout  # the synthetic file leaves its first query out
    entries = {_ids(e): e for e in json.loads(proposals_file.read_text())["results"]}
    rows = _results(db_path, "proposals:spec")
    assert len(rows) == 12
    for key, row in rows.items():
        times = entries[key]["predicted_times"]
        truth = (row["gt_start"], row["gt_end"])
        assert json.loads(row["segments"]) == [[s, e, None] for s, e in times]
        assert row["iou_top1"] == pytest.approx(_iou(times[0], truth))
        assert row["r1_03"] == (_iou(times[0], truth) > 0.3)
        assert row["r5_03"] == any(_iou(w, truth) > 0.3 for w in times[:5])
    summary = run.json("report", "--run", "proposals:spec")["summary"]
    assert summary["skipped_by_reason"]["no_proposals"] == 1
    assert summary["r5_03"] == 1.0  # one window of each query is near its answer


def test_the_vlm_reranks_the_proposals_and_sits_beside_them_with_the_paired_test(
    synth, proposals_file, tmp_path
):
    db_path = tmp_path / "egoqa.db"
    run = InProcess(db_path, tmp_path)
    run("proposals", "import", proposals_file, "--name", "spec")
    run(*enqueue_args(synth, "proposals:spec"))
    rerank_args = ("--set", "style=rerank_proposals", "--set", "proposals=spec", *FAKE)
    run(*enqueue_args(synth, "demo", *rerank_args, "--run", "rr"))
    run("work", "--until-done")
    entries = {_ids(e): e for e in json.loads(proposals_file.read_text())["results"]}
    rows = _results(db_path, "rr")
    assert len(rows) == 12 and {r["state"] for r in rows.values()} == {"done"}
    for key, row in rows.items():
        got = sorted([s, e] for s, e, _ in json.loads(row["segments"]))
        assert got == sorted(entries[key]["predicted_times"])  # a reordering, nothing else
    with sqlite3.connect(db_path) as con:
        [prompt] = con.execute("SELECT prompt FROM turns WHERE run = 'rr' LIMIT 1").fetchone()
    con.close()
    assert "\n1. " in prompt and "\n5. " in prompt and "Question: " in prompt
    report = run.json("report", "--run", "rr", "--compare", "proposals:spec")
    [pair] = report["paired"]
    assert pair["n"] == 12 and pair["metrics"]["r5_03"]["diff"] == 0.0  # the same windows


def test_proposals_for_other_queries_are_refused_naming_the_first_few(synth, tmp_path):
    foreign = {
        "results": [
            {"clip_uid": f"clip-{i}", "annotation_uid": "a", "query_idx": 0,
             "predicted_times": [[1.0, 2.0]]}
            for i in range(8)
        ]
    }  # fmt: skip
    path = tmp_path / "other.json"
    path.write_text(json.dumps(foreign))
    run = InProcess(tmp_path / "egoqa.db", tmp_path)
    run("proposals", "import", path, "--name", "other")
    out = run(*enqueue_args(synth, "proposals:other"), check=False)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    line = out.stderr.strip().splitlines()[-1]
    assert line.startswith("error: proposal set 'other': 8 of its 8 queries are not in")
    assert "clip-0/a/0, clip-1/a/0, clip-2/a/0, clip-3/a/0, clip-4/a/0)" in line
    assert "clip-5" not in line


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not JSON"),
        ('{"results": 3}', "expected the NLQ prediction format"),
        ('{"results": [{"clip_uid": "c", "annotation_uid": "a", "query_idx": 0}]}', "results[0]"),
        (
            '{"results": [{"clip_uid": "c", "annotation_uid": "a", "query_idx": 0,'
            ' "predicted_times": [[5, 1]]}]}',
            "inverted window",
        ),
    ],
)
def test_a_bad_proposals_file_is_refused_in_one_line(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    out = InProcess(tmp_path / "egoqa.db", tmp_path)(
        "proposals", "import", path, "--name", "p", check=False
    )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("error: ") and message in out.stderr


def test_a_proposals_style_needs_a_set_and_a_set_needs_such_a_style(synth, tmp_path):
    run = InProcess(tmp_path / "egoqa.db", tmp_path)
    missing = run(*enqueue_args(synth, "demo", "--set", "style=rerank_proposals"), check=False)
    assert missing.returncode == 1 and "--set proposals=NAME" in missing.stderr
    unknown = run(
        *enqueue_args(synth, "demo", "--set", "style=rerank_proposals", "--set", "proposals=x"),
        check=False,
    )
    assert unknown.returncode == 1 and "no proposal set 'x'" in unknown.stderr
    tuned = run(*enqueue_args(synth, "proposals:x", "--set", "seed=1"), check=False)
    assert tuned.returncode == 1 and "takes no --set" in tuned.stderr
    stray = run(*enqueue_args(synth, "demo", "--set", "proposals=x"), check=False)
    assert stray.returncode == 1 and "has no turn with media" in stray.stderr
    assert "Traceback" not in missing.stderr + unknown.stderr + stray.stderr


def test_a_config_without_proposals_keeps_its_hash():
    # runs enqueued before the key existed must not read as changed
    assert "proposals" not in load_config("demo").canonical_json()
    assert '"proposals":"s"' in load_config("demo", ["proposals=s"]).canonical_json()


@pytest.mark.postgres
def test_a_proposal_set_reads_the_same_on_postgresql(tmp_path, postgres_url):  # noqa: F811
    windows = {("c", "a", 0): [[1.0, 2.0], [3.0, 4.5]], ("c", "a", 1): [[0.0, 9.0]]}
    for url in (str(tmp_path / "egoqa.db"), postgres_url):
        db = open_db(url, create=True)
        store.replace_set(db, "s", "file.json", {("x", "y", 0): [[0.0, 1.0]]})
        store.replace_set(db, "s", "file.json", windows)  # replaced whole
        assert store.load_set(db, "s") == windows
        assert store.load_set(db, "t") is None and store.set_names(db) == ["s"]
        db.dispose()
