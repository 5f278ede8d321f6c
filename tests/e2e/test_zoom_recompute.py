"""Recompute re-runs what it promises on both backends: everything downstream of a recomputed
job waits for it again, and a recomputed zoom starts over from its first level, so its run ends
with answers from the windows the new levels chose, and scored.

The fake backend stands in for a model whose weights changed in place (`EGOQA_FAKE_SALT`): the
recomputed first levels choose other windows.
"""

from __future__ import annotations

import json

import pytest
from store_helpers import add_clips, claim, complete_all, enqueue, job, row, states

from egoqa.backends.fake import SALT_ENV
from egoqa.dev.synth import write_synth_dataset
from egoqa.plan.config import load_config
from egoqa.plan.dataset import load_nlq
from egoqa.plan.planner import enqueue_run
from egoqa.plan.styles import load_style
from egoqa.store import graph
from egoqa.store.db import open_db

from conftest import copy_db
from pg import migrated_postgres_url, postgres_server, postgres_url  # noqa: F401 -- fixtures


@pytest.fixture(scope="module")
def cut_data(tmp_path_factory):
    """2 clips x 2 queries of 90 s, each with 3 hard cuts at known times."""
    return write_synth_dataset(
        tmp_path_factory.mktemp("zoomdata"),
        clips=2,
        queries_per_clip=2,
        duration_sec=90.0,
        cuts_per_clip=3,
        seed=4,
        fps=5,
        size=(160, 120),
    )


@pytest.fixture(scope="module")
def worked_sources() -> dict[str, str]:
    """Per backend, the database `worked_db` copies, made by its first test (on PostgreSQL it
    stays until the session's server stops, like the migrated template)."""
    return {}


@pytest.fixture
def worked_db(store_backend, worked_sources, cut_data, request, tmp_path):
    """A fresh database holding the zoom run `z` (coarse_cot_shots) enqueued and worked to its
    end: the run is made once per backend, and each test gets a copy of it."""
    if store_backend not in worked_sources:
        worked_sources[store_backend] = _work_a_zoom_run(store_backend, cut_data, request)
    source = worked_sources[store_backend]
    if store_backend == "sqlite":
        copy_db(source, tmp_path / "egoqa.db")
        handle = open_db(tmp_path / "egoqa.db")
        yield handle
        handle.dispose()
        return
    server = request.getfixturevalue("postgres_server")
    name, url = server.create_database(template=source)
    handle = open_db(url)
    yield handle
    handle.dispose()
    server.drop_database(name)


def _work_a_zoom_run(backend: str, data, request) -> str:
    """The path (SQLite) or name (PostgreSQL) of a new database with the run `z` worked."""
    if backend == "sqlite":
        path = request.getfixturevalue("tmp_path_factory").mktemp("zoom") / "worked.db"
        copy_db(request.getfixturevalue("migrated_template"), path)
        target, source = str(path), str(path)
    else:
        server = request.getfixturevalue("postgres_server")
        source, target = server.create_database(template=server.migrated_template())
    db = open_db(target)
    try:
        _enqueue(db, data)
        _work(db)
    finally:
        db.dispose()  # a database is copied only while no one is connected to it
    return source


# --- 4. what waits on a recomputed job waits again ----------------------------------------------


def test_recompute_sends_every_job_downstream_back_to_wait_whatever_its_state(db):
    (clip,) = add_clips(db)
    chain = [job("a", clip), job("b", clip, 1, ("a",)), job("c", clip, 2, ("b",))]
    other = [job("x", clip), job("y", clip, 1, ("x",)), job("z", clip, 2, ("y",))]
    ids = enqueue(db, chain + other).ids
    complete_all(db, claim(db, n=2))  # a and x done
    complete_all(db, claim(db, n=1))  # b done; y ready
    running = claim(db, n=1)  # c or y running
    assert {j.id for j in running.jobs} <= {ids["c"], ids["y"]}
    # a, x done; b done; c, y ready and running: 5 re-queued (z was waiting already)
    assert graph.recompute(db, [ids["a"], ids["x"]]) == 5
    assert states(db, ids) == {
        "a": "ready", "b": "blocked", "c": "blocked", "x": "ready", "y": "blocked", "z": "blocked",
    }  # fmt: skip
    assert complete_all(db, running) == set()  # computed from a parent's old answer: refused
    assert all(row(db, ids[n])["generation"] == 1 for n in ("b", "c", "y"))


# --- 3. a recomputed zoom starts over from its first level ---------------------------------------


def _chains(db, run: str) -> dict[int, dict[str, int]]:
    with db.read() as cur:
        rows = cur.all(
            """SELECT ri.query_id, ij.turn_name, ij.job_id FROM run_items ri
                 JOIN runs r ON r.id = ri.run_id JOIN item_jobs ij ON ij.item_id = ri.id
                WHERE r.name = :r""",
            {"r": run},
        )
    out: dict[int, dict[str, int]] = {}
    for query, turn, job_id in rows:
        out.setdefault(query, {})[turn] = job_id
    return out


def _jobs(db) -> dict[int, dict]:
    with db.read() as cur:
        rows = cur.all("SELECT id, key, state, spec, note, generation FROM jobs")
    return {
        r[0]: {"key": r[1], "state": r[2], "spec": json.loads(r[3]), "note": json.loads(r[4] or "null"),
               "generation": r[5]}
        for r in rows
    }  # fmt: skip


