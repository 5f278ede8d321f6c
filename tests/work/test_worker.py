"""The real inference path: tiny Qwen2.5-VL, real mp4s, the real `egoqa work` (in this process,
or a process of its own where one is killed), real SQLite."""

from __future__ import annotations

import json
import signal

import pytest
from inproc import InProcess

from egoqa.dev.synth import write_synth_dataset
from egoqa.plan.config import load_config
from egoqa.store.db import open_db
from egoqa.work.worker import Worker, WorkerOptions, load_backend_for, resolve_engine

from conftest import enqueue_args
from helpers import rows_as_dicts, running_jobs, wait_until

pytestmark = pytest.mark.model

# Answers of 12 tokens, not the demo preset's 24: what the tests compare and count is the same,
# and decode steps are most of a run's time.
SHORT = ("--set", "generation.max_new_tokens=12")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """2 clips × 3 queries of 16 s: small enough for several real runs per test module."""
    return write_synth_dataset(
        tmp_path_factory.mktemp("small"), clips=2, queries_per_clip=3, duration_sec=16.0, seed=7
    )


@pytest.fixture
def run(db_path, tmp_path) -> InProcess:
    """The real command in this process: `work` loads the tiny model without a new Python and
    torch import (a process of its own is used only where one is killed)."""
    return InProcess(db_path, tmp_path)


@pytest.fixture(scope="module")
def demo_db(small, tiny_model, tmp_path_factory):
    """The `demo` preset's multi-turn style run to the end once on `small`, for the tests that
    only read what it wrote."""
    tmp = tmp_path_factory.mktemp("demo-run")
    run = InProcess(tmp / "egoqa.db", tmp)
    enqueue(run, small, tiny_model)
    run("work", "--until-done")
    return tmp / "egoqa.db"


def enqueue(cli, data, tiny_model, *extra, config="demo"):
    model = ("--set", f"model={json.dumps(str(tiny_model))}")
    return cli(*enqueue_args(data, config, *model, *SHORT, *extra))


def all_done(rows: list[dict]) -> bool:
    """Every job answered: the tiny model never ends an answer before its first token
    (`min_new_tokens`), so no job of it fails, in any session."""
    return bool(rows) and all(r["state"] == "done" for r in rows)


def jobs(db_path) -> list[dict]:
    db = open_db(db_path)
    with db.read() as cur:
        return rows_as_dicts(
            cur,
            "SELECT id, key, state, turn_name, spec, prompt, response, responses, error_kind, "
            "visual_tokens, batch_size, latency_s FROM jobs ORDER BY id",
        )


def results_per_job(db_path) -> dict[int, int]:
    db = open_db(db_path)
    with db.read() as cur:
        return dict(cur.all("SELECT job_id, COUNT(*) FROM job_results GROUP BY job_id"))


def test_multi_turn_style_runs_end_to_end_and_each_prompt_embeds_what_it_reads(demo_db):
    rows = jobs(demo_db)
    assert all_done(rows)
    by_key = {r["key"]: r for r in rows}
    checked = 0
    for r in rows:
        spec = json.loads(r["spec"])
        for parent_key in spec["reads"].values():
            parent = by_key[parent_key]["response"]
            assert parent and parent in r["prompt"], (r["turn_name"], parent[:40])
            checked += 1
        if spec["query"]:
            assert spec["query"] in r["prompt"]
        if spec["media"]["kind"] != "none":
            assert r["visual_tokens"] > 0
        assert r["latency_s"] > 0 and r["batch_size"] >= 1
    reading = [r for r in rows if r["turn_name"] in ("transitions", "segments")]
    # transitions read scenario (per clip); segments read transitions (per query)
    assert checked == len(reading) > 0
    # n samples were drawn where the style asks for them
    seg = [r for r in rows if r["turn_name"] == "segments"]
    assert seg
    assert all(len(json.loads(r["responses"])) == 5 for r in seg)
    assert all(r["response"] in json.loads(r["responses"]) for r in seg)


def test_per_clip_turns_run_once_per_clip(demo_db):
    rows = jobs(demo_db)
    per_clip = [r for r in rows if r["turn_name"] in ("scenario", "transitions")]
    assert len(per_clip) == 2 * 2
    assert all_done(rows)
    # each job computed once
    assert results_per_job(demo_db) == {r["id"]: 1 for r in rows}


