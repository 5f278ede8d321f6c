"""TOML files by name (shipped inside the package) or by path: presets and prompt styles."""

from __future__ import annotations

import os
import tomllib
from importlib import resources
from pathlib import Path

from egoqa.errors import EgoqaError


def shipped(folder: str) -> list[str]:
    """Names of the TOML files shipped in `egoqa/<folder>/`."""
    files = resources.files("egoqa") / folder
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


def looks_like_path(name: str) -> bool:
    """A name with a directory part or a .toml suffix is a file; anything else is a shipped name
    (so `--config baseline` means the preset even when a file called `baseline` is here)."""
    return "/" in name or os.sep in name or name.endswith(".toml")


def load(name_or_path: str, folder: str, what: str, error: type[EgoqaError]) -> tuple[dict, str]:
    """Parse a shipped file by name or a user's file by path; returns (data, where it came from)."""
    path = Path(name_or_path)
    choices = ", ".join(shipped(folder))
    if looks_like_path(name_or_path):
        if path.is_dir():
            raise error(
                f"{what} file {path} is a folder, not a TOML file: name the .toml file in it, "
                f"or use one of {choices}"
            )
        if not path.is_file():
            raise error(f"{what} file {path} does not exist: use one of {choices} or a TOML file")
        try:
            text, origin = path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise error(
                f"{what} file {path} cannot be read ({exc}): save it as UTF-8 TOML and check its permissions"
            ) from None
    else:
        res = resources.files("egoqa") / folder / f"{name_or_path}.toml"
        if not res.is_file():
            raise error(
                f"unknown {what} {name_or_path!r}: use one of {choices} or a path to a TOML file"
            )
        text, origin = res.read_text(encoding="utf-8"), f"{what} {name_or_path}"
    try:
        return tomllib.loads(text), origin
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{origin} is not valid TOML: {exc}") from None
