"""Choosing one response among a turn's n samples: rules that filter or pick, applied in order.

Filters (`format:intervals`, `format:verdicts`) narrow the candidates; when no candidate passes,
the longest is kept, as the original pipeline did. Pickers (`first`, `longest`, `consensus`)
choose one. Whatever is left first after the last rule is kept. Times, verdicts and confidence
scores are read with `egoqa.answers.grammar`, the grammar the scorer uses.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise

from egoqa.answers import grammar

RULES = ("first", "longest", "consensus", "format:intervals", "format:verdicts")
INTERVAL_TOLERANCE_SEC = 1.0  # a mentioned interval end may be rounded to the nearest second

_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
_NAME_SPLIT = re.compile(r"\s*(?::|\s[-–—]\s)\s*")
_ARROW = re.compile(r"\s*(?:->|→|=>)\s*")
_LABELS = {"answer", "reason", "reasoning", "verdict", "description", "note", "summary"}
_MAX_NAME_WORDS = 8
_NAME_EDGES = " *_#`\"'[]()"


def select(responses: list[str], rules: list[str], context: dict | None = None) -> int:
    """Index of the response to keep.

    `context` holds the prompted `intervals` (or the frame `timestamps` whose consecutive pairs
    are the intervals) and, optionally, the `stages` the scenario turn listed.
    """
    if not responses:
        raise ValueError("select() needs at least one response")
    context = context or {}
    candidates = list(range(len(responses)))
    for rule in rules:
        candidates = _rule(rule)(responses, candidates, context)
    return candidates[0]


def _rule(name: str) -> Callable[[list[str], list[int], dict], list[int]]:
    rules = {
        "first": lambda responses, c, ctx: c[:1],
        "longest": lambda responses, c, ctx: [_longest(responses, c)],
        "consensus": lambda responses, c, ctx: [_consensus(responses, c)],
        "format:intervals": _filter(_follows_intervals),
        "format:verdicts": _filter(_follows_verdicts),
    }
    if name not in rules:
        raise ValueError(f"unknown selection rule {name!r}: use one of {', '.join(RULES)}")
    return rules[name]


def _longest(responses: list[str], candidates: list[int]) -> int:
    return max(candidates, key=lambda i: (len(responses[i].strip()), -i))


def _consensus(responses: list[str], candidates: list[int]) -> int:
    """The candidate closest to all others (total normalised edit distance); ties: longest, first."""
    from rapidfuzz.distance import Levenshtein

    texts = {i: _normalise(responses[i]) for i in candidates}

    def total(i: int) -> float:
        return sum(
            Levenshtein.normalized_distance(texts[i], texts[j]) for j in candidates if j != i
        )

    scores = {i: round(total(i), 9) for i in candidates}  # rounding: ties must compare equal
    best = min(scores.values())
    return _longest(responses, [i for i in candidates if scores[i] == best])


def _normalise(text: str) -> str:
    return " ".join(text.lower().split())


# --- format filters ----------------------------------------------------------------------------


def _filter(check: Callable[[str, list[tuple[float, float]], dict], bool]):
    def apply(responses: list[str], candidates: list[int], context: dict) -> list[int]:
        wanted = prompted_intervals(context)
        kept = [i for i in candidates if check(responses[i], wanted, context)]
        return kept or [_longest(responses, candidates)]

    return apply


def prompted_intervals(context: dict) -> list[tuple[float, float]]:
    """The intervals the prompt listed: given outright, or between consecutive frame times."""
    if context.get("intervals"):
        return [(float(a), float(b)) for a, b in context["intervals"]]
    return list(pairwise(float(t) for t in context.get("timestamps") or []))


def _follows_intervals(text: str, wanted: list[tuple[float, float]], context: dict) -> bool:
    mentioned = mentioned_intervals(text)
    if not all(_is_mentioned(interval, mentioned) for interval in wanted):
        return False
    stages = context.get("stages")
    if not stages:
        return True
    allowed = {_name_key(s) for s in stages}
    named = parse_transition_stages(text) or parse_stage_names(text)
    return all(_name_key(n) in allowed for n in named)


def _follows_verdicts(text: str, wanted: list[tuple[float, float]], context: dict) -> bool:
    """Every prompted interval has exactly one block, with one verdict (Relevant or Irrelevant)
    and a confidence score."""
    found = grammar.blocks(text)
    for interval in wanted:
        mine = [b for b in found if any(_is_mentioned(interval, [s[:2]]) for s in b.spans)]
        if len(mine) != 1:
            return False
        block = mine[0]
        if block.verdicts != 1 or block.verdict not in ("relevant", "irrelevant"):
            return False
        if block.confidence is None:
            return False
    return bool(wanted) or any(b.verdicts for b in found)


def _is_mentioned(interval: tuple[float, float], mentioned: list[tuple[float, float]]) -> bool:
    start, end = interval
    tol = INTERVAL_TOLERANCE_SEC
    return any(abs(a - start) <= tol and abs(b - end) <= tol for a, b in mentioned)


def mentioned_intervals(text: str) -> list[tuple[float, float]]:
    """Every time range in the text, in the scorer's grammar (`12s - 30s`, `[40s] - [52s]`, ...)."""
    return grammar.mentioned_ranges(text)


# --- stage names -------------------------------------------------------------------------------


def parse_stage_names(text: str) -> list[str]:
    """Stage names from lines like `Stage name: description` or `1. Stage name - description`.

    A leading interval (`[0s] - [30s]: ...`) is skipped; label lines such as `Verdict: ...`
    and lines whose name part is only a time are not stages.
    """
    names = []
    for line in text.splitlines():
        name = _stage_name(line)
        if name and name not in names:
            names.append(name)
    return names


def _stage_name(line: str) -> str | None:
    line = grammar.normalize(line)
    end = grammar.leading_range_end(line)
    if end is not None:
        line = line[end:].lstrip(" :,-")
    line = _LIST_MARKER.sub("", line).strip()
    parts = _NAME_SPLIT.split(line, maxsplit=1)
    if len(parts) < 2 or not parts[1].strip() or parts[1].lstrip().startswith(">"):
        return None
    name = parts[0].strip(_NAME_EDGES).strip()
    if not re.search(r"[A-Za-z]", name) or len(name.split()) > _MAX_NAME_WORDS:
        return None
    if name.lower() in _LABELS or grammar.line_spans(name):
        return None
    return name


def parse_transition_stages(text: str) -> list[str]:
    """Stage names of transition lines, `30s - 90s: [Cooking] -> [Cleaning]`, in order, once each.

    A line counts when it opens with a time range and names stages joined by an arrow.
    """
    names: list[str] = []
    for line in grammar.normalize(text).split("\n"):
        end = grammar.leading_range_end(line)
        if end is None:
            continue
        rest = line[end:].lstrip(" :,-")
        parts = _ARROW.split(rest)
        if len(parts) < 2:
            continue
        for part in parts:
            name = part.strip().strip(_NAME_EDGES).strip()
            if name and name not in names:
                names.append(name)
    return names


def _name_key(name: str) -> str:
    return " ".join(name.strip(_NAME_EDGES + ".,;:").lower().split())
