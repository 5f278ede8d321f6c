"""Frame sampling and decoding: samplers return clip timestamps, the decoder reads just those frames.

Samplers are pure functions of a `SamplerConfig`; `FrameDecoder` reads frames with decord (resized at
decode), keeps a per-process LRU cache and optionally an on-disk `.npz` cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from egoqa.backends.base import Frames
from egoqa.errors import ConfigError, VideoError
from egoqa.plan import samplers
from egoqa.plan.config import SamplerConfig

# How far past the end of the file a timestamp may fall before the file counts as truncated:
# annotated clip durations and container frame counts disagree by a few frames in practice.
TRUNCATION_TOLERANCE_SEC = 1.0
_TS_DIGITS = 6  # timestamps are rounded to microseconds in cache keys


# --- samplers ----------------------------------------------------------------------------------


def sample_timestamps(spec: SamplerConfig, duration_sec: float) -> list[float]:
    """Clip-time timestamps for the whole clip; always an even count (Qwen's temporal patch is 2).

    Shots are detected in a video, not computed from a duration: `egoqa.media.shots` samples them.
    """
    _check_duration(duration_sec)
    if samplers.kind(spec.kind).detected:
        raise ConfigError(
            f"the {spec.kind} sampler needs the clip's detected shots (egoqa.media.shots)"
        )
    return _even(_positions(spec, duration_sec))


def segment_timestamps(
    spec: SamplerConfig, segments: list[tuple[float, float]], duration_sec: float
) -> list[float]:
    """Timestamps inside `segments` (clipped to the clip, overlaps merged); whole clip if none.

    Uniform spreads `spec.frames` over the union in proportion to each part's length; dense
    samples at `spec.fps` inside it. Both walk the union as one concatenated timeline.
    """
    _check_duration(duration_sec)
    if samplers.kind(spec.kind).detected:
        raise ConfigError(
            f"frames inside segments are sampled uniformly or densely, not by {spec.kind}"
        )
    union = _merge_segments(segments, duration_sec)
    length = sum(end - start for start, end in union)
    if length <= 0:
        return sample_timestamps(spec, duration_sec)
    return _even([_to_clip_time(union, p) for p in _positions(spec, length)])


def sampling_fps(timestamps: list[float], duration_sec: float) -> float:
    """Frames per second of clip time the timestamps represent (what `second_per_grid_ts` needs).

    The mean spacing of the distinct timestamps: N / duration for uniform bins, R for dense
    sampling; padding duplicates do not count. One distinct frame: count / duration.
    """
    distinct = sorted(set(timestamps))
    span = distinct[-1] - distinct[0] if distinct else 0.0
    if len(distinct) < 2 or span <= 0:
        return len(timestamps) / duration_sec if duration_sec > 0 else 1.0
    return (len(distinct) - 1) / span


def _check_duration(duration_sec: float) -> None:
    if not duration_sec > 0:
        raise VideoError(
            f"clip duration {duration_sec} s is not positive; check the clip's start and end "
            "in the annotations",
            kind="clip_empty",
        )


def _positions(spec: SamplerConfig, length: float) -> list[float]:
    return samplers.kind(spec.kind).positions(spec, length)


def _even(timestamps: list[float]) -> list[float]:
    if len(timestamps) % 2:
        return [*timestamps, timestamps[-1]]
    return timestamps


def _merge_segments(
    segments: list[tuple[float, float]], duration_sec: float
) -> list[tuple[float, float]]:
    clipped = []
    for start, end in segments:
        lo, hi = sorted((float(start), float(end)))
        lo, hi = max(0.0, lo), min(duration_sec, hi)
        if hi > lo:
            clipped.append((lo, hi))
    merged: list[tuple[float, float]] = []
    for lo, hi in sorted(clipped):
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _to_clip_time(union: list[tuple[float, float]], position: float) -> float:
    for start, end in union:
        if position < end - start:
            return start + position
        position -= end - start
    return union[-1][1]


# --- stamping ----------------------------------------------------------------------------------


def stamp_frames(frames: Frames, labels: list[str]) -> Frames:
    """A copy of `frames` with each label drawn in its lower left corner (white on black), as
    the original pipeline stamped each frame with its time or its shot's range."""
    from PIL import Image, ImageDraw, ImageFont

    height = frames.array.shape[1]
    font = ImageFont.load_default(size=max(8, height // 9))
    out = np.empty_like(frames.array)
    for i, (pixels, label) in enumerate(zip(frames.array, labels, strict=True)):
        image = Image.fromarray(pixels)
        draw = ImageDraw.Draw(image)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        y = height - (bottom - top) - 4
        draw.rectangle((0, y - 2, right - left + 6, height), fill=(0, 0, 0))
        draw.text((3 - left, y - top), label, fill=(255, 255, 255), font=font)
        out[i] = np.asarray(image)
    return Frames(out, list(frames.timestamps), frames.fps)


# --- decoding ----------------------------------------------------------------------------------


def resized_size(width: int, height: int, max_edge: int) -> tuple[int, int]:
    """(width, height) with the long edge at most `max_edge`, aspect kept, both even."""
    scale = min(1.0, max_edge / max(width, height))
    return _even_dim(width * scale), _even_dim(height * scale)


def _even_dim(value: float) -> int:
    return max(2, int(round(value / 2)) * 2)


class FrameDecoder:
    """Reads sampled frames of a video file with decord; an LRU (and optional disk) cache in front.

    `decodes` counts actual decoder runs, `hits` cache hits (memory or disk).
    """

    def __init__(self, cache_items: int = 32, disk_cache: Path | None = None) -> None:
        self.cache_items = cache_items
        self.disk_cache = Path(disk_cache) if disk_cache is not None else None
        self.decodes = 0
        self.hits = 0
        self._cache: OrderedDict[tuple, Frames] = OrderedDict()

    def frames(
        self,
        video_path: Path,
        offset_sec: float,
        timestamps: list[float],
        max_edge: int,
        duration_sec: float,
    ) -> Frames:
        """Frames at `offset_sec + t` for each clip timestamp t, resized to `max_edge`."""
        path = Path(video_path)
        key = self._key(path, offset_sec, timestamps, max_edge)
        frames = self._cached(key)
        if frames is None:
            array = _decode(path, offset_sec, timestamps, max_edge, duration_sec)
            self.decodes += 1
            frames = Frames(array, list(timestamps), sampling_fps(timestamps, duration_sec))
            self._write_disk(key, frames)
        self._remember(key, frames)
        return frames

    def prefetch(
        self, wanted: list[tuple[Path, float, list[float], int, float]], workers: int
    ) -> int:
        """Decode the distinct frame sets not yet cached, in parallel threads; returns how many.

        decord decodes without holding the GIL, so a batch touching several clips decodes them
        side by side instead of one after another. Errors are left for `frames` to raise.
        """
        todo: dict[tuple, tuple] = {}
        for path, offset, timestamps, max_edge, duration in wanted:
            try:
                key = self._key(Path(path), offset, timestamps, max_edge)
            except VideoError:
                continue
            if key not in self._cache and key not in todo:
                todo[key] = (Path(path), offset, timestamps, max_edge, duration)
        if len(todo) < 2 or workers < 2:
            return 0
        with ThreadPoolExecutor(min(workers, len(todo))) as pool:
            decoded = list(pool.map(lambda a: _try_decode(*a), todo.values()))
        for (key, args), array in zip(todo.items(), decoded, strict=True):
            if array is not None:
                self.decodes += 1
                frames = Frames(array, list(args[2]), sampling_fps(args[2], args[4]))
                self._write_disk(key, frames)
                self._remember(key, frames)
        return sum(a is not None for a in decoded)

    def _key(self, path: Path, offset_sec: float, timestamps: list[float], max_edge: int) -> tuple:
        st = _stat(path)
        times = tuple(round(float(t), _TS_DIGITS) for t in timestamps)
        return (
            str(path.resolve()),
            st.st_size,
            st.st_mtime_ns,
            round(offset_sec, _TS_DIGITS),
            times,
            max_edge,
        )

    def _cached(self, key: tuple) -> Frames | None:
        frames = self._cache.get(key)
        if frames is None:
            frames = self._read_disk(key)
        if frames is not None:
            self.hits += 1
        return frames

    def _remember(self, key: tuple, frames: Frames) -> None:
        self._cache[key] = frames
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_items:
            self._cache.popitem(last=False)

    def _disk_path(self, key: tuple) -> Path | None:
        if self.disk_cache is None:
            return None
        digest = hashlib.sha256(repr(key).encode()).hexdigest()
        return self.disk_cache / f"{digest}.npz"

    def _read_disk(self, key: tuple) -> Frames | None:
        path = self._disk_path(key)
        if path is None or not path.is_file():
            return None
        try:
            with np.load(path) as data:
                return Frames(data["array"], data["timestamps"].tolist(), float(data["fps"]))
        except (OSError, ValueError, KeyError):
            return None  # a damaged cache entry is just a miss; it is rewritten below

    def _write_disk(self, key: tuple, frames: Frames) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(
                    handle,
                    array=frames.array,
                    timestamps=np.asarray(frames.timestamps, dtype=np.float64),
                    fps=np.float64(frames.fps),
                )
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)


def _try_decode(
    path: Path, offset_sec: float, timestamps: list[float], max_edge: int, duration_sec: float
):
    try:
        return _decode(path, offset_sec, timestamps, max_edge, duration_sec)
    except Exception:  # noqa: BLE001 -- the sequential pass raises it with its proper kind
        return None


def _stat(path: Path) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise VideoError(
            f"video file {path} does not exist; check the videos directory passed to enqueue",
            kind="video_missing",
        ) from None
    except OSError as exc:  # a symlink loop, no permission: this clip's jobs fail, not the worker
        raise VideoError(
            f"video file {path} cannot be opened ({exc.strerror or exc}); replace it with the video",
            kind="video_unreadable",
        ) from None
    if st.st_size == 0:
        raise VideoError(
            f"video file {path} is empty (0 bytes); re-download or re-extract it",
            kind="video_unreadable",
        )
    return st


def _decode(
    path: Path, offset_sec: float, timestamps: list[float], max_edge: int, duration_sec: float
) -> np.ndarray:
    width, height = _probe_size(path)
    out_w, out_h = resized_size(width, height, max_edge)
    reader = _open_reader(path, out_w, out_h)
    video_fps, count = float(reader.get_avg_fps()), len(reader)
    if count == 0 or video_fps <= 0:
        raise _unreadable(path, "it has no decodable video frames")
    indices = _frame_indices(path, offset_sec, timestamps, video_fps, count, duration_sec)
    try:
        return np.ascontiguousarray(reader.get_batch(indices).asnumpy())
    except Exception as exc:  # decord raises its own error types for damaged streams
        raise _unreadable(path, f"decoding failed ({exc})") from exc


def _frame_indices(
    path: Path,
    offset_sec: float,
    timestamps: list[float],
    video_fps: float,
    count: int,
    duration_sec: float,
) -> list[int]:
    file_sec = count / video_fps
    last = offset_sec + max(timestamps)
    if last > file_sec + TRUNCATION_TOLERANCE_SEC:
        raise VideoError(
            f"video file {path} holds {file_sec:.2f} s but the clip needs frames up to {last:.2f} s "
            f"(offset {offset_sec:.2f} s + clip of {duration_sec:.2f} s); the file looks "
            "truncated: re-download it",
            kind="video_truncated",
        )
    return [min(count - 1, max(0, round((offset_sec + t) * video_fps))) for t in timestamps]


def _probe_size(path: Path) -> tuple[int, int]:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise _unreadable(path, "it has no video stream")
            context = container.streams.video[0].codec_context
            width, height = context.width, context.height
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise _unreadable(path, f"it is not a readable video ({exc})") from exc
    if not width or not height:
        raise _unreadable(path, "its video stream has no frame size")
    return width, height


def _open_reader(path: Path, width: int, height: int) -> Any:
    import decord

    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), width=width, height=height)
    except Exception as exc:  # decord.DECORDError and RuntimeError, depending on the failure
        raise _unreadable(path, f"decord cannot open it ({exc})") from exc


def _unreadable(path: Path, why: str) -> VideoError:
    return VideoError(
        f"video file {path} is unreadable: {why}; re-download or re-encode it",
        kind="video_unreadable",
    )
