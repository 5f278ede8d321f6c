"""Parse predicted time segments out of model responses and score them against Ego4D NLQ.

Scores follow the original pipeline (coverage) and the official NLQ metric (Recall@k at
tIoU strictly above 0.3 / 0.5, mIoU of the top-1 window); every query counts.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

from egoqa.answers.grammar import Block, Span, blocks, has_verdicts
from egoqa.errors import EgoqaError

NLQ_VERSION = "1.0"
NLQ_CHALLENGE = "ego4d_nlq_challenge"
MISS_WINDOW = [0.0, 0.0]


@dataclass(frozen=True)
class Segment:
    """A predicted window in clip seconds; `confidence` is the model's own score, if it gave one."""

    start: float
    end: float
    confidence: float | None = None


class Outcome(str, Enum):  # noqa: UP042 -- StrEnum needs 3.11; the project supports 3.10
    """How the prediction relates to the ground-truth window, for failure breakdowns."""

    COVERED = "covered"
    OVERLAP = "overlap"
    TOO_EARLY = "too_early"
    TOO_LATE = "too_late"
    NO_SEGMENT = "no_segment"
    FAILED = "failed"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Scores:
    """Every metric of one query's prediction."""

    correct: bool
    iou_top1: float
    r1_03: bool
    r1_05: bool
    r5_03: bool
    r5_05: bool
    outcome: Outcome
    n_segments: int


class PredictionFileError(EgoqaError, ValueError):
    """The prediction file breaks the official Ego4D NLQ format; the message names the entry."""


# --- parsing -------------------------------------------------------------------------------
# The grammar (time ranges, verdicts, confidence scores) is egoqa.answers.grammar's, shared with the
# selection rules and the zoom choice.


def _rank_relevant(items: list[Block]) -> list[Block]:
    kept = [item for item in items if item.verdict == "relevant"]
    return sorted(kept, key=lambda it: (it.confidence is None, -(it.confidence or 0.0)))


def _clip(span: Span, duration: float | None) -> tuple[float, float] | None:
    start, end, literal_zero = span
    if duration is None or duration <= 0:
        return start, end
    if start > duration:
        return None
    clipped_start, clipped_end = max(0.0, start), min(end, float(duration))
    if clipped_start == clipped_end and not literal_zero:
        return None
    return clipped_start, clipped_end


def parse_segments(text: str | None, clip_duration: float | None = None) -> list[Segment]:
    """Predicted windows of a response, best first; [] when nothing parses.

    Where the response carries `Verdict:` lines, only Relevant intervals are kept, ranked by
    their confidence score (highest first, order of appearance for ties and missing scores).
    With a positive `clip_duration`, windows are clipped to the clip and those outside dropped.
    """
    if not text:
        return []
    items = blocks(text)
    if has_verdicts(text):
        items = _rank_relevant(items)
    segments: list[Segment] = []
    seen: set[tuple[float, float]] = set()
    for item in items:
        for span in item.spans:
            window = _clip(span, clip_duration)
            if window is not None and window not in seen:
                seen.add(window)
                segments.append(Segment(window[0], window[1], item.confidence))
    return segments


# --- scoring -------------------------------------------------------------------------------


