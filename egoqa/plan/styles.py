"""Prompt styles as data: an ordered list of turns, loaded from TOML (shipped or the user's own).

Each turn says what it shows the model (no media, the clip's sampled frames, frames inside the
segments an earlier turn chose, or frames of the query's ground-truth window: a reference
answer), whether it reads the query, which earlier turns' chosen responses it embeds, how many
samples to draw and how to pick one, an optional model override, and whether it is graded (at
most one turn; none makes an answer-only style). A turn may repeat on narrower windows
(`repeat_until`, choosing by `zoom`) and take its window from an earlier turn (`window_from`).
A turn that reads neither the query nor a query-dependent turn is per-clip: computed once per
clip and shared by every query on it.
"""

from __future__ import annotations

import difflib
import math
import string
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from egoqa.errors import StyleError
from egoqa.plan import tomlfiles

MEDIA = ("none", "frames", "segments", "ground_truth", "proposals")
SELECT_RULES = ("first", "longest", "consensus", "format:intervals", "format:verdicts")
TIMING_FIELDS = ("timestamps", "intervals", "numbered_intervals", "num_frames")
BUILTIN_FIELDS = ("query", *TIMING_FIELDS, "duration", "proposals")
ZOOM_CHOICES = ("model", "oracle")
REPEAT_KEYS = {"window_sec": float, "max_depth": int}
MAX_DEPTH = 32
_TURN_KEYS = {
    "name",
    "template",
    "media",
    "segments_from",
    "reads_query",
    "reads",
    "samples",
    "select",
    "model",
    "sampler",
    "graded",
    "max_new_tokens",
    "system",
    "repeat_until",
    "window_from",
    "zoom",
    "per_segment",
}


@dataclass(frozen=True)
class Turn:
    name: str
    template: str
    media: str = "none"
    segments_from: str | None = None
    reads_query: bool = False
    reads: tuple[str, ...] = ()
    samples: int = 1
    select: tuple[str, ...] = ("first",)
    model: str | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    graded: bool = False
    max_new_tokens: int | None = None
    system: str | None = None
    # Recursive zoom: repeat on the chosen segment until it is at most `window_sec` long or
    # `max_depth` levels ran; `window_from` takes the final window of an earlier turn.
    repeat_until: dict[str, Any] | None = None
    window_from: str | None = None
    zoom: str = "model"
    # media 'segments': one call per chosen segment (the original's answer pass), each seeing
    # only that segment's frames, instead of one call over all of them; answers are joined.
    per_segment: bool = False

    def placeholders(self) -> set[str]:
        """The fields its template names (templates are checked for balanced braces on load)."""
        return {f for _, f, _, _ in string.Formatter().parse(self.template) if f}

    def parents(self) -> list[str]:
        """The earlier turns this one needs: those it reads, and its segments' or window's."""
        return [*self.reads, *(t for t in (self.segments_from, self.window_from) if t)]


@dataclass(frozen=True)
class Style:
    name: str
    description: str
    turns: tuple[Turn, ...]

    @property
    def graded(self) -> Turn | None:
        """The graded turn; None for an answer-only style (its answers are shown, not scored)."""
        return next((t for t in self.turns if t.graded), None)

    @property
    def result_turn(self) -> Turn:
        """The turn a run's results rows show: the graded one, else the last."""
        return self.graded or self.turns[-1]

    def turn(self, name: str) -> Turn:
        return next(t for t in self.turns if t.name == name)

    def index(self, name: str) -> int:
        return next(i for i, t in enumerate(self.turns) if t.name == name)

    def per_clip(self) -> dict[str, bool]:
        """Which turns are shared by every query on a clip."""
        out: dict[str, bool] = {}
        for t in self.turns:
            by_query = t.reads_query or t.media in ("ground_truth", "proposals")
            out[t.name] = not by_query and all(out[p] for p in t.parents())
        return out

    def with_overrides(self, overrides: dict) -> Style:
        """The style with a run's turn overrides (`config.TurnOverride` by turn name) applied."""
        names = [t.name for t in self.turns]
        unknown = sorted(set(overrides) - set(names))
        if unknown:
            raise StyleError(
                f"the config overrides turn(s) {unknown}, which style {self.name!r} does not "
                f"have; its turns: {', '.join(names)}"
            )
        turns = tuple(
            _override(t, overrides[t.name]) if t.name in overrides else t for t in self.turns
        )
        for i, t in enumerate(turns):
            if t.name in overrides:
                where = f"the config's [turns.{t.name}]"
                _validate_per_segment(t, where)
                _validate_zoom(t, names[:i], where)
        return replace(self, turns=turns)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "turns": [_turn_dict(t) for t in self.turns],
        }


