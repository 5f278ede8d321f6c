"""Segment parsing and NLQ scoring: real-looking responses, exact metric edges, the prediction file."""

from __future__ import annotations

import json
import time

import pytest

from egoqa.answers.metrics import (
    Outcome,
    PredictionFileError,
    Scores,
    Segment,
    best_of_n,
    failed_scores,
    nlq_prediction,
    parse_segments,
    score,
    summarize,
    tiou,
    validate_nlq_predictions,
)
from egoqa.errors import EgoqaError

VERDICT_BLOCKS = """\
1. 0s - 16s
Relevant: the person walks into the kitchen between 4s and 8s.
Irrelevant: no tap is visible.
Confidence Score: 7
Verdict: Relevant

2. 16s - 32s
Relevant: the tap is turned on.
Irrelevant: -
Confidence Score: 9
Verdict: Relevant

3. 32s - 48s
Relevant: -
Irrelevant: the person is outside.
Confidence Score: 10
Verdict: Irrelevant

4. 48s - 64s
Relevant: the person holds a cup.
Irrelevant: -
Confidence Score: 7
Verdict: Relevant
"""

VERDICT_MARKDOWN = """\
**Interval 1: [0s] - [60s]**
- Relevant: the counter is visible
- Irrelevant: nothing about the knife
- Confidence Score: 3
- **Verdict:** Irrelevant

**Interval 2: [60s] - [120s]**
- Relevant: the knife is put in the drawer at about 100s
- Irrelevant: -
- Confidence Score: 8
- **Verdict:** Relevant
"""

VERDICT_NO_SCORES = """\
1. 0s - 10s
Verdict: Relevant
2. 10s - 20s
Verdict: Not relevant
3. 20s - 30s
Verdict: Relevant
"""

VERDICT_TRUNCATED = """\
1. 0s - 16s
Confidence Score: 4
Verdict: Relevant
2. 16s - 32s
Confidence Score: 8
"""

STAGE_TRANSITIONS = """\
0s - 16s: [Preparation] -> [Preparation]
16s - 32s: [Preparation] -> [Cooking]
32s - 48s: [Cooking] -> [Cleaning]
"""

STAGE_TRANSITIONS_BARE = """\
0 - 60: [Arrival] -> [Shopping]
60 - 120: [Shopping] -> [Checkout]
"""

FRAME_LABELING_TURN2 = """\
Scene: the person puts the scissors on the shelf next to the paint cans.

Segments most likely to contain the answer:
[128s] - [192s]
[320s] - [384s]
"""

STAGE_ANALYSIS_TURN3 = """\
Expected scene: the person opens the fridge and takes out the milk.
Relevant segments:
[64s] - [128s]: the person enters the kitchen (Stage 2).
[256s] - [320s]: the fridge is opened during Step 3.
"""

NUMBERED_WITH_NOISE = """\
Here are the 3 most likely segments:
1. 0s - 128s: the person picks up 3 cups
2. 128s - 256s: Stage 2, washing
3. 256s - 384s: the year 2019 poster is visible
"""

CHAT_PROSE = """\
The person puts the keys away near the end of the clip. Based on the frames, I think the
relevant moment is from 412s to 436s, when the drawer is opened. It could also be
between 450 and 470 seconds.
"""

S = Segment