def test_a_clip_is_decoded_once_per_worker_however_many_turns_and_queries_use_it(
    small, tiny_model, db_path, tmp_path
):
    style = tmp_path / "three.toml"
    style.write_text("""
name = "three"
[[turns]]
name = "look"
media = "frames"
template = "Frames at {timestamps}. Describe."
[[turns]]
name = "again"
media = "frames"
reads = ["look"]
template = "{look} Frames at {timestamps}. Stages?"
[[turns]]
name = "find"
media = "frames"
reads_query = true
reads = ["again"]
graded = true
template = "{again} Q: {query} Frames at {timestamps}."
""")
    from egoqa.plan.dataset import load_nlq
    from egoqa.plan.planner import enqueue_run
    from egoqa.plan.styles import load_style

    db = open_db(db_path, create=True)
    overrides = [f"model={json.dumps(str(tiny_model))}", f"style={json.dumps(str(style))}"]
    # greedy: every turn gives the same (non-empty) answer in every session, so all ten are done
    cfg = load_config("demo", [*overrides, "generation.do_sample=false", SHORT[1]])
    ds = load_nlq(small.annotations, small.videos)
    enqueue_run(db, ds, cfg, load_style(str(style)), "three")
    served = resolve_engine(db)
    worker = Worker(db, served, load_backend_for(served, "cpu"), WorkerOptions(until_done=True))
    stats = worker.run()
    assert stats.done == 2 * 2 + len(ds.queries) and stats.failed == 0
    assert worker.runner.decoder.decodes == len(ds.clips) == 2
    # every frame request after the two decodes was served from the cache (prefetched or kept)
    assert worker.runner.decoder.hits >= stats.done - 2


@pytest.mark.slow
def test_batched_generation_equals_one_request_at_a_time(small, tiny_model, tmp_path):
    outputs = []
    for size in ("1", "8"):
        db = tmp_path / f"b{size}.db"
        c = InProcess(db, tmp_path)
        c(
            *enqueue_args(
                small,
                "demo",
                "--set",
                f"model={json.dumps(str(tiny_model))}",
                "--set",
                "generation.do_sample=false",
                "--set",
                "style=frame_labeling",
                *SHORT,
            )
        )
        c("work", "--until-done", "--batch-size", size)
        outputs.append({r["key"]: (r["response"], r["batch_size"]) for r in jobs(db)})
    single, batched = outputs
    assert single.keys() == batched.keys()
    assert {k: v[0] for k, v in single.items()} == {k: v[0] for k, v in batched.items()}
    assert max(b for _, b in single.values()) == 1 and max(b for _, b in batched.values()) > 1


@pytest.mark.slow
def test_an_oom_above_k_is_split_until_it_fits_and_k_is_learned(run, small, tiny_model, db_path):
    enqueue(run, small, tiny_model, "--set", "style=baseline", "--set", "batch.size=8")
    p = run("work", "--until-done", env={"EGOQA_INJECT_OOM_ABOVE": "2"})
    assert "OOM splits" in p.stderr
    rows = jobs(db_path)
    assert all_done(rows)
    assert max(r["batch_size"] or 0 for r in rows) == 2
    db = open_db(db_path)
    with db.read() as cur:
        limits = cur.all("SELECT media_key, max_ok, min_fail FROM batch_limits")
    assert limits and all(ok == 2 and fail == 3 for _, ok, fail in limits), limits
    # a new worker starts from what was learned: no more OOMs for this media spec
    enqueue(
        run,
        small,
        tiny_model,
        "--set",
        "style=baseline",
        "--set",
        "batch.size=8",
        "--run",
        "again",
        "--set",
        "generation.seed=1",
    )
    p2 = run("work", "--until-done", env={"EGOQA_INJECT_OOM_ABOVE": "2"})
    assert "0 OOM splits" in p2.stderr


@pytest.mark.slow
def test_a_job_that_runs_out_of_memory_alone_fails_with_oom_and_the_run_goes_on(
    run, small, tiny_model, db_path
):
    enqueue(run, small, tiny_model, "--set", "style=frame_labeling")
    p = run("work", "--until-done", env={"EGOQA_INJECT_OOM_ABOVE": "0"})
    assert p.returncode == 0 and "Traceback" not in p.stderr
    rows = jobs(db_path)
    kinds = {r["turn_name"]: r["error_kind"] for r in rows}
    assert {r["state"] for r in rows} == {"failed"}
    assert (
        kinds["stages"] == "oom"
        and kinds["segments"] == "upstream"
        and kinds["answer"] == "upstream"
    )
    with open_db(db_path).read() as cur:  # graded jobs failed upstream are scored as misses too
        assert cur.all("SELECT DISTINCT outcome, correct FROM run_items") == [("failed", 0)]


@pytest.mark.slow
def test_a_worker_killed_mid_batch_leaves_jobs_another_worker_completes(
    cli, run, small, tiny_model, db_path
):
    enqueue(run, small, tiny_model, "--set", "style=baseline", "--set", "batch.size=2")
    victim = cli.popen("work", "--until-done", "--lease", "3")  # the one process: it is killed
    db = open_db(db_path)
    wait_until(lambda: running_jobs(db), 120, "the victim to hold a batch")
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert running_jobs(db) >= 1  # it died holding leases
    run("work", "--until-done", "--lease", "3")
    rows = jobs(db_path)
    assert all_done(rows)
    assert all(n == 1 for n in results_per_job(db_path).values())