def _turn_dict(t: Turn) -> dict:
    d = t.__dict__ | {"reads": list(t.reads), "select": list(t.select)}
    if not t.per_segment:  # a stored style (and its run's plan hash) stays as it was without it
        del d["per_segment"]
    return d


def _override(turn: Turn, o) -> Turn:
    return replace(
        turn,
        model=o.model or turn.model,
        sampler={**turn.sampler, **o.sampler},
        max_new_tokens=o.max_new_tokens or turn.max_new_tokens,
        per_segment=turn.per_segment if o.per_segment is None else o.per_segment,
        zoom=o.zoom or turn.zoom,
    )


def style_names() -> list[str]:
    return tomlfiles.shipped("styles")


def load_style(name_or_path: str) -> Style:
    data, origin = tomlfiles.load(name_or_path, "styles", "prompt style", StyleError)
    return parse_style(data, origin)


def parse_style(data: dict, origin: str = "style") -> Style:
    turns_data = data.get("turns")
    if not isinstance(turns_data, list) or not turns_data:
        raise StyleError(f"{origin}: a style needs at least one [[turns]] table")
    turns = tuple(_parse_turn(t, i, origin) for i, t in enumerate(turns_data))
    style = Style(
        str(data.get("name") or Path(origin).stem), str(data.get("description", "")), turns
    )
    _validate(style, origin)
    return style


def _parse_turn(d: Any, i: int, origin: str) -> Turn:
    if not isinstance(d, dict):
        raise StyleError(f"{origin}: turn {i + 1} must be a table")
    unknown = set(d) - _TURN_KEYS
    if unknown:
        near = [m for k in sorted(unknown) for m in difflib.get_close_matches(k, _TURN_KEYS, 1)]
        hint = f"did you mean {' or '.join(near)}?" if near else f"allowed: {sorted(_TURN_KEYS)}"
        raise StyleError(f"{origin}: turn {i + 1} has unknown keys {sorted(unknown)}; {hint}")
    for req in ("name", "template"):
        if not isinstance(d.get(req), str) or not d[req]:
            raise StyleError(f"{origin}: turn {i + 1} needs a {req!r} string")
    try:
        return Turn(
            name=d["name"],
            template=d["template"],
            media=d.get("media", "none"),
            segments_from=d.get("segments_from"),
            reads_query=bool(d.get("reads_query", False)),
            reads=tuple(d.get("reads", ())),
            samples=int(d.get("samples", 1)),
            select=tuple(d.get("select", ("first",))),
            model=d.get("model"),
            sampler=dict(d.get("sampler", {})),
            graded=bool(d.get("graded", False)),
            max_new_tokens=d.get("max_new_tokens"),
            system=d.get("system"),
            repeat_until=_repeat_until(d.get("repeat_until"), d["name"], origin),
            window_from=d.get("window_from"),
            zoom=d.get("zoom", "model"),
            per_segment=_flag(d.get("per_segment", False), "per_segment"),
        )
    except (TypeError, ValueError, OverflowError) as exc:
        raise StyleError(f"{origin}: turn {d['name']!r}: {exc}") from None


