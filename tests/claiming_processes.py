"""Processes that claim from one queue at once (spawned, so each has its own connections), for
the store's contract and the many-writer runs. A child imports this module alone: only the store,
not the test modules, so that it starts in a fraction of the time."""

from __future__ import annotations

import multiprocessing
import time

from egoqa.store import queue
from egoqa.store.db import open_db


def claim_until_empty(url, engine, batch, owner, barrier, out, first_held) -> None:
    """Child process: claim and complete in batches until nothing is ready; report what it got.
    Every process holds its first batch before any goes on (`first_held`), so all of them claim
    side by side however the machine schedules them."""
    claimed: list[int] = []
    won: list[int] = []
    errors: list[str] = []
    db = open_db(url)
    barrier.wait(timeout=120)
    started = time.time()
    first = True
    try:
        while True:
            c = queue.claim(db, owner, engine, batch, 300)
            if first:
                first = False
                first_held.wait(timeout=120)
            if not c.jobs:
                break
            claimed += [j.id for j in c.jobs]
            won += sorted(queue.complete(db, c, [_answer(j.id) for j in c.jobs]))
    except Exception as exc:  # reported to the parent, which fails the test with it
        errors.append(f"{type(exc).__name__}: {exc}")
    out.put(
        {
            "owner": owner,
            "claimed": claimed,
            "won": won,
            "errors": errors,
            "started": started,
            "ended": time.time(),
        }
    )
    db.dispose()


def _answer(job_id: int) -> queue.Completion:
    return queue.Completion(job_id=job_id, response=f"answer {job_id}", responses=[])


def run_claimers(
    url: str, engine: str, batches: list[int], timeout: float = 120
) -> tuple[list[dict], float]:
    """Start one spawned process per batch size, release them together; (reports, seconds)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(len(batches) + 1), ctx.Queue()
    first_held = ctx.Barrier(len(batches))
    procs = [
        ctx.Process(
            target=claim_until_empty,
            args=(url, engine, b, f"proc{i}", barrier, out, first_held),
        )
        for i, b in enumerate(batches)
    ]
    for p in procs:
        p.start()
    try:
        barrier.wait(timeout=timeout)
        t0 = time.time()
        reports = [out.get(timeout=timeout) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return reports, max(r["ended"] for r in reports) - t0
