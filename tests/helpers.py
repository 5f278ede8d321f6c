"""Helpers the test modules share: one polling wait that raises, rows as dicts, a worker process
stopped (its threads' stacks shown when it does not stop)."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Set in a worker process's environment: a SIGABRT then prints every thread's stack to stderr.
STACKS_ON_ABORT = {"PYTHONFAULTHANDLER": "1"}


def wait_until(
    predicate: Callable[[], T], timeout: float = 120.0, what: str = "", interval: float = 0.02
) -> T:
    """Poll until `predicate()` is truthy and return its value; raise AssertionError (saying
    `what` was awaited) once `timeout` seconds passed without it."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")
        time.sleep(interval)


def rows_as_dicts(cur, sql: str, params: dict | None = None) -> list[dict]:
    """Every row of `sql` as a dict keyed by column name."""
    raw = cur.execute(sql, params)
    cols = [d[0] for d in raw.description]
    return [dict(zip(cols, r, strict=True)) for r in raw.fetchall()]


def running_jobs(db) -> int:
    with db.read() as cur:
        return cur.one("SELECT COUNT(*) FROM jobs WHERE state = 'running'")


def communicate_or_dump(proc: subprocess.Popen, timeout: float = 60.0) -> tuple[str, str]:
    """`proc.communicate`, or, when the process does not exit in time, its threads' stacks (it
    must have been started with `STACKS_ON_ABORT`) in the AssertionError raised."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(
            f"pid {proc.pid} did not exit within {timeout:.0f} s; its threads:\n{err}"
        ) from None


def error_line(p: subprocess.CompletedProcess, *needles: str, only: bool = True) -> str:
    """The command failed with exit 1 and exactly one `error:` line holding every needle."""
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == 1, (p.returncode, p.stderr)
    errors = [line for line in p.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, p.stderr
    if only:
        assert p.stderr.strip() == errors[0], p.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]
