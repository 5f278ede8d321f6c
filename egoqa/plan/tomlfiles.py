"""TOML files by name (shipped inside the package) or by path: presets and prompt styles."""

from __future__ import annotations

import math
import os
import tomllib
from importlib import resources
from pathlib import Path

from egoqa.errors import EgoqaError


def shipped(folder: str) -> list[str]:
    """Names of the TOML files shipped in `egoqa/plan/<folder>/`."""
    files = resources.files("egoqa.plan") / folder
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
        res = resources.files("egoqa.plan") / folder / f"{name_or_path}.toml"
        if not res.is_file():
            raise error(
                f"unknown {what} {name_or_path!r}: use one of {choices} or a path to a TOML file"
            )
        text, origin = res.read_text(encoding="utf-8"), f"{what} {name_or_path}"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{origin} is not valid TOML: {exc}") from None
    require_finite(data, origin, error)
    return data, origin


def non_finite(value, path: str = "") -> str | None:
    """The dotted key of the first nan or inf in a parsed TOML value (TOML allows both), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "the value"
    items = value.items() if isinstance(value, dict) else []
    if isinstance(value, list):
        items = ((f"[{i}]", v) for i, v in enumerate(value))
    for key, v in items:
        sub = f"{path}{key}" if str(key).startswith("[") else f"{path}.{key}".lstrip(".")
        found = non_finite(v, sub)
        if found:
            return found
    return None


def require_finite(data, origin: str, error: type[EgoqaError]) -> None:
    """Refuse nan and inf anywhere in a file: no setting of a run means "not a number"."""
    key = non_finite(data)
    if key is not None:
        raise error(
            f"{origin}: {key} is not a finite number (nan and inf are refused): give a number"
        )
