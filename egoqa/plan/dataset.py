"""Load Ego4D NLQ annotation files (v1, v2, test_unannotated) into clips and queries.

Single records that cannot be used are collected in `Dataset.skipped` with a reason code;
only whole-file problems raise `DatasetError`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egoqa.errors import DatasetError

WINDOW_TOLERANCE_SEC = 0.5  # answer windows may overrun the clip end by this much
CLIP_TOLERANCE_SEC = 1.0  # clips may overrun their video's metadata duration by this much
MAX_SEC = 1e6  # no recording is 11 days long: a time past this is a broken record
CLIP_TIMES = ("video_start_sec", "video_end_sec", "clip_start_sec", "clip_end_sec")
EXTRA_KEYS = ("slot_x", "verb_x", "slot_y", "verb_y", "raw_tags", "answer")
_CLEANED_EXTRA = frozenset({"slot_x", "verb_x", "slot_y", "verb_y", "answer"})

# Annotation-tool labels left inside values: "Query Text:", "X Text (Optional):", ...
_LABEL = re.compile(
    r"^\s*(?:[A-Za-z]+ ){0,2}(?:[A-Za-z]+ ?\((?i:optional)\)|Text(?: ?\((?i:optional)\))?)\s*:"
)
_WORD = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class Clip:
    """A clip and where to decode it: `video_path` from `offset_sec` for `duration_sec`."""

    clip_uid: str
    video_uid: str | None
    video_path: Path
    offset_sec: float
    duration_sec: float
    split: str | None


@dataclass(frozen=True)
class Query:
    """One natural-language query; its identity is (clip_uid, annotation_uid, query_idx)."""

    clip_uid: str
    annotation_uid: str
    query_idx: int
    text: str
    template: str | None
    gt_start: float | None
    gt_end: float | None
    extra: dict


@dataclass(frozen=True)
class Skipped:
    """A record the loader could not use, with a short reason code and a readable detail."""

    clip_uid: str | None
    annotation_uid: str | None
    query_idx: int | None
    reason: str
    detail: str

    def where(self) -> str:
        """The record's place in the file, as far as it is known: clip, annotation, query index."""
        parts = [
            f"{name} {value}"
            for name, value in (
                ("clip", self.clip_uid),
                ("annotation", self.annotation_uid),
                ("query", self.query_idx),
            )
            if value is not None
        ]
        return ", ".join(parts) or "no clip_uid"


@dataclass
class Dataset:
    """Usable clips and queries of one annotation file, plus what was skipped and why."""

    clips: dict[str, Clip]
    queries: list[Query]
    skipped: list[Skipped]
    version: str | None

    def skipped_counts(self) -> dict[str, int]:
        """Number of skipped records per reason code."""
        return dict(sorted(Counter(s.reason for s in self.skipped).items()))


