"""Job keys and planning: sharing, invalidation, idempotent enqueue, recompute with history."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from egoqa.errors import ConfigError
from egoqa.plan.config import load_config
from egoqa.plan.dataset import Dataset, load_nlq
from egoqa.plan.planner import enqueue_run
from egoqa.plan.styles import load_style, parse_style
from egoqa.store import queue
from egoqa.store.db import open_db


@pytest.fixture
def dataset(synth) -> Dataset:
    return load_nlq(synth.annotations, synth.videos, synth.metadata)


@pytest.fixture
def db(migrated_db_path):
    """A fresh SQLite database at the schema's head (a copy of the migrated template)."""
    return open_db(migrated_db_path)


def plan(db, dataset, *overrides, style=None, run="r", recompute=False):
    cfg = load_config("demo", list(overrides))
    return enqueue_run(db, dataset, cfg, style or load_style(cfg.style), run, recompute=recompute)


def keys_by_turn(db) -> dict[str, set[str]]:
    with db.read() as cur:
        rows = cur.all("SELECT turn_name, key FROM jobs")
    out: dict[str, set[str]] = {}
    for turn, key in rows:
        out.setdefault(turn, set()).add(key)
    return out


def test_per_clip_turns_are_shared_by_every_query_on_a_clip(db, dataset):
    report = plan(db, dataset)
    clips = {q.clip_uid for q in dataset.queries}
    assert report.per_turn == {
        "scenario": len(clips),
        "transitions": len(clips),
        "segments": len(dataset.queries),
        "answer": len(dataset.queries),
    }
    with db.read() as cur:
        # every query of a clip points at the same scenario job
        rows = cur.all("""SELECT q.clip_id, COUNT(DISTINCT ij.job_id) FROM item_jobs ij
                            JOIN run_items ri ON ri.id = ij.item_id JOIN queries q ON q.id = ri.query_id
                           WHERE ij.turn_name = 'scenario' GROUP BY q.clip_id""")
        assert rows and all(n == 1 for _, n in rows)
        assert (
            cur.one(
                "SELECT COUNT(*) FROM jobs WHERE turn_name = 'scenario' AND query_id IS NOT NULL"
            )
            == 0
        )


def test_identical_queries_on_one_clip_share_all_their_jobs(db, dataset):
    q = dataset.queries[0]
    twin = dataclasses.replace(q, annotation_uid=q.annotation_uid + "-twin")
    report = plan(db, dataclasses.replace(dataset, queries=[q, twin]))
    assert report.jobs_total == 4  # one chain of 4 turns serves both queries
    with db.read() as cur:
        chains = cur.all(
            "SELECT ri.id, ij.turn_index, ij.job_id FROM item_jobs ij JOIN run_items ri ON ri.id = ij.item_id"
        )
    by_item: dict[int, list[int]] = {}
    for item, _, job in sorted(chains):
        by_item.setdefault(item, []).append(job)
    assert len(by_item) == 2 and len({tuple(v) for v in by_item.values()}) == 1


def test_reenqueue_is_a_no_op(db, dataset):
    first = plan(db, dataset)
    again = plan(db, dataset)
    assert first.jobs_new == first.jobs_total > 0
    assert again.jobs_new == 0 and again.jobs_reused == first.jobs_total
    with db.read() as cur:
        assert cur.one("SELECT COUNT(*) FROM jobs") == first.jobs_total
        assert cur.one("SELECT COUNT(*) FROM run_items") == len(dataset.queries)


@pytest.mark.parametrize(
    "override, changed",
    [
        ("sampler.frames=4", {"scenario", "transitions", "segments", "answer"}),
        ("sampler.max_edge=224", {"scenario", "transitions", "segments", "answer"}),
        ("generation.temperature=0.5", {"scenario", "transitions", "segments", "answer"}),
        ("model=other-model", {"scenario", "transitions", "segments", "answer"}),
        ("dtype=bfloat16", {"scenario", "transitions", "segments", "answer"}),
    ],
)
def test_a_changed_setting_yields_new_keys(db, dataset, override, changed):
    plan(db, dataset, run="a")
    before = keys_by_turn(db)
    report = plan(db, dataset, override, run="b")
    after = keys_by_turn(db)
    for turn in before:
        new = after[turn] - before[turn]
        assert bool(new) == (turn in changed), (turn, override)
    assert report.jobs_new == report.jobs_total


def test_a_changed_template_invalidates_that_turn_and_its_descendants_only(db, dataset):
    plan(db, dataset, run="a")
    before = keys_by_turn(db)
    base = load_style("stage_analysis").to_dict()
    base["turns"][2]["template"] = base["turns"][2]["template"].replace("Describe", "Picture")
    style = parse_style(
        {
            "name": "edited",
            "turns": [{k: v for k, v in t.items() if v is not None} for t in base["turns"]],
        }
    )
    report = plan(db, dataset, style=style, run="b")
    after = keys_by_turn(db)
    assert after["scenario"] == before["scenario"] and after["transitions"] == before["transitions"]
    assert after["segments"] - before["segments"]
    assert after["answer"] - before["answer"]  # reads the edited turn's segments
    assert report.jobs_reused == report.per_turn["scenario"] + report.per_turn["transitions"]


