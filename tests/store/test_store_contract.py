"""The store's contract, run unchanged against every backend (SQLite file, PostgreSQL server).

Like huey's storage tests: one suite, parametrised over backends, using real databases and real
processes. The PostgreSQL half skips, saying what to install, where no server binaries exist.
"""

from __future__ import annotations

import ast
import contextlib
import json
import re
import time
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from claiming_processes import run_claimers
from inproc import InProcess
from sqlalchemy import inspect, text
from store_helpers import (
    MODEL,
    add_clips,
    assert_each_job_claimed_once,
    claim,
    complete_all,
    enqueue,
    enqueue_independent,
    expire_leases,
    job,
    reap,
    results,
    row,
    states,
)

from alembic import command
from egoqa.errors import DatabaseError, ReadOnlyViolation, SchemaMismatch
from egoqa.store import graph, limits, queue
from egoqa.store.db import Database, alembic_config, open_db
from egoqa.store.models import Base

from conftest import enqueue_args
from pg import migrated_postgres_url, postgres_server, postgres_url  # noqa: F401 -- fixtures

PACKAGE = Path(__file__).resolve().parents[2] / "egoqa"
HOSTILE_QUERY = "'; DROP TABLE jobs; --"


# --- processes that claim concurrently (also used by test_resilience) -------------------------


# --- enqueue and dependencies ----------------------------------------------------------------


def test_enqueue_is_idempotent_by_key(db):
    (clip,) = add_clips(db)
    first = enqueue(db, [job("a", clip), job("b", clip, 1, parents=("a",))])
    again = enqueue(db, [job("a", clip), job("b", clip, 1, parents=("a",)), job("c", clip)])
    assert (first.new, first.reused) == (2, 0)
    assert (again.new, again.reused) == (1, 2)
    assert again.ids["a"] == first.ids["a"] and again.ids["b"] == first.ids["b"]
    with db.read() as cur:
        assert cur.one("SELECT COUNT(*) FROM jobs") == 3
        assert cur.one("SELECT COUNT(*) FROM job_deps") == 1


def test_enqueue_leaves_a_started_job_untouched(db):
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip)]).ids
    held = claim(db)
    enqueue(db, [job("a", clip)])
    assert row(db, ids["a"])["state"] == "running"
    assert complete_all(db, held) == {ids["a"]}


def test_job_is_ready_only_when_every_parent_is_done(db):
    (clip,) = add_clips(db)
    ids = enqueue(
        db, [job("p1", clip), job("p2", clip, 1), job("child", clip, 2, parents=("p1", "p2"))]
    ).ids
    assert states(db, ids) == {"p1": "ready", "p2": "ready", "child": "blocked"}
    first = claim(db, n=1)
    assert [j.id for j in first.jobs] == [ids["p1"]]
    complete_all(db, first)
    assert row(db, ids["child"])["state"] == "blocked"
    second = claim(db)
    assert [j.id for j in second.jobs] == [ids["p2"]], "the child was claimable too early"
    complete_all(db, second)
    assert row(db, ids["child"])["state"] == "ready"
    assert [j.id for j in claim(db).jobs] == [ids["child"]]


def test_child_enqueued_after_its_parent_finished_is_ready_at_once(db):
    (clip,) = add_clips(db)
    enqueue(db, [job("p", clip)])
    complete_all(db, claim(db))
    ids = enqueue(db, [job("p", clip), job("late-child", clip, 1, parents=("p",))]).ids
    assert row(db, ids["late-child"])["state"] == "ready"


# --- claiming --------------------------------------------------------------------------------


def test_four_processes_claim_2000_jobs_each_exactly_once(db):
    enqueue_independent(db, 2000)
    reports, _ = run_claimers(db.url, MODEL, batches=[1, 3, 8, 16])
    assert_each_job_claimed_once(db, reports, 2000)  # each held a batch at once (`first_held`)


def test_claim_order_is_priority_then_clip_then_turn(db):
    """Lower `priority` numbers are claimed first; within one, a clip's turns stay together."""
    c1, c2 = add_clips(db, 2)
    plan = [
        job("c2-t1", c2, 1),
        job("c1-t2", c1, 2),
        job("urgent-c2", c2, 0, priority=-5),
        job("c2-t0", c2, 0),
        job("c1-t0", c1, 0),
        job("later-c1", c1, 0, priority=3),
        job("c1-t1", c1, 1),
    ]
    ids = enqueue(db, plan).ids
    expected = ["urgent-c2", "c1-t0", "c1-t1", "c1-t2", "c2-t0", "c2-t1", "later-c1"]
    one_by_one = [claim(db, n=1, owner=f"w{i}").jobs[0].id for i in range(len(plan))]
    assert one_by_one == [ids[n] for n in expected]


