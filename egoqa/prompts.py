"""Prompt styles as data: an ordered list of turns, loaded from TOML (shipped or the user's own).

Each turn says what it shows the model (no media, the clip's sampled frames, or frames inside
the segments an earlier turn chose), whether it reads the query, which earlier turns' chosen
responses it embeds, how many samples to draw and how to pick one, an optional model override,
and whether it is graded. A turn that reads neither the query nor a query-dependent turn is
per-clip: computed once per clip and shared by every query on it.
"""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from egoqa import tomlfiles
from egoqa.errors import StyleError

MEDIA = ("none", "frames", "segments")
SELECT_RULES = ("first", "longest", "consensus", "format:intervals")
BUILTIN_FIELDS = ("query", "timestamps", "intervals", "duration", "num_frames")
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


@dataclass(frozen=True)
class Style:
    name: str
    description: str
    turns: tuple[Turn, ...]

    @property
    def graded(self) -> Turn:
        return next(t for t in self.turns if t.graded)

    def turn(self, name: str) -> Turn:
        return next(t for t in self.turns if t.name == name)

    def index(self, name: str) -> int:
        return next(i for i, t in enumerate(self.turns) if t.name == name)

    def per_clip(self) -> dict[str, bool]:
        """Which turns are shared by every query on a clip."""
        out: dict[str, bool] = {}
        for t in self.turns:
            parents = list(t.reads) + ([t.segments_from] if t.segments_from else [])
            out[t.name] = not t.reads_query and all(out[p] for p in parents)
        return out

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "turns": [
                t.__dict__ | {"reads": list(t.reads), "select": list(t.select)} for t in self.turns
            ],
        }


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
        )
    except (TypeError, ValueError) as exc:
        raise StyleError(f"{origin}: turn {d['name']!r}: {exc}") from None


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
        if t.samples < 1 or t.samples > 64:
            raise StyleError(f"{where}: samples must be between 1 and 64")
        bad_rules = [r for r in t.select if r not in SELECT_RULES]
        if bad_rules:
            raise StyleError(
                f"{where}: unknown select rule(s) {bad_rules}; allowed: {', '.join(SELECT_RULES)}"
            )
        _check_template(t, where)
        seen.append(t.name)
    if sum(t.graded for t in style.turns) != 1:
        raise StyleError(f"{origin}: exactly one turn must have graded = true")


_ESCAPE = 'write a literal brace as {{ or }} (e.g. {{"start": 1}})'


def _check_template(t: Turn, where: str) -> None:
    """Every {field} is one this turn may fill, and the template renders."""
    try:
        parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(t.template)]
    except ValueError as exc:
        raise StyleError(f"{where}: template has an unbalanced brace ({exc}): {_ESCAPE}") from None
    allowed = set(BUILTIN_FIELDS) - ({"query"} if not t.reads_query else set()) | set(t.reads)
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
) -> str:
    values = {
        "query": query or "",
        "timestamps": ", ".join(fmt_time(t) for t in timestamps),
        "intervals": "\n".join(
            f"{fmt_time(a)} - {fmt_time(b)}"
            for a, b in zip(timestamps, timestamps[1:], strict=False)
        ),
        "duration": fmt_time(duration),
        "num_frames": str(len(timestamps)),
        **parents,
    }
    return template.format_map(values)
