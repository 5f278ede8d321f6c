"""A job's key is what a cached answer is found by: a faster planner must compute exactly the
keys the planner before it did, or every stored answer would be planned again.

The expected keys below were computed by the planner as it was before its fields were encoded
once per turn (egoqa 5b21a81), for a fixed two-clip dataset whose video file holds fixed bytes;
the digest covers all 46 jobs of the five shipped styles, the literals a few of them by name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from egoqa.plan.config import load_config
from egoqa.plan.dataset import Clip, Dataset, Query
from egoqa.plan.planner import enqueue_run
from egoqa.plan.styles import load_style
from egoqa.store import db as store_db
from egoqa.store.db import open_db

from conftest import copy_db

STYLES = {  # style: the preset the original pipeline ran it with
    "baseline": "baseline",
    "stage_analysis": "coarse",
    "frame_labeling": "dense",
    "coarse_cot": "coarse_cot",
    "coarse_cot_shots": "coarse_cot_shots",
}
ALL_KEYS_SHA256 = "647eb3afc9343514c2839e8719294ea11b0ef51e1ca136a7ba0b50fc64b3d477"
KNOWN = {  # (style, clip, query_idx or None for a per-clip turn, turn): key
    ("baseline", "clip-0", 0, "answer"): (
        "a698d15d20ed140a7e239bd12bd7387de25e4eb0253138a124ca6f2f67a36bb8"
    ),
    ("stage_analysis", "clip-0", None, "scenario"): (
        "8673539f30be9ec5b7156c37fdd7272ba0053f14c25854fcc02dde627020367c"
    ),
    ("stage_analysis", "clip-0", None, "transitions"): (
        "624c2957d1d4b184641d3bf6a8b75551f0f21aba0505e72d8f796e93d6e2388f"
    ),
    ("stage_analysis", "clip-0", 0, "segments"): (
        "ebf982831559f565ada9ba0f356341d09f1656b427080892f5ce9af7094b27b3"
    ),
    ("stage_analysis", "clip-0", 0, "answer"): (
        "197ab5dbbcd36591beaf963294a267a8ecff87d6ce935df81b27490dbe3d1167"
    ),
    ("frame_labeling", "clip-0", None, "stages"): (
        "e82124dc295b8d433e2adcd31ca02808c0883fe462654eb28ccd9740b3222937"
    ),
    ("coarse_cot", "clip-0", 0, "verdicts"): (
        "0301c61959264a3cf65d1e41efa7864ad3b5c5ad7e6be3e6406b1454a8095ad1"
    ),
    ("coarse_cot_shots", "clip-0", 0, "locate"): (
        "dab640e358715e22e5862922b45a213f441cde7f391ebc3922fe801f58bfbcf2"
    ),
}


def fixed_dataset(tmp_path: Path) -> Dataset:
    """Two 480 s windows of one file of fixed bytes, two queries each (the keys' inputs)."""
    video = tmp_path / "v.mp4"
    video.write_bytes(bytes(range(256)) * 1000)
    ds = Dataset(clips={}, queries=[], skipped=[], version="v2")
    for c in range(2):
        uid = f"clip-{c}"
        ds.clips[uid] = Clip(uid, "video-0", video, 12.5 * c, 480.0, "val")
        for i, text in enumerate(["Where is the knife?", "What did I put in the bag?"]):
            template = "Objects: Where is object X?"
            ds.queries.append(Query(uid, "ann-0", i, text, template, 10.0 + i, 14.5 + i, {}))
    return ds


@pytest.fixture(scope="module")
def planned(tmp_path_factory, migrated_template) -> dict[str, list[tuple]]:
    tmp = tmp_path_factory.mktemp("keys")
    ds, out = fixed_dataset(tmp), {}
    for style, preset in STYLES.items():
        copy_db(migrated_template, tmp / f"{style}.db")
        db = open_db(tmp / f"{style}.db")
        enqueue_run(db, ds, load_config(preset), load_style(style), "r")
        with db.read() as cur:
            out[style] = cur.all(
                """SELECT c.clip_uid, q.query_idx, j.turn_name, j.key FROM jobs j
                     JOIN clips c ON c.id = j.clip_id LEFT JOIN queries q ON q.id = j.query_id
                    ORDER BY c.clip_uid, q.query_idx, j.turn_index"""
            )
        db.dispose()
    return out


def test_named_jobs_keep_the_keys_they_had(planned):
    found = {(style, *row[:3]): row[3] for style, rows in planned.items() for row in rows}
    assert {k: found.get(k) for k in KNOWN} == KNOWN


def test_every_job_of_every_shipped_style_keeps_its_key(planned):
    lines = [f"{s} {c} {q} {t} {k}" for s in sorted(planned) for c, q, t, k in planned[s]]
    assert len(lines) == 46
    assert hashlib.sha256("\n".join(lines).encode()).hexdigest() == ALL_KEYS_SHA256


def test_the_schema_head_read_from_the_files_is_alembics():
    """Every command checks the schema against the head without importing alembic: the text
    of the migration files must give what alembic itself reads from them."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(store_db.alembic_config("sqlite://"))
    assert store_db.head_revision() == script.get_current_head()
    assert store_db.known_revisions() == {r.revision for r in script.walk_revisions()}