def test_claim_returns_a_batch_in_claim_order_and_only_for_its_model(db):
    c1, c2 = add_clips(db, 2)
    ids = enqueue(
        db,
        [
            job("c2", c2),
            job("other-model", c1, model="another-model"),
            job("c1-t1", c1, 1),
            job("c1-t0", c1, 0),
        ],
    ).ids
    got = claim(db, n=10)
    assert [j.id for j in got.jobs] == [ids["c1-t0"], ids["c1-t1"], ids["c2"]]
    assert row(db, ids["other-model"])["state"] == "ready"


def test_claim_marks_jobs_running_under_one_fresh_token(db):
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip), job("b", clip, 1)]).ids
    before = time.time()
    got = claim(db, n=2, owner="worker-x", lease_s=30)
    rows = [row(db, i) for i in ids.values()]
    assert {r["state"] for r in rows} == {"running"}
    assert {r["lease_token"] for r in rows} == {got.token}
    assert {r["lease_owner"] for r in rows} == {"worker-x"}
    assert all(before + 29 < r["lease_expires_at"] < time.time() + 31 for r in rows)
    assert claim(db).jobs == []


# --- leases: reap, stale tokens, release -----------------------------------------------------


def test_expired_lease_is_reaped_and_claimed_again(db):
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip)]).ids
    lost = claim(db, owner="dead-worker", lease_s=5)
    assert reap(db) == (0, 0), "a live lease was reaped"
    expire_leases(db, 6)
    assert reap(db) == (1, 0)
    r = row(db, ids["a"])
    assert (r["state"], r["lease_token"], r["lease_owner"]) == ("ready", None, None)
    assert "dead-worker" in r["error"]
    again = claim(db, owner="w2")
    assert [j.attempts for j in again.jobs] == [2]
    assert complete_all(db, lost) == set()
    assert complete_all(db, again) == {ids["a"]}
    assert [(w, resp) for _, _, w, resp in results(db, ids["a"])] == [("w2", f"answer {ids['a']}")]


def test_reap_fails_a_job_after_max_attempts_and_fails_its_dependents(db):
    (clip,) = add_clips(db)
    ids = enqueue(
        db,
        [
            job("a", clip, max_attempts=2),
            job("b", clip, 1, parents=("a",)),
            job("c", clip, 2, parents=("b",)),
        ],
    ).ids
    for expected in [(1, 0), (0, 1)]:
        claim(db, lease_s=1)
        expire_leases(db, 2)
        assert reap(db) == expected
    a, b, c = (row(db, ids[n]) for n in "abc")
    assert (a["state"], a["error_kind"], a["attempts"]) == ("failed", "lease_expired", 2)
    for dep in (b, c):
        assert dep["state"] == "failed"
        assert dep["error"] == f"upstream job {ids['a']} failed"
    assert claim(db).jobs == []


def test_stale_token_cannot_complete_fail_renew_or_release(db):
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip), job("b", clip, 1)]).ids
    stale = claim(db, owner="zombie", lease_s=1)
    expire_leases(db, 2)
    queue.reap(db)
    fresh = claim(db, owner="w2")
    snapshot = {i: row(db, i) for i in ids.values()}
    assert complete_all(db, stale, prefix="late") == set()
    assert queue.fail(db, stale, ids["a"], "backend_error", "late failure") is None
    assert queue.renew(db, stale, list(ids.values()), 600) == set()
    assert queue.release(db, stale) == 0
    assert {i: row(db, i) for i in ids.values()} == snapshot
    assert all(results(db, i) == [] for i in ids.values())
    assert queue.renew(db, fresh, list(ids.values()), 600) == set(ids.values())
    assert complete_all(db, fresh) == set(ids.values())
    assert {results(db, i)[0][2] for i in ids.values()} == {"w2"}


def test_renew_extends_a_held_lease(db):
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip)]).ids
    held = claim(db, lease_s=2)
    assert queue.renew(db, held, [ids["a"]], 600) == {ids["a"]}
    expire_leases(db, 300)
    assert reap(db) == (0, 0)
    assert row(db, ids["a"])["lease_expires_at"] > time.time() + 200


