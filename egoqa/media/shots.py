"""Shot sampling: PySceneDetect finds the cuts inside a window of a clip, once per video file
and window (cached in the database), and each shot is shown by its middle frame.

Windows and shots are in clip seconds; the cache stores cuts in the video file's seconds, so
two clips of one full video never share (or confuse) a detection. Where no cut is found the
window is split into equal pieces of at most `split_sec`; beyond `max_shots`, the shortest shot
is merged into its shorter neighbour until `max_shots` are left.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from egoqa.errors import VideoError
from egoqa.plan.config import SamplerConfig

Shot = tuple[float, float]
_DIGITS = 3  # windows are keyed to the millisecond


@dataclass(frozen=True)
class Detection:
    """Cuts found in a window of a video file (file seconds), and what it took."""

    cuts: list[float]
    frames: int
    fps: float
    elapsed_s: float


@dataclass(frozen=True)
class Shots:
    """A window's shots (clip seconds), their keyframes, and whether they are fixed splits."""

    ranges: list[Shot]
    fallback: bool

    @property
    def keyframes(self) -> list[float]:
        return [(a + b) / 2 for a, b in self.ranges]


def detector_spec(spec: SamplerConfig) -> dict:
    """The detector and its thresholds: what decides the cuts (part of the cache key)."""
    out = {"detector": spec.detector, "min_shot_sec": spec.min_shot_sec}
    if spec.detector == "content":
        out["threshold"] = spec.threshold
    else:
        out["adaptive_threshold"] = spec.adaptive_threshold
    return out


def detection_key(video: str, detector: dict, start_sec: float, end_sec: float) -> str:
    """Cache key: the video file's identity, the detector, and the window in file seconds."""
    window = [round(start_sec, _DIGITS), round(end_sec, _DIGITS)]
    text = json.dumps({"video": video, "detector": detector, "window": window}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --- detection ---------------------------------------------------------------------------------


def _detector(detector: dict, fps: float):
    from scenedetect import AdaptiveDetector, ContentDetector

    min_len = max(1, round(detector["min_shot_sec"] * fps))  # frames
    if detector["detector"] == "content":
        return ContentDetector(threshold=detector["threshold"], min_scene_len=min_len)
    return AdaptiveDetector(
        adaptive_threshold=detector["adaptive_threshold"], min_scene_len=min_len
    )


def _open(path: Path):
    try:
        from scenedetect import VideoOpenFailure, open_video
    except ImportError as exc:  # OpenCV's shared libraries may be missing on a server
        raise VideoError(
            f"shot detection needs PySceneDetect with OpenCV ({exc}); install "
            "`scenedetect` and `opencv-python-headless` (or the system's libGL)",
            kind="shots_unavailable",
        ) from None
    try:
        return open_video(str(path), backend="pyav")  # PyAV seeks to the exact frame
    except (VideoOpenFailure, OSError) as exc:
        raise VideoError(
            f"video file {path} is unreadable for shot detection ({exc}); re-download or "
            "re-encode it",
            kind="video_unreadable",
        ) from exc


def detect_cuts(path: Path, start_sec: float, end_sec: float, detector: dict) -> Detection:
    """Cuts PySceneDetect finds between `start_sec` and `end_sec` of the file (file seconds)."""
    from scenedetect import SceneManager

    logging.getLogger("pyscenedetect").setLevel(logging.WARNING)  # one line per window otherwise
    t0 = time.perf_counter()
    video = _open(Path(path))
    manager = SceneManager()
    manager.add_detector(_detector(detector, float(video.frame_rate)))
    if start_sec > 0:
        video.seek(float(start_sec))
    # Floats: an int end time would be read as a frame number.
    frames = manager.detect_scenes(video, end_time=float(end_sec))
    scenes = manager.get_scene_list(start_in_scene=True)
    cuts = [float(start.seconds) for start, _ in scenes[1:]]
    return Detection(cuts, frames, float(video.frame_rate), time.perf_counter() - t0)


# --- shots from cuts -----------------------------------------------------------------------------


def fixed_splits(window: Shot, split_sec: float) -> list[Shot]:
    """The window in equal pieces of at most `split_sec` (one piece if it is shorter)."""
    start, end = window
    count = max(1, -int(-(end - start) // split_sec))  # ceil
    step = (end - start) / count
    return [
        (start + i * step, end if i == count - 1 else start + (i + 1) * step) for i in range(count)
    ]


def merge_shortest(shots: list[Shot], max_shots: int) -> list[Shot]:
    """Merge the shortest shot into its shorter neighbour (earliest first on ties) until at most
    `max_shots` are left."""
    shots = list(shots)
    while len(shots) > max(1, max_shots):
        i = min(range(len(shots)), key=lambda k: (shots[k][1] - shots[k][0], k))
        neighbours = [k for k in (i - 1, i + 1) if 0 <= k < len(shots)]
        j = min(neighbours, key=lambda k: (shots[k][1] - shots[k][0], k))
        a, b = min(i, j), max(i, j)
        shots[a : b + 1] = [(shots[a][0], shots[b][1])]
    return shots


def shots_in_window(cuts: list[float], window: Shot, spec: SamplerConfig) -> Shots:
    """The window's shots from cuts in clip seconds: cut there, or fixed splits if none falls
    strictly inside; then at most `max_shots`."""
    start, end = window
    inside = sorted({c for c in cuts if start < c < end})
    if not inside:
        return Shots(merge_shortest(fixed_splits(window, spec.split_sec), spec.max_shots), True)
    bounds = [start, *inside, end]
    ranges = list(zip(bounds, bounds[1:], strict=False))
    return Shots(merge_shortest(ranges, spec.max_shots), False)


def check_window(window: Shot, duration_sec: float) -> Shot:
    start, end = float(window[0]), float(window[1])
    if not 0 <= start < end <= duration_sec + 1e-6:
        raise VideoError(
            f"shot window {start:.3f} s .. {end:.3f} s is not inside the {duration_sec:.3f} s "
            "clip; a window needs 0 <= start < end <= the clip's duration",
            kind="bad_window",
        )
    return start, min(end, duration_sec)


def clip_shots(
    db,
    path: Path,
    video: str,
    offset_sec: float,
    window: Shot,
    spec: SamplerConfig,
    duration_sec: float,
) -> Shots:
    """The shots of `window` (clip seconds) of the clip at `offset_sec` in `path`: cuts from the
    database when this video file and window were detected before, else detected and stored."""
    from egoqa.store import shots as store

    start, end = check_window(window, duration_sec)
    detector = detector_spec(spec)
    file_window = (offset_sec + start, offset_sec + end)
    key = detection_key(video, detector, *file_window)
    cuts = store.cached_cuts(db, key)
    if cuts is None:
        found = detect_cuts(path, *file_window, detector)
        store.record_cuts(db, key, video, detector, file_window, found)
        cuts = found.cuts
    return shots_in_window([c - offset_sec for c in cuts], (start, end), spec)


def stored_shots(db, media: dict, duration_sec: float) -> Shots | None:
    """The shots a finished job's media showed, from the detection stored when it ran (read
    only: the explorer never detects); None where no detection of that window is stored."""
    from egoqa.plan.config import sampler_from
    from egoqa.store import shots as store

    spec = sampler_from(media["sampler"])
    start, end = check_window(tuple(media.get("window") or (0.0, duration_sec)), duration_sec)
    offset = media["offset"]
    key = detection_key(media["video"], detector_spec(spec), offset + start, offset + end)
    cuts = store.cached_cuts(db, key)
    if cuts is None:
        return None
    return shots_in_window([c - offset for c in cuts], (start, end), spec)
