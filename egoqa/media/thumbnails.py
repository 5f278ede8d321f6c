"""Frame thumbnails for the run explorer: the frames each turn showed the model, as small JPEGs.

Each clip is decoded once for all the timestamps its turns used (decord, through
`frames.FrameDecoder`, imported only here), resized to a long edge of `EDGE` pixels. A clip whose
video cannot be read gets a note instead of thumbnails; the page never breaks on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from egoqa.errors import EgoqaError

EDGE = 128
QUALITY = 70


@dataclass
class ClipThumbs:
    """Thumbnail paths (relative to the site) by timestamp in ms, or why there are none."""

    paths: dict[int, str] = field(default_factory=dict)
    note: str | None = None


def timestamp_ms(t: float) -> int:
    return int(round(t * 1000))


def spread(timestamps: list[float], limit: int) -> list[float]:
    """At most `limit` of the distinct timestamps, evenly spread over them (first and last kept)."""
    distinct = sorted(set(timestamps))
    if len(distinct) <= limit:
        return distinct
    if limit == 1:
        return [distinct[len(distinct) // 2]]
    return [distinct[round(i * (len(distinct) - 1) / (limit - 1))] for i in range(limit)]


def write_clip_thumbs(
    decoder, clip: dict, timestamps: list[float], site: Path, folder: str
) -> ClipThumbs:
    """Decode `timestamps` of one clip and write `site/folder/<ms>.jpg`; a note if unreadable."""
    wanted = sorted({timestamp_ms(t) for t in timestamps})
    if not wanted:
        return ClipThumbs()
    try:
        frames = decoder.frames(
            Path(clip["video_path"]),
            clip["offset_sec"],
            [ms / 1000 for ms in wanted],
            EDGE,
            clip["duration_sec"],
        )
    except EgoqaError as exc:  # VideoError: missing, empty, truncated or undecodable
        return ClipThumbs(note=f"frames not shown: {exc}")
    return ClipThumbs(paths=_save(frames.array, wanted, site, folder))


def _save(array, wanted: list[int], site: Path, folder: str) -> dict[int, str]:
    from PIL import Image

    (site / folder).mkdir(parents=True, exist_ok=True)
    out = {}
    for ms, pixels in zip(wanted, array, strict=True):
        rel = f"{folder}/{ms}.jpg"
        Image.fromarray(pixels).save(site / rel, "JPEG", quality=QUALITY)
        out[ms] = rel
    return out


def new_decoder():
    """A frame decoder without a cache: each clip is read once anyway."""
    from egoqa.media.frames import FrameDecoder

    return FrameDecoder(cache_items=1)
