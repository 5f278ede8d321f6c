"""A grounding model's candidate windows ("proposals") and the runs that use them.

`egoqa proposals import FILE --name NAME` reads the official NLQ prediction format
(`results[].predicted_times`, best first) into the database. Two kinds of run read a set:

- `--config proposals:NAME`: the specialist alone, no model: each query's windows as they are,
  written as done jobs and scored at enqueue, like the prior baselines;
- a style with a `media = "proposals"` turn (`rerank_proposals`, with `--set proposals=NAME`):
  the VLM sees frames of each proposed window, numbered with their times, and judges them; its
  answer is read as a reordering of the proposals (`rerank`), scored like any run.

A set whose queries are not the annotation file's is refused, naming the first few; a query of
the file the set has no windows for is skipped (`no_proposals`) and counted as skipped.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from egoqa.answers.metrics import PredictionFileError, _check_entry, _check_ids
from egoqa.errors import ConfigError, EgoqaError
from egoqa.plan.dataset import Dataset, Query, Skipped
from egoqa.plan.priors import Prediction, response
from egoqa.store import proposals as store
from egoqa.store.db import Database

PREFIX = "proposals:"
TURN = "proposals"
SKIP_REASON = "no_proposals"
SHOWN = 5  # ids named in a refusal

Windows = store.Windows


class ProposalsError(EgoqaError):
    """The proposals cannot be used as given; the message says what to fix."""


def read_file(path: Path) -> Windows:
    """Each query's windows, best first, from an NLQ prediction file; bad entries refused."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ProposalsError(f"proposals file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProposalsError(f"proposals file {path} is not JSON ({exc})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("results"), list):
        raise ProposalsError(
            f"proposals file {path}: expected the NLQ prediction format, an object with a "
            "'results' list of {clip_uid, annotation_uid, query_idx, predicted_times}"
        )
    try:
        ids = [_check_entry(i, e) for i, e in enumerate(obj["results"])]
        _check_ids(ids, None)
    except PredictionFileError as exc:
        raise ProposalsError(f"proposals file {path}: {exc}") from None
    out: Windows = {}
    for key, entry in zip(ids, obj["results"], strict=True):
        windows = [[float(s), float(e)] for s, e in entry["predicted_times"]]
        if bad := [w for w in windows if w[1] < w[0]]:
            raise ProposalsError(f"proposals file {path}: {key} has an inverted window {bad[0]}")
        out[key] = windows
    if not out:
        raise ProposalsError(f"proposals file {path} holds no query")
    return out


def import_file(db: Database, path: Path, name: str) -> int:
    """Store the file's proposals under `name` (replacing a set of that name); how many queries."""
    if not name or name != name.strip() or ":" in name:
        raise ProposalsError(f"--name {name!r}: use a plain name (no colon, no outer spaces)")
    windows = read_file(path)
    store.replace_set(db, name, str(Path(path).absolute()), windows)
    return len(windows)


def load(db: Database, name: str) -> Windows:
    found = store.load_set(db, name)
    if found is None:
        there = ", ".join(store.set_names(db)) or "none yet"
        raise ConfigError(
            f"no proposal set {name!r} (sets: {there}): run `egoqa proposals import FILE "
            f"--name {name}` first"
        )
    return found


def _ids(q: Query) -> tuple[str, str, int]:
    return q.clip_uid, q.annotation_uid, q.query_idx


