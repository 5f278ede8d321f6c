"""The newest features' edges: non-finite numbers refused in styles, configs and --set; bad
seeds, out-of-range batch sizes, unwritable explorer folders and broken clip times as one
`error:` line (or a named skip), never a traceback."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
from inproc import InProcess
from test_bad_input import error_line

from egoqa.dev.synth import SynthPaths, write_synth_dataset

FAKE = ("--set", "backend=fake")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SynthPaths:
    """2 clips x 2 queries of 6 s."""
    root = tmp_path_factory.mktemp("edges")
    return write_synth_dataset(root, clips=2, queries_per_clip=2, duration_sec=6.0, seed=3)


@pytest.fixture
def cli(tmp_path) -> InProcess:
    return InProcess(tmp_path / "egoqa.db", tmp_path)


def enqueue(cli: InProcess, data: SynthPaths, *extra, annotations: Path | None = None):
    ann = annotations or data.annotations
    args = ["enqueue", "-a", ann, "--videos", data.videos, "--config", "baseline", *FAKE]
    return cli(*args, *extra, check=False)


def shots_style(tmp_path: Path, window: str) -> Path:
    text = (resources.files("egoqa.plan") / "styles" / "coarse_cot_shots.toml").read_text()
    path = tmp_path / f"zoom_{window.strip('+-')}.toml"
    path.write_text(text.replace("window_sec = 20", f"window_sec = {window}"))
    return path


# --- 6: nan and inf are no numbers of a run ----------------------------------------------------


@pytest.mark.parametrize("window", ["nan", "inf", "+inf"])
def test_a_style_with_a_non_finite_zoom_window_is_refused(cli, data, tmp_path, window):
    style = shots_style(tmp_path, window)
    p = enqueue(cli, data, "--set", f"style={style}")
    error_line(p, "repeat_until.window_sec", "not a finite number")
    assert not (tmp_path / "egoqa.db").exists() or "run" not in cli("runs").stdout.lower()


@pytest.mark.parametrize(
    "assignment", ["batch.per_sample_gb=inf", "batch.gb_per_1k_visual_tokens=inf"]
)
def test_set_refuses_non_finite_numbers(cli, data, assignment):
    p = enqueue(cli, data, "--set", assignment)
    error_line(p, assignment.split("=")[0], "not a finite number")


def test_a_config_file_with_a_non_finite_number_is_refused(cli, data, tmp_path):
    preset = (resources.files("egoqa.plan") / "presets" / "baseline.toml").read_text()
    path = tmp_path / "mine.toml"
    path.write_text(preset + "\n[batch]\nper_sample_gb = inf\n")
    p = cli(
        "enqueue",
        "-a",
        data.annotations,
        "--videos",
        data.videos,
        "--config",
        path,
        *FAKE,
        check=False,
    )
    error_line(p, "batch.per_sample_gb", "not a finite number")


# --- 8-10: options out of range ----------------------------------------------------------------


@pytest.mark.parametrize("seed", ["-5", "4294967296"])
def test_cluster_refuses_a_seed_k_means_cannot_take(cli, data, seed):
    cli("enqueue", "-a", data.annotations, "--videos", data.videos, "--config", "prior:whole_clip")
    p = cli("cluster", "--run", "prior:whole_clip", "--seed", seed, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "--seed" in p.stderr


def test_report_html_into_a_place_that_cannot_hold_files_is_one_line(cli, data):
    cli("enqueue", "-a", data.annotations, "--videos", data.videos, "--config", "prior:whole_clip")
    p = cli("report", "--run", "prior:whole_clip", "--html", "/proc/x", check=False)
    error_line(p, "--html", "/proc/x", "choose an existing folder")


def test_work_refuses_a_batch_size_past_what_a_batch_can_hold(cli, data):
    assert enqueue(cli, data).returncode == 0
    p = cli("work", "--until-done", "--batch-size=99999999999999999999", check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert "at most 4096" in p.stderr
    assert cli.json("status")["jobs"] == {"ready": 4}  # nothing claimed, nothing lost


# --- 11: broken clip times ---------------------------------------------------------------------


def with_first_clip(data: SynthPaths, tmp_path: Path, key: str, raw: str) -> Path:
    """The annotation file with the first clip's `key` written as the JSON text `raw`."""
    doc = json.loads(data.annotations.read_text())
    doc["videos"][0]["clips"][0][key] = "@@"
    path = tmp_path / "nlq_val.json"
    path.write_text(json.dumps(doc).replace('"@@"', raw))
    return path


@pytest.mark.parametrize(
    "key, raw, what",
    [
        ("clip_end_sec", "1" + "0" * 400, "too large a number"),
        ("clip_end_sec", "1e308", "1e+308 s, past any video's length"),
        ("clip_start_sec", "-5", "negative"),
        ("video_start_sec", "-5", "negative"),
    ],
)
def test_broken_clip_times_skip_the_clip_naming_the_field(cli, data, tmp_path, key, raw, what):
    path = with_first_clip(data, tmp_path, key, raw)
    out = enqueue(cli, data, annotations=path)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "2 queries on 1 clips (skipped: bad_time 2)" in out.stdout
    skipped = cli.json("sql", "SELECT reason, detail FROM skipped_records")
    assert [r["reason"] for r in skipped] == ["bad_time"] * 2
    assert all(f"{key} is {what}" in r["detail"] for r in skipped), skipped
