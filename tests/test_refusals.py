"""More bad input, each refused with one `error:` line that says what to do, before any work is
done and without losing any: devices and GPUs that are not there, batch sizes that cannot be,
output places that cannot be written, videos that are not files, style templates with stray
braces, database URLs with passwords or of the wrong kind, and a misspelled --db.

Most cases call the real entry point in this process (`inproc.InProcess`: the same parsing and
error boundary, no start-up per call); a worker is a real subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from inproc import InProcess
from test_bad_input import error_line, read_only, snapshot

from egoqa.dev.synth import SynthPaths, write_synth_dataset
from egoqa.errors import ConfigError

from conftest import Cli, copy_db

FAKE = ("--set", "backend=fake")


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SynthPaths:
    """2 clips × 1 query of 4 s."""
    root = tmp_path_factory.mktemp("refusals")
    return write_synth_dataset(root, clips=2, queries_per_clip=1, duration_sec=4.0, seed=7)


def enqueue_args(data: SynthPaths, *extra: str) -> list[str]:
    args = ["enqueue", "-a", data.annotations, "--videos", data.videos, "--config", "baseline"]
    return [*args, *FAKE, *extra]


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A database whose run `r` is done: its first query worked by a worker process, the
    second enqueued after, so it is still pending."""
    root = tmp_path_factory.mktemp("finished")
    egoqa = InProcess(root / "egoqa.db", root)
    egoqa(*enqueue_args(data, "--run", "r", "--limit", "1"))
    Cli(root / "egoqa.db", root)("work", "--until-done")
    egoqa(*enqueue_args(data, "--run", "r"))
    return root / "egoqa.db"


@pytest.fixture
def egoqa(finished, db_path, tmp_path) -> InProcess:
    """The `egoqa` command on a private copy of the finished database."""
    copy_db(finished, db_path)
    return InProcess(db_path, tmp_path)


def state(db_path: Path) -> tuple:
    """Jobs, runs, clips and the workers that ever started: what a refused command must not touch."""
    with sqlite3.connect(db_path) as conn:
        started = conn.execute("SELECT id FROM workers ORDER BY id").fetchall()
    return snapshot(db_path), started


# --- GPUs, devices and batch sizes: refused before a worker starts (item 3, 4, 9) -------------


@pytest.mark.skipif("has_cuda()", reason="this machine has CUDA: nothing to refuse")
@pytest.mark.parametrize(
    "args, asked",
    [
        (["--gpus", "0-7"], "--gpus 0-7 asks for a CUDA GPU, but this machine has none"),
        (["--device", "cuda"], "--device cuda asks for a CUDA GPU, but this machine has none"),
        (["--device", "cuda", "--workers", "2"], "--device cuda --workers 2 asks for a CUDA GPU"),
    ],
)
def test_gpus_on_a_machine_without_cuda_are_refused_before_any_worker_starts(
    egoqa, db_path, tmp_path, args, asked
):
    before = state(db_path)
    empty = InProcess(tmp_path / "empty.db", tmp_path)
    empty("db", "upgrade")
    for cli in (egoqa, empty):  # jobs pending, and none: nothing to do is no excuse for a bad flag
        p = cli("work", "--until-done", *args, check=False)
        error_line(p, asked, "run on the CPU with --device cpu --workers N")
    assert state(db_path) == before


def test_gpu_device_files_are_counted_and_too_few_are_refused(tmp_path):
    from egoqa.work.devices import device_file_count, require_gpus

    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-modeset"):
        (tmp_path / name).touch()
    assert device_file_count(tmp_path) == 2
    require_gpus("--gpus 0-1", 2, dev=tmp_path)  # enough: no torch asked, nothing raised
    if has_cuda():
        pytest.skip("torch sees this machine's own GPUs beside the two files")
    with pytest.raises(ConfigError, match=r"only 2 are visible \(ids 0-1\): ask for those"):
        require_gpus("--gpus 0-3", 4, dev=tmp_path)


