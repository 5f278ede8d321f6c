"""The shot-detection cache: cuts found in a window of a video file, read and written here only.

One row per (video file identity, detector and thresholds, window in file seconds). Detection is
deterministic, so two workers that detect the same window at once write the same row; the second
insert is a no-op.
"""

from __future__ import annotations

import json
import time

from egoqa.store.db import Database

_SELECT = "SELECT cuts FROM shot_detections WHERE key = :key"
_INSERT = """
INSERT INTO shot_detections (key, video, detector, start_sec, end_sec, cuts, frames, fps,
                             library, elapsed_s, created_at)
VALUES (:key, :video, :detector, :start, :end, :cuts, :frames, :fps, :library, :elapsed, :now)
ON CONFLICT (key) DO NOTHING
"""


def cached_cuts(db: Database, key: str) -> list[float] | None:
    """The cuts stored under `key` (file seconds), or None if this window was never detected."""
    with db.read() as cur:
        text = cur.one(_SELECT, {"key": key})
    return None if text is None else [float(c) for c in json.loads(text)]


def record_cuts(db: Database, key: str, video: str, detector: dict, window, found) -> None:
    """Store a detection (`shots.Detection`) of `window` (file seconds) under `key`."""
    params = {
        "key": key,
        "video": video,
        "detector": json.dumps(detector, sort_keys=True),
        "start": float(window[0]),
        "end": float(window[1]),
        "cuts": json.dumps([round(c, 6) for c in found.cuts]),
        "frames": int(found.frames),
        "fps": float(found.fps),
        "library": _library(),
        "elapsed": float(found.elapsed_s),
        "now": time.time(),
    }
    with db.write() as cur:
        cur.execute(_INSERT, params)


def _library() -> str:
    from importlib import metadata

    try:
        return f"scenedetect {metadata.version('scenedetect')}"
    except metadata.PackageNotFoundError:
        return "scenedetect"
