"""What a newcomer meets first: skipped records named so they can be found, a file that gives no
query refused, bad times said as they are, a quiet `work` at default verbosity (and `-v` after
the subcommand), help without `<bool>`, suggestions for a misspelled key, and a by-template
table that fits 80 columns."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
import typer.main
from inproc import InProcess

from egoqa.cli.app import app
from egoqa.dev.synth import SynthPaths, write_synth_dataset

from conftest import copy_db
from helpers import error_line

FAKE = ("--set", "backend=fake")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SynthPaths:
    """2 clips × 1 query of 4 s."""
    root = tmp_path_factory.mktemp("friction")
    return write_synth_dataset(root, clips=2, queries_per_clip=1, duration_sec=4.0, seed=11)


def enqueue_args(data: SynthPaths, *extra, annotations: Path | None = None) -> list:
    ann = annotations or data.annotations
    return ["enqueue", "-a", ann, "--videos", data.videos, "--config", "baseline", *FAKE, *extra]


def first_query_changed(data: SynthPaths, tmp_path: Path, change) -> tuple[Path, tuple]:
    """The annotations with the first clip's first query changed; its (clip, annotation, idx)."""
    doc = json.loads(data.annotations.read_text())
    clip = doc["videos"][0]["clips"][0]
    change(clip["annotations"][0]["language_queries"][0])
    path = tmp_path / "nlq_val.json"
    path.write_text(json.dumps(doc))
    return path, (clip["clip_uid"], clip["annotations"][0]["annotation_uid"], 0)


# --- skipped records and empty files -----------------------------------------------------------


@pytest.mark.parametrize(
    "change, reason, detail",
    [
        (lambda q: q.pop("query"), "no_query_text", "language query has no query text"),
        (lambda q: q.pop("clip_end_sec"), "missing_fields", "language query has no clip_end_sec"),
        (
            lambda q: q.update(clip_start_sec=None),
            "bad_time",
            "language query's clip_start_sec is null",
        ),
        (
            lambda q: q.update(clip_start_sec=float("nan")),
            "bad_time",
            "language query's clip_start_sec is NaN",
        ),
        (
            lambda q: q.update(clip_end_sec=float("inf")),
            "bad_time",
            "language query's clip_end_sec is infinite",
        ),
        (
            lambda q: q.update(clip_start_sec="12s"),
            "bad_time",
            "language query's clip_start_sec is '12s', not a number",
        ),
        (
            lambda q: q.update(clip_start_sec=1.0, clip_end_sec=1e300),
            "window_outside_clip",
            "answer window 1.00 s .. 1e+300 s is outside the 4.00 s clip",
        ),
    ],
    ids=["no-text", "no-end", "null", "nan", "infinite", "text", "huge"],
)
def test_a_skipped_record_is_named_and_its_bad_time_said_as_it_is(
    data, tmp_path, change, reason, detail
):
    path, (clip, annotation, idx) = first_query_changed(data, tmp_path, change)
    p = InProcess(tmp_path / "egoqa.db", tmp_path)(*enqueue_args(data, annotations=path))
    assert f"(skipped: {reason} 1)" in p.stdout
    (line,) = [x for x in p.stderr.splitlines() if "skipped " + reason in x]
    where = f"(clip {clip}, annotation {annotation}, query {idx})"
    assert line == f"  skipped {reason} {where}: {detail}"
    assert len(line) < 200


def test_a_videos_folder_that_gives_no_query_is_an_error_not_an_empty_run(data, tmp_path):
    empty = tmp_path / "videos"
    empty.mkdir()
    args = ["enqueue", "-a", data.annotations, "--videos", empty, "--config", "baseline", *FAKE]
    p = InProcess(tmp_path / "egoqa.db", tmp_path)(*args, check=False)
    line = error_line(p, "gave no usable query (skipped: missing_video 2)", only=False)
    assert f"check that {empty} holds the <clip_uid>.mp4" in line
    assert not (tmp_path / "egoqa.db").exists()


def test_an_annotation_file_without_queries_is_an_error(data, tmp_path):
    path = tmp_path / "nlq_val.json"
    path.write_text(json.dumps({"version": "v2", "videos": []}))
    p = InProcess(tmp_path / "egoqa.db", tmp_path)(
        *enqueue_args(data, annotations=path), check=False
    )
    error_line(p, f"annotation file {path} holds no language queries")
    assert not (tmp_path / "egoqa.db").exists()


