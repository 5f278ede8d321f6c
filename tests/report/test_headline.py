"""The report's headline is the number the official NLQ script prints for what `export`
writes — every query of the annotation file, the skipped ones as misses — with the number over
the enqueued queries beside it: in the table, in --json, in the charts' titles and the explorer.

A hand-made file of five queries on one clip: three with text, answered by hand, and two
without text (skipped at enqueue, exported as misses). Both numbers are worked out below by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.answers.scoring import score_items
from egoqa.report.charts import chart_title
from egoqa.store import queue
from egoqa.store.db import open_db

CLIP = "clip-headline"
WINDOW = [10.0, 20.0]  # every query's answer window, in clip seconds
STYLE = """
name = "one_turn"
description = "One text-only graded turn (tests)."

[[turns]]
name = "ground"
media = "none"
reads_query = true
graded = true
template = "Question: {query}\\nReply with [start] - [end]."
"""
# query_idx: the response the graded job gets (queries 3 and 4 have no text: skipped)
RESPONSES = {
    0: "[10s] - [20s]",  # tIoU 1.0: a hit at 0.3 and at 0.5
    1: "[10s] - [14s]",  # tIoU 4/10 = 0.4: a hit at 0.3, a miss at 0.5
    2: "I cannot tell.",  # no window: a miss, tIoU 0
}

# By hand. Enqueued only (3 queries): R@1>0.3 = 2/3, R@1>0.5 = 1/3, mIoU = (1 + 0.4 + 0) / 3.
# The file as exported (5 queries: the 2 skipped are [[0, 0]] misses, tIoU 0): R@1>0.3 = 2/5,
# R@1>0.5 = 1/5, mIoU = 1.4 / 5.
ENQUEUED = {"queries": 3, "r1_03": 2 / 3, "r1_05": 1 / 3, "miou": 1.4 / 3}
FILE = {"queries": 5, "r1_03": 2 / 5, "r1_05": 1 / 5, "miou": 1.4 / 5}


def annotation_file(root: Path) -> tuple[Path, Path]:
    videos = root / "videos"
    videos.mkdir()
    (videos / f"{CLIP}.mp4").write_bytes(b"\0" * 4096)  # enqueue reads its identity only
    queries = [{"query": f"Where is thing {i}?", "template": None} for i in RESPONSES]
    queries += [{"query": ""}, {}]  # no text: skipped, still queries of the file
    for q in queries:
        q |= {"clip_start_sec": WINDOW[0], "clip_end_sec": WINDOW[1]}
    clip = {"clip_uid": CLIP, "clip_start_sec": 0.0, "clip_end_sec": 60.0}
    clip["annotations"] = [{"annotation_uid": "ann-1", "language_queries": queries}]
    path = root / "nlq_val.json"
    path.write_text(json.dumps({"version": "v2", "videos": [{"video_uid": "v", "clips": [clip]}]}))
    return path, videos


@pytest.fixture(scope="module")
def answered(tmp_path_factory) -> InProcess:
    """The five-query file enqueued; the three graded jobs answered by hand, then scored."""
    root = tmp_path_factory.mktemp("headline")
    annotations, videos = annotation_file(root)
    (root / "one_turn.toml").write_text(STYLE)
    cli = InProcess(root / "egoqa.db", root)
    style = json.dumps(str(root / "one_turn.toml"))
    cli("enqueue", "-a", annotations, "--videos", videos, "--config", "demo",
        "--set", "backend=fake", "--set", f"style={style}", "--run", "r")  # fmt: skip
    db = open_db(root / "egoqa.db")
    with db.read() as cur:
        jobs = dict(
            cur.all(
                """SELECT q.query_idx, ri.graded_job_id FROM run_items ri
                     JOIN queries q ON q.id = ri.query_id"""
            )
        )
        engine = cur.one("SELECT DISTINCT engine FROM jobs")
    assert sorted(jobs) == sorted(RESPONSES)
    claim = queue.claim(db, "hand", engine, 10, lease_s=600)
    done = [queue.Completion(jobs[i], text, [text]) for i, text in RESPONSES.items()]
    assert queue.complete(db, claim, done) == set(jobs.values())
    score_items(db, run="r")
    db.dispose()
    return cli


def test_json_gives_the_files_number_as_headline_and_the_enqueued_beside_it(answered):
    s = answered.json("report", "--run", "r")["summary"]
    for block, expected in ((s["headline"], FILE), (s["enqueued_only"], ENQUEUED)):
        assert {k: block[k] for k in expected} == pytest.approx(expected)
    assert "official" in s["headline"]["scope"] and "enqueued" in s["enqueued_only"]["scope"]
    assert (s["n"], s["r1_03"], s["skipped"]) == (3, pytest.approx(2 / 3), 2)


def test_the_headline_is_over_exactly_what_export_writes(answered, tmp_path):
    out = tmp_path / "predictions.json"
    answered("export", "--run", "r", "-o", out)
    written = json.loads(out.read_text())["results"]
    s = answered.json("report", "--run", "r")["summary"]
    assert len(written) == s["headline"]["queries"] == 5
    misses = [p for p in written if p["query_idx"] in (3, 4)]
    assert [p["predicted_times"] for p in misses] == [[[0.0, 0.0]], [[0.0, 0.0]]]


def test_the_table_shows_both_numbers_named_plainly(answered):
    from egoqa.report.summary import build
    from egoqa.report.tables import tables

    db = open_db(answered.db, readonly=True)
    summary = tables(build(db, "r"))[0]
    db.dispose()
    assert summary.columns == ["metric", "official (5)", "enqueued (3) [95 % CI]"]
    rows = {r[0]: r[1:] for r in summary.rows}
    # the enqueued column carries Wilson intervals, by hand: 2/3 -> 20.8-93.9, 1/3 -> 6.1-79.2
    assert rows["R@1 IoU>0.3 %"] == ("40.0", "66.7 [20.8–93.9]")
    assert rows["R@1 IoU>0.5 %"] == ("20.0", "33.3 [6.1–79.2]")
    assert rows["mIoU %"][0] == "28.0" and rows["mIoU %"][1].startswith("46.7 [")
    assert rows["skipped at enqueue (misses)"] == (2, "")
    assert "official (5)" in answered("report", "--run", "r").stdout


def test_chart_titles_and_the_explorer_carry_the_headline(answered, tmp_path):
    s = answered.json("report", "--run", "r")["summary"]
    title = chart_title(s, "query_type")
    assert "(3 enqueued queries)" in title
    assert "R@1 IoU>0.3 40.0 % over all 5 queries of the file (official script" in title
    assert "66.7 % over the 3 enqueued" in title
    answered("report", "--run", "r", "--html", tmp_path / "site", "--thumbs", "0")
    index = (tmp_path / "site" / "data" / "index.js").read_text()
    assert "40.0 % over all 5 queries of the file" in index and "66.7 % over the 3" in index
