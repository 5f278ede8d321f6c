"""The command line as a user meets it: help, version, enqueue's plan, status, runs, sql, retry, db.

The commands run through the real entry point in this process (`inproc.InProcess`); a process of
its own is started only where the process is what is checked: `python -m egoqa` itself, and which
modules the light commands import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import typer
from inproc import InProcess

from egoqa.cli.app import app

from conftest import ROOT, enqueue_args

HEAVY = ("torch", "transformers", "decord", "qwen_vl_utils")
# What enqueue needs neither to plan nor to create a fresh database's schema: migrations do not
# read the ORM's models (0.2 s of a 1.6 s enqueue at NLQ val scale), planning no table library
ENQUEUE_SPARES = (*HEAVY, "egoqa.store.models", "sqlalchemy.orm", "pandas", "numpy")

# Runs each argv of a JSON list through the console entry point, one after another in one fresh
# interpreter, and after each prints the heavy modules imported so far (a line of its own).
LIGHT_PROBE = """
import json, sys
from egoqa.cli.app import main
for argv in json.loads(sys.argv[1]):
    sys.argv = ["egoqa", *argv]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, (argv, exc.code)
    heavy = [m for m in {heavy!r} if m in sys.modules]
    print("\\nIMPORTED " + json.dumps([argv, heavy]))
"""


def heavy_imports(commands: list[list[str]], cwd, heavy=HEAVY) -> dict[str, list[str]]:
    """Run the commands in order in one fresh interpreter; for each (joined by spaces), the
    modules of `heavy` imported by the time it finished."""
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT_PROBE.format(heavy=heavy), json.dumps(commands)],
        capture_output=True, text=True, timeout=120, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    seen = [json.loads(x[9:]) for x in proc.stdout.splitlines() if x.startswith("IMPORTED ")]
    assert [argv for argv, _ in seen] == commands, proc.stdout
    return {" ".join(argv): heavy for argv, heavy in seen}


@pytest.fixture
def egoqa(db_path, tmp_path) -> InProcess:
    return InProcess(db_path, tmp_path)


def test_python_dash_m_egoqa_runs_the_command_line(tmp_path):
    p = subprocess.run(
        [sys.executable, "-m", "egoqa", "--help"], capture_output=True, text=True, timeout=60,
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert "enqueue" in p.stdout and "work" in p.stdout and "report" in p.stdout


def test_help_status_sql_and_runs_import_nothing_heavy(egoqa, synth, db_path, tmp_path):
    """Fast because nothing heavy is imported: checked by what is imported, not by a clock."""
    egoqa(*enqueue_args(synth, "demo", "--limit", "2"))
    db = ["--db", str(db_path)]
    commands = [
        ["--help"],
        [*db, "status"],
        [*db, "sql", "SELECT COUNT(*) FROM jobs"],
        [*db, "runs"],
    ]
    assert heavy_imports(commands, tmp_path) == {" ".join(c): [] for c in commands}


def test_enqueue_into_a_fresh_database_imports_no_orm_and_no_model(synth, tmp_path):
    """The schema is created by the migrations alone; checked by what is imported."""
    fresh = tmp_path / "fresh.db"
    commands = [["--db", str(fresh), *enqueue_args(synth, "demo")]]
    assert heavy_imports(commands, tmp_path, ENQUEUE_SPARES) == {" ".join(commands[0]): []}
    assert fresh.exists()


def test_dash_h_and_version(tmp_path):
    egoqa = InProcess(None, tmp_path)
    assert "Usage" in egoqa("-h").stdout
    assert egoqa("--version").stdout.startswith("egoqa ")


def _commands(group: typer.Typer, prefix: str = ""):
    for c in group.registered_commands:
        yield prefix + (c.name or c.callback.__name__), c
    for g in group.registered_groups:
        yield from _commands(g.typer_instance, prefix + g.name + " ")


def test_every_command_has_help_text():
    missing = [
        name for name, c in _commands(app) if not (c.help or (c.callback and c.callback.__doc__))
    ]
    assert missing == []


def test_enqueue_prints_the_plan_and_status_shows_it(egoqa, synth):
    p = egoqa(*enqueue_args(synth, "demo", "--run", "first"))
    assert "run first: 13 queries on 4 clips" in p.stdout
    assert "no_query_text 1" in p.stdout and "missing_video 2" in p.stdout
    assert "34 planned, 34 new, 0 reused" in p.stdout
    plan = egoqa.json(*enqueue_args(synth, "demo", "--run", "first"))
    assert (plan["jobs_new"], plan["jobs_reused"], plan["queries"]) == (0, 34, 13)
    st = egoqa.json("status")
    by_turn = {(r["turn"], r["state"]): r["n"] for r in st["progress"]}
    assert by_turn == {
        ("scenario", "ready"): 4,
        ("transitions", "blocked"): 4,
        ("segments", "blocked"): 13,
        ("answer", "blocked"): 13,
    }
    assert st["jobs"] == {"ready": 4, "blocked": 30}
    assert "scenario" in egoqa("status").stdout


def test_limit_takes_the_first_n_queries(egoqa, synth):
    p = egoqa.json(*enqueue_args(synth, "baseline", "--limit", "3", "--run", "b"))
    assert p["queries"] == 3 and p["jobs_total"] == 3


def test_sql_outputs_json_and_csv_and_refuses_writes(egoqa, synth):
    egoqa(*enqueue_args(synth, "demo"))
    rows = egoqa.json("sql", "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state ORDER BY state")
    assert rows == [{"state": "blocked", "n": 30}, {"state": "ready", "n": 4}]
    csv = egoqa("sql", "SELECT state FROM jobs WHERE state = 'ready' LIMIT 1", "--csv").stdout
    assert csv.splitlines() == ["state", "ready"]
    for stmt in (
        "DELETE FROM jobs",
        "UPDATE jobs SET state = 'done'",
        "DROP TABLE jobs",
        "INSERT INTO runs (name, config, config_hash, style, graded_turn, created_at) VALUES ('x','','','','',0)",
    ):
        p = egoqa("sql", stmt, check=False)
        assert p.returncode == 1 and "read-only" in p.stderr and "Traceback" not in p.stderr, stmt
    assert egoqa.json("sql", "SELECT COUNT(*) AS n FROM jobs") == [{"n": 34}]


def test_runs_lists_each_run(egoqa, synth):
    egoqa(*enqueue_args(synth, "demo", "--run", "one"))
    egoqa(*enqueue_args(synth, "baseline", "--run", "two"))
    runs = egoqa.json("runs")
    assert [(r["run"], r["style"], r["queries"]) for r in runs] == [
        ("one", "stage_analysis", 13),
        ("two", "baseline", 13),
    ]


def test_status_on_a_missing_database_says_what_to_do(egoqa):
    p = egoqa("status", check=False)
    assert p.returncode == 1 and "egoqa enqueue" in p.stderr and "Traceback" not in p.stderr


def test_db_upgrade_and_current(egoqa):
    assert "schema at" in egoqa("db", "upgrade").stdout
    assert "schema 0" in egoqa("db", "current").stdout


def test_unknown_run_in_status_lists_runs(egoqa, synth):
    egoqa(*enqueue_args(synth, "demo", "--run", "here", "--limit", "1"))
    p = egoqa("status", "--run", "there", check=False)
    assert p.returncode == 1 and "no run named 'there'" in p.stderr and "here" in p.stderr


@pytest.mark.parametrize("args", [["work", "--batch-size", "lots"], ["enqueue"]])
def test_usage_errors_exit_2_without_traceback(egoqa, args):
    p = egoqa(*args, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
