"""Choosing the window a recursive zoom narrows to, from the segments a turn was shown.

Two rules: the model's own choice (the segment it judged Relevant with the highest confidence,
ties going to the earliest) and the oracle's (the segment holding the ground truth, as the
original pipeline did). When no window can be chosen the choice says why, so the zoom ends
with a recorded reason instead of looping or guessing.
"""

from __future__ import annotations

from dataclasses import dataclass

from egoqa.answers import grammar

Window = tuple[float, float]
MATCH_TOLERANCE_SEC = 1.0  # a block's range may round the shot's ends to whole seconds

NO_VERDICT = "no_verdict"  # the response holds no parseable verdict block
NOTHING_RELEVANT = "nothing_relevant"  # blocks were read, none Relevant for a shown segment
GROUND_TRUTH_OUTSIDE = "ground_truth_outside"  # the oracle's ground truth misses the window


@dataclass(frozen=True)
class ZoomChoice:
    """The chosen window (clip seconds), or None and the reason the zoom stops."""

    window: Window | None
    reason: str | None = None
    confidence: float | None = None


def _segment_of(span: Window, segments: list[Window]) -> Window | None:
    """The shown segment a block names: the one its range matches, else the one it overlaps
    most; None when it overlaps none."""
    start, end = span
    tol = MATCH_TOLERANCE_SEC
    for seg in segments:
        if abs(seg[0] - start) <= tol and abs(seg[1] - end) <= tol:
            return seg
    overlaps = [(min(end, b) - max(start, a), -i) for i, (a, b) in enumerate(segments)]
    best = max(overlaps, default=(0.0, 0))
    return segments[-best[1]] if best[0] > 0 else None


def model_choice(response: str | None, segments: list[Window]) -> ZoomChoice:
    """The segment whose block has verdict Relevant and the highest confidence score (a block
    without a score ranks below any scored one); ties go to the earliest segment."""
    blocks = [b for b in grammar.blocks(response) if b.verdict is not None]
    if not blocks:
        return ZoomChoice(None, NO_VERDICT)
    candidates = []
    for block in blocks:
        seg = _segment_of(block.spans[0][:2], segments) if block.verdict == "relevant" else None
        if seg is not None:
            score = block.confidence if block.confidence is not None else float("-inf")
            candidates.append((-score, seg[0], seg, block.confidence))
    if not candidates:
        return ZoomChoice(None, NOTHING_RELEVANT)
    _, _, seg, confidence = min(candidates)
    return ZoomChoice(seg, None, confidence)


def oracle_choice(segments: list[Window], gt_start: float, gt_end: float) -> ZoomChoice:
    """The segment that holds the whole ground truth (the earliest, if two share its edge);
    where it spans several, the run of segments it overlaps."""
    for seg in segments:
        if seg[0] <= gt_start and gt_end <= seg[1]:
            return ZoomChoice(seg)
    touched = [s for s in segments if s[0] < gt_end and gt_start < s[1]]
    if not touched:
        return ZoomChoice(None, GROUND_TRUTH_OUTSIDE)
    return ZoomChoice((min(s[0] for s in touched), max(s[1] for s in touched)))
