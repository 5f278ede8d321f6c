"""Published NLQ results shipped with egoqa, shown beside a run of the same split."""

from __future__ import annotations

import json
import re
import shutil

from inproc import InProcess

from egoqa.report import published

from conftest import enqueue_args


def test_every_shipped_result_names_its_split_metric_and_source_at_a_commit():
    results = published.load()
    assert len(results) >= 4
    for p in results:
        assert p.split in ("train", "val", "test") and p.metric and p.kind
        assert re.search(r"commit [0-9a-f]{40}\b", p.source), p.source
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.checked)
        assert p.values and all(0 <= v <= 100 for v in p.values.values())
    by_method = {p.method: p for p in results}
    # the numbers as their sources print them (GroundNLQ README, VideoMind docs/BENCHMARK.md)
    ground = by_method["GroundNLQ (fine-tuned)"]
    assert (ground.split, ground.version) == ("val", "v2")
    assert ground.values == {"r1_03": 26.98, "r1_05": 18.83, "r5_03": 53.56, "r5_05": 40.0}
    mind = by_method["VideoMind-7B (zero-shot)"]
    assert mind.values == {"r1_03": 7.2, "r1_05": 3.7, "miou": 5.4} and mind.version is None


def test_a_run_split_is_read_from_its_annotation_file_name():
    assert published.split_of("/data/ego4d/v2/annotations/nlq_val.json") == ("val", "v2")
    assert published.split_of("nlq_train.json") == ("train", None)
    assert published.split_of("v1/nlq_test_unannotated.json") == ("test", "v1")
    assert published.split_of("my_queries.json") == (None, None)
    assert published.split_of(None) == (None, None)
    assert [p.method for p in published.matching("val", "v1")] == [
        p.method
        for p in published.load()
        if p.version is None  # v2 results are left out
    ]
    assert published.matching("train", None) == []


def test_report_and_explorer_show_published_results_beside_a_val_run(
    synth, migrated_db_path, tmp_path
):
    run = InProcess(migrated_db_path, tmp_path)
    run(*enqueue_args(synth, "prior:whole_clip"))
    built = run.json("report", "--run", "prior:whole_clip")
    assert built["published"]["label"] == "as published: protocols differ"
    assert built["published"]["split"] == "val"
    assert {p["method"] for p in built["published"]["results"]} >= {"GroundNLQ (fine-tuned)"}
    text = run("report", "--run", "prior:whole_clip").stdout
    assert "as published: protocols differ" in text and "26.98" in text
    site = tmp_path / "site"
    run("report", "--run", "prior:whole_clip", "--html", site, "--thumbs", "0")
    index = (site / "data" / "index.js").read_text()
    data = json.loads(index[index.index("(") + 1 : index.rindex(")")])
    [shown] = [t for t in data["tables"] if t[0].startswith("as published: protocols differ")]
    assert any(row[0] == "GroundNLQ (fine-tuned)" and row[1] == "26.98" for row in shown[2])


def test_a_run_of_a_file_that_names_no_split_shows_no_published_results(
    synth, migrated_db_path, tmp_path
):
    mine = tmp_path / "my_queries.json"
    shutil.copyfile(synth.annotations, mine)
    run = InProcess(migrated_db_path, tmp_path)
    args = enqueue_args(synth, "prior:whole_clip")
    args[args.index(str(synth.annotations))] = str(mine)
    run(*args)
    built = run.json("report", "--run", "prior:whole_clip")
    assert built["published"] is None
    assert "as published" not in run("report", "--run", "prior:whole_clip").stdout
