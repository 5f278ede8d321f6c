"""Run configurations (presets, files, overrides) and prompt styles as data."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from egoqa.errors import ConfigError, StyleError
from egoqa.plan.config import allowed_keys, load_config, preset_names
from egoqa.plan.styles import load_style, parse_style, render, render_template, style_names


def test_every_preset_loads_and_names_a_known_style():
    assert {"baseline", "coarse", "dense", "coarse_cot", "demo"} <= set(preset_names())
    for name in preset_names():
        cfg = load_config(name)
        assert load_style(cfg.style).name == cfg.style


def test_presets_match_the_original_pipelines_bundles():
    coarse, dense, cot = load_config("coarse"), load_config("dense"), load_config("coarse_cot")
    assert (coarse.style, coarse.sampler.kind, coarse.sampler.frames, coarse.sampler.max_edge) == (
        "stage_analysis",
        "uniform",
        8,
        1024,
    )
    assert "72B" in coarse.model and "72B" in dense.model
    assert (dense.style, dense.sampler.kind, dense.sampler.fps, dense.sampler.max_edge) == (
        "frame_labeling",
        "dense",
        1.0,
        112,
    )
    assert (cot.style, cot.sampler.max_edge) == ("coarse_cot", 224)


def test_overrides_use_toml_values_and_dotted_keys():
    cfg = load_config(
        "demo",
        ["sampler.frames=16", "generation.do_sample=false", "model=some/path", "batch.size=4"],
    )
    assert (cfg.sampler.frames, cfg.generation.do_sample, cfg.model, cfg.batch.size) == (
        16,
        False,
        "some/path",
        4,
    )


def test_config_is_frozen_and_its_hash_is_canonical():
    a, b = load_config("demo"), load_config("demo", ["sampler.frames=8"])
    assert a.hash() == b.hash()
    with pytest.raises(ValidationError, match="frozen"):
        a.model = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "override, message",
    [
        ("sampler.frame=3", "unknown key 'sampler.frame'; did you mean sampler.frames?"),
        ("sampler.frames=0", "sampler.frames: Input should be greater than or equal to 1"),
        (
            "sampler.kind=sparse",
            "sampler.kind: unknown sampler kind 'sparse': use 'uniform', 'dense' or 'shots'",
        ),
        ("backend=vllm", "backend: unknown backend 'vllm': use 'transformers', 'openai' or 'fake'"),
        ("nonsense", "expected key=value"),
    ],
)
def test_bad_overrides_say_what_is_allowed_without_listing_every_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_config("demo", [override])
    assert message in str(err.value)
    assert "generation.seed" not in str(err.value)  # not the whole list of keys


def test_a_toml_file_with_an_unknown_key_is_refused(tmp_path):
    f = tmp_path / "mine.toml"
    f.write_text('model = "m"\nstyle = "baseline"\nframes = 3\n')
    with pytest.raises(ConfigError, match="unknown key 'frames'"):
        load_config(str(f))


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="baseline"):
        load_config("nope")


def test_allowed_keys_cover_nested_settings():
    assert {"model", "sampler.fps", "generation.top_k", "batch.size"} <= set(allowed_keys())


def test_builtin_styles_have_the_original_turn_structure():
    assert set(style_names()) >= {"baseline", "frame_labeling", "stage_analysis", "coarse_cot"}
    shape = {
        n: [(t.name, t.media, t.reads_query, t.samples, t.graded) for t in load_style(n).turns]
        for n in style_names()
    }
    assert shape["baseline"] == [("answer", "frames", True, 1, True)]
    assert [t[0] for t in shape["frame_labeling"]] == ["stages", "segments", "answer"]
    assert shape["stage_analysis"][2] == ("segments", "none", True, 5, True)
    assert load_style("coarse_cot").turn("transitions").samples == 5
    assert load_style("coarse_cot").turn("transitions").select == ("format:intervals", "consensus")
    assert load_style("stage_analysis").per_clip() == {
        "scenario": True,
        "transitions": True,
        "segments": False,
        "answer": False,
    }


def test_a_users_style_file_loads(tmp_path):
    f = tmp_path / "two.toml"
    f.write_text("""
