"""Prior runs in the store: their run row, their predictions as jobs that are already done (with
their history row), and their run items. Nothing here is ever `ready`, so no worker claims it.

Called inside the enqueue transaction of `egoqa.plan.priors.enqueue_prior_run`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from egoqa import __version__
from egoqa.errors import ConfigError
from egoqa.store.catalog import write_items as write_chains
from egoqa.store.db import Cursor
from egoqa.store.queue import ids_by_key

_INSERT_JOB = """
INSERT INTO jobs (key, state, engine, model, turn_name, turn_index, clip_id, query_id, spec,
                  media_key, priority, attempts, max_attempts, generation, prompt, response,
                  responses, finish_reason, created_at, started_at, finished_at, latency_s)
VALUES (:key, 'done', :engine, :model, :turn, 0, :clip_id, :query_id, :spec, 'none', 0, 0, 1, 0,
        :prompt, :response, :responses, 'prior', {now}, {now}, {now}, 0.0)
ON CONFLICT (key) DO NOTHING
"""
_INSERT_RESULT = """
INSERT INTO job_results (job_id, generation, lease_token, worker_id, prompt, response, responses,
                         finish_reason, latency_s, finished_at)
SELECT id, 0, 'prior', NULL, prompt, response, responses, 'prior', 0.0, finished_at
  FROM jobs WHERE key = :key
"""


def ensure_run(cur: Cursor, name: str, prior, annotations: str | None) -> int:
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
        f"""INSERT INTO runs (name, config, config_hash, style, graded_turn, annotations, provenance,
                             created_at)
           VALUES (:name, :config, :hash, :style, :graded, :ann, :prov, {cur.db.now})""",
        {
            "name": name,
            "config": config,
            "hash": digest,
            "style": json.dumps(prior.style(), sort_keys=True),
            "graded": prior.style()["turns"][0]["name"],
            "ann": annotations,
            "prov": json.dumps({"egoqa_version": __version__, "prior": prior.name}),
        },
    )
    return int(cur.one("SELECT id FROM runs WHERE name = :n", {"n": name}))


def insert_done_jobs(
    cur: Cursor, predictions: Sequence, clip_ids: dict, query_ids: dict, model: str
) -> tuple[int, list[int]]:
    """Insert each prediction as a done job (a key already there is reused untouched);
    returns (how many were new, the job id of each prediction in order)."""
    keys = [p.key for p in predictions]
    before = ids_by_key(cur, keys)
    fresh = [p for p in predictions if p.key not in before]
    rows = [_row(p, clip_ids, query_ids, model) for p in fresh]
    cur.executemany(_INSERT_JOB.format(now=cur.db.now), rows)
    cur.executemany(_INSERT_RESULT, [{"key": p.key} for p in fresh])
    ids = {**before, **ids_by_key(cur, [p.key for p in fresh])}
    return len(fresh), [ids[k] for k in keys]


def _row(p, clip_ids: dict, query_ids: dict, model: str) -> dict:
    q = p.query
    return {
        "key": p.key,
        "engine": model,  # a prior is its own engine; no worker serves it (nothing is ready)
        "model": model,
        "turn": "prior",
        "clip_id": clip_ids[q.clip_uid],
        "query_id": query_ids[(q.clip_uid, q.annotation_uid, q.query_idx)],
        "spec": p.spec,
        "prompt": p.prompt,
        "response": p.response,
        "responses": json.dumps([p.response]),
    }


def write_items(
    cur: Cursor, run_id: int, query_ids: Sequence[int], job_ids: Sequence[int], turn: str
) -> None:
    """One run item per query, graded by its prior job (the only turn of the chain)."""
    chains = [(q, [j]) for q, j in zip(query_ids, job_ids, strict=True)]
    write_chains(cur, run_id, [turn], 0, chains)