def test_a_changed_video_file_yields_new_keys(db, dataset, tmp_path, synth):
    videos = tmp_path / "videos"
    shutil.copytree(synth.videos, videos)
    ds = load_nlq(synth.annotations, videos, synth.metadata)
    plan(db, ds, run="a")
    before = keys_by_turn(db)
    victim = next(iter(ds.clips.values())).video_path
    with victim.open("ab") as f:
        f.write(b"\0" * 1024)
    plan(db, load_nlq(synth.annotations, videos, synth.metadata), run="b")
    after = keys_by_turn(db)
    assert len(after["scenario"] - before["scenario"]) == 1


def the_engine(db) -> str:
    with db.read() as cur:
        (engine,) = [r[0] for r in cur.all("SELECT DISTINCT engine FROM jobs")]
    return engine


def test_the_same_run_name_with_another_config_is_refused(db, dataset):
    plan(db, dataset, run="x")
    with pytest.raises(
        ConfigError, match=r"different configuration \(sampler.frames\).*--recompute"
    ):
        plan(db, dataset, "sampler.frames=4", run="x")


def test_recompute_requeues_and_keeps_old_results_as_history(db, dataset):
    plan(db, dataset, run="x", style=load_style("baseline"))
    c = queue.claim(db, "w", the_engine(db), 100, 60)
    won = queue.complete(
        db, c, [queue.Completion(j.id, f"old {j.id}", [f"old {j.id}"]) for j in c.jobs]
    )
    assert len(won) == len(dataset.queries)
    report = plan(db, dataset, run="x", style=load_style("baseline"), recompute=True)
    assert report.recomputed == len(won)
    with db.read() as cur:
        assert cur.one("SELECT COUNT(*) FROM jobs WHERE state = 'ready' AND generation = 1") == len(
            won
        )
        assert cur.one("SELECT COUNT(*) FROM job_results WHERE response LIKE 'old %'") == len(won)
    c2 = queue.claim(db, "w", the_engine(db), 100, 60)
    queue.complete(
        db, c2, [queue.Completion(j.id, f"new {j.id}", [f"new {j.id}"]) for j in c2.jobs]
    )
    with db.read() as cur:
        assert cur.one("SELECT COUNT(*) FROM job_results") == 2 * len(won)
        assert cur.one("SELECT COUNT(*) FROM jobs WHERE response LIKE 'new %'") == len(won)


def test_only_the_sampler_settings_that_decide_the_frames_are_in_the_key(db, dataset):
    baseline = load_style("baseline")
    plan(db, dataset, style=baseline, run="a")
    before = keys_by_turn(db)["answer"]
    # a uniform sampler reads neither fps nor the shot detector's settings
    plan(db, dataset, "sampler.fps=2.0", "sampler.threshold=40.0", style=baseline, run="b")
    assert keys_by_turn(db)["answer"] == before
    plan(db, dataset, "sampler.kind=shots", style=baseline, run="c")
    shots = keys_by_turn(db)["answer"] - before
    # the detector and its thresholds are part of a shots job's key; the frame count is not
    plan(db, dataset, "sampler.kind=shots", "sampler.frames=3", style=baseline, run="d")
    assert keys_by_turn(db)["answer"] == before | shots
    for i, setting in enumerate(("threshold=40.0", "detector=adaptive", "max_shots=5")):
        plan(db, dataset, "sampler.kind=shots", f"sampler.{setting}", style=baseline, run=f"e{i}")
    assert len(keys_by_turn(db)["answer"]) == 5 * len(shots) == 5 * len(dataset.queries)
    with db.read() as cur:
        kinds = {k for (k,) in cur.all("SELECT DISTINCT media_key FROM jobs")}
    assert {"frames:shots:<=20shots:112px", "frames:shots:<=5shots:112px"} <= kinds


def test_a_text_turn_listing_the_intervals_is_keyed_by_the_clips_sampling(db, dataset):
    cot = load_style("coarse_cot")
    plan(db, dataset, style=cot, run="a")
    before = keys_by_turn(db)
    plan(db, dataset, "sampler.endpoints=false", style=cot, run="b")
    after = keys_by_turn(db)
    assert all(after[t] - before[t] for t in ("scenario", "transitions", "verdicts", "answer"))
    with db.read() as cur:
        specs = [
            json.loads(s) for (s,) in cur.all("SELECT spec FROM jobs WHERE turn_name = 'verdicts'")
        ]
    assert {s["media"]["kind"] for s in specs} == {"none"}
    assert {s["media"]["sampler"]["endpoints"] for s in specs} == {True, False}
