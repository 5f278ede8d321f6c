"""`egoqa report --scoring original`: the original pipeline's segment rules, whole-second
truncation, query categories and per-video table, checked against values worked out by hand
from its rule (shared/notes: original-pipeline.md, Evaluation)."""

from __future__ import annotations

import json

import pytest
from inproc import InProcess

from egoqa.dev.synth import write_synth_dataset
from egoqa.report import original
from egoqa.store import queue
from egoqa.store.db import open_db

from conftest import enqueue_args

# text -> (segments, listed) under the bracketed rule (every style but the coarse_cot ones)
BRACKETED = [
    ("[12s] - [30s]", [(12, 30)], 1),
    ("[12.9] - [30.7s]", [(12, 30)], 1),  # int(float(x)): truncated, not rounded
    ("12s - 30s", [], 0),
    ("[12s - 30s]", [], 0),
    ("[12s]-[30s] and [40s] -  [52.5s]", [(12, 30), (40, 52)], 2),
    ("[12s] \u2013 [30s]", [], 0),  # only an ASCII hyphen joins the endpoints
    ("**[5s] - [9s]**", [(5, 9)], 1),
    ("[ 5s] - [9s]", [], 0),
]

VERDICTS = """1. 0s - 16s:
Relevant: the knife
Confidence Score: 7
Verdict: Relevant
2. 16s - 32s:
Verdict: [Relevant]
3. 32s - 48s:
Verdict: Irrelevant
4. 48.5s - 64s:
Verdict: Relevant
5. 64s - 80s:
**Verdict:** Relevant
6. 80s-96s:
Verdict: relevant.
   7. 96s - 112s:
Verdict:  RELEVANT
8. 112s - 128s: Verdict: Relevant
9. 128 - 144:
Verdict: Relevant"""
# by hand: 1 and 2 count ("[Relevant]" loses its brackets); 3 is Irrelevant; 4 opens nothing
# (48.5 is not whole), so its verdict closes nothing; 5 reads "** relevant"; 6 reads
# "relevant."; 7 opens after stripping and "RELEVANT" lower-cases; 8's verdict on its own
# opening line closes nothing, so 8 stays open; 9 has no `s` and opens nothing, and its
# verdict, a later line, closes 8 as Relevant. Nine `Verdict:` lines are listed.
VERDICT_SEGMENTS = [(0, 16), (16, 32), (96, 112), (112, 128)]


@pytest.mark.parametrize(("text", "segments", "listed"), BRACKETED)
def test_the_bracketed_rule_reads_only_each_endpoint_in_its_own_brackets(text, segments, listed):
    assert original.parse(text, verdicts=False) == original.Parsed(segments, listed)


def test_the_verdict_rule_counts_blocks_whose_verdict_is_exactly_relevant():
    assert original.parse(VERDICTS, verdicts=True) == original.Parsed(VERDICT_SEGMENTS, 9)
    assert original.parse(None, verdicts=True) == original.Parsed([], 0)


def test_styles_named_coarse_cot_use_the_verdict_rule():
    assert original.uses_verdicts("coarse_cot") and original.uses_verdicts("coarse_cot_shots")
    assert not original.uses_verdicts("stage_analysis") and not original.uses_verdicts("cot")


@pytest.mark.parametrize(
    ("query", "category"),
    [
        ("Where did I put the knife?", "where"),
        ("What's in the bag?", "what's"),
        ("Query Text:What color is the cup?", "query"),
        ("  how many cups?", "how"),
        ("Where, exactly, is it?", "where,"),
        ("", ""),
    ],
)
def test_categories_are_the_first_word_lower_cased_with_its_punctuation(query, category):
    assert original.category(query) == category


def test_coverage_needs_the_whole_ground_truth_inside_a_truncated_segment():
    assert original.covered([(16, 32)], 20.5, 31.9)
    assert not original.covered([(16, 32)], 30.0, 32.5)
    assert original.covered([(0, 4), (16, 32)], 32.0, 32.0)
    assert not original.covered([], 1.0, 2.0)


# --- the command, on a run whose responses are set by hand ------------------------------------

HAND_STYLE = """
name = "coarse_cot_hand"
[[turns]]
name = "verdicts"
media = "none"
reads_query = true
samples = 2
graded = true
template = "{query}"
"""

