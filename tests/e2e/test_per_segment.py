"""A segments turn with `per_segment = true`: one call per chosen segment, each seeing only that
segment's frames, the answers joined a line per segment (the original's answer pass)."""

from __future__ import annotations

import json
import re

import pytest
from inproc import InProcess

from egoqa.dev.synth import write_synth_dataset
from egoqa.errors import ConfigError, StyleError
from egoqa.plan.config import load_config
from egoqa.plan.dataset import load_nlq
from egoqa.plan.planner import enqueue_run
from egoqa.plan.styles import load_style, parse_style
from egoqa.store import queue
from egoqa.store.db import open_db

from conftest import enqueue_args
from helpers import rows_as_dicts

STYLE = """
name = "find_then_answer"
[[turns]]
name = "find"
media = "frames"
reads_query = true
graded = true
template = "Q: {query} Frames at {timestamps}. Answer with segments."
[[turns]]
name = "answer"
media = "segments"
segments_from = "find"
reads_query = true
per_segment = true
max_new_tokens = 12
template = "Frames at {timestamps}. Q: {query}"
"""
# Each call's prompt lists its frames' times ("Frames at 2s, 3s, ..."): they must lie inside
# its segment. The two segments the `find` turn is made to choose, and what they look like.
CHOSEN = "The moment is in [2s] - [5s], and again in [8s] - [11s]."
RANGES = ["2s - 5s", "8s - 11s"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("segdata")
    return write_synth_dataset(root, clips=1, queries_per_clip=2, duration_sec=16.0, seed=3)


def _style(tmp_path, text=STYLE):
    path = tmp_path / "find_then_answer.toml"
    path.write_text(text)
    return path


def _turn(**kw):
    base = {"name": "a", "template": "{timestamps}", "media": "segments", "segments_from": "f"}
    return {"turns": [{"name": "f", "media": "frames", "template": "x"}, base | kw]}


def test_per_segment_needs_a_segments_turn_of_one_ungraded_sample():
    assert parse_style(_turn(per_segment=True)).turn("a").per_segment
    with pytest.raises(StyleError, match="per_segment needs media = 'segments'"):
        parse_style(
            {"turns": [{"name": "f", "media": "frames", "template": "x", "per_segment": True}]}
        )
    with pytest.raises(StyleError, match="per_segment takes one sample"):
        parse_style(_turn(per_segment=True, samples=3))
    with pytest.raises(StyleError, match="cannot be graded"):
        parse_style(_turn(per_segment=True, graded=True))
    with pytest.raises(StyleError, match="per_segment must be true or false"):
        parse_style(_turn(per_segment="yes"))


def test_a_turn_override_sets_per_segment_and_is_checked_like_the_style():
    cfg = load_config("coarse_cot", ["turns.answer.per_segment=true"])
    assert load_style("coarse_cot").with_overrides(cfg.turns).turn("answer").per_segment
    bad = load_config("coarse_cot", ["turns.verdicts.per_segment=true"])
    with pytest.raises(StyleError, match=r"\[turns.verdicts\].*needs media = 'segments'"):
        load_style("coarse_cot").with_overrides(bad.turns)
    with pytest.raises(ConfigError, match="per_segment"):
        load_config("coarse_cot", ["turns.answer.per_segment=2"])


def test_answer_7b_makes_one_call_per_chosen_segment_as_the_original_did():
    cfg = load_config("answer_7b")
    assert load_style(cfg.style).with_overrides(cfg.turns).turn("answer").per_segment


def test_per_segment_is_part_of_the_key_and_absent_from_it_when_off(tmp_path, data):
    keys = {}
    for flag in ("true", "false"):
        db = open_db(tmp_path / f"{flag}.db", create=True)
        style = _style(tmp_path, STYLE.replace("per_segment = true", f"per_segment = {flag}"))
        cfg = load_config("baseline", ["backend=fake", f"style={json.dumps(str(style))}"])
        enqueue_run(db, load_nlq(data.annotations, data.videos), cfg, load_style(str(style)), "r")
        with db.read() as cur:
            keys[flag] = dict(cur.all("SELECT key, turn_name FROM jobs"))
            specs = [json.loads(s) for (s,) in cur.all("SELECT spec FROM jobs")]
        assert all(
            ("per_segment" in s) == (flag == "true" and s["turn"] == "answer") for s in specs
        )
    finds = [{k for k, t in keys[f].items() if t == "find"} for f in keys]
    answers = [{k for k, t in keys[f].items() if t == "answer"} for f in keys]
    assert finds[0] == finds[1] and answers[0].isdisjoint(answers[1])


def _plant_find_answers(db) -> int:
    """Complete every `find` job with a response naming two segments, through the queue."""
    with db.read() as cur:
        engine = cur.one("SELECT engine FROM jobs LIMIT 1")
    claim = queue.claim(db, "hand", engine, 100, lease_s=600)
    finds = [j for j in claim.jobs if j.spec["turn"] == "find"]
    assert finds and len(finds) == len(claim.jobs)
    queue.complete(db, claim, [queue.Completion(j.id, CHOSEN, [CHOSEN]) for j in finds])
    return len(finds)


def _answers(db) -> list[dict]:
    with db.read() as cur:
        return rows_as_dicts(
            cur,
            "SELECT id, state, prompt, response, responses, visual_tokens, batch_size "
            "FROM jobs WHERE turn_name = 'answer' ORDER BY id",
        )


def _check_calls(answer: dict) -> None:
    """One call per chosen segment, in time order, each showing frames inside its segment."""
    calls = re.findall(r"\[call (\d) of (\d): ([^\]]+)\]\nFrames at ([^.]+)\.", answer["prompt"])
    assert [(i, n, r) for i, n, r, _ in calls] == [("1", "2", RANGES[0]), ("2", "2", RANGES[1])]
    for (_, _, rng, times), bounds in zip(calls, [(2, 5), (8, 11)], strict=True):
        seconds = [float(t.rstrip("s")) for t in times.split(", ")]
        assert seconds and all(bounds[0] <= t <= bounds[1] for t in seconds), (rng, seconds)
    lines = answer["response"].split("\n")
    assert [line.split(": ", 1)[0] for line in lines] == RANGES
    assert json.loads(answer["responses"]) == [answer["response"]]


def test_a_per_segment_answer_runs_one_call_per_segment_through_the_cli(tmp_path, data):
    style = _style(tmp_path)
    cli = InProcess(tmp_path / "egoqa.db", tmp_path)
    cli(*enqueue_args(data, "baseline", "--set", "backend=fake", "--set",
                      f"style={json.dumps(str(style))}"))  # fmt: skip
    db = open_db(tmp_path / "egoqa.db")
    n = _plant_find_answers(db)
    cli("work", "--until-done")
    answers = _answers(db)
    assert len(answers) == n and all(a["state"] == "done" for a in answers)
    for answer in answers:
        _check_calls(answer)


@pytest.mark.model
def test_per_segment_calls_on_the_tiny_model_are_the_same_in_any_batch(tmp_path, data, tiny_model):
    """The real path: each segment's call is its own row of a batch; batch 1 and 8 agree."""
    from egoqa.work.worker import Worker, WorkerOptions, load_backend_for, resolve_engine

    style = _style(tmp_path)
    sets = [f"model={json.dumps(str(tiny_model))}", f"style={json.dumps(str(style))}"]
    cfg = load_config("demo", sets)  # sampled: each segment's call draws from its own stream
    backend, runs = None, []
    for size in (1, 8):
        db = open_db(tmp_path / f"b{size}.db", create=True)
        enqueue_run(db, load_nlq(data.annotations, data.videos), cfg, load_style(str(style)), "r")
        _plant_find_answers(db)
        served = resolve_engine(db)
        backend = backend or load_backend_for(served, "cpu")
        stats = Worker(db, served, backend, WorkerOptions(batch_size=size, until_done=True)).run()
        answers = _answers(db)
        # the tiny model is the same bytes every session, keyed by its content: its sampled
        # answers, and so the outcomes, are the same in every session too
        assert (stats.done, stats.failed) == (len(answers), 0) == (2, 0)
        for answer in answers:
            assert answer["state"] == "done"
            _check_calls(answer)
            assert answer["visual_tokens"] > 0
        runs.append([(a["state"], a["response"], a["prompt"]) for a in answers])
        if size == 8:  # both jobs' two calls shared one batch
            assert max(a["batch_size"] or 0 for a in answers) == 4
    assert runs[0] == runs[1]
