"""Proposal sets in the store: a grounding model's candidate windows per query, by set name."""

from __future__ import annotations

import json
import time

from egoqa.store.db import Database

Windows = dict[tuple[str, str, int], list[list[float]]]


def replace_set(db: Database, name: str, source: str, windows: Windows) -> None:
    """Store the set under `name`, replacing a set of that name (one transaction)."""
    with db.write() as cur:
        old = cur.execute("SELECT id FROM proposal_sets WHERE name = :n", {"n": name}).fetchone()
        if old is not None:
            cur.execute("DELETE FROM proposals WHERE set_id = :id", {"id": old[0]})
            cur.execute("DELETE FROM proposal_sets WHERE id = :id", {"id": old[0]})
        cur.execute(
            "INSERT INTO proposal_sets (name, source, imported_at) VALUES (:n, :s, :t)",
            {"n": name, "s": source, "t": time.time()},
        )
        set_id = cur.one("SELECT id FROM proposal_sets WHERE name = :n", {"n": name})
        rows = [
            {"set": set_id, "c": c, "a": a, "i": i, "w": json.dumps(w)}
            for (c, a, i), w in windows.items()
        ]
        cur.executemany(
            """INSERT INTO proposals (set_id, clip_uid, annotation_uid, query_idx, windows)
               VALUES (:set, :c, :a, :i, :w)""",
            rows,
        )


def set_names(db: Database) -> list[str]:
    with db.read() as cur:
        return [r[0] for r in cur.all("SELECT name FROM proposal_sets ORDER BY name")]


def load_set(db: Database, name: str) -> Windows | None:
    """The set's windows by query id, or None where no set has that name."""
    with db.read() as cur:
        found = cur.execute("SELECT id FROM proposal_sets WHERE name = :n", {"n": name}).fetchone()
        if found is None:
            return None
        rows = cur.all(
            """SELECT clip_uid, annotation_uid, query_idx, windows FROM proposals
                WHERE set_id = :id ORDER BY id""",
            {"id": found[0]},
        )
    return {(c, a, int(i)): json.loads(w) for c, a, i, w in rows}
