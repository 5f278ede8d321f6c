"""Choosing one response among a turn's n samples: rules that filter or pick, applied in order.

Filters (`format:intervals`) narrow the candidates and never remove them all; pickers (`first`,
`longest`, `consensus`) choose one. Whatever is left first after the last rule is kept.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import pairwise

RULES = ("first", "longest", "consensus", "format:intervals")
INTERVAL_TOLERANCE_SEC = 1.0  # a mentioned interval end may be rounded to the nearest second

_TIME = r"(\d+(?::\d{1,2}){0,2}(?:\.\d+)?)"
_UNIT = r"\s*(?:s|sec|secs|seconds?)?\s*"
_INTERVAL = re.compile(
    rf"\[?\s*{_TIME}{_UNIT}\]?\s*(?:-|–|—|to)\s*\[?\s*{_TIME}{_UNIT}\]?", re.IGNORECASE
)
_LIST_MARKER = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s+")
_NAME_SPLIT = re.compile(r"\s*(?::|\s[-–—]\s)\s*")
_LABELS = {"answer", "reason", "reasoning", "verdict", "description", "note", "summary"}
_MAX_NAME_WORDS = 8


def select(responses: list[str], rules: list[str], context: dict | None = None) -> int:
    """Index of the response to keep; `context` holds `timestamps` and optional `stages`."""
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
        "format:intervals": _intervals_filter,
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


# --- format:intervals --------------------------------------------------------------------------


def _intervals_filter(responses: list[str], candidates: list[int], context: dict) -> list[int]:
    timestamps = [float(t) for t in context.get("timestamps") or []]
    wanted = list(pairwise(timestamps))
    stages = context.get("stages")
    allowed = {_normalise(s) for s in stages} if stages else None
    kept = [i for i in candidates if _follows_format(responses[i], wanted, allowed)]
    return kept or candidates


def _follows_format(text: str, wanted: list[tuple[float, float]], allowed: set[str] | None) -> bool:
    mentioned = mentioned_intervals(text)
    if not all(_is_mentioned(interval, mentioned) for interval in wanted):
        return False
    return allowed is None or all(_normalise(n) in allowed for n in parse_stage_names(text))


def _is_mentioned(interval: tuple[float, float], mentioned: list[tuple[float, float]]) -> bool:
    start, end = interval
    tol = INTERVAL_TOLERANCE_SEC
    return any(abs(a - start) <= tol and abs(b - end) <= tol for a, b in mentioned)


def mentioned_intervals(text: str) -> list[tuple[float, float]]:
    """Every `a - b` interval in the text (`12s - 30s`, `[12s] - [30s]`, `0:12 to 0:30`, ...)."""
    return [(_seconds(a), _seconds(b)) for a, b in _INTERVAL.findall(text)]


def _seconds(value: str) -> float:
    total = 0.0
    for part in value.split(":"):
        total = total * 60 + float(part)
    return total


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
    line = _LIST_MARKER.sub("", line).strip()
    match = _INTERVAL.match(line)
    if match:
        line = re.sub(r"^\s*[:,-]?\s*", "", line[match.end() :])
    parts = _NAME_SPLIT.split(line, maxsplit=1)
    if len(parts) < 2 or not parts[1].strip():
        return None
    name = parts[0].strip(" *_#`\"'").strip()
    if not re.search(r"[A-Za-z]", name) or len(name.split()) > _MAX_NAME_WORDS:
        return None
    if name.lower() in _LABELS or _INTERVAL.search(name):
        return None
    return name
