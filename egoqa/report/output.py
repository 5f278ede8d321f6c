"""Writing the files users ask for (`report --out`, `export -o`): a missing folder, a file where a
folder should be, no permission or a full disk is one `OutputError` line, and a file that was
there before is replaced whole or not at all.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path

from egoqa.errors import OutputError

# Why a write failed, in words, and what to do about it.
_ADVICE = {
    errno.ENOSPC: "the device is full: free space or choose another place",
    errno.EDQUOT: "the disk quota is used up: free space or choose another place",
    errno.EACCES: "permission denied: choose a place you can write to",
    errno.EPERM: "the file system does not allow it: choose a place you can write to",
    errno.EROFS: "the file system is read-only: choose a place you can write to",
    errno.ENOENT: "that place does not exist or cannot hold files: choose an existing folder",
    errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
    errno.EISDIR: "it is a folder: name a file instead",
}


def _advice(exc: OSError) -> str:
    return _ADVICE.get(exc.errno, f"{exc.strerror or exc}: check the path and the device")


def ensure_folder(path: Path, option: str) -> None:
    """Create `path` (and its parents) as a folder for output files, or say why it cannot be."""
    if path.exists() and not path.is_dir():
        raise OutputError(
            f"{option} {path} is a file, not a folder: pass a folder to write the files into"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {option} folder {path}: {_advice(exc)}") from None


def check_file_target(path: Path, option: str) -> None:
    """Refuse a target that cannot become the file before any work is done for it."""
    if path.is_dir():
        raise OutputError(
            f"{option} {path} is a folder: name a file in it, e.g. {path / 'predictions.json'}"
        )
    if not path.parent.is_dir():
        raise OutputError(
            f"{option} {path}: the folder {path.parent} does not exist: create it first"
        )


def write_text(path: Path, text: str, option: str) -> None:
    """Write `text` to `path`: through a temporary file renamed into place where `path` is (or
    will be) a regular file, so a failed write leaves any earlier file as it was; directly to
    anything else (a symlink, a pipe, /dev/stdout, /dev/full)."""
    check_file_target(path, option)
    try:
        if path.is_symlink() or (path.exists() and not path.is_file()):
            with path.open("w", encoding="utf-8") as handle:
                handle.write(text)
            return
        _replace(path, text)
    except OSError as exc:
        raise OutputError(f"cannot write {option} {path}: {_advice(exc)}") from None


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def errors_as_one_line(path: Path, option: str):
    """OSErrors of the writes under `path` (a report folder), as one OutputError line."""
    try:
        yield
    except OSError as exc:
        where = exc.filename or path
        raise OutputError(f"cannot write {option} {where}: {_advice(exc)}") from None