def _work(db) -> None:
    from egoqa.work.worker import Worker, WorkerOptions, load_backend_for, resolve_engine

    served = resolve_engine(db)
    Worker(db, served, load_backend_for(served, "cpu"), WorkerOptions(until_done=True)).run()


def _enqueue(db, data, recompute: bool = False):
    config = load_config("coarse_cot_shots", ["backend=fake"])
    style = load_style("coarse_cot_shots")
    return enqueue_run(
        db, load_nlq(data.annotations, data.videos), config, style, "z", recompute=recompute
    )


def _final_windows(db) -> dict[int, list[float]]:
    jobs = _jobs(db)
    return {q: jobs[c["answer"]]["spec"]["media"]["window"] for q, c in _chains(db, "z").items()}


def test_a_recomputed_zoom_answers_from_the_windows_its_new_levels_chose(
    worked_db, cut_data, monkeypatch
):
    db = worked_db  # the run `z`, enqueued and worked
    before = _final_windows(db)
    assert len(before) == 4

    monkeypatch.setenv(SALT_ENV, "new weights")
    _enqueue(db, cut_data, recompute=True)
    jobs = _jobs(db)
    for chain in _chains(db, "z").values():
        level = jobs[chain["locate"]]
        assert level["spec"]["zoom"]["depth"] == 0 and level["state"] == "ready"
        assert "answer" not in chain  # planned again once the new zoom ends
    ready = {j["spec"]["zoom"]["depth"] if "zoom" in j["spec"] else j["spec"].get("turn")
             for j in jobs.values() if j["state"] == "ready"}  # fmt: skip
    assert 0 in ready and "answer" not in ready  # no answer runs on an old final level

    _work(db)
    jobs = _jobs(db)
    by_key = {j["key"]: j for j in jobs.values()}
    after = _final_windows(db)
    assert after != before, "the new levels should choose other windows somewhere"
    for chain in _chains(db, "z").values():
        last, answer = jobs[chain["locate"]], jobs[chain["answer"]]
        assert last["state"] == answer["state"] == "done" and last["note"]["final"]
        assert answer["spec"]["media"]["window"] == last["note"]["final_window"]
        level = last
        while "from" in level["spec"]["zoom"]:  # every level of the chain ran after the recompute
            above = by_key[level["spec"]["zoom"]["from"]]
            assert level["spec"]["media"]["window"] == above["note"]["chosen"]
            level = above
        assert level["generation"] == 1
    with db.read() as cur:
        unscored = cur.one(
            """SELECT COUNT(*) FROM run_items ri JOIN runs r ON r.id = ri.run_id
                WHERE r.name = 'z' AND ri.scored_at IS NULL"""
        )
    assert unscored == 0


def test_zoom_styles_enqueue_and_work_on_both_backends(db, cut_data):
    report = _enqueue(db, cut_data)
    assert report.per_turn == {"locate": 4, "reference": 4}
    _work(db)
    jobs = _jobs(db)
    assert {j["state"] for j in jobs.values()} == {"done"}
    assert any(j["spec"].get("zoom", {}).get("depth", 0) > 0 for j in jobs.values())


# --- 12. a level no run shows any more plans nothing below it -----------------------------------


def test_a_finished_level_that_no_run_shows_any_more_plans_no_next_level(worked_db):
    """A level that finishes after the run's items left it (a recompute while it ran) is
    history: nothing is planned below it."""
    from egoqa.plan.zoom import settle

    db = worked_db  # the run `z`, enqueued and worked
    jobs = _jobs(db)
    level0 = next(i for i, j in jobs.items() if j["spec"].get("zoom", {}).get("depth") == 0)
    note = jobs[level0]["note"] | {"final": False, "chosen": [1.0, 30.0]}  # a window never taken
    with db.write() as cur:
        cur.execute("DELETE FROM item_jobs WHERE job_id = :j", {"j": level0})
        cur.execute("UPDATE jobs SET note = :n WHERE id = :j", {"n": json.dumps(note), "j": level0})
        settle(cur, [level0])
    assert set(_jobs(db)) == set(jobs)


# --- 5. a score lands only on the item of the job it was computed from ----------------------------


def test_a_score_is_not_written_to_an_item_re_pointed_since_it_was_read(worked_db, monkeypatch):
    import egoqa.answers.scoring as scoring
    from egoqa.store.catalog import CLEAR_SCORES

    db = worked_db  # the run `z`, enqueued and worked
    with db.read() as cur:
        (item, graded), (_, other) = cur.all(
            "SELECT id, graded_job_id FROM run_items ORDER BY id LIMIT 2"
        )
    real = scoring.write_scores

    def repoint_then_write(handle, updates):
        with db.write() as cur:  # another worker re-points the item between read and write
            cur.execute(
                "UPDATE run_items SET graded_job_id = :o WHERE id = :i", {"o": other, "i": item}
            )
            cur.execute(CLEAR_SCORES.format(ids="(:i)"), {"i": item})
        real(handle, updates)

    monkeypatch.setattr(scoring, "write_scores", repoint_then_write)
    assert scoring.score_items(db, job_ids=[graded]) == 1
    with db.read() as cur:
        now = cur.all("SELECT graded_job_id, scored_at FROM run_items WHERE id = :i", {"i": item})
    assert now == [(other, None)]