def test_release_returns_jobs_at_once_without_counting_the_attempt(db):
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip), job("b", clip, 1), job("c", clip, 2)]).ids
    held = claim(db, n=3, lease_s=600)
    assert queue.release(db, held, [ids["c"]]) == 1
    assert row(db, ids["c"])["state"] == "ready"
    assert queue.release(db, held) == 2
    for i in ids.values():
        r = row(db, i)
        assert (r["state"], r["attempts"], r["lease_token"], r["lease_expires_at"]) == (
            "ready",
            0,
            None,
            None,
        )
    again = claim(db, n=3)
    assert [j.attempts for j in again.jobs] == [1, 1, 1]


# --- failure, upstream failure, retry, recompute ---------------------------------------------


def test_failed_parent_fails_its_dependents_with_the_upstream_reason(db):
    (clip,) = add_clips(db)
    ids = enqueue(
        db,
        [
            job("a", clip),
            job("b", clip, 1, parents=("a",)),
            job("c", clip, 2, parents=("b",)),
            job("d", clip, 2, parents=("a",)),
            job("other", clip, 3),
        ],
    ).ids
    held = claim(db, n=1)
    failed = queue.fail(db, held, ids["a"], "video", "video file is truncated")
    assert sorted(failed) == sorted(ids[n] for n in "abcd")
    a = row(db, ids["a"])
    assert (a["state"], a["error_kind"], a["error"]) == (
        "failed",
        "video",
        "video file is truncated",
    )
    for name in "bcd":
        r = row(db, ids[name])
        assert (r["state"], r["error_kind"]) == ("failed", "upstream")
        assert r["error"] == f"upstream job {ids['a']} failed"
    assert row(db, ids["other"])["state"] == "ready"


def test_retryable_failure_requeues_until_attempts_run_out(db):
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip, max_attempts=2)]).ids
    assert queue.fail(db, claim(db), ids["a"], "empty_generation", "no text", retryable=True) == []
    assert row(db, ids["a"])["state"] == "ready"
    last = queue.fail(db, claim(db), ids["a"], "empty_generation", "no text", retryable=True)
    assert last == [ids["a"]]
    assert (row(db, ids["a"])["state"], row(db, ids["a"])["attempts"]) == ("failed", 2)


@pytest.mark.parametrize("which", ["all", "the failed root"])
def test_retry_revives_a_failed_chain_and_it_completes(db, which):
    (clip,) = add_clips(db)
    ids = enqueue(
        db,
        [job("a", clip), job("b", clip, 1, parents=("a",)), job("c", clip, 2, parents=("b",))],
    ).ids
    queue.fail(db, claim(db), ids["a"], "backend_error", "boom")
    assert set(states(db, ids).values()) == {"failed"}
    revived = graph.retry(db, None if which == "all" else [ids["a"]])
    assert revived >= 1
    assert states(db, ids) == {"a": "ready", "b": "blocked", "c": "blocked"}
    for _ in range(3):
        complete_all(db, claim(db))
    assert set(states(db, ids).values()) == {"done"}
    assert all(row(db, i)["error"] is None for i in ids.values())


def test_recompute_requeues_and_keeps_history_in_job_results(db):
    (clip,) = add_clips(db)
    ids = enqueue(db, [job("a", clip)]).ids
    complete_all(db, claim(db), prefix="first")
    assert graph.recompute(db, [ids["a"]]) == 1
    r = row(db, ids["a"])
    assert (r["state"], r["generation"], r["attempts"]) == ("ready", 1, 0)
    complete_all(db, claim(db, owner="w2"), prefix="second")
    history = [(g, w, resp) for g, _, w, resp in results(db, ids["a"])]
    assert history == [(0, "w1", f"first {ids['a']}"), (1, "w2", f"second {ids['a']}")]
    assert row(db, ids["a"])["response"] == f"second {ids['a']}"


def test_batch_limits_upsert_keeps_largest_ok_and_smallest_failure(db):
    assert limits.batch_limit(db, MODEL, "frames:8f") == (None, None)
    for ok, failed in [(8, None), (4, None), (None, 32), (None, 64), (None, 16), (12, None)]:
        limits.record_batch(db, MODEL, "frames:8f", ok=ok, failed=failed)
    limits.record_batch(db, MODEL, "none", ok=64)
    assert limits.batch_limit(db, MODEL, "frames:8f") == (12, 16)
    assert limits.batch_limit(db, MODEL, "none") == (64, None)
    assert limits.batch_limit(db, "another-engine", "frames:8f") == (None, None)


# --- migrations and schema checks ------------------------------------------------------------


