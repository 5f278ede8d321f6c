"""Recursive zoom runs: each level a job created in the transaction that completes the one
above, the turns after the zoom planned on its final window, crash-safe and content-addressed.

The fake backend answers a verdict prompt with verdict blocks (deterministic per prompt), so the
model's own choice drives the zoom here; the tiny Qwen2.5-VL run at the end shows the real path
ending a zoom with a recorded reason.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from inproc import InProcess

from egoqa.dev.synth import write_synth_dataset
from egoqa.plan.zoom import decide
from egoqa.store.db import open_db

from conftest import Cli, copy_db
from helpers import rows_as_dicts, wait_until

ORACLE = "[oracle zoom: the ground truth chose each window]"
STYLE = Path(__file__).resolve().parents[2] / "egoqa" / "plan" / "styles" / "coarse_cot_shots.toml"


@pytest.fixture(scope="module")
def cut_data(tmp_path_factory):
    """2 clips x 2 queries of 90 s, each with 3 hard cuts at known times."""
    root = tmp_path_factory.mktemp("zoomdata")
    return write_synth_dataset(
        root, clips=2, queries_per_clip=2, duration_sec=90.0, cuts_per_clip=3, seed=4
    )


@pytest.fixture(scope="module")
def zoomed(cut_data, tmp_path_factory) -> tuple[dict, Path]:
    """Run `z` on `cut_data`, enqueued and worked to the end on the fake backend: (what enqueue
    planned, its database). Tests only read that database, or a copy of it."""
    tmp = tmp_path_factory.mktemp("zoomed")
    cli = InProcess(tmp / "egoqa.db", tmp)
    planned = enqueue(cli, cut_data)
    cli("work", "--until-done")
    return planned, tmp / "egoqa.db"


def enqueue(cli: InProcess, data, *extra: str, style: Path = STYLE, run: str = "z") -> dict:
    args = ["enqueue", "-a", data.annotations, "--videos", data.videos, "--json"]
    args += ["--config", "coarse_cot_shots", "--set", "backend=fake", "--run", run]
    args += ["--set", f"style={json.dumps(str(style))}", *extra]
    return json.loads(cli(*args).stdout)


def jobs(db_path: Path) -> list[dict]:
    with open_db(db_path).read() as cur:
        out = rows_as_dicts(
            cur,
            "SELECT id, key, turn_name, state, spec, note, stop_reason, prompt FROM jobs ORDER BY id",
        )
    for j in out:
        j["spec"], j["note"] = json.loads(j["spec"]), json.loads(j["note"] or "null")
    return out


def chains(db_path: Path, run: str = "z") -> dict[int, dict]:
    """Per query: its graded job id and its item's jobs by turn."""
    with open_db(db_path).read() as cur:
        items = cur.all(
            """SELECT ri.query_id, ri.graded_job_id, ij.turn_name, ij.job_id FROM run_items ri
                 JOIN runs r ON r.id = ri.run_id JOIN item_jobs ij ON ij.item_id = ri.id
                WHERE r.name = :r""",
            {"r": run},
        )
    out: dict[int, dict] = {}
    for qid, graded, turn, job in items:
        out.setdefault(qid, {"graded": graded})[turn] = job
    return out


def _levels_of(by_id: dict, last: dict) -> list[dict]:
    """A query's zoom levels, from the first to `last`, following each level's parent."""
    by_key = {j["key"]: j for j in by_id.values()}
    levels = [last]
    while "from" in levels[-1]["spec"]["zoom"]:
        levels.append(by_key[levels[-1]["spec"]["zoom"]["from"]])
    return levels[::-1]


def test_a_zoom_narrows_level_by_level_then_the_answer_sees_the_final_window(zoomed):
    planned, db_path = zoomed
    assert planned["per_turn"] == {"locate": 4, "reference": 4}  # answers wait for the zooms
    all_jobs = jobs(db_path)
    by_id = {j["id"]: j for j in all_jobs}
    assert {j["state"] for j in all_jobs} == {"done"}
    deeper = 0
    for chain in chains(db_path).values():
        last = by_id[chain["locate"]]
        assert chain["graded"] == last["id"]  # the run reports the deepest level
        levels = _levels_of(by_id, last)
        assert [lv["note"]["depth"] for lv in levels] == list(range(len(levels)))
        assert levels[0]["spec"]["media"]["window"] == [0.0, 90.0]
        for above, below in zip(levels, levels[1:], strict=False):
            assert above["note"]["final"] is False
            assert below["spec"]["media"]["window"] == above["note"]["chosen"]
            a, b = below["spec"]["media"]["window"]
            assert 0 <= a < b <= 90 and b - a < _length(above["spec"]["media"]["window"])
        final = last["note"]
        assert final["final"] and (
            final["reason"] is not None or _length(final["final_window"]) <= 20
        )
        answer = by_id[chain["answer"]]
        assert answer["spec"]["media"]["window"] == final["final_window"]
        assert answer["spec"]["media"]["window_of"] == last["key"]
        lo, hi = final["final_window"]
        listed = answer["prompt"].split("taken at ")[1].split(" in an")[0]
        shown = [float(t.rstrip("s")) for t in listed.split(", ")]
        assert shown and all(lo - 1e-6 <= t <= hi + 1e-6 for t in shown)
        deeper += len(levels) > 1
    assert deeper > 0, "no zoom went past its first level"