def _repeat_until(value: Any, name: str, origin: str) -> dict[str, Any] | None:
    """`repeat_until = {window_sec = 20, max_depth = 6}`: both keys, positive numbers."""
    if value is None:
        return None
    where = f"{origin}: turn {name!r}: repeat_until"
    if not isinstance(value, dict) or set(value) != set(REPEAT_KEYS):
        raise StyleError(
            f"{where} must be a table with exactly window_sec and max_depth, e.g. "
            "repeat_until = {window_sec = 20, max_depth = 6}"
        )
    window, depth = value["window_sec"], value["max_depth"]
    if isinstance(window, bool) or not isinstance(window, int | float) or not 0 < window < math.inf:
        raise StyleError(
            f"{where}.window_sec must be a number of seconds above 0 (and finite), not {window!r}"
        )
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= MAX_DEPTH:
        raise StyleError(f"{where}.max_depth must be a whole number from 1 to {MAX_DEPTH}")
    return {"window_sec": float(window), "max_depth": depth}


def _validate_zoom(t: Turn, seen: list[str], where: str) -> None:
    if t.zoom not in ZOOM_CHOICES:
        raise StyleError(f"{where}: zoom must be one of {', '.join(ZOOM_CHOICES)}, not {t.zoom!r}")
    if t.zoom != "model" and t.repeat_until is None:
        raise StyleError(f"{where}: zoom only goes with repeat_until (it picks each next window)")
    if t.repeat_until is not None and t.media != "frames":
        raise StyleError(f"{where}: repeat_until needs media = 'frames' (the window it narrows)")
    if t.window_from is None:
        return
    if t.window_from not in seen:
        raise StyleError(f"{where}: window_from names {t.window_from!r}, not an earlier turn")
    if t.media != "frames":
        raise StyleError(f"{where}: window_from needs media = 'frames' (frames of that window)")


def _flag(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, not {value!r}")
    return value


def _validate_per_segment(t: Turn, where: str) -> None:
    if not t.per_segment:
        return
    if t.media != "segments":
        raise StyleError(f"{where}: per_segment needs media = 'segments' (a call per segment)")
    if t.samples != 1:
        raise StyleError(
            f"{where}: per_segment takes one sample (each segment's call answers once)"
        )
    if t.graded:
        raise StyleError(f"{where}: a per_segment turn cannot be graded (its answers are joined)")


def _validate_sampler(t: Turn, where: str) -> None:
    from egoqa.plan.config import SamplerConfig

    unknown = sorted(set(t.sampler) - set(SamplerConfig.model_fields))
    if unknown:
        raise StyleError(
            f"{where}: unknown sampler key(s) {unknown}; allowed: "
            f"{', '.join(SamplerConfig.model_fields)}"
        )


def _validate(style: Style, origin: str) -> None:
    seen: list[str] = []
    for t in style.turns:
        where = f"{origin}: turn {t.name!r}"
        if t.name in seen or t.name in BUILTIN_FIELDS:
            raise StyleError(f"{where}: duplicate or reserved turn name")
        if t.media not in MEDIA:
            raise StyleError(f"{where}: media must be one of {', '.join(MEDIA)}, not {t.media!r}")
        if t.media == "segments" and t.segments_from not in seen:
            raise StyleError(
                f"{where}: media 'segments' needs segments_from naming an earlier turn"
            )
        if t.segments_from and t.media != "segments":
            raise StyleError(f"{where}: segments_from only goes with media = 'segments'")
        for r in t.reads:
            if r not in seen:
                raise StyleError(
                    f"{where}: reads {r!r}, which is not an earlier turn ({', '.join(seen) or 'none'})"
                )
        _validate_zoom(t, seen, where)
        _validate_per_segment(t, where)
        _validate_sampler(t, where)
        if t.samples < 1 or t.samples > 64:
            raise StyleError(f"{where}: samples must be between 1 and 64")
        bad_rules = [r for r in t.select if r not in SELECT_RULES]
        if bad_rules:
            raise StyleError(
                f"{where}: unknown select rule(s) {bad_rules}; allowed: {', '.join(SELECT_RULES)}"
            )
        _check_template(t, where)
        seen.append(t.name)
    if sum(t.graded for t in style.turns) > 1:
        raise StyleError(
            f"{origin}: at most one turn may have graded = true (none: an answer-only style)"
        )


_ESCAPE = 'write a literal brace as {{ or }} (e.g. {{"start": 1}})'


def _check_template(t: Turn, where: str) -> None:
    """Every {field} is one this turn may fill, and the template renders."""
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(t.template)]
    except ValueError as exc:
        raise StyleError(f"{where}: template has an unbalanced brace ({exc}): {_ESCAPE}") from None
    allowed = set(BUILTIN_FIELDS) - ({"query"} if not t.reads_query else set()) | set(t.reads)
    if t.media != "proposals":  # the numbered windows exist only where the turn shows them
        allowed -= {"proposals"}
    unknown = [(f, spec, conv) for f, spec, conv in parsed if f is not None and f not in allowed]
    for f, spec, conv in unknown:
        if not f.isidentifier():  # JSON or code in braces: {"start": 1}, {}, {0}
            text = "{" + f + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise StyleError(f"{where}: template holds {text}, which is not a field: {_ESCAPE}")
    if unknown:
        names = sorted({f for f, _, _ in unknown})
        raise StyleError(f"{where}: template uses {names}; allowed here: {sorted(allowed)}")
    try:  # a bad conversion or format spec ({query!x}, {duration:d}) shows only when filled in
        parents = dict.fromkeys(t.reads, "text")
        render_template(t.template, query="q", timestamps=[0.0], duration=1.0, parents=parents)
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise StyleError(f"{where}: template cannot be filled in ({exc}); {_ESCAPE}") from None