def restrict(dataset: Dataset, windows: Windows, name: str, annotations: str) -> Dataset:
    """The dataset with only the queries the set has windows for; the others become skips.
    Refused when the set holds queries the annotation file does not (a set of another split)."""
    known = {_ids(q) for q in dataset.queries}
    known |= {(s.clip_uid, s.annotation_uid, s.query_idx) for s in dataset.skipped}
    if foreign := [k for k in windows if k not in known]:
        shown = ", ".join("/".join(map(str, k)) for k in foreign[:SHOWN])
        raise ProposalsError(
            f"proposal set {name!r}: {len(foreign)} of its {len(windows)} queries are not in "
            f"{annotations} (e.g. {shown}): import proposals made for this annotation file"
        )
    kept = [q for q in dataset.queries if _ids(q) in windows]
    lost = [
        Skipped(q.clip_uid, q.annotation_uid, q.query_idx, SKIP_REASON, f"not in set {name!r}")
        for q in dataset.queries
        if _ids(q) not in windows
    ]
    if not kept:
        raise ProposalsError(f"proposal set {name!r} has windows for none of {annotations}")
    return replace(dataset, queries=kept, skipped=[*dataset.skipped, *lost])


def for_run(db: Database, dataset: Dataset, style, config, annotations: str):
    """(the dataset, the proposals) of a run whose style shows proposals (`--set proposals=NAME`
    names the set; queries without windows become skips); (the dataset, None) otherwise."""
    shows = [t.name for t in style.turns if t.media == "proposals"]
    if not shows:
        if config.proposals is not None:
            raise ConfigError(
                f"--set proposals={config.proposals}: style {style.name!r} has no turn with "
                'media = "proposals"; use --set style=rerank_proposals'
            )
        return dataset, None
    if config.proposals is None:
        raise ConfigError(
            f"style {style.name!r} shows proposals (turn {shows[0]!r}): name the set with "
            "--set proposals=NAME (imported by `egoqa proposals import FILE --name NAME`)"
        )
    windows = load(db, config.proposals)
    return restrict(dataset, windows, config.proposals, annotations), windows


def numbered(windows: list[list[float]]) -> str:
    """The `{proposals}` of a prompt: `1. 12s - 30s:` lines, the verdict blocks' openings."""
    from egoqa.plan.styles import fmt_range

    return "\n".join(f"{i}. {fmt_range(s, e)}:" for i, (s, e) in enumerate(windows, 1))


# --- the specialist alone: `--config proposals:NAME` ------------------------------------------


@dataclass(frozen=True)
class ProposalsBaseline:
    """A run that scores a proposal set as it is (no model), stored like a prior baseline."""

    name: str
    source: str

    @property
    def model(self) -> str:
        return PREFIX + self.name

    def config_json(self) -> str:
        return json.dumps({"model": self.model, "proposals": self.name}, sort_keys=True)

    def style(self) -> dict:
        turn = {"name": TURN, "media": "none", "samples": 1, "graded": True, "reads": []}
        return {"name": self.model, "description": "proposals as imported", "turns": [turn]}


def is_proposals(config: str) -> bool:
    return config.startswith(PREFIX)


def predictions(base: ProposalsBaseline, dataset: Dataset, windows: Windows) -> list[Prediction]:
    out = []
    for q in dataset.queries:
        times = windows[_ids(q)]
        spec = {"model": base.model, "windows": times, "turn": TURN, "graded": True}
        spec |= {"clip_uid": q.clip_uid, "annotation_uid": q.annotation_uid}
        spec |= {"query_idx": q.query_idx}
        text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
        key = hashlib.sha256(text.encode()).hexdigest()
        prompt = f"(no model: the {len(times)} windows of proposal set {base.name!r})"
        answer = "\n".join(response((s, e)) for s, e in times)
        out.append(Prediction(q, key, text, prompt, answer))
    return out


def enqueue_baseline(db: Database, dataset: Dataset, name: str, run: str, annotations: str):
    """Write the run of the set as it is: its windows as done jobs, scored now; skips recorded."""
    from egoqa.plan.priors import write_finished_run

    windows = load(db, name)
    dataset = restrict(dataset, windows, name, annotations)
    base = ProposalsBaseline(name, annotations)
    preds = predictions(base, dataset, windows)
    return write_finished_run(
        db, dataset, base, run, annotations, preds, turn=TURN, record_source=True
    )