def _length(window) -> float:
    return window[1] - window[0]


@pytest.mark.slow
def test_re_enqueueing_a_zoomed_run_changes_nothing_and_a_new_answer_reuses_the_levels(
    tmp_path, cut_data, zoomed
):
    copy_db(zoomed[1], tmp_path / "egoqa.db")  # run z, zoomed to the end
    cli = InProcess(tmp_path / "egoqa.db", tmp_path)
    before = {j["id"] for j in jobs(tmp_path / "egoqa.db")}
    again = enqueue(cli, cut_data)
    assert (again["jobs_new"], again["repointed"]) == (0, 0)
    assert {j["id"] for j in jobs(tmp_path / "egoqa.db")} == before
    # another run whose answer turn asks differently: the zoom levels are shared, and each of
    # its answers is planned at once on the final window the zoom already found
    other = tmp_path / "other.toml"
    other.write_text(STYLE.read_text().replace("Answer briefly.", "Answer in one word.", 1))
    enqueue(cli, cut_data, style=other, run="other")
    new = [j for j in jobs(tmp_path / "egoqa.db") if j["id"] not in before]
    assert {j["turn_name"] for j in new} == {"answer"} and len(new) == 4
    assert all(j["state"] == "ready" for j in new)
    z, o = chains(tmp_path / "egoqa.db", "z"), chains(tmp_path / "egoqa.db", "other")
    assert {q: c["locate"] for q, c in z.items()} == {q: c["locate"] for q, c in o.items()}


@pytest.mark.slow
def test_a_worker_killed_mid_zoom_loses_no_level_and_repeats_none(tmp_path, cut_data, zoomed):
    reference = {j["key"]: j["note"] for j in jobs(zoomed[1])}  # the same run, uninterrupted

    cli = InProcess(tmp_path / "egoqa.db", tmp_path)
    enqueue(cli, cut_data)
    victims = Cli(tmp_path / "egoqa.db", tmp_path)  # only the workers killed are processes
    db = open_db(tmp_path / "egoqa.db")

    def level_held() -> int:
        with db.read() as cur:
            return cur.one(
                "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND turn_name = 'locate'"
            )

    for _ in range(3):  # kill while a level is held, three times
        proc = victims.popen("work", "--batch-size", "1", env={"EGOQA_FAKE_DELAY_S": "0.5"})
        wait_until(level_held, 120, "a zoom level to be held")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    cli("work", "--until-done")  # the dead worker's jobs are released at once
    got = {j["key"]: j["note"] for j in jobs(tmp_path / "egoqa.db")}
    assert got == reference  # the same levels, the same choices, the same answers' jobs
    with db.read() as cur:
        per_job = cur.all("SELECT job_id, COUNT(*) FROM job_results GROUP BY job_id")
        assert cur.one("SELECT COUNT(*) FROM jobs WHERE state <> 'done'") == 0
    assert {n for _, n in per_job} == {1}, "a level was computed twice"


@pytest.mark.slow
def test_an_oracle_zoom_follows_the_ground_truth_is_labelled_and_not_exported_by_default(
    tmp_path, cut_data
):
    oracle = tmp_path / "oracle.toml"
    oracle.write_text(STYLE.read_text().replace('zoom = "model"', 'zoom = "oracle"'))
    cli = InProcess(tmp_path / "egoqa.db", tmp_path)
    enqueue(cli, cut_data, style=oracle)
    cli("work", "--until-done")
    gt = {
        r["graded_job_id"]: (r["gt_start"], r["gt_end"])
        for r in cli.json("sql", "SELECT graded_job_id, gt_start, gt_end FROM results")
    }
    by_id = {j["id"]: j for j in jobs(tmp_path / "egoqa.db")}
    for job_id, (gs, ge) in gt.items():
        for level in _levels_of(by_id, by_id[job_id]):
            lo, hi = level["note"]["chosen"] or level["note"]["window"]
            assert lo <= gs and ge <= hi  # every chosen window holds the ground truth
    from egoqa.report import summary as rp
    from egoqa.report.tables import tables

    titles = [t.title for t in tables(rp.build(open_db(tmp_path / "egoqa.db"), "z"))]
    assert len(titles) >= 3 and all(t.endswith(ORACLE) for t in titles)
    shown = cli("report", "--run", "z", env={"COLUMNS": "400"}).stdout
    assert shown.count("[oracle zoom:") == len(titles)  # long titles wrap after it
    assert cli.json("report", "--run", "z")["summary"]["oracle"] is True
    refused = cli("export", "--run", "z", check=False)
    assert refused.returncode == 1 and "--allow-oracle" in refused.stderr
    assert "Traceback" not in refused.stderr
    exported = json.loads(cli("export", "--run", "z", "--allow-oracle").stdout)
    assert len(exported["results"]) == 4


