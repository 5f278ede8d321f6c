"""Prior runs in the store: their run row, their predictions as jobs that are already done (with
their history row), and their run items. Nothing here is ever `ready`, so no worker claims it.

Called inside the enqueue transaction of `egoqa.priors.enqueue_prior_run`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence

from egoqa import __version__
from egoqa.errors import ConfigError
from egoqa.store.db import Cursor

_INSERT_JOB = """
INSERT INTO jobs (key, state, model, turn_name, turn_index, clip_id, query_id, spec, media_key,
                  priority, attempts, max_attempts, generation, prompt, response, responses,
                  finish_reason, created_at, started_at, finished_at, latency_s)
VALUES (:key, 'done', :model, :turn, 0, :clip_id, :query_id, :spec, 'none', 0, 0, 1, 0, :prompt,
        :response, :responses, 'prior', :now, :now, :now, 0.0)
ON CONFLICT (key) DO NOTHING
"""
_INSERT_RESULT = """
INSERT INTO job_results (job_id, generation, lease_token, worker_id, prompt, response, responses,
                         finish_reason, latency_s, finished_at)
SELECT id, 0, 'prior', NULL, prompt, response, responses, 'prior', 0.0, finished_at
  FROM jobs WHERE key = :key
"""


def ensure_run(cur: Cursor, name: str, prior, annotations: str | None, now: float) -> int:
    """The run's id; a run of that name with another configuration is refused."""
    config = prior.config_json()
    digest = hashlib.sha256(config.encode()).hexdigest()
    row = cur.execute("SELECT id, config_hash FROM runs WHERE name = :n", {"n": name}).fetchone()
    if row is not None:
        if row[1] != digest:
            raise ConfigError(
                f"run {name!r} already exists with a different configuration: "
                "pick another --run name"
            )
        return int(row[0])
    cur.execute(
        """INSERT INTO runs (name, config, config_hash, style, graded_turn, annotations, provenance,
                             created_at)
           VALUES (:name, :config, :hash, :style, :graded, :ann, :prov, :now)""",
        {
            "name": name,
            "config": config,
            "hash": digest,
            "style": json.dumps(prior.style(), sort_keys=True),
            "graded": prior.style()["turns"][0]["name"],
            "ann": annotations,
            "prov": json.dumps({"egoqa_version": __version__, "prior": prior.name}),
            "now": now,
        },
    )
    return int(cur.one("SELECT id FROM runs WHERE name = :n", {"n": name}))


def insert_done_jobs(
    cur: Cursor, predictions: Sequence, clip_ids: dict, query_ids: dict, model: str
) -> tuple[int, list[int]]:
    """Insert each prediction as a done job (a key already there is reused untouched);
    returns (how many were new, the job id of each prediction in order)."""
    keys = [p.key for p in predictions]
    before = _ids_by_key(cur, keys)
    fresh = [p for p in predictions if p.key not in before]
    now = time.time()
    cur.executemany(_INSERT_JOB, [_row(p, clip_ids, query_ids, model, now) for p in fresh])
    cur.executemany(_INSERT_RESULT, [{"key": p.key} for p in fresh])
    ids = {**before, **_ids_by_key(cur, [p.key for p in fresh])}
    return len(fresh), [ids[k] for k in keys]


def _row(p, clip_ids: dict, query_ids: dict, model: str, now: float) -> dict:
    q = p.query
    return {
        "key": p.key,
        "model": model,
        "turn": "prior",
        "clip_id": clip_ids[q.clip_uid],
        "query_id": query_ids[(q.clip_uid, q.annotation_uid, q.query_idx)],
        "spec": p.spec,
        "prompt": p.prompt,
        "response": p.response,
        "responses": json.dumps([p.response]),
        "now": now,
    }


def _ids_by_key(cur: Cursor, keys: Sequence[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in range(0, len(keys), 500):
        chunk = keys[i : i + 500]
        names = {f"k{n}": k for n, k in enumerate(chunk)}
        sql = "SELECT key, id FROM jobs WHERE key IN (" + ", ".join(":" + n for n in names) + ")"
        out.update((k, int(j)) for k, j in cur.all(sql, names))
    return out


def write_items(
    cur: Cursor, run_id: int, query_ids: Sequence[int], job_ids: Sequence[int], turn: str
) -> None:
    """One run item per query, graded by its prior job (the only turn of the chain)."""
    cur.executemany(
        """INSERT INTO run_items (run_id, query_id, graded_job_id) VALUES (:run, :q, :job)
           ON CONFLICT (run_id, query_id) DO NOTHING""",
        [{"run": run_id, "q": q, "job": j} for q, j in zip(query_ids, job_ids, strict=True)],
    )
    items = dict(cur.all("SELECT query_id, id FROM run_items WHERE run_id = :r", {"r": run_id}))
    cur.executemany(
        """INSERT INTO item_jobs (item_id, turn_index, turn_name, job_id)
           VALUES (:item, 0, :turn, :job) ON CONFLICT (item_id, turn_index) DO NOTHING""",
        [
            {"item": items[q], "turn": turn, "job": j}
            for q, j in zip(query_ids, job_ids, strict=True)
        ],
    )