class _Skip(Exception):
    """Raised inside the loader to turn a record into a `Skipped` entry."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# --- text ------------------------------------------------------------------------------------


def clean_query_text(text: str) -> str:
    """Strip annotation-tool labels ("Query Text:", "X Text (Optional):") and normalise spaces."""
    while ":" in text:
        stripped = _LABEL.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return " ".join(text.split())


def query_type(text: str) -> str:
    """First word of the cleaned query, lower-cased, without punctuation ("" if none)."""
    match = _WORD.search(clean_query_text(text))
    return match.group(0).lower() if match else ""


# --- whole files -----------------------------------------------------------------------------


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DatasetError(
            f"{what} {path} {problem}; check the path (Ego4D keeps it in {_home(what)})"
        )
    try:
        with path.open("rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{what} {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "re-download or fix the file"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(
            f"{what} {path} cannot be read ({exc}); check the file and its permissions"
        ) from None


def _home(what: str) -> str:
    return "<root>/v2/ego4d.json" if what == "metadata file" else "<root>/v2/annotations/nlq_*.json"


def _videos_list(data: Any, path: Path, what: str) -> list:
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, list):
        raise DatasetError(
            f"{what} {path} has no top-level 'videos' list; pass an Ego4D "
            f"{'ego4d.json' if what == 'metadata file' else 'nlq_*.json'} file"
        )
    return videos


def _video_durations(metadata: Path) -> dict[str, float]:
    """video_uid -> duration_sec from an ego4d.json metadata file."""
    durations = {}
    for video in _videos_list(_read_json(metadata, "metadata file"), metadata, "metadata file"):
        if isinstance(video, dict) and isinstance(video.get("video_uid"), str):
            duration = _number(video.get("duration_sec"))
            if duration is not None:
                durations[video["video_uid"]] = duration
    return durations


def _video_names(videos: Path) -> dict[str, os.DirEntry]:
    """Entries of the videos folder by name, listed once instead of one stat per clip."""
    if not videos.is_dir():
        raise DatasetError(
            f"videos folder {videos} does not exist; pass the folder holding <clip_uid>.mp4 "
            "(Ego4D v2/clips) or <video_uid>.mp4 (v2/full_scale) files"
        )
    with os.scandir(videos) as entries:
        return {entry.name: entry for entry in entries}


def _entry_problem(entry: os.DirEntry) -> str | None:
    """None for a video file, or what is wrong with the entry (a folder, a broken link or a
    link loop). A plain file is known from the listing; only links cost a stat, and only the
    entries a clip uses are looked at."""
    try:
        if entry.is_file():
            return None
        if entry.is_dir():
            return "is a folder, not a video file"
        if entry.is_symlink():
            return "is a broken symbolic link"
        return "is not a regular file"
    except OSError as exc:  # ELOOP: a link that points at itself, or round in a circle
        return f"cannot be opened ({exc.strerror or exc})"


# --- the loader ------------------------------------------------------------------------------


def load_nlq(
    annotations: Path, videos: Path, metadata: Path | None = None, limit: int | None = None
) -> Dataset:
    """Load an Ego4D NLQ annotation file; `limit` caps the number of usable queries (file order).

    Queries of `nlq_test_unannotated*.json` files (or of videos whose split is "test") get no
    ground truth. `metadata` (ego4d.json) completes clip lengths and checks them against videos.
    """
    annotations, videos = Path(annotations), Path(videos)
    if limit is not None and limit < 0:
        raise DatasetError(f"limit {limit} is negative; pass a number of queries >= 0, or none")
    data = _read_json(annotations, "annotation file")
    records = _videos_list(data, annotations, "annotation file")
    durations = _video_durations(Path(metadata)) if metadata is not None else {}
    loader = _Loader(videos, _video_names(videos), durations, limit)
    loader.unannotated_file = "unannotated" in annotations.name
    loader.load(records)
    version = data.get("version")
    return Dataset(
        loader.clips, loader.queries, loader.skipped, None if version is None else str(version)
    )


def load_answer_windows(annotations: Path) -> Dataset:
    """Clips and queries of an annotation file without looking for its videos: what a prior
    learns from (answer windows and clip lengths). Records without a window are skipped."""
    annotations = Path(annotations)
    data = _read_json(annotations, "annotation file")
    loader = _WindowsOnly(Path(), frozenset(), {}, None)
    loader.load(_videos_list(data, annotations, "annotation file"))
    version = data.get("version")
    return Dataset(
        loader.clips, loader.queries, loader.skipped, None if version is None else str(version)
    )


@dataclass
class _Loader:
    videos: Path
    names: dict[str, os.DirEntry]
    durations: dict[str, float]
    limit: int | None
    unannotated_file: bool = False
    unannotated: bool = False  # the video being read has no answer windows
    clips: dict[str, Clip] = field(default_factory=dict)
    queries: list[Query] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    seen: set[tuple[str, str, int]] = field(default_factory=set)

    def full(self) -> bool:
        return self.limit is not None and len(self.queries) >= self.limit

    def skip(self, reason: str, detail: str, clip=None, annotation=None, idx=None) -> None:
        self.skipped.append(Skipped(clip, annotation, idx, reason, detail))

    def load(self, records: list) -> None:
        for video in records:
            if self.full():
                return
            if not isinstance(video, dict) or not isinstance(video.get("clips", []), list):
                self.skip("bad_record", f"video entry has no clips list: {_brief(video)}")
                continue
            self.unannotated = self.unannotated_file or video.get("split") == "test"
            for raw_clip in video.get("clips", []):
                if self.full():
                    return
                self.load_clip(video, raw_clip)

    def load_clip(self, video: dict, raw: Any) -> None:
        if not isinstance(raw, dict) or not isinstance(raw.get("annotations", []), list):
            self.skip("bad_record", f"clip entry has no annotations list: {_brief(raw)}")
            return
        clip_uid = _str(raw.get("clip_uid"))
        try:
            clip, problem = self.make_clip(video, raw, clip_uid), None
        except _Skip as exc:
            clip, problem = None, exc
        for annotation in raw.get("annotations", []):
            if self.full():
                return
            self.load_annotation(clip_uid, clip, problem, annotation)

    def load_annotation(self, clip_uid, clip: Clip | None, problem: _Skip | None, raw) -> None:
        if not isinstance(raw, dict) or not isinstance(raw.get("language_queries", []), list):
            detail = f"annotation entry has no language_queries list: {_brief(raw)}"
            self.skip("bad_record", detail, clip_uid)
            return
        annotation_uid = _str(raw.get("annotation_uid"))
        for query_idx, entry in enumerate(raw.get("language_queries", [])):
            if self.full():
                return
            try:
                query = self.make_query(clip_uid, clip, problem, annotation_uid, query_idx, entry)
            except _Skip as exc:
                self.skip(exc.reason, exc.detail, clip_uid, annotation_uid, query_idx)
                continue
            self.queries.append(query)
            self.clips.setdefault(query.clip_uid, clip)

    def make_clip(self, video: dict, raw: dict, clip_uid: str | None) -> Clip:
        if clip_uid is None:
            raise _Skip("missing_fields", "clip has no clip_uid")
        video_uid = _str(video.get("video_uid"))
        _check_clip_times(raw, clip_uid)
        start = _number(raw.get("video_start_sec"))
        duration = self.clip_duration(raw, clip_uid, video_uid, start)
        path, offset = self.find_video(clip_uid, video_uid, start)
        return Clip(clip_uid, video_uid, path, offset, duration, _str(video.get("split")))

    def clip_duration(self, raw: dict, clip_uid: str, video_uid, video_start) -> float:
        duration = _span(raw, "clip_start_sec", "clip_end_sec")
        if duration is None:
            duration = _span(raw, "video_start_sec", "video_end_sec")  # early v1 clips
        video_len = self.durations.get(video_uid) if video_uid else None
        if duration is None and video_len is not None and video_start is not None:
            duration = video_len - video_start  # completed from ego4d.json
        if duration is None or duration <= 0:
            detail = f"clip {clip_uid} has no positive length (clip_* or video_*_sec fields)"
            raise _Skip("missing_fields", detail)
        clip_end = (video_start or 0.0) + duration
        if video_len is not None and clip_end > video_len + CLIP_TOLERANCE_SEC:
            detail = f"clip {clip_uid} ends at {seconds(clip_end)} s, after its video {video_uid}"
            raise _Skip("bad_record", f"{detail} ends ({seconds(video_len)} s in the metadata)")
        return duration

    def find_video(self, clip_uid: str, video_uid, video_start) -> tuple[Path, float]:
        if f"{clip_uid}.mp4" in self.names:
            return self.usable(f"{clip_uid}.mp4"), 0.0
        if video_uid is not None and f"{video_uid}.mp4" in self.names:
            if video_start is None:
                detail = f"clip {clip_uid} has no video_start_sec to place it in {video_uid}.mp4"
                raise _Skip("missing_fields", f"{detail}; provide {clip_uid}.mp4")
            return self.usable(f"{video_uid}.mp4"), video_start
        full = f" nor {video_uid}.mp4" if video_uid else ""
        raise _Skip("missing_video", f"neither {clip_uid}.mp4{full} is in {self.videos}")

    def usable(self, name: str) -> Path:
        problem = _entry_problem(self.names[name])
        if problem is not None:
            detail = f"{self.videos / name} {problem}"
            raise _Skip("bad_video", f"{detail}: replace it with the video file")
        return self.videos / name

    def make_query(self, clip_uid, clip, problem, annotation_uid, query_idx, raw) -> Query:
        if not isinstance(raw, dict):
            raise _Skip("bad_record", f"language query is not an object: {_brief(raw)}")
        text = clean_query_text(raw["query"]) if isinstance(raw.get("query"), str) else ""
        if not text:
            raise _Skip("no_query_text", "language query has no query text")
        if annotation_uid is None:
            raise _Skip("missing_fields", "annotation has no annotation_uid")
        gt_start, gt_end = self.window(raw)
        if problem is not None:
            raise problem
        if gt_start is not None:
            _check_window(gt_start, gt_end, clip.duration_sec)
        key = (clip_uid, annotation_uid, query_idx)
        if key in self.seen:
            raise _Skip("bad_record", f"duplicate query {clip_uid}/{annotation_uid}/{query_idx}")
        self.seen.add(key)
        extra = _extra(raw)
        if raw["query"] != text:  # kept as written for the original pipeline's query categories
            extra["query_raw"] = raw["query"]
        return Query(*key, text, _template(raw), gt_start, gt_end, extra)

    def window(self, raw: dict) -> tuple[float | None, float | None]:
        if self.unannotated:
            return None, None
        return _time(raw, "clip_start_sec"), _time(raw, "clip_end_sec")


def _time(raw: dict, key: str) -> float:
    """A time field of a language query, or a _Skip saying what is wrong with it."""
    if key not in raw:
        raise _Skip("missing_fields", f"language query has no {key}")
    value = raw[key]
    number = _number(value)
    if number is not None:
        return number
    if value is None:
        what = "null"
    elif isinstance(value, int) and not isinstance(value, bool):
        what = "too large a number"
    elif isinstance(value, float):  # json.load reads NaN and Infinity
        what = "NaN" if math.isnan(value) else "infinite"
    else:
        what = f"{_brief(value)}, not a number"
    raise _Skip("bad_time", f"language query's {key} is {what}")


def _check_clip_times(raw: dict, clip_uid: str) -> None:
    """A clip's times that are numbers lie in 0 .. MAX_SEC (a negative start would be sought
    before the video begins; a huge end is not a length any video has)."""
    for key in CLIP_TIMES:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        number = _number(value)
        if number is None:
            what = "too large a number" if isinstance(value, int) else "not finite"
        elif not 0 <= number <= MAX_SEC:
            what = "negative" if number < 0 else f"{seconds(number)} s, past any video's length"
        else:
            continue
        raise _Skip("bad_time", f"clip {clip_uid}'s {key} is {what}: fix the record")


def seconds(value: float) -> str:
    """A time for a message: two decimals, or three significant digits when it is huge."""
    return f"{value:.2f}" if abs(value) < 1e6 else f"{value:.3g}"


def _check_window(start: float, end: float, duration: float) -> None:
    window = f"answer window {seconds(start)} s .. {seconds(end)} s"
    if end < start:
        raise _Skip("inverted_window", f"{window} ends before it starts")
    if start < 0 or end > duration + WINDOW_TOLERANCE_SEC:
        raise _Skip("window_outside_clip", f"{window} is outside the {seconds(duration)} s clip")


def require_queries(dataset: Dataset, annotations: Path, videos: Path) -> None:
    """Refuse a dataset without a single usable query: it would make an empty run."""
    if dataset.queries:
        return
    counts = dataset.skipped_counts()
    if not counts:
        raise DatasetError(
            f"annotation file {annotations} holds no language queries: pass an Ego4D NLQ file "
            "(videos -> clips -> annotations -> language_queries)"
        )
    skipped = ", ".join(f"{k} {v}" for k, v in counts.items())
    if max(counts, key=counts.get) == "missing_video":
        fix = f"check that {videos} holds the <clip_uid>.mp4 (or <video_uid>.mp4) files"
    else:
        fix = "fix the records named above"
    raise DatasetError(
        f"annotation file {annotations} gave no usable query (skipped: {skipped}): {fix}"
    )


# --- small helpers ---------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        value = float(value)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return value if math.isfinite(value) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _span(raw: dict, start_key: str, end_key: str) -> float | None:
    start, end = _number(raw.get(start_key)), _number(raw.get(end_key))
    return None if start is None or end is None else end - start


def _template(raw: dict) -> str | None:
    template = raw.get("template")
    if not isinstance(template, str):
        return None
    return " ".join(template.split()) or None


def _extra(raw: dict) -> dict:
    extra = {}
    for key in EXTRA_KEYS:
        value = raw.get(key)
        if value is None:
            continue
        if key in _CLEANED_EXTRA and isinstance(value, str):
            value = clean_query_text(value)
        if _json_safe(value):
            extra[key] = value
    return extra


def _json_safe(value: Any) -> bool:
    """Values parsed from JSON are JSON-safe except NaN and infinities, which json.load allows."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_json_safe(item) for item in value)
    if isinstance(value, dict):
        return all(_json_safe(item) for item in value.values())
    return True


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _WindowsOnly(_Loader):
    """A loader that never needs the video file (the clip's length comes from the record)."""

    def find_video(self, clip_uid: str, video_uid, video_start) -> tuple[Path, float]:
        return Path(f"{clip_uid}.mp4"), 0.0