def test_a_zoom_stopped_short_records_why_and_status_and_failures_show_it(tmp_path, cut_data):
    shallow = tmp_path / "shallow.toml"
    text = STYLE.read_text().replace(
        "window_sec = 20, max_depth = 6", "window_sec = 2, max_depth = 1"
    )
    shallow.write_text(text)
    cli = InProcess(tmp_path / "egoqa.db", tmp_path)
    enqueue(cli, cut_data, style=shallow)
    cli("work", "--until-done")
    levels = [j for j in jobs(tmp_path / "egoqa.db") if j["turn_name"] == "locate"]
    assert len(levels) == 4 and {j["stop_reason"] for j in levels} == {"max_depth"}
    assert cli.json("status")["zoom_stops"] == {"max_depth": 4}
    kinds = cli.json("sql", "SELECT kind, message FROM failures")
    assert [k["kind"] for k in kinds] == ["zoom:max_depth"] * 4
    assert all(json.loads(k["message"])["depth"] == 0 for k in kinds)
    answers = [j for j in jobs(tmp_path / "egoqa.db") if j["turn_name"] == "answer"]
    assert len(answers) == 4 and {j["state"] for j in answers} == {"done"}


# --- the decision, case by case --------------------------------------------------------------

SHOTS = [(0.0, 30.0), (30.0, 60.0), (60.0, 90.0)]


def _spec(depth: int = 0, window=(0.0, 90.0), rule: str = "model", gt=None) -> dict:
    zoom = {"window_sec": 20.0, "max_depth": 3, "rule": rule, "depth": depth}
    if gt is not None:
        zoom["gt"] = list(gt)
    return {"zoom": zoom, "media": {"window": list(window)}}


def _verdicts(relevant: int, confidence: int = 7) -> str:
    return "\n".join(
        f"{i + 1}. {a:g}s - {b:g}s:\nConfidence Score: {confidence if i == relevant else 2}\n"
        f"Verdict: {'Relevant' if i == relevant else 'Irrelevant'}"
        for i, (a, b) in enumerate(SHOTS)
    )


@pytest.mark.parametrize(
    ("spec", "response", "expected"),
    [
        (_spec(), _verdicts(1), {"final": False, "chosen": [30.0, 60.0]}),
        (_spec(depth=2), _verdicts(1), {"final": True, "reason": "max_depth"}),
        (_spec(), "no blocks at all", {"final": True, "reason": "no_verdict"}),
        (_spec(window=(30.0, 60.0)), _verdicts(1), {"final": True, "reason": "no_narrower_window"}),
        (_spec(rule="oracle", gt=(35, 38)), "", {"final": False, "chosen": [30.0, 60.0]}),
        (_spec(rule="oracle", gt=(95, 99)), "", {"reason": "ground_truth_outside"}),
    ],
)
def test_a_level_decides_deeper_or_done_and_says_why(spec, response, expected):
    note = decide(spec, response, SHOTS)
    assert {k: note.get(k) for k in expected} == expected
    if note["final"]:
        assert note["final_window"] in (note["chosen"], spec["media"]["window"])


def test_a_chosen_window_shorter_than_a_frame_ends_the_zoom_on_the_window_above():
    shots = [(10.0, 10.4), (10.4, 30.0)]
    response = "1. 10s - 10.4s:\nConfidence Score: 9\nVerdict: Relevant"
    note = decide(_spec(window=(10.0, 30.0)), response, shots)
    assert (note["reason"], note["final_window"]) == ("window_too_short", [10.0, 30.0])


@pytest.mark.model
@pytest.mark.slow
def test_the_recursive_style_runs_on_the_tiny_model_and_ends_each_zoom_with_a_reason(
    tmp_path, cut_data, tiny_model
):
    """`egoqa enqueue --config coarse_cot_shots` and `egoqa work` on the real path: random
    weights write no verdicts, so every zoom ends at its first level saying so. (The two queries
    of the first clip: each answer shows its whole 90 s clip at 1 fps, the costly part on CPU.)"""
    cli = InProcess(tmp_path / "egoqa.db", tmp_path)
    model = (
        "--set",
        f"model={json.dumps(str(tiny_model))}",
        "--set",
        "generation.max_new_tokens=16",
    )
    cli("enqueue", "-a", cut_data.annotations, "--videos", cut_data.videos,
        "--config", "coarse_cot_shots", "--limit", "2", *model)  # fmt: skip
    cli("work", "--until-done")
    all_jobs = jobs(tmp_path / "egoqa.db")
    locate = [j for j in all_jobs if j["turn_name"] == "locate"]
    assert len(locate) == 2 and {j["state"] for j in locate} == {"done"}, locate
    assert all(j["note"] is not None for j in locate)
    assert {j["stop_reason"] for j in locate} <= {"no_verdict", "nothing_relevant"}
    answers = [j for j in all_jobs if j["turn_name"] == "answer"]
    assert len(answers) == 2, "an answer turn was not planned after each zoom"
