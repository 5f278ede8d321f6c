"""Friction a researcher meets at the newest features: `--set` reaching a turn's zoom, workers that
say which jobs wait for another engine and take an engine id's prefix or a model's local
directory, `sql` and `export` edges, clustering messages, a prior fitted on the file it is
scored on, and an oracle zoom over queries without ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.dev.synth import SynthPaths, write_synth_dataset

from conftest import copy_db
from helpers import error_line

SHOTS = Path(__file__).resolve().parents[2] / "egoqa" / "plan" / "styles" / "coarse_cot_shots.toml"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SynthPaths:
    """2 clips x 2 queries of 6 s, with the same clips as an unannotated test split."""
    root = tmp_path_factory.mktemp("friction17")
    return write_synth_dataset(
        root, clips=2, queries_per_clip=2, duration_sec=6.0, seed=21, test_split=True
    )


@pytest.fixture
def cli(tmp_path) -> InProcess:
    return InProcess(tmp_path / "egoqa.db", tmp_path)


def enqueue(cli, data, *extra, annotations=None, config="baseline", check=True):
    ann = annotations or data.annotations
    args = ["enqueue", "-a", ann, "--videos", data.videos, "--config", config, *extra]
    return cli(*args, check=check)


def prior(cli, data, *extra, **kw):
    return enqueue(cli, data, *extra, config="prior:whole_clip", **kw)


@pytest.fixture(scope="module")
def prior_db(data, tmp_path_factory) -> Path:
    """A database holding the run `prior:whole_clip` over `data` (finished at enqueue)."""
    root = tmp_path_factory.mktemp("prior")
    prior(InProcess(root / "egoqa.db", root), data)
    return root / "egoqa.db"


@pytest.fixture
def with_prior(prior_db, cli) -> InProcess:
    """The `cli` fixture on a private copy of the prior's database."""
    copy_db(prior_db, cli.db)
    return cli


# --- --set reaches a turn's zoom ---------------------------------------------------------------


def test_set_turns_zoom_makes_an_oracle_run_and_bare_zoom_says_where_it_belongs(cli, data):
    style = ("--set", f"style={json.dumps(str(SHOTS))}", "--set", "backend=fake")
    args = ("--config", "coarse_cot_shots", *style, "--run", "z")
    cli("enqueue", "-a", data.annotations, "--videos", data.videos, *args)
    oracle = cli("enqueue", "-a", data.annotations, "--videos", data.videos, *args[:-1], "o",
                 "--set", "turns.locate.zoom=oracle")  # fmt: skip
    assert oracle.returncode == 0
    styles = {r["name"]: json.loads(r["style"]) for r in cli.json("sql", "SELECT * FROM runs")}
    zooms = {n: [t["zoom"] for t in s["turns"] if t["repeat_until"]] for n, s in styles.items()}
    assert zooms == {"z": ["model"], "o": ["oracle"]}
    p = enqueue(cli, data, "--set", "zoom=oracle", check=False)
    error_line(p, "turns.<turn>.zoom")


def test_an_oracle_zoom_over_queries_without_ground_truth_is_refused_at_enqueue(cli, data):
    args = ["--config", "coarse_cot_shots", "--set", "backend=fake"]
    args += ["--set", f"style={json.dumps(str(SHOTS))}", "--set", "turns.locate.zoom=oracle"]
    p = cli("enqueue", "-a", data.test_annotations, "--videos", data.videos, *args, check=False)
    error_line(p, "zoom = 'oracle'", "4 of the 4 queries have none")