PARSE_CASES = [
    # the formats models write
    ("12s - 30s", [S(12, 30)]),
    ("[12s] - [30s]", [S(12, 30)]),
    ("[12] - [30]", [S(12, 30)]),
    ("12.5-30", [S(12.5, 30)]),
    ("12 to 30 seconds", [S(12, 30)]),
    ("from 12s to 30s", [S(12, 30)]),
    ("between 12 and 30 seconds", [S(12, 30)]),
    ("00:12 - 00:30", [S(12, 30)]),
    ("0:00:12\u20130:00:30", [S(12, 30)]),
    ("1:05 - 1:20", [S(65, 80)]),
    ("From 1:05 to 1:20 the person is cooking.", [S(65, 80)]),
    ("12s \u2013 30s", [S(12, 30)]),
    ("12s \u2014 30s", [S(12, 30)]),
    ("12s ~ 30s", [S(12, 30)]),
    ("12s to 30s", [S(12, 30)]),
    ("12 seconds to 30 seconds", [S(12, 30)]),
    ("12 sec - 30 sec", [S(12, 30)]),
    ("12 sec. - 30 sec.", [S(12, 30)]),
    ("12S - 30S", [S(12, 30)]),
    ("12 - 30s", [S(12, 30)]),
    ("[12.5s] - [30.25s]", [S(12.5, 30.25)]),
    ("[12 - 30]", [S(12, 30)]),
    ("The answer is in 1 - 2 minutes.", [S(60, 120)]),
    # start and end written apart, and bracketed pairs
    ("Start: 45s\nEnd: 60s", [S(45, 60)]),
    ("Start: 45s, End: 60s", [S(45, 60)]),
    ("Start time: 00:45\nEnd time: 01:00", [S(45, 60)]),
    ("- **Start:** 45\n- **End:** 60", [S(45, 60)]),
    ("The clip shows it.\nstart = 12.5 seconds\nend = 20 seconds", [S(12.5, 20)]),
    ("(45s, 60s)", [S(45, 60)]),
    ("[45.0, 60.0]", [S(45, 60)]),
    ("It happens at (45s, 60s), maybe [[70.0, 80.5]].", [S(45, 60), S(70, 80.5)]),
    ("[12s] - [30s] (about 18s)", [S(12, 30)]),
    ("Start: the beginning\nEnd: 60s", []),
    ("I moved (3, 1) boxes", []),
    ("see step (1, 2)", []),
    ("(45s, 60s]", []),
    # numbered lists and bullets: the list number is not a time
    ("1. 0s - 128s: description", [S(0, 128)]),
    ("1. 12 - 30", [S(12, 30)]),
    ("- 12 - 30: the drawer", [S(12, 30)]),
    ("2) 40-50", [S(40, 50)]),
    (NUMBERED_WITH_NOISE, [S(0, 128), S(128, 256), S(256, 384)]),
    # stage transitions and the original turn formats
    (STAGE_TRANSITIONS, [S(0, 16), S(16, 32), S(32, 48)]),
    (STAGE_TRANSITIONS_BARE, [S(0, 60), S(60, 120)]),
    (FRAME_LABELING_TURN2, [S(128, 192), S(320, 384)]),
    (STAGE_ANALYSIS_TURN3, [S(64, 128), S(256, 320)]),
    # several per line, several per response
    ("The answer lies in 12s-30s and 40s-50s.", [S(12, 30), S(40, 50)]),
    ("[12s] - [30s], [45s] - [60s]; [90s] - [100s]", [S(12, 30), S(45, 60), S(90, 100)]),
    (CHAT_PROSE, [S(412, 436), S(450, 470)]),
    # verdict blocks: Relevant only, by confidence, stable for ties
    (VERDICT_BLOCKS, [S(16, 32, 9), S(0, 16, 7), S(48, 64, 7)]),
    (VERDICT_MARKDOWN, [S(60, 120, 8)]),
    (VERDICT_NO_SCORES, [S(0, 10), S(20, 30)]),
    (VERDICT_TRUNCATED, [S(0, 16, 4)]),
    # confidence kept without verdicts, in order of appearance
    ("1. 0s - 16s (confidence: 3)\n2. 16s - 32s (confidence: 9)", [S(0, 16, 3), S(16, 32, 9)]),
    # markdown, unicode spaces and dashes
    ("**[12s] - [30s]**", [S(12, 30)]),
    ("`12s-30s`", [S(12, 30)]),
    ("12\u00a0s\u2009\u2013\u200930\u00a0s", [S(12, 30)]),
    ("12s\u221230s", [S(12, 30)]),
    ("### Answer\n**Segment:** 100s \u2013 130s", [S(100, 130)]),
    # inverted, zero-length, duplicates
    ("30s - 12s", [S(12, 30)]),
    ("12s - 12s", [S(12, 12)]),
    ("12s - 30s\n[12] - [30]\n40s - 50s", [S(12, 30), S(40, 50)]),
    # numbers that are not times
    ("1 to 2 cups", []),
    ("1-2 cups of flour", []),
    ("I saw 3 cups and 2 plates.", []),
    ("Stage 2 - 5s", []),
    ("Move from step 3 to 4.", []),
    ("between 12 and 30", []),
    ("from 12 to 30", []),
    ("at 12s and 30s", []),
    ("2023-05-12", []),
    ("In 2019 to 2020 the shop was open.", []),
    ("Confidence Score: 7-8", []),
    ("[Stage 2] -> [Stage 3]", []),
    ("t_1 - t_2: [Stage] -> [Stage]", []),
    # nothing parseable
    ("", []),
    (None, []),
    ("The keys are on the table.", []),
    ("\u0120the\u0120 \u010a\u010a 12 cups", []),
    ("\ufffd\ufffd\ufffd 12 \u010a 30 \u0120", []),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_segments_reads_what_models_write(text, expected):
    assert parse_segments(text) == expected


def test_parse_table_is_large_enough():
    assert len(PARSE_CASES) >= 45


def test_segments_are_clipped_to_the_clip():
    text = "100s - 700s\n500s - 600s\n470s - 480s\n-5 - 10"
    assert parse_segments(text, clip_duration=480) == [S(100, 480), S(470, 480)]


def test_clipping_drops_a_window_it_shrinks_to_nothing_but_keeps_a_literal_one():
    assert parse_segments("480s - 500s", clip_duration=480) == []
    assert parse_segments("480s - 480s", clip_duration=480) == [S(480, 480)]
    assert parse_segments("490s - 490s", clip_duration=480) == []


def test_clipping_can_create_a_duplicate_that_is_then_dropped():
    assert parse_segments("400s - 480s\n400s - 520s", clip_duration=480) == [S(400, 480)]


def test_parsed_values_are_floats():
    (segment,) = parse_segments("[12] - [30]", clip_duration=480)
    assert type(segment.start) is float and type(segment.end) is float


# --- tIoU -------------------------------------------------------------------------------


def test_tiou_follows_the_official_formula():
    assert tiou((0, 10), (0, 3)) == 0.3
    assert tiou((0, 10), (0, 5)) == 0.5
    assert tiou((0, 10), (5, 15)) == 5 / 15
    assert tiou((0, 10), (20, 30)) == 0.0
    assert tiou((3, 3), (3, 3)) == 0.0  # empty hull
    assert tiou((0, 10), (5, 5)) == 0.0  # zero-length inside: no intersection


def test_tiou_is_symmetric():
    assert tiou((2, 9), (4, 12)) == tiou((4, 12), (2, 9))


# --- score ------------------------------------------------------------------------------


def test_tiou_exactly_at_threshold_is_not_a_hit():
    assert tiou((0, 3), (0, 10)) == 0.3
    at_03 = score([S(0, 3)], 0, 10)
    assert at_03.iou_top1 == 0.3
    assert not at_03.r1_03 and not at_03.r5_03

    assert tiou((0, 5), (0, 10)) == 0.5
    at_05 = score([S(0, 5)], 0, 10)
    assert at_05.r1_03 and not at_05.r1_05
    assert at_05.r5_03 and not at_05.r5_05


def test_tiou_just_above_threshold_is_a_hit():
    above_03 = score([S(0, 3.01)], 0, 10)
    assert above_03.r1_03 and not above_03.r1_05
    above_05 = score([S(0, 5.01)], 0, 10)
    assert above_05.r1_03 and above_05.r1_05 and above_05.r5_05


def test_recall_at_5_counts_a_hit_at_rank_5_only():
    misses = [S(100 + 10 * i, 105 + 10 * i) for i in range(4)]
    hit = S(0, 10)
    at_5 = score([*misses, hit], 0, 10)
    assert at_5.r5_03 and at_5.r5_05
    assert not at_5.r1_03 and at_5.iou_top1 == 0.0
    at_6 = score([*misses, S(200, 210), hit], 0, 10)
    assert not at_6.r5_03 and not at_6.r5_05
    assert at_6.correct  # coverage looks at every window
    assert at_6.n_segments == 6


def test_coverage_and_tiou_disagree():
    # A whole-clip window covers the answer but has a tiny tIoU.
    wide = score([S(0, 480)], 100, 110)
    assert wide.correct and wide.outcome is Outcome.COVERED
    assert wide.iou_top1 == 10 / 480 and not wide.r1_03
    # A tight window that misses one second has a high tIoU but does not cover.
    tight = score([S(101, 110)], 100, 110)
    assert not tight.correct and tight.outcome is Outcome.OVERLAP
    assert tight.iou_top1 == 0.9 and tight.r1_05


def test_zero_length_windows_v1_style():
    point_gt = score([S(0, 10)], 5, 5)
    assert point_gt.correct and point_gt.iou_top1 == 0.0 and not point_gt.r1_03
    same_point = score([S(5, 5)], 5, 5)
    assert same_point.correct and same_point.iou_top1 == 0.0
    point_pred = score([S(5, 5)], 0, 10)
    assert not point_pred.correct and point_pred.iou_top1 == 0.0
    assert point_pred.outcome is Outcome.OVERLAP


@pytest.mark.parametrize(
    ("segments", "outcome"),
    [
        ([S(0, 20)], Outcome.COVERED),
        ([S(200, 210), S(0, 20)], Outcome.COVERED),
        ([S(5, 12)], Outcome.OVERLAP),
        ([S(0, 5), S(12, 15)], Outcome.OVERLAP),
        ([S(0, 5), S(1, 10)], Outcome.TOO_EARLY),
        ([S(20, 30), S(40, 50)], Outcome.TOO_LATE),
        ([S(0, 5), S(20, 30)], Outcome.TOO_EARLY),
        ([S(20, 30), S(0, 5)], Outcome.TOO_LATE),
        ([], Outcome.NO_SEGMENT),
    ],
)
def test_outcome_names_how_the_prediction_missed(segments, outcome):
    assert score(segments, 10, 20).outcome is outcome


def test_no_segments_is_a_miss():
    assert score([], 10, 20) == Scores(
        False, 0.0, False, False, False, False, Outcome.NO_SEGMENT, 0
    )


def test_failed_scores_is_a_miss_everywhere():
    assert failed_scores() == Scores(False, 0.0, False, False, False, False, Outcome.FAILED, 0)


# --- best of n --------------------------------------------------------------------------


def test_best_of_n_is_an_oracle_over_samples():
    samples = [
        score([S(30, 40)], 0, 10),  # too late
        score([S(0, 4)], 0, 10),  # iou 0.4
        score([S(0, 20)], 0, 10),  # covers, iou 0.5
        failed_scores(),
        score([], 0, 10),
    ]
    best = best_of_n(samples)
    assert best.correct and best.outcome is Outcome.COVERED
    assert best.iou_top1 == 0.5
    assert best.r1_03 and not best.r1_05
    assert best.n_segments == 1


def test_best_of_n_without_a_hit_keeps_the_best_outcome():
    samples = [failed_scores(), score([], 0, 10), score([S(5, 20)], 0, 10)]
    best = best_of_n(samples)
    assert not best.correct and best.outcome is Outcome.OVERLAP
    assert best.iou_top1 == 0.25


def test_best_of_one_is_the_sample():
    only = score([S(0, 6), S(100, 120)], 0, 10)
    assert best_of_n([only]) == only


def test_best_of_all_failed_is_failed():
    assert best_of_n([failed_scores()] * 5) == failed_scores()


def test_best_of_none_is_refused():
    with pytest.raises(ValueError):
        best_of_n([])


# --- summarize --------------------------------------------------------------------------


def test_summarize_counts_every_row_and_matches_hand_arithmetic():
    rows = [
        score([S(0, 10)], 0, 10),  # iou 1.0, covered, every recall
        score([S(0, 5)], 0, 10),  # iou exactly 0.5: r1_03 and r5_03, not covered
        score([S(50, 60), S(0, 20)], 0, 10),  # top-1 iou 0; rank 2 covers, iou 0.5 -> r5_03
        score([], 0, 10),  # no segment: a miss
        failed_scores(),  # failed job: a miss
    ]
    assert summarize(rows) == {
        "n": 5,
        "coverage": 0.4,  # rows 1, 3
        "r1_03": 0.4,  # rows 1, 2
        "r1_05": 0.2,  # row 1
        "r5_03": 0.6,  # rows 1, 2, 3
        "r5_05": 0.2,  # row 1
        "mean_r1": 0.30000000000000004,  # (0.4 + 0.2) / 2, as floating point rounds it
        "miou": 0.3,  # (1.0 + 0.5 + 0 + 0 + 0) / 5
    }


def test_summarize_of_nothing_is_zero():
    assert summarize([]) == {
        "n": 0,
        "coverage": 0.0,
        "r1_03": 0.0,
        "r1_05": 0.0,
        "r5_03": 0.0,
        "r5_05": 0.0,
        "mean_r1": 0.0,
        "miou": 0.0,
    }


def test_summarize_accepts_a_generator():
    assert summarize(score([S(0, 10)], 0, 10) for _ in range(3))["coverage"] == 1.0


# --- official prediction file -----------------------------------------------------------


def _file(results: list[dict]) -> dict:
    return {"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": results}


def test_prediction_file_round_trips_through_json_and_validates():
    ground_truth = [("clip-a", "ann-1", 0), ("clip-a", "ann-1", 1), ("clip-b", "ann-2", 0)]
    responses = {
        ground_truth[0]: "[12s] - [30s]\n[40s] - [50s]",
        ground_truth[1]: "I cannot tell.",
        ground_truth[2]: "\n".join(f"{i * 10}s - {i * 10 + 5}s" for i in range(7)),
    }
    results = [nlq_prediction(*key, parse_segments(text)) for key, text in responses.items()]
    loaded = json.loads(json.dumps(_file(results)))
    validate_nlq_predictions(loaded, ground_truth)
    assert loaded["results"][0]["predicted_times"] == [[12.0, 30.0], [40.0, 50.0]]
    assert loaded["results"][1]["predicted_times"] == [[0.0, 0.0]]
    assert len(loaded["results"][2]["predicted_times"]) == 5
    assert loaded["results"][2]["query_idx"] == 0


def test_nlq_prediction_keeps_the_top_k():
    segments = [S(0, 1), S(2, 3), S(4, 5)]
    entry = nlq_prediction("c", "a", 3, segments, k=2)
    assert entry == {
        "clip_uid": "c",
        "annotation_uid": "a",
        "query_idx": 3,
        "predicted_times": [[0.0, 1.0], [2.0, 3.0]],
    }


def _valid_entry(**changes) -> dict:
    entry = {"clip_uid": "c", "annotation_uid": "a", "query_idx": 0, "predicted_times": [[1, 2]]}
    return {**entry, **changes}


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], "JSON object"),
        ({**_file([_valid_entry()]), "version": "2.0"}, "version"),
        ({**_file([_valid_entry()]), "challenge": "ego4d_mq"}, "challenge"),
        ({"version": "1.0", "challenge": "ego4d_nlq_challenge"}, "results"),
        (_file([_valid_entry(predicted_times=[])]), r"\[\[0.0, 0.0\]\]"),
        (_file([_valid_entry(predicted_times=None)]), "predicted_times"),
        (_file([_valid_entry(predicted_times=[[1]])]), r"\[start, end\]"),
        (_file([_valid_entry(predicted_times=[["1", "2"]])]), r"\[start, end\]"),
        (_file([_valid_entry(predicted_times=[[float("nan"), 2]])]), r"\[start, end\]"),
        (_file([_valid_entry(query_idx="0")]), "query_idx"),
        (_file([_valid_entry(query_idx=True)]), "query_idx"),
        (_file([_valid_entry(clip_uid=None)]), "clip_uid"),
        (_file([_valid_entry(), _valid_entry()]), "more than once"),
        (_file(["not an entry"]), r"results\[0\]"),
    ],
)
def test_validator_rejects_broken_files(obj, message):
    with pytest.raises(ValueError, match=message):
        validate_nlq_predictions(obj)


