"""The command line as a user meets it: help, version, enqueue's plan, status, runs, sql, retry, db."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from egoqa.cli.app import app

from conftest import enqueue_args

HEAVY = ("torch", "transformers", "decord", "qwen_vl_utils")


def light_check(args: list[str]) -> list[str]:
    """Run a command in-process in a fresh interpreter; return the heavy modules it imported."""
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom egoqa.cli.app import app\n"
        f"r = CliRunner().invoke(app, {args!r})\n"
        "assert r.exit_code == 0, r.output\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_help_imports_nothing_heavy(cli):
    """Fast because nothing heavy is imported: checked by what is imported, not by a clock."""
    p = cli("--help", db=False)
    assert "enqueue" in p.stdout and "work" in p.stdout and "report" in p.stdout
    assert light_check(["--help"]) == []


def test_dash_h_and_version(cli):
    assert "Usage" in cli("-h", db=False).stdout
    assert cli("--version", db=False).stdout.startswith("egoqa ")


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


def test_enqueue_prints_the_plan_and_status_shows_it(cli, synth):
    p = cli(*enqueue_args(synth, "demo", "--run", "first"))
    assert "run first: 13 queries on 4 clips" in p.stdout
    assert "no_query_text 1" in p.stdout and "missing_video 2" in p.stdout
    assert "34 planned, 34 new, 0 reused" in p.stdout
    again = cli(*enqueue_args(synth, "demo", "--run", "first", "--json"))
    import json

    plan = json.loads(again.stdout)
    assert (plan["jobs_new"], plan["jobs_reused"], plan["queries"]) == (0, 34, 13)
    st = cli.json("status")
    by_turn = {(r["turn"], r["state"]): r["n"] for r in st["progress"]}
    assert by_turn == {
        ("scenario", "ready"): 4,
        ("transitions", "blocked"): 4,
        ("segments", "blocked"): 13,
        ("answer", "blocked"): 13,
    }
    assert st["jobs"] == {"ready": 4, "blocked": 30}
    assert "scenario" in cli("status").stdout


def test_status_sql_and_runs_stay_light(cli, synth, db_path):
    cli(*enqueue_args(synth, "demo", "--limit", "2"))
    for args in (["status"], ["sql", "SELECT COUNT(*) FROM jobs"], ["runs"]):
        assert light_check(["--db", str(db_path), *args]) == [], args


def test_limit_takes_the_first_n_queries(cli, synth):
    p = cli.json(*enqueue_args(synth, "baseline", "--limit", "3", "--run", "b"))
    assert p["queries"] == 3 and p["jobs_total"] == 3


def test_sql_outputs_json_and_csv_and_refuses_writes(cli, synth):
    cli(*enqueue_args(synth, "demo"))
    rows = cli.json("sql", "SELECT state, COUNT(*) AS n FROM jobs GROUP BY state ORDER BY state")
    assert rows == [{"state": "blocked", "n": 30}, {"state": "ready", "n": 4}]
    csv = cli("sql", "SELECT state FROM jobs WHERE state = 'ready' LIMIT 1", "--csv").stdout
    assert csv.splitlines() == ["state", "ready"]
    for stmt in (
        "DELETE FROM jobs",
        "UPDATE jobs SET state = 'done'",
        "DROP TABLE jobs",
        "INSERT INTO runs (name, config, config_hash, style, graded_turn, created_at) VALUES ('x','','','','',0)",
    ):
        p = cli("sql", stmt, check=False)
        assert p.returncode == 1 and "read-only" in p.stderr and "Traceback" not in p.stderr, stmt
    assert cli.json("sql", "SELECT COUNT(*) AS n FROM jobs") == [{"n": 34}]


def test_runs_lists_each_run(cli, synth):
    cli(*enqueue_args(synth, "demo", "--run", "one"))
    cli(*enqueue_args(synth, "baseline", "--run", "two"))
    runs = cli.json("runs")
    assert [(r["run"], r["style"], r["queries"]) for r in runs] == [
        ("one", "stage_analysis", 13),
        ("two", "baseline", 13),
    ]


def test_status_on_a_missing_database_says_what_to_do(cli):
    p = cli("status", check=False)
    assert p.returncode == 1 and "egoqa enqueue" in p.stderr and "Traceback" not in p.stderr


def test_db_upgrade_and_current(cli):
    assert "schema at" in cli("db", "upgrade").stdout
    assert "schema 0" in cli("db", "current").stdout


def test_unknown_run_in_status_lists_runs(cli, synth):
    cli(*enqueue_args(synth, "demo", "--run", "here", "--limit", "1"))
    p = cli("status", "--run", "there", check=False)
    assert p.returncode == 1 and "no run named 'there'" in p.stderr and "here" in p.stderr


@pytest.mark.parametrize("args", [["work", "--batch-size", "lots"], ["enqueue"]])
def test_usage_errors_exit_2_without_traceback(cli, args):
    p = cli(*args, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
