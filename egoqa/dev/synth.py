"""Synthetic Ego4D-NLQ-format datasets with rendered H.264 clips, for tests, demos and benchmarks.

Every frame carries its index as large black/white blocks, so tests can tell exactly which
frames a decoder or sampler returned, even after compression and downscaling. Clips may have
hard cuts at known times (each shot another background), for shot detection.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from egoqa.errors import DatasetError, VideoError

if TYPE_CHECKING:
    import numpy

# The index band: CODE_ROWS rows of CODE_COLS blocks across the top of the frame, most
# significant bit first. Each block is 1/12 of the width and 1/8 of the height, large enough
# to survive H.264 and a resize to a 112 px long edge.
CODE_COLS = 12
CODE_ROWS = 2
CODE_BITS = CODE_COLS * CODE_ROWS
_ROW_FRACTION = 1 / 8
_AMBIGUOUS = (70, 185)  # block means between these are neither black nor white

_RENDER_KEY = "comment"  # mp4 metadata tag that records the render parameters


@dataclass(frozen=True)
class SynthPaths:
    """Where `write_synth_dataset` put things."""

    root: Path
    annotations: Path
    videos: Path
    metadata: Path
    cuts: dict[str, tuple[float, ...]] = field(default_factory=dict)  # clip uid -> clip seconds
    test_annotations: Path | None = None  # nlq_test_unannotated.json, when asked for


# --- rendering ---------------------------------------------------------------------------------


def render_clip(
    path: Path,
    duration_sec: float,
    *,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    gop: int | None = None,
    codec: str = "libx264",
    seed: int = 0,
    cuts: tuple[float, ...] = (),
) -> Path:
    """Render a deterministic H.264 (yuv420p) clip whose frames carry their index; return `path`.

    `size` is (width, height); `gop` fixes the keyframe interval (no scene-cut keyframes).
    `cuts` are hard cuts (seconds, snapped to the frame grid): the frame at each starts a shot
    with another background. The file is written next to `path` and renamed into place, so a
    crash never leaves a half-written clip behind.
    """
    import av

    path = Path(path)
    width, height = size
    if width % 2 or height % 2:
        raise VideoError(f"clip size {width}x{height} is odd; yuv420p needs even width and height")
    count = frame_count(duration_sec, fps)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.mp4")
    params = _render_params(duration_sec, fps, size, gop, codec, seed, cuts)
    painter = _FramePainter(width, height, fps, seed, cuts)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            container.metadata[_RENDER_KEY] = params
            stream = _add_video_stream(container, codec, fps, width, height, gop)
            for index in range(count):
                frame = av.VideoFrame.from_ndarray(painter.paint(index), format="rgb24")
                frame.pts = index
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def frame_count(duration_sec: float, fps: int) -> int:
    """Number of frames `render_clip` writes for a duration (at least one)."""
    return max(1, round(duration_sec * fps))


def _add_video_stream(container, codec: str, fps: int, width: int, height: int, gop: int | None):
    options = {"preset": "veryfast"} if codec == "libx264" else {}
    if gop is not None and codec == "libx264":
        options["x264-params"] = f"keyint={gop}:min-keyint={gop}:scenecut=0"
    stream = container.add_stream(codec, rate=fps, options=options)
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.codec_context.thread_count = 1
    if gop is not None:
        stream.codec_context.gop_size = gop
    return stream


def _render_params(duration_sec, fps, size, gop, codec, seed, cuts=()) -> str:
    fields = {"duration_sec": round(float(duration_sec), 6), "fps": fps, "size": list(size)}
    fields.update(gop=gop, codec=codec, seed=seed, format="egoqa-synth-1")
    if cuts:  # absent without cuts, so clips rendered before cuts existed stay valid
        fields["cuts"] = [round(float(c), 6) for c in cuts]
    return json.dumps(fields, sort_keys=True)


def is_rendered(path: Path, duration_sec: float, **render_kwargs) -> bool:
    """True if `path` is a complete clip rendered by `render_clip` with these parameters."""
    import av

    defaults = {"fps": 10, "size": (320, 240), "gop": None, "codec": "libx264", "seed": 0}
    kw = {"cuts": (), **defaults, **render_kwargs}
    want = _render_params(
        duration_sec, kw["fps"], kw["size"], kw["gop"], kw["codec"], kw["seed"], kw["cuts"]
    )
    if not Path(path).is_file():
        return False
    try:
        with av.open(str(path)) as container:
            return container.metadata.get(_RENDER_KEY) == want
    except (av.FFmpegError, OSError):
        return False


class _FramePainter:
    """Paints frame `i`: its shot's gradient, moving disc, index band, timestamp text."""

    def __init__(self, width: int, height: int, fps: int, seed: int, cuts=()) -> None:
        import numpy as np
        from PIL import ImageFont

        rng = random.Random(seed)
        self.width, self.height, self.fps = width, height, fps
        self.band = math.ceil(height * _ROW_FRACTION) * CODE_ROWS
        self.backgrounds = [_gradient(np, width, height, rng)]
        self.backgrounds += [_shot_gradient(np, width, height, k) for k in range(1, len(cuts) + 1)]
        self.cut_frames = sorted(round(c * fps) for c in cuts)
        self.disc_colour = tuple(rng.randrange(40, 256) for _ in range(3))
        self.phase = rng.uniform(0, 2 * math.pi)
        self.font = ImageFont.load_default(size=max(10, height // 12))

    def paint(self, index: int) -> numpy.ndarray:
        import numpy as np
        from PIL import Image, ImageDraw

        shot = sum(index >= frame for frame in self.cut_frames)
        image = Image.fromarray(self.backgrounds[shot])
        draw = ImageDraw.Draw(image)
        self._draw_disc(draw, index)
        text = f"t={index / self.fps:.2f}s  #{index}"
        draw.text((4, self.band + 4), text, fill=(255, 255, 255), font=self.font)
        pixels = np.asarray(image).copy()
        _burn_index(pixels, index)
        return pixels

    def _draw_disc(self, draw, index: int) -> None:
        free = self.height - self.band
        radius = max(4, min(self.width, free) // 6)
        t = index / self.fps
        cx = self.width / 2 + (self.width / 2 - radius) * math.sin(0.9 * t + self.phase)
        cy = self.band + free / 2 + (free / 2 - radius) * math.sin(1.3 * t)
        box = (cx - radius, cy - radius, cx + radius, cy + radius)
        draw.ellipse(box, fill=self.disc_colour)


def _gradient(np, width: int, height: int, rng: random.Random):
    top = np.array([rng.randrange(0, 160) for _ in range(3)], dtype=np.float32)
    bottom = np.array([rng.randrange(0, 160) for _ in range(3)], dtype=np.float32)
    return _ramp(np, top, bottom, width, height)


def _ramp(np, top, bottom, width: int, height: int):
    ramp = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    column = top + (bottom - top) * ramp
    return np.broadcast_to(column, (height, width, 3)).astype(np.uint8).copy()


def _shot_gradient(np, width: int, height: int, shot: int):
    """Shot k's background: the hue turns by ~137 degrees a shot and the brightness alternates
    (the first shot's random gradient is dark), so every cut changes hue and luminance a lot."""
    value = 0.92 if shot % 2 else 0.22
    hue = (0.13 + 0.382 * shot) % 1.0
    top = np.array(colorsys.hsv_to_rgb(hue, 0.8, value), dtype=np.float32) * 255
    bottom = np.array(colorsys.hsv_to_rgb(hue, 0.55, value * 0.85), dtype=np.float32) * 255
    return _ramp(np, top, bottom, width, height)


def _cell_bounds(height: int, width: int, bit: int) -> tuple[int, int, int, int]:
    row, col = divmod(bit, CODE_COLS)
    y0, y1 = round(row * height * _ROW_FRACTION), round((row + 1) * height * _ROW_FRACTION)
    x0, x1 = round(col * width / CODE_COLS), round((col + 1) * width / CODE_COLS)
    return y0, y1, x0, x1


def _burn_index(pixels, index: int) -> None:
    if not 0 <= index < 2**CODE_BITS:
        raise VideoError(
            f"frame index {index} does not fit in {CODE_BITS} bits; render a shorter clip"
        )
    height, width = pixels.shape[:2]
    for bit in range(CODE_BITS):
        y0, y1, x0, x1 = _cell_bounds(height, width, bit)
        on = (index >> (CODE_BITS - 1 - bit)) & 1
        pixels[y0:y1, x0:x1] = 255 if on else 0


def read_frame_index(frame: numpy.ndarray) -> int:
    """Decode the frame index burned in by `render_clip` from a decoded RGB (or grey) frame.

    Works on resized copies of the frame too (down to a 112 px long edge and below).
    """
    import numpy as np

    pixels = np.asarray(frame, dtype=np.float32)
    if pixels.ndim == 3:
        pixels = pixels.mean(axis=2)
    height, width = pixels.shape[:2]
    index = 0
    for bit in range(CODE_BITS):
        index = (index << 1) | _read_bit(pixels, height, width, bit)
    return index


def _read_bit(pixels, height: int, width: int, bit: int) -> int:
    y0, y1, x0, x1 = _cell_bounds(height, width, bit)
    # Sample the middle half of the block: its edges blur under compression and resizing.
    dy, dx = max(1, (y1 - y0) // 4), max(1, (x1 - x0) // 4)
    level = float(pixels[y0 + dy : y1 - dy, x0 + dx : x1 - dx].mean())
    if _AMBIGUOUS[0] < level < _AMBIGUOUS[1]:
        raise VideoError(
            f"frame has no readable index band (block {bit} is grey, level {level:.0f}); "
            "pass an RGB frame of a clip rendered by egoqa.dev.synth.render_clip"
        )
    return int(level >= 128)


# --- datasets --------------------------------------------------------------------------------

# The 13 real NLQ templates with their share of v2 val, and a query text maker for each.
TEMPLATES: tuple[tuple[str, float, str], ...] = (
    ("Objects: Where is object X before / after event Y?", 16.5, "Where was the {x} before I {y}?"),
    ("Place: Where did I put X?", 15.9, "Where did I put the {x}?"),
    ("Objects: Where is object X?", 12.1, "Where is the {x}?"),
    ("Objects: What did I put in X?", 12.0, "What did I put in the {x}?"),
    ("Objects: How many X’s? (quantity question)", 8.5, "How many {x}s did I see?"),
    ("Objects: In what location did I see object X ?", 7.9, "In what location did I see the {x}?"),
    ("Objects: What X did I Y?", 7.7, "What {x} did I {y}?"),
    ("Objects: What X is Y?", 7.3, "What colour is the {x}?"),
    ("Objects: State of an object", 5.2, "Did I leave the {x} open?"),
    (
        "People: Who did I interact with when I did activity X?",
        2.5,
        "Who did I talk to when I {y}?",
    ),
    ("People: Who did I talk to in location X?", 2.0, "Who did I talk to in the {x}?"),
    ("Objects: Where is my object X?", 1.6, "Where is my {x}?"),
    (
        "People: When did I talk to or interact with person with role X?",
        0.5,
        "When did I talk to the {x}?",
    ),
)
_OBJECTS = ("knife", "cup", "phone", "drawer", "fridge", "bag", "screwdriver", "bowl", "kitchen")
_EVENTS = ("washed the dishes", "opened the door", "cut the onion", "picked up the box")
_CLIPS_PER_VIDEO = 2
_GAP_SEC = 5.0  # video time before, between and after clips inside one video


@dataclass(frozen=True)
class _Layout:
    video_uid: str
    clip_uids: tuple[str, ...]
    starts: tuple[float, ...]  # clip start inside the video, seconds
    duration_sec: float  # the whole video's length


def write_synth_dataset(
    root: Path,
    *,
    clips: int = 4,
    queries_per_clip: int | tuple[int, ...] = 3,
    duration_sec: float = 24.0,
    fps: int = 10,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
    full_scale: bool = False,
    quirks: bool = False,
    cuts_per_clip: int = 0,
    test_split: bool = False,
) -> SynthPaths:
    """Write an Ego4D-NLQ-shaped val split with rendered videos under `root`; idempotent.

    Videos already rendered with the same parameters are kept, and unchanged JSON files are not
    rewritten. `quirks` adds the record problems the loader must skip (see `_add_quirks`).
    `cuts_per_clip` gives every clip that many hard cuts at known times (`SynthPaths.cuts`,
    also in the annotation file's metadata).
    `test_split` also writes `nlq_test_unannotated.json`: the same clips and queries in the
    shape of the official test split, without answer windows (see `unannotated_split`).
    """
    root = Path(root)
    counts = _query_counts(clips, queries_per_clip)
    rng = random.Random(seed)
    layouts = _layouts(rng, clips, duration_sec, fps)
    annotation = _annotation_file(rng, layouts, counts, duration_sec, fps, seed)
    cuts = _clip_cuts(layouts, cuts_per_clip, duration_sec, fps, seed)
    if cuts:
        annotation["metadata"]["cuts"] = {uid: list(times) for uid, times in cuts.items()}
    videos_meta = [_video_metadata(layout, fps, size) for layout in layouts]
    if quirks:
        missing = _layouts(rng, 1, duration_sec, fps)[0]
        _add_quirks(rng, annotation, missing, duration_sec, fps)
        videos_meta.append(_video_metadata(missing, fps, size))
    test = root / "annotations" / "nlq_test_unannotated.json" if test_split else None
    paths = SynthPaths(
        root,
        root / "annotations" / "nlq_val.json",
        root / "videos",
        root / "ego4d.json",
        cuts,
        test,
    )
    _render_videos(paths.videos, layouts, duration_sec, fps, size, seed, full_scale, cuts)
    _write_json(paths.annotations, annotation)
    if test is not None:
        _write_json(test, unannotated_split(annotation))
    _write_json(
        paths.metadata, {"version": "v2", "description": "egoqa synthetic", "videos": videos_meta}
    )
    return paths


def _query_counts(clips: int, queries_per_clip: int | tuple[int, ...]) -> tuple[int, ...]:
    if isinstance(queries_per_clip, int):
        return (queries_per_clip,) * clips
    if len(queries_per_clip) != clips:
        raise DatasetError(
            f"queries_per_clip has {len(queries_per_clip)} counts for {clips} clips; "
            "give one count per clip, or a single number"
        )
    return tuple(queries_per_clip)


def _uid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _layouts(rng: random.Random, clips: int, duration_sec: float, fps: int) -> list[_Layout]:
    layouts = []
    for first in range(0, clips, _CLIPS_PER_VIDEO):
        n = min(_CLIPS_PER_VIDEO, clips - first)
        video_uid, clip_uids = _uid(rng), tuple(_uid(rng) for _ in range(n))
        starts = tuple(_GAP_SEC + k * (duration_sec + _GAP_SEC) for k in range(n))
        length = frame_count(starts[-1] + duration_sec + _GAP_SEC, fps) / fps
        layouts.append(_Layout(video_uid, clip_uids, starts, length))
    return layouts


def _annotation_file(rng, layouts, counts, duration_sec: float, fps: int, seed: int) -> dict:
    videos, index = [], 0
    for layout in layouts:
        entries = []
        for clip_uid, start in zip(layout.clip_uids, layout.starts, strict=True):
            queries = [_query(rng, start, duration_sec, fps) for _ in range(counts[index])]
            entries.append(_clip_entry(rng, clip_uid, start, duration_sec, fps, queries))
            index += 1
        videos.append({"video_uid": layout.video_uid, "split": "val", "clips": entries})
    meta = {"generator": "egoqa.dev.synth", "seed": seed}
    return {
        "version": "v2",
        "date": "2023-01-01",
        "description": "egoqa synthetic NLQ val",
        "metadata": meta,
        "videos": videos,
    }


def _clip_entry(rng, clip_uid: str, start: float, duration_sec: float, fps: int, queries) -> dict:
    end = start + duration_sec
    return {
        "clip_uid": clip_uid,
        "video_start_sec": start,
        "video_end_sec": end,
        "video_start_frame": round(start * fps),
        "video_end_frame": round(end * fps),
        "clip_start_sec": 0.0,
        "clip_end_sec": duration_sec,
        "clip_start_frame": 0,
        "clip_end_frame": round(duration_sec * fps),
        "source_clip_uid": _uid(rng),
        "annotations": [{"annotation_uid": _uid(rng), "language_queries": queries}],
    }


def _query(rng: random.Random, clip_start: float, duration_sec: float, fps: int) -> dict:
    template, _, pattern = rng.choices(TEMPLATES, weights=[t[1] for t in TEMPLATES])[0]
    x, y = rng.choice(_OBJECTS), rng.choice(_EVENTS)
    length = min(duration_sec, rng.choice((1.0, 2.0, 3.0, 4.0, 6.0, 8.0)))
    start = round(rng.uniform(0.0, duration_sec - length), 2)
    return _window_fields(clip_start, start, start + length, fps) | {
        "template": template,
        "query": pattern.format(x=x, y=y),
        "slot_x": x,
        "verb_x": "[verb_not_applicable]",
        "slot_y": y if "{y}" in pattern else "",
        "verb_y": y.split()[0] if "{y}" in pattern else "[verb_not_applicable]",
        "raw_tags": [template, x, y],
    }


def _window_fields(clip_start: float, start: float, end: float, fps: int) -> dict:
    return {
        "clip_start_sec": start,
        "clip_end_sec": end,
        "video_start_sec": clip_start + start,
        "video_end_sec": clip_start + end,
        "video_start_frame": round((clip_start + start) * fps),
        "video_end_frame": round((clip_start + end) * fps),
    }


def _add_quirks(rng, annotation: dict, missing: _Layout, duration_sec: float, fps: int) -> None:
    """Append to the first clip: a query without text, a "Query Text:" prefixed query (usable),
    an inverted window, a window past the clip end; and add a clip whose video is missing."""
    first_clip = annotation["videos"][0]["clips"][0]
    start = first_clip["video_start_sec"]
    queries = [_query(rng, start, duration_sec, fps) for _ in range(4)]
    del queries[0]["query"]
    queries[1]["query"] = "Query Text:" + queries[1]["query"]
    queries[2].update(_window_fields(start, 3.0, 1.0, fps))
    queries[3].update(_window_fields(start, duration_sec - 1.0, duration_sec + 5.0, fps))
    first_clip["annotations"][0]["language_queries"].extend(queries)
    lost = [_query(rng, missing.starts[0], duration_sec, fps) for _ in range(2)]
    entry = _clip_entry(rng, missing.clip_uids[0], missing.starts[0], duration_sec, fps, lost)
    annotation["videos"].append({"video_uid": missing.video_uid, "split": "val", "clips": [entry]})


def unannotated_split(annotation: dict) -> dict:
    """An annotation file as the official `nlq_test_unannotated.json` has it: videos of split
    "test" whose language queries carry only their `query` text (none where the record has none),
    so query_idx still counts every entry."""
    videos = []
    for video in annotation["videos"]:
        clips = []
        for clip in video["clips"]:
            annotations = [
                {
                    "annotation_uid": a["annotation_uid"],
                    "language_queries": [
                        {k: q[k] for k in ("query",) if k in q} for q in a["language_queries"]
                    ],
                }
                for a in clip["annotations"]
            ]
            clips.append({**clip, "annotations": annotations})
        videos.append({**video, "split": "test", "clips": clips})
    meta = {**annotation["metadata"], "split": "test"}
    description = "egoqa synthetic NLQ test (unannotated)"
    return {**annotation, "description": description, "metadata": meta, "videos": videos}


def _video_metadata(layout: _Layout, fps: int, size: tuple[int, int]) -> dict:
    return {
        "video_uid": layout.video_uid,
        "duration_sec": layout.duration_sec,
        "video_metadata": {
            "fps": fps,
            "num_frames": frame_count(layout.duration_sec, fps),
            "video_codec": "h264",
            "display_resolution_width": size[0],
            "display_resolution_height": size[1],
        },
    }


def _clip_cuts(layouts, per_clip: int, duration_sec: float, fps: int, seed: int) -> dict:
    """`per_clip` cut times per clip (clip seconds on the frame grid), spread with some jitter;
    drawn from their own generator so the rest of the dataset does not change with them."""
    if per_clip <= 0:
        return {}
    rng, step = random.Random(f"egoqa-cuts-{seed}"), duration_sec / (per_clip + 1)
    out = {}
    for uid in (u for layout in layouts for u in layout.clip_uids):
        times = [(k + 1 + rng.uniform(-0.25, 0.25)) * step for k in range(per_clip)]
        out[uid] = tuple(round(t * fps) / fps for t in times)
    return out


def _render_videos(videos: Path, layouts, duration_sec, fps, size, seed, full_scale, cuts) -> None:
    jobs = []
    for number, layout in enumerate(layouts):
        if full_scale:
            starts = zip(layout.clip_uids, layout.starts, strict=True)
            video_cuts = [start + c for uid, start in starts for c in cuts.get(uid, ())]
            jobs.append((layout.video_uid, layout.duration_sec, seed * 1000 + number, video_cuts))
        else:
            for k, clip_uid in enumerate(layout.clip_uids):
                clip_seed = seed * 1000 + 2 * number + k
                jobs.append((clip_uid, duration_sec, clip_seed, cuts.get(clip_uid, ())))
    for name, length, clip_seed, clip_cuts in jobs:
        path = videos / f"{name}.mp4"
        params = {"fps": fps, "size": tuple(size), "seed": clip_seed}
        if clip_cuts:
            params["cuts"] = tuple(clip_cuts)
        if not is_rendered(path, length, **params):
            render_clip(path, length, **params)


def _write_json(path: Path, data: dict) -> None:
    text = json.dumps(data, indent=1, ensure_ascii=False) + "\n"
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_synth_proposals(annotations: Path, out: Path, seed: int = 0, leave_out: int = 1) -> Path:
    """A grounding model's prediction file for a synthetic annotation file: five windows per
    query (NLQ prediction format), one of them near the answer (tIoU about 0.6-0.9) at a random
    rank, the others random. The first `leave_out` queries get none (a query without proposals
    is skipped by a run that reads them)."""
    from egoqa.plan.dataset import load_answer_windows

    data = load_answer_windows(annotations)
    rng = random.Random(seed)
    results = []
    for q in data.queries[leave_out:]:
        duration = data.clips[q.clip_uid].duration_sec
        length = q.gt_end - q.gt_start
        shift = rng.uniform(0.05, 0.2) * max(length, 1.0)
        near = [max(0.0, q.gt_start - shift), min(duration, q.gt_end + shift)]
        windows = [sorted(rng.uniform(0.0, duration) for _ in range(2)) for _ in range(4)]
        windows.insert(rng.randrange(5), near)
        times = [[round(s, 2), round(e, 2)] for s, e in windows]
        ids = {"clip_uid": q.clip_uid, "annotation_uid": q.annotation_uid}
        results.append(ids | {"query_idx": q.query_idx, "predicted_times": times})
    doc = {"version": "1.0", "challenge": "ego4d_nlq_challenge", "results": results}
    _write_json(Path(out), doc)
    return Path(out)
