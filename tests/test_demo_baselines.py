"""`egoqa demo` compares its run with the model-free baselines; `status` reads a database that
holds prior runs (their jobs have no engine)."""

from __future__ import annotations

from conftest import enqueue_args
from inproc import InProcess


def test_status_shows_a_database_holding_a_prior_run(synth, db_path, tmp_path):
    run = InProcess(db_path, tmp_path)
    run(*enqueue_args(synth, "prior:whole_clip"))
    out = run("status", "--run", "prior:whole_clip", check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "prior:whole_clip" in out.stdout
