"""Choosing one response among n samples: pickers, the interval format filter, stage names."""

from __future__ import annotations

import pytest

from egoqa.answers.selection import (
    RULES,
    mentioned_intervals,
    parse_stage_names,
    parse_transition_stages,
    select,
)


def test_first_keeps_index_zero():
    assert select(["b", "a much longer one", "c"], ["first"]) == 0


def test_longest_keeps_the_longest_and_the_first_of_equals():
    assert select(["short", "the longest one", "medium one"], ["longest"]) == 1
    assert select(["abc", "xyz", "ab"], ["longest"]) == 0
    assert select(["padded   ", "longer!"], ["longest"]) == 1  # surrounding blanks do not count


def test_consensus_keeps_the_response_closest_to_the_others():
    responses = [
        "The cup is on the table at [10s] - [14s].",
        "Nothing here.",
        "The cup is on the table at [10s] - [15s].",
        "The cup is on the shelf at [10s] - [14s].",
    ]
    assert select(responses, ["consensus"]) == 0


def test_consensus_ignores_case_and_spacing():
    responses = ["abc def", "xyz uvw qrs", "ABC  DEF", "abc deg"]
    assert select(responses, ["consensus"]) == 2  # scores tie with 0; 2 is longer as written


def test_consensus_ties_go_to_the_longest():
    assert select(["aaaa", "aaaab"], ["consensus"]) == 1
    assert select(["same", "same"], ["consensus"]) == 0


FRAMES = {"timestamps": [0.0, 8.0, 16.0]}


def test_format_filter_keeps_responses_naming_every_interval():
    responses = [
        "Cooking: [0s] - [8s] chopping.",  # misses 8-16
        "0s - 8s: Cooking, chopping.\n8s - 16s: Cleaning, washing up.",
        "Stage one [0s] - [8s]; stage two [8s] - [16s], longer text here to be the longest.",
    ]
    assert select(responses, ["format:intervals", "first"], FRAMES) == 1
    assert select(responses, ["format:intervals", "longest"], FRAMES) == 2
    assert select(responses, ["longest"], FRAMES) == 2


def test_format_filter_checks_stage_names_when_given():
    context = {**FRAMES, "stages": ["Cooking", "Cleaning"]}
    responses = [
        "[0s] - [8s]: Eating - at the table\n[8s] - [16s]: Cleaning - washing up",
        "[0s] - [8s]: cooking - chopping onions\n[8s] - [16s]: Cleaning - washing up",
    ]
    assert select(responses, ["format:intervals"], context) == 1


def test_format_filter_falls_back_to_the_longest_when_none_match():
    responses = ["no intervals", "still none but longer", "none"]
    assert select(responses, ["format:intervals"], FRAMES) == 1
    assert select(responses, ["format:intervals", "first"], FRAMES) == 1
    assert select(responses, ["format:intervals", "consensus"], FRAMES) == 1


def test_format_filter_tolerates_rounded_and_clock_times():
    context = {"timestamps": [1.5, 4.5, 75.0]}
    text = "From 2s to 4s the door opens; 00:05 - 01:15 nothing happens."
    assert select(["none", text], ["format:intervals"], context) == 1


def test_unknown_rule_names_the_allowed_ones():
    with pytest.raises(ValueError, match="format:intervals") as info:
        select(["a"], ["majority"])
    assert all(rule in str(info.value) for rule in RULES)


def test_no_responses_is_an_error():
    with pytest.raises(ValueError):
        select([], ["first"])


def test_intervals_are_found_in_the_formats_models_write():
    text = "12s - 30s, [40s] - [52.5s], 0:01:00–0:01:10 and from 5 to 9 seconds"
    assert mentioned_intervals(text) == [(12, 30), (40, 52.5), (60, 70), (5, 9)]
    assert mentioned_intervals("Start: 45s\nEnd: 60s\n(70s, 80s) [90.0, 99.5]") == [
        (45, 60),
        (70, 80),
        (90, 99.5),
    ]


def test_stage_names_are_parsed_from_both_line_styles():
    text = (
        "Here are the stages.\n"
        "Preparing food: the wearer chops vegetables\n"
        "2. Washing up - plates in the sink\n"
        "- **Eating**: at the table\n"
        "[16s] - [24s]: Leaving - walks out\n"
        "Verdict: Relevant\n"
        "12s - 30s\n"
        "Preparing food: again\n"
    )
    assert parse_stage_names(text) == ["Preparing food", "Washing up", "Eating", "Leaving"]


SCENARIO = """Cooking dinner.
1. Preparation: washing and cutting vegetables
2. Cooking - the pan on the stove
3. **Cleaning**: washing up
"""


def test_transition_lines_name_their_stages():
    text = "0s - 30s: [Preparation] -> [Cooking]\n30s - 90s: Cooking -> Cleaning\nNote: none"
    assert parse_transition_stages(text) == ["Preparation", "Cooking", "Cleaning"]
    assert parse_transition_stages("30s - 90s: A -> B") == ["A", "B"]
    assert parse_stage_names("30s - 90s: A -> B") == []  # a transition is no stage label


def test_transitions_filter_drops_a_response_naming_a_stage_the_scenario_did_not_list():
    context = {"timestamps": [0.0, 30.0, 90.0], "stages": parse_stage_names(SCENARIO)}
    invented = "0s - 30s: [Preparation] -> [Eating]\n30s - 90s: [Eating] -> [Cleaning]"
    listed = "0s - 30s: [Preparation] -> [Cooking]\n30s - 90s: [cooking] -> [Cleaning]"
    assert select([invented, listed], ["format:intervals", "first"], context) == 1
    # without the scenario's stages only the intervals are checked: both pass, the first stays
    no_stages = {"timestamps": context["timestamps"]}
    assert select([invented, listed], ["format:intervals", "first"], no_stages) == 0


def test_transitions_filter_falls_back_to_the_longest_when_every_sample_invents_stages():
    context = {"timestamps": [0.0, 30.0, 90.0], "stages": ["Preparation", "Cooking"]}
    short = "0s - 30s: [A] -> [B]\n30s - 90s: [B] -> [C]"
    longer = "0s - 30s: [Alpha] -> [Beta]\n30s - 90s: [Beta] -> [Gamma]"
    assert select([short, longer, short], ["format:intervals", "consensus"], context) == 1


VERDICTS_OK = """1. 0s - 6s:
Confidence Score: 3
Verdict: Irrelevant
2. 6s - 13s:
Confidence Score: 8
Verdict: Relevant"""


def test_verdicts_filter_wants_one_scored_verdict_for_every_prompted_interval():
    context = {"intervals": [(0.0, 6.0), (6.0, 13.0)]}
    missing_one = VERDICTS_OK.split("2.")[0]
    unscored = VERDICTS_OK.replace("Confidence Score: 8\n", "")
    twice = VERDICTS_OK + "\nVerdict: Irrelevant"
    for bad in (missing_one, unscored, twice):
        assert (
            select([bad + " padding to be the longest", VERDICTS_OK], ["format:verdicts"], context)
            == 1
        )
    assert select([VERDICTS_OK, VERDICTS_OK + " "], ["format:verdicts", "first"], context) == 0