def tiou(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Temporal IoU exactly as the official NLQ script computes it; 0.0 when the hull is empty."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = max(0.0, max(a[1], b[1]) - min(a[0], b[0]))
    return inter / union if union > 0 else 0.0


def _recall(ious: list[float], k: int, threshold: float) -> bool:
    return any(iou > threshold for iou in ious[:k])


def _outcome(segments: list[Segment], gt_start: float, gt_end: float, correct: bool) -> Outcome:
    if not segments:
        return Outcome.NO_SEGMENT
    if correct:
        return Outcome.COVERED
    if any(s.start < gt_end and s.end > gt_start for s in segments):
        return Outcome.OVERLAP
    # No window overlaps: each lies wholly before or after; the top-ranked one decides.
    return Outcome.TOO_EARLY if segments[0].end <= gt_start else Outcome.TOO_LATE


def score(segments: list[Segment], gt_start: float, gt_end: float) -> Scores:
    """Coverage, Recall@{1,5} at tIoU > {0.3, 0.5}, top-1 tIoU and outcome of one query."""
    ious = [tiou((s.start, s.end), (gt_start, gt_end)) for s in segments]
    correct = any(s.start <= gt_start and gt_end <= s.end for s in segments)
    return Scores(
        correct=correct,
        iou_top1=ious[0] if ious else 0.0,
        r1_03=_recall(ious, 1, 0.3),
        r1_05=_recall(ious, 1, 0.5),
        r5_03=_recall(ious, 5, 0.3),
        r5_05=_recall(ious, 5, 0.5),
        outcome=_outcome(segments, gt_start, gt_end, correct),
        n_segments=len(segments),
    )


def union_length(windows: Iterable) -> float:
    """Seconds covered by the union of windows ([start, end, ...] each; overlaps counted once)."""
    total, reach = 0.0, None
    for start, end, *_ in sorted(windows):
        if reach is None or start > reach:
            total, reach = total + (end - start), end
        elif end > reach:
            total, reach = total + (end - reach), end
    return total


def failed_scores() -> Scores:
    """The scores of a query whose job failed: a miss on every metric."""
    return Scores(False, 0.0, False, False, False, False, Outcome.FAILED, 0)


_OUTCOME_PREFERENCE = {
    Outcome.COVERED: 4,
    Outcome.OVERLAP: 3,
    Outcome.TOO_EARLY: 2,
    Outcome.TOO_LATE: 2,
    Outcome.NO_SEGMENT: 1,
    Outcome.FAILED: 0,
}


def _sample_rank(s: Scores) -> tuple:
    return (
        s.correct,
        s.r1_05,
        s.r1_03,
        s.r5_05,
        s.r5_03,
        s.iou_top1,
        _OUTCOME_PREFERENCE[s.outcome],
    )


def best_of_n(per_sample: list[Scores]) -> Scores:
    """Oracle over n samples of one query: a metric is hit when any sample hits it.

    The outcome and segment count are those of the best sample (first among equals).
    """
    if not per_sample:
        raise ValueError("best_of_n needs at least one sample; score a missing query as a miss")
    best = max(per_sample, key=_sample_rank)
    return Scores(
        correct=any(s.correct for s in per_sample),
        iou_top1=max(s.iou_top1 for s in per_sample),
        r1_03=any(s.r1_03 for s in per_sample),
        r1_05=any(s.r1_05 for s in per_sample),
        r5_03=any(s.r5_03 for s in per_sample),
        r5_05=any(s.r5_05 for s in per_sample),
        outcome=best.outcome,
        n_segments=best.n_segments,
    )


def summarize(rows: Iterable[Scores]) -> dict[str, float | int]:
    """Fractions over all rows (failed and unparsed rows are misses); mean_r1 is the leaderboard key."""
    rows = list(rows)
    n = len(rows)

    def fraction(values: Iterable[float]) -> float:
        return sum(values) / n if n else 0.0

    summary: dict[str, float | int] = {
        "n": n,
        "coverage": fraction(r.correct for r in rows),
        "r1_03": fraction(r.r1_03 for r in rows),
        "r1_05": fraction(r.r1_05 for r in rows),
        "r5_03": fraction(r.r5_03 for r in rows),
        "r5_05": fraction(r.r5_05 for r in rows),
    }
    summary["mean_r1"] = (summary["r1_03"] + summary["r1_05"]) / 2
    summary["miou"] = fraction(r.iou_top1 for r in rows)
    return summary


# --- official prediction file --------------------------------------------------------------


def nlq_prediction(
    clip_uid: str, annotation_uid: str, query_idx: int, segments: list[Segment], k: int = 5
) -> dict:
    """One entry of the official prediction file; a miss is the zero window [[0.0, 0.0]]."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    times = [[float(s.start), float(s.end)] for s in segments[:k]]
    return {
        "clip_uid": clip_uid,
        "annotation_uid": annotation_uid,
        "query_idx": int(query_idx),
        "predicted_times": times or [list(MISS_WINDOW)],
    }


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_header(obj: object) -> list:
    if not isinstance(obj, dict):
        raise PredictionFileError("prediction file must be a JSON object with a 'results' list")
    if obj.get("version") != NLQ_VERSION:
        raise PredictionFileError(f"'version' must be {NLQ_VERSION!r}, got {obj.get('version')!r}")
    if obj.get("challenge") != NLQ_CHALLENGE:
        raise PredictionFileError(
            f"'challenge' must be {NLQ_CHALLENGE!r}, got {obj.get('challenge')!r}"
        )
    results = obj.get("results")
    if not isinstance(results, list):
        raise PredictionFileError("'results' must be a list of per-query predictions")
    return results


def _check_entry(i: int, entry: object) -> tuple[str, str, int]:
    if not isinstance(entry, dict):
        raise PredictionFileError(f"results[{i}] must be an object, got {type(entry).__name__}")
    for key in ("clip_uid", "annotation_uid"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise PredictionFileError(f"results[{i}] needs a non-empty string {key!r}")
    idx = entry.get("query_idx")
    if not isinstance(idx, int) or isinstance(idx, bool):
        raise PredictionFileError(f"results[{i}] 'query_idx' must be an integer, got {idx!r}")
    times = entry.get("predicted_times")
    if not isinstance(times, list) or not times:
        raise PredictionFileError(
            f"results[{i}] 'predicted_times' must be a non-empty list; write a miss as [[0.0, 0.0]]"
        )
    for window in times:
        if not (isinstance(window, list) and len(window) == 2 and all(map(_is_number, window))):
            raise PredictionFileError(
                f"results[{i}] 'predicted_times' holds {window!r}; each must be [start, end] numbers"
            )
    return entry["clip_uid"], entry["annotation_uid"], idx


def _check_ids(ids: list[tuple[str, str, int]], ground_truth: list | None) -> None:
    duplicates = [key for key, count in Counter(ids).items() if count > 1]
    if duplicates:
        raise PredictionFileError(
            f"{len(duplicates)} queries predicted more than once, e.g. {duplicates[0]}"
        )
    if ground_truth is None:
        return
    expected, got = {tuple(g) for g in ground_truth}, set(ids)
    if missing := sorted(expected - got):
        raise PredictionFileError(
            f"{len(missing)} ground-truth queries have no prediction, e.g. {missing[0]}; "
            "write a miss as [[0.0, 0.0]]"
        )
    if extra := sorted(got - expected):
        raise PredictionFileError(
            f"{len(extra)} predictions are for queries not in the ground truth, e.g. {extra[0]}"
        )


def validate_nlq_predictions(
    obj: dict, ground_truth: list[tuple[str, str, int]] | None = None
) -> None:
    """Raise PredictionFileError (a ValueError) where the file breaks the official format.

    With `ground_truth` ids (clip_uid, annotation_uid, query_idx), every id must appear exactly once.
    """
    results = _check_header(obj)
    ids = [_check_entry(i, entry) for i, entry in enumerate(results)]
    _check_ids(ids, ground_truth)