@pytest.mark.parametrize("size", ["0", "-3", "00"])
def test_a_batch_size_that_is_not_positive_is_refused_even_with_nothing_pending(
    egoqa, db_path, tmp_path, size
):
    before = state(db_path)
    for target in (db_path, tmp_path / "empty.db"):
        InProcess(target, tmp_path)("db", "upgrade")
        p = InProcess(target, tmp_path)("work", "--until-done", "--batch-size", size, check=False)
        assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
        assert "--batch-size takes 'auto' or a positive number" in p.stderr
    assert state(db_path) == before


def test_a_device_that_does_not_exist_is_refused(egoqa, db_path):
    before = state(db_path)
    for device in ("foo", "cuda:x", "gpu"):
        p = egoqa("work", "--device", device, check=False)
        error_line(p, f"--device {device!r} is not a device: use auto, cpu, cuda or cuda:N")
    p = egoqa("work", "--gpus", "0", "--device", "cpu", check=False)
    error_line(p, "--gpus 0 and --device cpu contradict each other")
    assert state(db_path) == before


# --- where output goes (item 9) ----------------------------------------------------------------


def test_report_out_that_cannot_be_a_folder_is_one_line(egoqa, tmp_path):
    existing = tmp_path / "report.txt"
    existing.write_text("keep me\n")
    error_line(
        egoqa("report", "--run", "r", "--out", existing, check=False),
        f"--out {existing} is a file, not a folder",
    )
    assert existing.read_text() == "keep me\n"
    error_line(
        egoqa("report", "--run", "r", "--out", "/proc/x", check=False),
        "cannot create --out folder /proc/x: ",
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        error_line(
            egoqa("report", "--run", "r", "--out", locked / "report", check=False),
            f"cannot create --out folder {locked / 'report'}: ",
        )
        error_line(
            egoqa("report", "--run", "r", "--out", locked, check=False),
            f"cannot write --out {locked / 'results.json'}: ",
        )


def test_export_output_that_cannot_be_written_is_one_line_and_keeps_the_old_file(egoqa, tmp_path):
    error_line(
        egoqa("export", "--run", "r", "-o", tmp_path, check=False),
        f"-o {tmp_path} is a folder: name a file in it",
    )
    missing = tmp_path / "nope" / "preds.json"
    error_line(
        egoqa("export", "--run", "r", "-o", missing, check=False),
        f"the folder {missing.parent} does not exist: create it first",
    )
    error_line(
        egoqa("export", "--run", "r", "-o", "/dev/full", check=False),
        "cannot write -o /dev/full: the device is full: free space or choose another place",
    )
    locked = tmp_path / "locked"
    locked.mkdir()
    old = locked / "preds.json"
    old.write_text("the previous predictions\n")
    with read_only(locked, old):
        error_line(
            egoqa("export", "--run", "r", "-o", old, check=False), f"cannot write -o {old}: "
        )
    assert old.read_text() == "the previous predictions\n"
    assert not missing.parent.exists()


# --- videos and styles (item 9) ---------------------------------------------------------------


def videos_with_first(data: SynthPaths, tmp_path: Path, make) -> tuple[Path, str]:
    """A copy of the videos where the first clip's file is replaced by what `make` puts there."""
    videos = tmp_path / "videos"
    shutil.copytree(data.videos, videos)
    doc = json.loads(data.annotations.read_text())
    name = doc["videos"][0]["clips"][0]["clip_uid"] + ".mp4"
    (videos / name).unlink()
    make(videos / name)
    return videos, name


@pytest.mark.parametrize(
    "make, problem",
    [
        (Path.mkdir, "is a folder, not a video file"),
        (lambda p: p.symlink_to(p.name), "cannot be opened (Too many levels of symbolic links)"),
        (lambda p: p.symlink_to("gone.mp4"), "is a broken symbolic link"),
    ],
    ids=["folder", "symlink-loop", "broken-symlink"],
)
def test_a_video_path_that_is_not_a_file_skips_its_clip_and_names_it(data, tmp_path, make, problem):
    videos, name = videos_with_first(data, tmp_path, make)
    args = ["enqueue", "-a", data.annotations, "--videos", videos, "--config", "baseline", *FAKE]
    p = InProcess(tmp_path / "egoqa.db", tmp_path)(*args, check=False)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    assert "run baseline: 1 queries on 1 clips (skipped: bad_video 1)" in p.stdout
    assert f"skipped bad_video (clip {name[:-4]}, " in p.stderr
    assert f"{videos / name} {problem}: replace it with the video file" in p.stderr


def test_a_video_that_became_a_symlink_loop_fails_as_unreadable_not_as_a_bug(tmp_path):
    from egoqa.errors import VideoError
    from egoqa.media.frames import FrameDecoder

    loop = tmp_path / "clip.mp4"
    loop.symlink_to(loop.name)  # what the worker meets when the file is replaced after enqueue
    with pytest.raises(VideoError, match="cannot be opened .Too many levels") as err:
        FrameDecoder().frames(loop, 0.0, [1.0], 112, 4.0)
    assert err.value.kind == "video_unreadable"  # its jobs fail as such; the worker goes on


def style(tmp_path: Path, template: str) -> str:
    path = tmp_path / "mine.toml"
    body = {"name": "a", "reads_query": True, "graded": True, "template": template}
    lines = [f"{k} = {json.dumps(v)}" for k, v in body.items()]
    path.write_text('name = "mine"\n[[turns]]\n' + "\n".join(lines) + "\n")
    return f"style={json.dumps(str(path))}"


@pytest.mark.parametrize(
    "template, message",
    [
        ("Answer {query", "template has an unbalanced brace (expected '}' before end of string)"),
        ("Answer } {query}", "template has an unbalanced brace (Single '}' encountered"),
        ('Reply as {"start": 1} for {query}', 'template holds {"start": 1}, which is not a field'),
        ("{query} in {}", "template holds {}, which is not a field"),
        ("{query!x}", "template cannot be filled in (Unknown conversion specifier x)"),
    ],
)
def test_a_style_template_with_stray_braces_says_to_escape_them(data, tmp_path, template, message):
    p = InProcess(tmp_path / "egoqa.db", tmp_path)(
        *enqueue_args(data, "--set", style(tmp_path, template)), check=False
    )
    error_line(p, message, "write a literal brace as {{ or }}")
    assert not (tmp_path / "egoqa.db").exists()


def test_a_style_path_that_is_a_folder_says_so(data, tmp_path):
    folder = tmp_path / "styles"
    folder.mkdir()
    p = InProcess(tmp_path / "egoqa.db", tmp_path)(
        *enqueue_args(data, "--set", f"style={json.dumps(str(folder))}"), check=False
    )
    error_line(p, f"prompt style file {folder} is a folder, not a TOML file")


# --- databases (items 10, 11) -----------------------------------------------------------------


def test_a_postgres_connection_error_never_shows_the_password(tmp_path):
    from pg import free_port

    url = f"postgresql+psycopg://egoqa:s3cret-pw@127.0.0.1:{free_port()}/egoqa"
    for args in (["status"], ["db", "current"], ["work"]):
        p = InProcess(url, tmp_path)(*args, check=False)
        error_line(p, "cannot open postgresql+psycopg://egoqa:***@127.0.0.1:")
        assert "s3cret-pw" not in p.stderr + p.stdout
    p = InProcess("postgresql://egoqa:s3cret-pw@[::1", tmp_path)("status", check=False)
    assert "s3cret-pw" not in p.stderr and p.returncode == 1


@pytest.mark.parametrize("url", ["mysql://me:s3cret@localhost/egoqa", "mariadb://db/egoqa"])
def test_a_mysql_url_says_only_sqlite_and_postgresql_are_supported(tmp_path, url):
    p = InProcess(url, tmp_path)("status", check=False)
    error_line(p, "only SQLite and PostgreSQL are supported")
    assert "pip install" not in p.stderr and "s3cret" not in p.stderr


@pytest.mark.parametrize("command", [["work", "--until-done"], ["retry"]])
def test_a_misspelled_db_creates_no_file_before_refusing(tmp_path, command):
    typo = tmp_path / "egoqq.db"
    p = InProcess(typo, tmp_path)(*command, check=False)
    error_line(p, f"no database at {typo}: run `egoqa enqueue` first or pass --db")
    assert os.listdir(tmp_path) == []
