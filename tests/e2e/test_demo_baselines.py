"""`egoqa demo` compares its run with the model-free baselines; `status` reads a database that
holds prior runs (their jobs have no engine)."""

from __future__ import annotations

import json
import shutil

import pytest
from inproc import InProcess

from conftest import enqueue_args


def test_status_shows_a_database_holding_a_prior_run(synth, db_path, tmp_path):
    run = InProcess(db_path, tmp_path)
    run(*enqueue_args(synth, "prior:whole_clip"))
    out = run("status", "--run", "prior:whole_clip", check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "prior:whole_clip" in out.stdout


@pytest.mark.slow
def test_demo_compares_its_run_with_the_baselines_with_intervals(synth, tiny_model, tmp_path):
    # The demo builds its tiny model and dataset where missing, as the session's: start it with
    # copies of those, so the session builds them once (the demo's own run is what is tested).
    shutil.copytree(tiny_model, tmp_path / "demo" / "tiny-qwen2.5-vl")
    shutil.copytree(synth.root, tmp_path / "demo" / "dataset")
    run = InProcess(tmp_path / "demo.db", tmp_path)
    out = run("demo", "--dir", tmp_path / "demo", "--workers", "1")
    assert "McNemar" in out.stdout and "demo − prior:whole_clip" in out.stdout
    assert "[95 % CI]" in out.stdout
    index = (tmp_path / "demo" / "explorer" / "data" / "index.js").read_text()
    data = json.loads(index[index.index("(") + 1 : index.rindex(")")])
    assert data["compare"] == ["prior:whole_clip", "prior:uniform_random", "proposals:synth"]
    titles = [t[0] for t in data["tables"]]
    assert any(t.startswith("paired: A − B") for t in titles)
    assert any(t.startswith("as published: protocols differ") for t in titles)