# --- rendering -------------------------------------------------------------------------------


def fmt_time(t: float) -> str:
    r = round(t, 1)
    return f"{int(r)}s" if r == int(r) else f"{r}s"


def fmt_range(start: float, end: float) -> str:
    return f"{fmt_time(start)} - {fmt_time(end)}"


def render(
    turn: Turn,
    *,
    query: str | None,
    timestamps: list[float],
    duration: float,
    parents: dict[str, str],
) -> str:
    """Fill a turn's template: the query, frame timestamps, and the chosen responses it reads."""
    return render_template(
        turn.template, query=query, timestamps=timestamps, duration=duration, parents=parents
    )


def render_template(
    template: str,
    *,
    query: str | None,
    timestamps: list[float],
    duration: float,
    parents: dict[str, str],
    ranges: list[tuple[float, float]] | None = None,
    proposals: str = "",
) -> str:
    """Fill a template. With `ranges` (a shots sampler: one keyframe per shot) each frame is
    named by its shot's range, in `{timestamps}` and as the `{intervals}` lines."""
    if ranges is not None:
        times = ", ".join(fmt_range(a, b) for a, b in ranges)
        pairs, count = list(ranges), len(ranges)
    else:
        times = ", ".join(fmt_time(t) for t in timestamps)
        pairs, count = list(zip(timestamps, timestamps[1:], strict=False)), len(timestamps)
    values = {
        "query": query or "",
        "timestamps": times,
        "intervals": "\n".join(fmt_range(a, b) for a, b in pairs),
        # `1. 0s - 16s:` lines: the verdict blocks' openings, as the original pipeline wrote them
        "numbered_intervals": "\n".join(
            f"{i}. {fmt_range(a, b)}:" for i, (a, b) in enumerate(pairs, 1)
        ),
        "duration": fmt_time(duration),
        "num_frames": str(count),
        "proposals": proposals,
        **parents,
    }
    return template.format_map(values)