name = "two"
[[turns]]
name = "look"
media = "frames"
template = "Frames at {timestamps}. What happens?"
[[turns]]
name = "find"
reads_query = true
reads = ["look"]
graded = true
template = "{look}\\nQ: {query}"
""")
    style = load_style(str(f))
    assert style.per_clip() == {"look": True, "find": False}
    text = render(
        style.turn("find"), query="where?", timestamps=[], duration=10, parents={"look": "stuff"}
    )
    assert text == "stuff\nQ: where?"


@pytest.mark.parametrize(
    "turns, message",
    [
        ([{"name": "a", "template": "{query}", "graded": True}], "template uses ['query']"),
        ([{"name": "a", "template": "x", "reads": ["b"], "graded": True}], "not an earlier turn"),
        (
            [{"name": n, "template": "x", "graded": True} for n in ("a", "b")],
            "at most one turn may have graded",
        ),
        ([{"name": "a", "template": "x", "sampler": {"frame": 3}}], "unknown sampler key"),
        (
            [{"name": "a", "template": "x", "media": "frames", "repeat_until": {"window_sec": 20}}],
            "exactly window_sec and max_depth",
        ),
        (
            [
                {
                    "name": "a",
                    "template": "x",
                    "media": "frames",
                    "repeat_until": {"window_sec": 0, "max_depth": 3},
                }
            ],
            "window_sec must be a number of seconds above 0",
        ),
        (
            [
                {
                    "name": "a",
                    "template": "x",
                    "media": "frames",
                    "repeat_until": {"window_sec": 20, "max_depth": 99},
                }
            ],
            "max_depth must be a whole number from 1 to 32",
        ),
        (
            [{"name": "a", "template": "x", "repeat_until": {"window_sec": 20, "max_depth": 3}}],
            "repeat_until needs media = 'frames'",
        ),
        ([{"name": "a", "template": "x", "media": "frames", "zoom": "oracle"}], "zoom only goes"),
        (
            [{"name": "a", "template": "x", "media": "frames", "zoom": "guess"}],
            "zoom must be one of",
        ),
        ([{"name": "a", "template": "x", "media": "frames", "window_from": "b"}], "not an earlier"),
        (
            [{"name": "a", "template": "x"}, {"name": "b", "template": "x", "window_from": "a"}],
            "window_from needs media = 'frames'",
        ),
        (
            [{"name": "a", "template": "x", "media": "audio", "graded": True}],
            "media must be one of",
        ),
        (
            [{"name": "a", "template": "x", "select": ["best"], "graded": True}],
            "unknown select rule",
        ),
        ([{"name": "a", "template": "x", "graded": True, "colour": 1}], "unknown keys"),
        ([{"name": "a", "template": "x", "media": "segments", "graded": True}], "segments_from"),
    ],
)
def test_invalid_styles_say_what_is_wrong(turns, message):
    with pytest.raises(StyleError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_style({"name": "bad", "turns": turns})


def test_unknown_style_lists_the_styles():
    with pytest.raises(StyleError, match="stage_analysis"):
        load_style("nope")


def test_rendering_fills_timestamps_intervals_and_parents():
    turn = load_style("stage_analysis").turn("transitions")
    text = render(
        turn,
        query=None,
        timestamps=[1.5, 4.5, 7.5],
        duration=9.0,
        parents={"scenario": "Cooking: stages"},
    )
    assert "Cooking: stages" in text and "1.5s, 4.5s, 7.5s" in text
    assert "1.5s - 4.5s\n4.5s - 7.5s" in text


def test_an_answer_only_style_grades_nothing_and_shows_its_last_turn():
    style = load_style("answer_only")
    assert style.graded is None and style.result_turn.name == "answer"
    assert load_style("baseline").result_turn.name == "answer"


def test_coarse_cot_verdicts_draw_five_samples_over_pre_filled_intervals():
    verdicts = load_style("coarse_cot").turn("verdicts")
    assert (verdicts.samples, verdicts.select) == (5, ("format:verdicts", "first"))
    parents = {"transitions": "0s - 8s: [A] -> [B]"}
    text = render(
        verdicts, query="Where?", timestamps=[0.0, 8.0, 16.0], duration=16.0, parents=parents
    )
    assert "1. 0s - 8s:\n2. 8s - 16s:\n" in text
    assert "Every interval gets exactly one verdict, Relevant or Irrelevant" in text


def test_the_recursive_style_declares_its_zoom_as_data():
    style = load_style("coarse_cot_shots")
    locate, answer, reference = style.turns
    assert locate.repeat_until == {"window_sec": 20.0, "max_depth": 6}
    assert (locate.zoom, locate.samples, locate.graded) == ("model", 5, True)
    assert (answer.window_from, answer.media, answer.sampler["kind"]) == (
        "locate",
        "frames",
        "dense",
    )
    assert reference.media == "ground_truth"
    assert style.per_clip() == {"locate": False, "answer": False, "reference": False}
    cfg = load_config("coarse_cot_shots")
    assert (cfg.style, cfg.sampler.kind, cfg.sampler.stamp, "72B" in cfg.model) == (
        "coarse_cot_shots",
        "shots",
        True,
        True,
    )


def test_a_ground_truth_turn_is_per_query_even_without_reading_the_query():
    style = parse_style(
        {
            "turns": [
                {"name": "look", "media": "frames", "template": "x", "graded": True},
                {"name": "ref", "media": "ground_truth", "template": "{timestamps}"},
            ]
        }
    )
    assert style.per_clip() == {"look": True, "ref": False}


def test_answer_7b_answers_with_7b_dense_frames_inside_the_chosen_segments():
    cfg = load_config("answer_7b")
    style = load_style(cfg.style).with_overrides(cfg.turns)
    answer = style.turn("answer")
    assert "72B" in cfg.model and "7B" in answer.model and "72B" not in answer.model
    assert answer.sampler == {"kind": "dense", "fps": 1.0, "max_edge": 224}
    assert style.turn("verdicts").model is None  # the grounding turns keep the run's model


def test_turn_overrides_by_set_and_unknown_turns_are_refused():
    cfg = load_config("coarse_cot", ["turns.answer.model=m7", "turns.answer.sampler.fps=2.0"])
    answer = load_style("coarse_cot").with_overrides(cfg.turns).turn("answer")
    assert (answer.model, answer.sampler) == ("m7", {"fps": 2.0})
    with pytest.raises(ConfigError, match="sampler.fps"):
        load_config("coarse_cot", ["turns.answer.sampler.fps=-1"])
    with pytest.raises(StyleError, match="its turns: scenario, transitions, verdicts, answer"):
        load_style("coarse_cot").with_overrides(
            load_config("coarse_cot", ["turns.anwser.model=x"]).turns
        )


def test_shots_render_each_keyframe_as_its_shots_range():
    turn = load_style("coarse_cot_shots").turn("locate")
    text = render_template(
        turn.template,
        query="Where?",
        timestamps=[3.0, 9.5, 9.5, 9.5],
        duration=13.0,
        parents={},
        ranges=[(0.0, 6.0), (6.0, 13.0)],
    )
    assert "2 frames" in text and "time range: 0s - 6s, 6s - 13s." in text
    assert "1. 0s - 6s:\n2. 6s - 13s:\n" in text
