"""What responses say about time: the one grammar for time ranges, verdicts and confidence scores.

Every reader uses it: segment parsing for scoring (`answers.metrics`), the format filters of sample
selection (`selection`) and the choice of a zoom window (`zoom`). Ranges are read line by line;
a line's ranges come left to right as (start, end, written as zero-length) in seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Span = tuple[float, float, bool]

# Dashes of every width, and the minus sign, all read as "-".
_DASHES = str.maketrans(
    dict.fromkeys("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe63\uff0d", "-")
)
_SPACES = re.compile(r"[\u00a0\u1680\u2000-\u200b\u202f\u205f\u3000\ufeff\t]")
_MARKUP = re.compile(r"\*\*|__|`")

NUMBER = r"(?:\d{1,2}:)?\d{1,2}:\d{2}(?:\.\d+)?|\d+(?:\.\d+)?"
UNIT = r"seconds?|secs?\.?|s|minutes?|mins?\.?"


def _endpoint(tag: str) -> str:
    # The lookarounds stop a match from starting or ending inside a longer number or word.
    return (
        rf"(?P<{tag}_open>\[\s*)?(?<![\w.:])(?P<{tag}>{NUMBER})(?!\d|[.:]\d)"
        rf"(?:\s*(?P<{tag}_unit>{UNIT})(?![a-z]))?(?P<{tag}_close>\s*\])?"
    )


def _bare_endpoint(tag: str) -> str:
    return rf"(?<![\w.:])(?P<{tag}>{NUMBER})(?!\d|[.:]\d)(?:\s*(?P<{tag}_unit>{UNIT})(?![a-z]))?"


_RANGE = re.compile(
    rf"(?:\b(?P<prefix>from|between)\s+)?{_endpoint('a')}"
    rf"\s*(?P<sep>-(?!>)|~|\bto\b|\buntil\b|\btill\b|\band\b)\s*{_endpoint('b')}",
    re.IGNORECASE,
)
# `(45s, 60s)` and `[45.0, 60.0]`: a start and an end inside one pair of brackets.
_PAIR = re.compile(
    rf"(?P<open>[(\[])\s*{_bare_endpoint('a')}\s*,\s*{_bare_endpoint('b')}\s*(?P<close>[)\]])",
    re.IGNORECASE,
)
# `Start: 45s` and `End: 60s`, on one line or two: rewritten as `45s - 60s` before reading lines.
_LEAD = r"[ >#*+\-\u2022]*(?:\d+[.)]\s+)?"
_START_END = re.compile(
    rf"^(?P<lead>{_LEAD})start(?:\s+time)?\s*[:=]\s*(?P<a>(?:{NUMBER})(?:\s*(?:{UNIT})(?![a-z]))?)"
    rf"[ ,;]*(?:\n{_LEAD})?end(?:\s+time)?\s*[:=]\s*(?P<b>(?:{NUMBER})(?:\s*(?:{UNIT})(?![a-z]))?)",
    re.IGNORECASE | re.MULTILINE,
)
_LIST_MARKER = re.compile(r"\s*(?:[>#]+\s*)*(?:(?:\d+[.)]|[-*+\u2022])\s+)?")
# What may follow a bare "12 - 30" for it to count: end of line or punctuation, not "cups".
_BARE_FOLLOW = re.compile(r"\s*(?:$|[:,;.)\](\u2192]|[-~](?!\s*\d))")
_LABEL_BEFORE = re.compile(
    r"(?:\b(?:stage|step|steps|phase|part|scene|item|option|question|query|number)\s*|#)$",
    re.IGNORECASE,
)
VERDICT = re.compile(r"\bverdict\b\W*(not\s+relevant|irrelevant|relevant)", re.IGNORECASE)
CONFIDENCE = re.compile(
    r"\bconfidence(?:\s+score)?(?:\s*\([^)]*\))?\W*(\d+(?:\.\d+)?)", re.IGNORECASE
)
_ANNOTATION_LINE = re.compile(
    r"(?:relevant|irrelevant|confidence(?:\s+score)?|verdict|reason(?:ing)?|explanation|"
    r"description)\s*:",
    re.IGNORECASE,
)


def normalize(text: str) -> str:
    """One kind of dash, space and newline; markdown emphasis dropped; Start/End pairs joined."""
    text = _SPACES.sub(" ", text.translate(_DASHES)).replace("\uff5e", "~")
    text = _MARKUP.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _START_END.sub(r"\g<lead>\g<a> - \g<b>", text)


def content_start(line: str) -> int:
    """Where a line's text begins, after indentation, quote/heading marks and a list marker."""
    marker = _LIST_MARKER.match(line)
    return marker.end() if marker else 0


