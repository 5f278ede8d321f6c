"""The original pipeline's experiments as egoqa runs them (fake backend, real CLI and database):
pre-filled verdict intervals, best-of-5, a reference turn on the ground-truth window, answer-only
runs, and the plans refused with one line."""

from __future__ import annotations

import json
import subprocess

import pytest
from inproc import InProcess

from egoqa.dev.synth import write_synth_dataset
from egoqa.report import original
from egoqa.report.summary import UngradedRun
from egoqa.store.db import open_db

from conftest import enqueue_args

FAKE = ("--set", "backend=fake", "--set", 'model="fake"')


@pytest.fixture
def cli(db_path, tmp_path) -> InProcess:
    """The real command in this process: no test here needs a process of its own."""
    return InProcess(db_path, tmp_path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """2 clips × 2 queries of 12 s."""
    return write_synth_dataset(
        tmp_path_factory.mktemp("exp"), clips=2, queries_per_clip=2, duration_sec=12.0, seed=5
    )


def _sql(db_path, sql: str) -> list[dict]:
    """Rows of a read-only query, in this process (the CLI's `sql` is tested elsewhere)."""
    with open_db(db_path, readonly=True).read() as cur:
        raw = cur.execute(sql)
        return [dict(zip([d[0] for d in raw.description], r, strict=True)) for r in raw]


def _jobs(db_path, turn: str) -> list[dict]:
    return _sql(db_path, f"SELECT job_id, prompt, responses FROM turns WHERE turn = '{turn}'")


def _one_error(p: subprocess.CompletedProcess, *needles: str) -> str:
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    (line,) = [x for x in p.stderr.splitlines() if x.startswith("error: ")]
    assert all(n in line for n in needles), line
    return line


def test_coarse_cot_verdicts_list_every_interval_of_the_frames_and_report_best_of_5(cli, data):
    cli(*enqueue_args(data, "coarse_cot", *FAKE))
    cli("work", "--until-done")
    # 8 frames from 0 s to 12 s, both ends: the intervals cover the whole clip
    lines = (
        "1. 0s - 1.7s:\n2. 1.7s - 3.4s:\n3. 3.4s - 5.1s:\n4. 5.1s - 6.9s:\n"
        "5. 6.9s - 8.6s:\n6. 8.6s - 10.3s:\n7. 10.3s - 12s:\n"
    )
    verdicts = _jobs(cli.db, "verdicts")
    assert len(verdicts) == 4
    for job in verdicts:
        assert lines in job["prompt"]
        assert len(json.loads(job["responses"])) == 5
    assert all("\n0s - 1.7s\n" in j["prompt"] for j in _jobs(cli.db, "transitions"))
    summary = cli.json("report", "--run", "coarse_cot")["summary"]
    assert summary["samples"] == 5 and summary["best_of_n"] is not None


REFERENCE_STYLE = """
name = "with_reference"
[[turns]]
name = "answer"
media = "frames"
reads_query = true
graded = true
template = "Frames at {timestamps}. {query}"
[[turns]]
name = "reference"
media = "ground_truth"
reads_query = true
sampler = {kind = "dense", fps = 2.0}
template = "Frames at {timestamps}. {query}"
"""


def test_a_reference_turn_sees_only_frames_of_the_ground_truth_window(cli, data, tmp_path):
    style = tmp_path / "ref.toml"
    style.write_text(REFERENCE_STYLE)
    cli(*enqueue_args(data, "demo", *FAKE, "--set", f"style={json.dumps(str(style))}"))
    cli("work", "--until-done")
    rows = _sql(
        cli.db,
        """SELECT t.prompt, r.gt_start, r.gt_end FROM turns t JOIN results r
             ON r.clip_uid = t.clip_uid AND r.query = t.query WHERE t.turn = 'reference'""",
    )
    assert len(rows) == 4
    for row in rows:
        shown = row["prompt"].split("Frames at ")[1].split(". ")[0].split(", ")
        times = [float(t.rstrip("s")) for t in shown]
        # dense 2 fps inside the window: every frame lies in it (to the prompt's 0.1 s rounding)
        assert all(row["gt_start"] - 0.05 <= t <= row["gt_end"] + 0.05 for t in times), row


def test_an_answer_only_run_reports_answers_and_no_scores(cli, data):
    cli(*enqueue_args(data, "demo", *FAKE, "--set", "style=answer_only", "--run", "plain"))
    cli("work", "--until-done")
    report = cli.json("report", "--run", "plain")
    assert report["summary"]["graded"] is False and report["summary"]["done"] == 4
    assert [a["answer"] for a in report["answers"]] and "coverage" not in report["summary"]
    assert all(a["answer"] for a in report["answers"])
    table = cli("report", "--run", "plain", "--rescore").stdout
    assert "ungraded" in table and "coverage" not in table
    # rescoring leaves an answer-only run unscored
    rows = _sql(cli.db, "SELECT correct, outcome FROM results WHERE run = 'plain'")
    assert rows == [{"correct": None, "outcome": None}] * 4
    _one_error(cli("export", "--run", "plain", check=False), "ungraded", "answers")
    with pytest.raises(UngradedRun, match="ungraded"):
        original.build(open_db(cli.db, readonly=True), "plain")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (
            ("coarse_cot", "--set", "turns.verdicts.per_segment=true"),
            ("[turns.verdicts]", "per_segment needs media = 'segments'"),
        ),
        (("coarse_cot", "--set", "sampler.kind=shots"), ("turn 'answer'", "uniform or dense")),
        (("coarse_cot", "--set", "turns.anwser.model=x"), ("anwser", "its turns: scenario")),
    ],
)
def test_plans_that_cannot_run_are_refused_with_one_line(cli, data, args, needles):
    p = cli(*enqueue_args(data, args[0], *FAKE, *args[1:]), check=False)
    _one_error(p, *needles)
    assert _sql(cli.db, "SELECT COUNT(*) AS n FROM jobs") == [{"n": 0}]