def schema_diff(db: Database) -> list:
    with db.engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        return compare_metadata(ctx, Base.metadata)


def test_migrated_schema_equals_the_models(url):
    db = open_db(url, create=True)
    assert schema_diff(db) == []
    db.dispose()


def test_downgrade_to_base_then_upgrade_to_head_works(url):
    db = open_db(url, create=True)
    cfg = alembic_config(url, db.engine)
    command.downgrade(cfg, "base")
    assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
    assert inspect(db.engine).get_view_names() == []
    with pytest.raises(SchemaMismatch, match="egoqa db upgrade"):
        open_db(url)
    command.upgrade(cfg, "head")
    assert schema_diff(db) == []
    open_db(url).dispose()
    db.dispose()


def test_schema_newer_than_the_code_is_refused_naming_what_to_do(db):
    with db.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = 'f00dfeedcafe'"))
    for kwargs in ({}, {"create": True}, {"readonly": True}):
        with pytest.raises(SchemaMismatch, match=r"newer than this egoqa.*upgrade egoqa"):
            open_db(db.url, **kwargs)
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            "f00dfeedcafe"
        )


# --- read-only SQL is enforced by the database -----------------------------------------------

WRITES = [
    "INSERT INTO batch_limits (engine, media_key, updated_at) VALUES ('m', 'k', 1)",
    "UPDATE jobs SET state = 'failed'",
    "DELETE FROM jobs",
    "DROP TABLE job_results",
    "WITH x AS (SELECT 1) DELETE FROM jobs",  # starts like a read: no string check catches it
    "/* SELECT */ update jobs set response = 'tampered'",
]
SMUGGLED = {  # attempts to switch the read-only guard off, then write
    "sqlite": ["PRAGMA query_only = OFF", "SELECT 1; DELETE FROM jobs"],
    "postgresql": [
        "SET TRANSACTION READ WRITE; DELETE FROM jobs",
        "SELECT set_config('default_transaction_read_only', 'off', false)",
        "SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE",
    ],
}


def fingerprint(db: Database) -> tuple:
    with db.read() as cur:
        jobs = cur.all("SELECT id, state, response FROM jobs ORDER BY id")
        return (
            jobs,
            cur.one("SELECT COUNT(*) FROM job_results"),
            cur.one("SELECT COUNT(*) FROM batch_limits"),
        )


def test_sql_refuses_writes_enforced_by_the_database(db):
    from egoqa.store.read import read_only_sql

    (clip,) = add_clips(db)
    enqueue(db, [job("a", clip), job("b", clip, 1)])
    complete_all(db, claim(db, n=1))
    before = fingerprint(db)
    ro = open_db(db.url, readonly=True)
    for stmt in WRITES:
        with pytest.raises(ReadOnlyViolation, match="read-only"):
            read_only_sql(ro, stmt)
    for stmt in SMUGGLED[ro.dialect]:
        with contextlib.suppress(DatabaseError):  # refused outright: fine
            read_only_sql(ro, stmt)
        for write in WRITES[:3]:  # ... and the same handle must still refuse writes after it
            with pytest.raises(ReadOnlyViolation):
                read_only_sql(ro, write)
    assert read_only_sql(ro, "SELECT COUNT(*) AS n FROM jobs").rows == [(2,)]
    ro.dispose()
    assert fingerprint(db) == before


# --- security ---------------------------------------------------------------------------------


def package_sources() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 10, f"package sources not found under {PACKAGE}"
    return files


def test_no_pickle_anywhere_in_the_package():
    """Results, configs and caches are JSON/SQL: nothing unpickles data a database could hold."""
    banned = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "joblib"}
    found = []
    for path in package_sources():
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.name}: import {n}" for n in names if n.split(".")[0] in banned]
        if re.search(r"\bpickle\b", source):
            found.append(f"{path.name}: mentions pickle")
    assert found == []


def test_trust_remote_code_defaults_to_false_and_only_comes_from_the_config(monkeypatch):
    from egoqa.backends import registry
    from egoqa.plan.config import RunConfig, load_config
    from egoqa.work.worker import Served, load_backend_for

    assert RunConfig(model="m").trust_remote_code is False
    assert load_config("demo", ()).trust_remote_code is False
    seen = []
    transformers = registry.backend_class("transformers")
    monkeypatch.setattr(transformers, "__init__", lambda self, **kw: seen.append(kw))
    for value in (False, True):
        config = RunConfig(model="m", trust_remote_code=value)
        load_backend_for(Served("e", config.engine(), config), "cpu")
    assert [kw["trust_remote_code"] for kw in seen] == [False, True]
    hardcoded = []
    for path in package_sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                value = node.value
            elif isinstance(node, ast.Dict):
                value = next(
                    (
                        v
                        for k, v in zip(node.keys, node.values, strict=True)
                        if isinstance(k, ast.Constant) and k.value == "trust_remote_code"
                    ),
                    None,
                )
            else:
                continue
            if isinstance(value, ast.Constant) and value.value is not False:
                hardcoded.append(f"{path.name}:{value.lineno}")
    assert hardcoded == [], "trust_remote_code set to a constant instead of the config's value"