# --- work at default verbosity, and -v after the subcommand -----------------------------------


@pytest.fixture(scope="module")
def worked(data, tmp_path_factory) -> tuple[Path, str]:
    """A run `baseline` done by `egoqa work` at default verbosity: the database, and the
    worker's stderr."""
    root = tmp_path_factory.mktemp("worked")
    egoqa = InProcess(root / "egoqa.db", root)
    egoqa(*enqueue_args(data))
    return root / "egoqa.db", egoqa("work", "--until-done").stderr


def test_work_is_quiet_by_default_and_verbose_with_v_after_the_subcommand(
    data, worked, db_path, tmp_path
):
    quiet = worked[1]
    assert " INFO " not in quiet and "job 1 done" not in quiet
    assert re.search(r"^2/2 jobs \(0 failed\)", quiet, re.M), quiet  # the progress display
    assert "worker: 2 done, 0 failed" in quiet  # and the summary
    copy_db(worked[0], db_path)
    egoqa = InProcess(db_path, tmp_path)
    egoqa(*enqueue_args(data, "--run", "b", "--set", "generation.seed=1"))
    loud = egoqa("work", "-v", "--until-done").stderr
    assert re.search(r" INFO egoqa\.work\.worker: job \d+ done", loud), loud


# --- help and suggestions ---------------------------------------------------------------------


def _paths(command, prefix=()):
    """(path, is a group) of the app and every group and command under it."""
    subs = getattr(command, "commands", None)
    yield prefix, subs is not None
    for name, sub in (subs or {}).items():
        yield from _paths(sub, (*prefix, name))


def test_help_shows_no_value_type_for_plain_flags(tmp_path):
    egoqa = InProcess(None, tmp_path)
    paths = dict(_paths(typer.main.get_command(app)))
    assert ("work",) in paths and ("dev", "synth-dataset") in paths
    for path, group in paths.items():
        text = egoqa(*path, "--help").stdout
        assert "<bool>" not in text and "--help" in text, (path, text)
        assert group or re.search(r"--verbose +-v ", text), (path, text)  # -v after commands too


def test_a_misspelled_key_gets_the_keys_near_it_not_all_of_them(data, tmp_path):
    egoqa = InProcess(tmp_path / "egoqa.db", tmp_path)
    line = error_line(egoqa(*enqueue_args(data, "--set", "sampler.frame=3"), check=False))
    assert line == "error: --set: unknown key 'sampler.frame'; did you mean sampler.frames?"
    line = error_line(egoqa(*enqueue_args(data, "--set", "temperature=0.2"), check=False))
    assert line.endswith("did you mean generation.temperature?")
    toml = tmp_path / "mine.toml"
    toml.write_text('model = "m"\nbackend = "fake"\n[batch]\nsise = 3\n')
    args = ["enqueue", "-a", data.annotations, "--videos", data.videos, "--config", toml]
    line = error_line(egoqa(*args, check=False))
    assert line == f"error: {toml}: unknown key 'batch.sise' (did you mean batch.size?)"


# --- the by-template table --------------------------------------------------------------------

LONG = "Objects: Where is object X before / after event Y, and who was holding it at the time?"


def test_the_by_template_table_fits_80_columns(worked, db_path, tmp_path, monkeypatch):
    db = db_path
    copy_db(worked[0], db)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE queries SET template = ? WHERE id = 1", (LONG,))
    monkeypatch.setenv("COLUMNS", "80")
    out = InProcess(db, tmp_path)("report", "--run", "baseline").stdout
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80, out
    start = next(i for i, x in enumerate(lines) if "by template" in x)
    (row,) = [x for x in lines[start:] if x.startswith("Objects: Where is object X")]
    # n failed pending, then cov len R1@.3 R1@.5 mIoU
    assert re.fullmatch(r"Objects: Where is object X[^…]*…\s+1\s+0\s+0(\s+\d+\.\d){5}", row), row
    # the nine-column outcomes table fits too, every header whole
    (header,) = [x for x in lines if x.startswith("type ")]
    assert "…" not in header and header.split()[:3] == ["type", "n", "covered"]
    assert header.split()[-2:] == ["failed", "pending"]
    monkeypatch.setenv("COLUMNS", "200")  # room enough: nothing is cut
    assert LONG in InProcess(db, tmp_path)("report", "--run", "baseline").stdout
