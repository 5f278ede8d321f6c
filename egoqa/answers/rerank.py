"""An answer read as a reordering of a grounding model's proposals (`media = "proposals"` turns):
each window the model gives names the proposal it overlaps most.
"""

from __future__ import annotations

from egoqa.answers.metrics import Segment, tiou

MATCH_IOU = 0.5  # a window in the answer names the proposal it overlaps at least this much


def rerank(answer: list[Segment], proposals: list[list[float]]) -> list[Segment]:
    """The proposals reordered by the answer: each window of the answer (best first) names the
    proposal it overlaps most (tIoU at least MATCH_IOU); the proposals it never named follow in
    the specialist's order. Always every proposal, once each."""
    order: list[int] = []
    confidence: dict[int, float | None] = {}
    for seg in answer:
        ious = [tiou((seg.start, seg.end), (s, e)) for s, e in proposals]
        best = max(range(len(proposals)), key=lambda i: ious[i], default=None)
        if best is not None and ious[best] >= MATCH_IOU and best not in order:
            order.append(best)
            confidence[best] = seg.confidence
    order += [i for i in range(len(proposals)) if i not in order]
    return [Segment(*proposals[i], confidence.get(i)) for i in order]