def seconds(number: str, unit: str | None = None) -> float:
    """`75`, `1:15`, `0:01:15` → 75.0; a minutes unit multiplies a plain number by 60."""
    if ":" in number:
        value = 0.0
        for part in number.split(":"):
            value = value * 60 + float(part)
        return value
    minutes = unit is not None and unit.lower().startswith("min")
    return float(number) * (60 if minutes else 1)


def _labelled(line: str, start: int) -> bool:
    # A bounded look-back keeps long responses linear; labels are short words.
    return _LABEL_BEFORE.search(line, max(0, start - 24), start) is not None


def _is_time_range(m: re.Match[str], line: str, start_of_content: int) -> bool:
    if m["sep"].lower() == "and" and (m["prefix"] or "").lower() != "between":
        return False
    if _labelled(line, m.start("a")):
        return False
    evidence = any(m[g] for g in ("a_unit", "b_unit", "a_open", "a_close", "b_open", "b_close"))
    if evidence or ":" in m["a"] or ":" in m["b"]:
        return True
    bare_ok = m.start() <= start_of_content and m["sep"] in ("-", "~")
    return bare_ok and _BARE_FOLLOW.match(line, m.end()) is not None


def _span(m: re.Match[str]) -> Span:
    a_unit, b_unit = m["a_unit"] or m["b_unit"], m["b_unit"] or m["a_unit"]
    a, b = seconds(m["a"], a_unit), seconds(m["b"], b_unit)
    return min(a, b), max(a, b), a == b


def _ranges(line: str) -> list[tuple[int, int, Span]]:
    start_of_content = content_start(line)
    found, pos = [], 0
    while (m := _RANGE.search(line, pos)) is not None:
        if _is_time_range(m, line, start_of_content):
            found.append((m.start(), m.end(), _span(m)))
            pos = m.end()
        else:
            pos = m.start() + 1
    return found


def _pairs(line: str) -> list[tuple[int, int, Span]]:
    found = []
    for m in _PAIR.finditer(line):
        if (m["open"] == "(") != (m["close"] == ")") or _labelled(line, m.start()):
            continue
        a = seconds(m["a"], m["a_unit"] or m["b_unit"])
        b = seconds(m["b"], m["b_unit"] or m["a_unit"])
        if a <= b:  # a pair written backwards is a coordinate or a count, not a time range
            found.append((m.start(), m.end(), (a, b, a == b)))
    return found


def line_spans(line: str) -> list[Span]:
    """Every time range written on one (normalised) line, left to right."""
    found = sorted(_ranges(line) + _pairs(line))
    spans, end = [], -1
    for start, stop, span in found:
        if start >= end:  # a pair inside a range already read (or the reverse) is not a second one
            spans.append(span)
            end = stop
    return spans


def leading_range_end(line: str) -> int | None:
    """Where a range written at the start of a line's content ends, else None."""
    start_of_content = content_start(line)
    for start, stop, _ in sorted(_ranges(line) + _pairs(line)):
        return stop if start <= start_of_content else None
    return None


def mentioned_ranges(text: str) -> list[tuple[float, float]]:
    """Every time range in a text, in order (`12s - 30s`, `[40s] - [52s]`, `(45s, 60s)`, ...)."""
    return [(a, b) for line in normalize(text).split("\n") for a, b, _ in line_spans(line)]


# --- verdict blocks ------------------------------------------------------------------------------