def hostile_annotations(synth, out: Path) -> Path:
    """The synthetic NLQ file with SQL metacharacters in the first two query texts."""
    data = json.loads(Path(synth.annotations).read_text())
    texts = iter([HOSTILE_QUERY, "Robert'); DELETE FROM queries WHERE ('1'='1 :name %(x)s ?"])
    for video in data["videos"]:
        for clip in video["clips"]:
            for ann in clip["annotations"]:
                for q in ann["language_queries"]:
                    if q.get("query") and isinstance(q["query"], str):
                        q["query"] = next(texts, q["query"])
    path = out / "nlq_hostile.json"
    path.write_text(json.dumps(data))
    return path


def test_query_text_with_sql_metacharacters_round_trips_as_data(db, synth, tmp_path):
    from egoqa.plan.config import load_config
    from egoqa.plan.dataset import load_nlq
    from egoqa.plan.planner import enqueue_run
    from egoqa.plan.styles import load_style

    annotations = hostile_annotations(synth, tmp_path)
    dataset = load_nlq(annotations, synth.videos, None)
    cfg = load_config("demo", ["backend=fake", "style=baseline"])
    wanted = [q.text for q in dataset.queries if "'" in q.text]
    assert HOSTILE_QUERY in wanted
    enqueue_run(db, dataset, cfg, load_style(cfg.style), "hostile")
    with db.read() as cur:
        stored = [r[0] for r in cur.all("SELECT text FROM queries WHERE text LIKE '%''%'")]
        specs = [json.loads(r[0])["query"] for r in cur.all("SELECT spec FROM jobs")]
        tables = cur.one("SELECT COUNT(*) FROM jobs"), cur.one("SELECT COUNT(*) FROM queries")
    assert sorted(stored) == sorted(wanted)
    assert set(wanted) <= set(specs)
    assert tables[0] > 0 and tables[1] == len(dataset.queries)


# --- the CLI end to end, on each backend -----------------------------------------------------


def test_cli_enqueue_work_status_and_sql_end_to_end(url, synth, tmp_path):
    """From an empty database: the first `enqueue` makes the schema (and, on PostgreSQL, the
    read-only role `sql` runs as)."""
    cli = InProcess(url, tmp_path)
    annotations = hostile_annotations(synth, tmp_path)
    args = enqueue_args(synth, "demo", "--set", "backend=fake", "--run", "e2e")
    args[args.index("--annotations") + 1] = str(annotations)
    planned = json.loads(cli(*args, "--json").stdout)
    assert planned["jobs_new"] > 0
    cli("work", "--until-done", "--batch-size", "4")
    status = cli.json("status")
    assert status["jobs"] == {"done": planned["jobs_total"]}
    assert {r["run"] for r in status["progress"]} == {"e2e"}
    rows = cli.json("sql", "SELECT text FROM queries WHERE text = '''; DROP TABLE jobs; --'")
    assert rows == [{"text": HOSTILE_QUERY}]
    n = cli.json("sql", "SELECT COUNT(*) AS n FROM job_results")
    assert n == [{"n": planned["jobs_total"]}]
    refused = cli("sql", "DELETE FROM jobs", check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: egoqa sql is read-only")
    assert "Traceback" not in refused.stderr
    assert cli.json("status")["jobs"] == {"done": planned["jobs_total"]}


def test_postgres_url_without_a_server_fails_with_one_line(tmp_path):
    cli = InProcess(f"postgresql+psycopg://nobody@127.0.0.1:{_closed_port()}/egoqa", tmp_path)
    out = cli("status", check=False)
    assert out.returncode == 1
    try:
        import psycopg  # noqa: F401 -- the test extra installs it
    except ImportError:
        expected = r"error: no driver for postgresql"
    else:
        expected = r"error: cannot open postgresql\+psycopg://"
    assert re.match(expected, out.stderr), out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) == 1


def _closed_port() -> int:
    from pg import free_port

    return free_port()
