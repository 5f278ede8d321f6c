"""What produced a report: the checkout egoqa runs from and the installed package versions.

Read from git and from package metadata; nothing heavy is imported.
"""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path

# Versions recorded in results.json, read from package metadata (nothing is imported).
PACKAGES = (
    "egoqa", "torch", "transformers", "accelerate", "qwen-vl-utils", "decord", "av", "tokenizers",
    "sqlalchemy", "alembic", "pandas", "numpy", "matplotlib", "pydantic",
)  # fmt: skip


def git_hash() -> str | None:
    """HEAD of the checkout egoqa runs from, or None (an installed wheel, no git)."""
    package = Path(__file__).resolve().parent
    try:
        proc = subprocess.run(
            ["git", "-C", str(package), "rev-parse", "--show-toplevel", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    out = proc.stdout.split()
    if proc.returncode != 0 or len(out) != 2 or Path(out[0]).resolve() != package.parent:
        return None  # not our checkout (e.g. a virtualenv inside someone else's repository)
    return out[1]


def package_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata without importing the packages."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