def test_validator_rejects_missing_and_unknown_ids():
    obj = _file([_valid_entry(query_idx=0)])
    with pytest.raises(ValueError, match="no prediction"):
        validate_nlq_predictions(obj, [("c", "a", 0), ("c", "a", 1)])
    with pytest.raises(ValueError, match="not in the ground truth"):
        validate_nlq_predictions(
            _file([_valid_entry(), _valid_entry(clip_uid="x")]), [("c", "a", 0)]
        )
    validate_nlq_predictions(obj, [("c", "a", 0)])


def test_validator_errors_are_egoqa_errors_for_the_cli():
    with pytest.raises(EgoqaError):
        validate_nlq_predictions({"version": "0"})
    assert issubclass(PredictionFileError, ValueError)


def test_outcome_reads_as_its_value():
    assert str(Outcome.TOO_EARLY) == "too_early" and Outcome("covered") is Outcome.COVERED


def _parse_cpu_seconds(text: str, segments: int) -> float:
    """The least CPU time of three parses of `text` (each finding `segments` windows): this
    process's own time, which other processes on the machine do not stretch."""
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        assert len(parse_segments(text)) == segments
        best = min(best, time.process_time() - started)
    return best


def test_parsing_stays_linear_on_long_runaway_output():
    # A degenerate sampler can repeat a phrase thousands of times; this once took minutes.
    # Four times the text costs about four times the time; a quadratic parse would cost 16 times.
    for phrase, segments in (("1 to ", 0), ("[1s] - [2s] ", 1)):
        short = _parse_cpu_seconds(phrase * 1_000, segments)
        ratio = _parse_cpu_seconds(phrase * 4_000, segments) / short
        assert ratio < 8, (phrase, ratio)