# per query (two clips per video: queries 1-2 on video A, 3-4 on video B): the raw query, the
# cleaned text, the ground truth, and the graded job's two samples (the first is kept) or "fail"
CASES = [
    ("Where did I put the knife?", None, (3.0, 7.5), ["1. 0s - 8s:\nVerdict: Relevant", "x"]),
    (
        "where is the cup",
        None,
        (10.2, 12.0),
        [
            "1. 8s - 10s:\nVerdict: Relevant\n2. 10s - 12s:\nVerdict: Irrelevant",
            "2. 10s - 12s:\nVerdict: Relevant",
        ],
    ),
    (
        "Query Text:What color is the cup?",
        "What color is the cup?",
        (1.0, 2.0),
        ["1. 0s - 4s:\n**Verdict:** Relevant", "1. 0s - 4s:\n**Verdict:** Relevant"],
    ),
    ("What's in the bag?", None, (5.0, 6.0), "fail"),
]


@pytest.fixture
def hand_run(db_path, tmp_path) -> tuple[InProcess, list[str]]:
    """The run `hand` with CASES set by hand; returns the command line on its database and the
    video uids, in file order."""
    egoqa = InProcess(db_path, tmp_path)
    # small, sparse frames: no job reads them (the responses are set by hand), enqueue only
    # needs each clip's video file
    data = write_synth_dataset(
        tmp_path / "data", clips=4, queries_per_clip=1, seed=11, fps=2, size=(64, 48)
    )
    style = tmp_path / "hand.toml"
    style.write_text(HAND_STYLE)
    fake = ("--set", "backend=fake", "--set", f"style={json.dumps(str(style))}")
    egoqa(*enqueue_args(data, "baseline", *fake, "--run", "hand"))
    db = open_db(db_path)
    with db.write() as cur:
        items = cur.all(
            """SELECT ri.query_id, ri.graded_job_id, j.engine FROM run_items ri
                 JOIN jobs j ON j.id = ri.graded_job_id ORDER BY ri.query_id"""
        )
        for (qid, _, _), (raw, text, (gs, ge), _) in zip(items, CASES, strict=True):
            extra = json.dumps({"query_raw": raw} if text else {})
            cur.execute(
                "UPDATE queries SET text = :t, extra = :x, gt_start = :s, gt_end = :e WHERE id = :q",
                {"t": text or raw, "x": extra, "s": gs, "e": ge, "q": qid},
            )
    claim = queue.claim(db, "hand", items[0][2], 10, lease_s=600)
    done = []
    for (_, job, _), (*_, texts) in zip(items, CASES, strict=True):
        if texts == "fail":
            assert queue.fail(db, claim, job, "video", "the clip is truncated")
        else:
            done.append(queue.Completion(job, texts[0], texts, prompt="p"))
    queue.complete(db, claim, done)
    db.dispose()
    videos = json.loads(data.annotations.read_text())["videos"]
    return egoqa, [v["video_uid"] for v in videos]


def test_report_scoring_original_reproduces_the_hand_computed_numbers(hand_run, tmp_path):
    egoqa, (video_a, video_b) = hand_run
    got = egoqa.json("report", "--run", "hand", "--scoring", "original")
    s = got["summary"]
    assert (s["rule"], s["n"], s["done"], s["failed"], s["pending"]) == (
        "verdict blocks",
        4,
        3,
        1,
        0,
    )
    # correct: query 1 only; any sample: queries 1 and 2; listed: 1 + 2 + 1 + 0 Verdict lines
    assert (s["correct"], s["accuracy"], s["any_sample_accuracy"]) == (1, 0.25, 0.5)
    assert s["segments_listed"] == 4
    assert [(c["category"], c["n"], c["correct"]) for c in got["by_category"]] == [
        ("where", 2, 1),
        ("query", 1, 0),
        ("what's", 1, 0),
    ]
    by_video = {v["video_uid"]: (v["n"], v["correct"], v["accuracy"]) for v in got["by_video"]}
    assert by_video == {video_a: (2, 1, 0.5), video_b: (2, 0, 0.0)}
    table = egoqa("report", "--run", "hand", "--scoring", "original", "--out", tmp_path / "o")
    assert "25.0" in table.stdout and "by video (original)" in table.stdout
    saved = json.loads((tmp_path / "o" / "results_original.json").read_text())
    assert {i["query"]: i["segments"] for i in saved["instances"]} == {
        raw: segments
        for (raw, *_), segments in zip(CASES, [[[0, 8]], [[8, 10]], [], []], strict=True)
    }
    assert (tmp_path / "o" / "accuracy_summary.png").stat().st_size > 0
