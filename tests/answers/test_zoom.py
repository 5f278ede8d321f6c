"""Choosing the next window of a recursive zoom: the model's verdicts or the oracle's ground truth."""

from __future__ import annotations

from egoqa.answers.zoom_choice import (
    GROUND_TRUTH_OUTSIDE,
    NO_VERDICT,
    NOTHING_RELEVANT,
    ZoomChoice,
    model_choice,
    oracle_choice,
)

SHOTS = [(0.0, 6.0), (6.0, 13.0), (13.0, 17.3), (17.3, 24.0)]

RESPONSE = """1. 0s - 6s:
Description: the counter seen again in 7s - 12s; a hand reaches for the knife.
Relevant: the knife is visible
Confidence Score: 6
Verdict: Relevant
2. 6s - 13s:
Description: the drawer opens
Confidence Score: 9
Verdict: Irrelevant
3. 13s - 17s:
Confidence Score: 8
Verdict: Relevant
4. 17s - 24s:
Confidence Score: 8
Verdict: Relevant"""


def test_the_model_choice_is_the_relevant_shot_with_the_highest_confidence():
    # 6 (shot 1) < 8 (shots 3 and 4): the tie goes to the earlier; the 9 is Irrelevant; the
    # ranges written with rounded ends (13s - 17s) name the shown shot 13.0 - 17.3
    assert model_choice(RESPONSE, SHOTS) == ZoomChoice((13.0, 17.3), None, 8.0)


def test_a_description_line_mentioning_times_opens_no_block():
    only_first = RESPONSE.split("2. 6s")[0]
    assert model_choice(only_first, SHOTS) == ZoomChoice((0.0, 6.0), None, 6.0)


def test_an_unscored_relevant_block_ranks_below_any_scored_one():
    text = "1. 0s - 6s:\nVerdict: Relevant\n2. 6s - 13s:\nConfidence Score: 0\nVerdict: Relevant"
    assert model_choice(text, SHOTS).window == (6.0, 13.0)
    assert model_choice("1. 0s - 6s:\nVerdict: Relevant", SHOTS) == ZoomChoice((0.0, 6.0))


def test_without_a_relevant_shot_or_any_verdict_the_zoom_stops_saying_why():
    irrelevant = RESPONSE.replace("Verdict: Relevant", "Verdict: Irrelevant")
    assert model_choice(irrelevant, SHOTS) == ZoomChoice(None, NOTHING_RELEVANT)
    outside = "1. 40s - 50s:\nConfidence Score: 9\nVerdict: Relevant"
    assert model_choice(outside, SHOTS) == ZoomChoice(None, NOTHING_RELEVANT)
    assert model_choice("I cannot tell.", SHOTS) == ZoomChoice(None, NO_VERDICT)
    assert model_choice(None, SHOTS) == ZoomChoice(None, NO_VERDICT)


def test_an_unlisted_range_names_the_shot_it_overlaps_most():
    text = "1. 5s - 12s:\nConfidence Score: 7\nVerdict: Relevant"
    assert model_choice(text, SHOTS).window == (6.0, 13.0)


def test_the_oracle_takes_the_shot_holding_the_ground_truth():
    assert oracle_choice(SHOTS, 7.5, 9.0) == ZoomChoice((6.0, 13.0))
    assert oracle_choice(SHOTS, 6.0, 6.0) == ZoomChoice((0.0, 6.0))  # on an edge: the earlier


def test_the_oracle_takes_the_run_of_shots_a_long_ground_truth_spans():
    assert oracle_choice(SHOTS, 12.0, 18.0) == ZoomChoice((6.0, 24.0))
    assert oracle_choice(SHOTS, 30.0, 31.0) == ZoomChoice(None, GROUND_TRUTH_OUTSIDE)