# --- workers and engines -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_engines_db(data, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """Runs `alpha` and `beta` of the fake backend under two local model folders beside the
    database; the database, and model -> engine."""
    root = tmp_path_factory.mktemp("engines")
    cli = InProcess(root / "egoqa.db", root)
    for name in ("alpha", "beta"):
        (root / name).mkdir()  # other content: a local model is keyed by what it holds
        (root / name / "config.json").write_text(f'{{"name": "{name}"}}')
        enqueue(cli, data, "--set", "backend=fake", "--set", f"model={name}", "--run", name)
    engines = cli.json("status")["engines"]
    return root / "egoqa.db", {Path(e["model"]).name: e["engine"] for e in engines}


@pytest.fixture
def two_engines(two_engines_db, tmp_path) -> tuple[InProcess, dict[str, str]]:
    """The command line on a private copy of the two engines' database, run from the folder
    that holds their models; model -> engine."""
    template, engines = two_engines_db
    copy_db(template, tmp_path / "egoqa.db")
    return InProcess(tmp_path / "egoqa.db", template.parent), engines


def test_work_until_done_says_which_jobs_wait_for_another_engine(two_engines):
    cli, engines = two_engines
    out = cli("work", "--until-done")
    served = {e["engine"] for e in cli.json("status")["engines"] if e["done"]}
    waiting = (set(engines.values()) - served).pop()
    assert f"note: jobs also pending: {waiting}" in out.stderr
    assert f"note: jobs still waiting for another engine: {waiting}" in out.stderr


def test_work_takes_a_local_model_folder_as_enqueued_and_an_engine_id_prefix(two_engines):
    cli, engines = two_engines
    cli("work", "--until-done", "--model", "alpha")  # stored as its absolute path
    cli("work", "--until-done", "--engine", engines["beta"][:6])
    assert cli.json("status")["jobs"] == {"done": 8}
    p = cli("work", "--model", "gamma", check=False)
    assert p.returncode == 0 and "nothing to do" in p.stderr  # nothing pending at all


def test_work_for_a_model_without_jobs_names_the_models_that_have_some(two_engines):
    cli, engines = two_engines
    p = cli("work", "--until-done", "--model", "gamma", check=False)
    error_line(p, "no pending jobs for model", "alpha (4)", "beta (4)")
    ambiguous = cli("work", "--engine", "", check=False)
    error_line(ambiguous, "begins 2 engine ids", *engines.values())


# --- sql, export -------------------------------------------------------------------------------


def test_sql_refuses_an_empty_statement_and_file_changes_as_read_only(with_prior):
    cli = with_prior
    error_line(cli("sql", "", check=False), "no statement given")
    for statement in ("PRAGMA journal_mode=DELETE", "VACUUM INTO 'copy.db'"):
        error_line(cli("sql", statement, check=False), "read-only", "nothing was changed")


def test_sql_json_writes_infinity_as_null(with_prior):
    out = with_prior("sql", "SELECT 1e999 AS up, -1e999 AS down, 1.5 AS x", "--json").stdout
    assert json.loads(out, parse_constant=pytest.fail) == [{"up": None, "down": None, "x": 1.5}]


def test_export_to_dash_writes_standard_output(with_prior, tmp_path):
    out = with_prior("export", "--run", "prior:whole_clip", "-o", "-")
    assert json.loads(out.stdout)["results"]
    assert not (tmp_path / "-").exists()


# --- clustering, priors ------------------------------------------------------------------------


def test_cluster_says_a_missing_embeddings_folder_is_missing(with_prior, tmp_path):
    p = with_prior(
        "cluster", "--run", "prior:whole_clip", "--embeddings", tmp_path / "nope", check=False
    )
    error_line(p, "is not a folder")


def test_cluster_k_over_identical_queries_says_they_are_identical(cli, data, tmp_path):
    doc = json.loads(data.annotations.read_text())
    for v in doc["videos"]:
        for c in v["clips"]:
            for a in c["annotations"]:
                for q in a["language_queries"]:
                    q["query"] = "where is the cup"
    same = tmp_path / "nlq_val.json"
    same.write_text(json.dumps(doc))
    prior(cli, data, annotations=same)
    p = cli("cluster", "--run", "prior:whole_clip", "--k", "2", check=False)
    error_line(p, "all the same text", "--k 1")


def test_a_prior_fitted_on_the_file_it_is_scored_on_is_warned_about(cli, data):
    p = enqueue(cli, data, "--fit", data.annotations, config="prior:length_prior")
    assert "warning: --fit" in p.stderr and "the file being evaluated" in p.stderr