@dataclass
class Block:
    """One interval block of a response: its ranges, and the score and verdict given to it."""

    spans: list[Span]
    confidence: float | None = None
    verdict: str | None = None  # "relevant" | "irrelevant" | "not relevant"
    verdicts: int = 0  # how many verdict lines the block holds


def has_verdicts(text: str) -> bool:
    return VERDICT.search(normalize(text)) is not None


def blocks(text: str | None) -> list[Block]:
    """The response read as interval blocks: each line with ranges opens one; the confidence
    score and verdict lines after it belong to it. In a response with verdicts, the annotation
    lines (`Relevant: ...`, `Reason: ...`) never open a block, whatever times they mention."""
    if not text:
        return []
    lines = normalize(text).split("\n")
    verdict_mode = any(VERDICT.search(line) for line in lines)
    out: list[Block] = []
    for line in lines:
        annotation = verdict_mode and _ANNOTATION_LINE.match(line, content_start(line)) is not None
        spans = [] if annotation else line_spans(line)
        if spans:
            out.append(Block(spans))
        if not out:
            continue
        if (c := CONFIDENCE.search(line)) is not None:
            out[-1].confidence = float(c[1])
        if (v := VERDICT.search(line)) is not None:
            out[-1].verdict = " ".join(v[1].lower().split())
            out[-1].verdicts += 1
    return out


# --- the original pipeline's narrower grammar (`egoqa report --scoring original`) ---------------
# Reproduced as it was, on the raw response text: no dash or markup normalisation.

# Each endpoint in its own square brackets, an optional `s` inside: `[12s] - [30s]`, `[12] - [30]`.
ORIGINAL_BRACKETED = re.compile(r"\[(\d+(?:\.\d+)?)s?\]\s*-\s*\[(\d+(?:\.\d+)?)s?\]")
# A verdict block opens on a line beginning `N. As - Bs:` (whole seconds, `s` required).
ORIGINAL_BLOCK_OPEN = re.compile(r"\d+\.\s*(\d+)s\s*-\s*(\d+)s\s*:")
# A shot's range: the original printed its shots truncated to whole seconds (`int(start)`), so its
# blocks always matched the pattern above; egoqa prints them with a decimal (`1. 0s - 20.8s:`),
# read here and truncated: the same whole-second range the original printed and read.
ORIGINAL_SHOT_BLOCK_OPEN = re.compile(r"\d+\.\s*(\d+(?:\.\d+)?)s\s*-\s*(\d+(?:\.\d+)?)s\s*:")
ORIGINAL_VERDICT = "Verdict:"


def original_bracketed(text: str) -> list[tuple[int, int]]:
    """Every `[a] - [b]` segment, endpoints truncated to whole seconds (`int(float(x))`)."""
    return [(int(float(a)), int(float(b))) for a, b in ORIGINAL_BRACKETED.findall(text or "")]


def original_verdict_blocks(text: str, shots: bool = False) -> tuple[list[tuple[int, int]], int]:
    """(the ranges whose verdict is exactly `relevant`, how many `Verdict:` lines were listed).

    A line beginning `N. As - Bs:` opens a range; a later line containing `Verdict:` closes it,
    and the range counts when the text after `Verdict:`, square brackets removed, stripped and
    lower-cased, is `relevant`. Every `Verdict:` line is one listed segment. Lines are read with
    surrounding whitespace stripped; a verdict on the opening line itself closes nothing.
    With `shots`, a range may have decimals (truncated), as a shot's range is printed.
    """
    pattern = ORIGINAL_SHOT_BLOCK_OPEN if shots else ORIGINAL_BLOCK_OPEN
    relevant: list[tuple[int, int]] = []
    listed, open_range = 0, None
    for line in (text or "").split("\n"):
        line = line.strip()
        listed += ORIGINAL_VERDICT in line
        opened = pattern.match(line)
        if opened:
            open_range = (int(float(opened[1])), int(float(opened[2])))
        elif ORIGINAL_VERDICT in line:
            verdict = line.split(ORIGINAL_VERDICT, 1)[1].replace("[", "").replace("]", "")
            if open_range is not None and verdict.strip().lower() == "relevant":
                relevant.append(open_range)
            open_range = None
    return relevant, listed
