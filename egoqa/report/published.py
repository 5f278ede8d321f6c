"""Published Ego4D NLQ results (egoqa/report/published/nlq.toml), matched to a run by its split.

A run's split and annotation version are read from the name of the annotation file it was
enqueued from (`nlq_val.json` is val; a `v1` / `v2` folder in its path is the version). The
numbers are shown "as published": their protocols differ from the run's.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import PurePath

LABEL = "as published: protocols differ"
METRICS = ("r1_03", "r1_05", "r5_03", "r5_05", "miou")
_SPLITS = {"train": "train", "val": "val", "test": "test"}


@dataclass(frozen=True)
class Published:
    """One published result: its method, split, metrics in percent and where they were read."""

    method: str
    kind: str
    split: str
    metric: str
    source: str
    checked: str
    version: str | None = None
    values: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        keys = ("method", "kind", "split", "version", "metric", "source", "checked")
        return {k: getattr(self, k) for k in keys} | {"values": dict(self.values)}


def load() -> list[Published]:
    """Every shipped result, in the file's order."""
    text = (resources.files("egoqa.report") / "published" / "nlq.toml").read_text()
    out = []
    for entry in tomllib.loads(text)["result"]:
        values = {m: float(entry.pop(m)) for m in METRICS if m in entry}
        out.append(Published(**entry, values=values))
    return out


def split_of(annotations: str | None) -> tuple[str | None, str | None]:
    """(split, version) of an annotation file's path: `.../v2/annotations/nlq_val.json` is
    ("val", "v2"); None where the name does not say."""
    if not annotations:
        return None, None
    path = PurePath(annotations)
    found = re.match(r"nlq_(train|val|test)", path.name)
    version = next((p for p in reversed(path.parts[:-1]) if re.fullmatch(r"v\d+", p)), None)
    return (_SPLITS[found.group(1)] if found else None), version


def matching(split: str | None, version: str | None) -> list[Published]:
    """The published results of the split (and of the version, where both say theirs)."""
    if split is None:
        return []
    return [
        p
        for p in load()
        if p.split == split and (version is None or p.version is None or p.version == version)
    ]
