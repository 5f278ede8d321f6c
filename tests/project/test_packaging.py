"""The wheel carries its migrations: an installed egoqa (not this checkout) creates its schema."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from egoqa.store.db import head_revision

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip(
        "hatchling", reason="building the wheel needs hatchling: pip install -e '.[test]'"
    )
    out = tmp_path_factory.mktemp("wheel")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        str(out),
        str(ROOT),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    return next(out.glob("egoqa-*.whl"))


def test_the_wheel_ships_the_alembic_environment_migrations_presets_styles_and_explorer(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    migrations = sorted(p.name for p in (ROOT / "migrations").glob("*.py"))
    assert {"egoqa/_alembic/env.py", "egoqa/_alembic/script.py.mako"} <= names
    assert {f"egoqa/_migrations/{m}" for m in migrations} <= names
    assert {"egoqa/plan/presets/demo.toml", "egoqa/plan/styles/stage_analysis.toml"} <= names
    assert {"egoqa/plan/styles/rerank_proposals.toml", "egoqa/report/published/nlq.toml"} <= names
    assets = {
        f"egoqa/report/explorer_assets/{p.name}"
        for p in (ROOT / "egoqa/report/explorer_assets").iterdir()
    }
    assert {
        "egoqa/report/explorer_assets/index.html",
        "egoqa/report/explorer_assets/explorer.js",
    } <= assets
    assert assets <= names  # the explorer's page, script and style: nothing fetched at view time


def test_an_installed_egoqa_creates_and_checks_its_schema(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = tmp_path / "elsewhere"
    run.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import egoqa; print(egoqa.__file__)"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.strip().startswith(str(target))
    up = subprocess.run(
        [sys.executable, "-m", "egoqa", "--db", "x.db", "db", "upgrade"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert up.returncode == 0, up.stderr
    assert f"schema at {head_revision()}" in up.stdout
