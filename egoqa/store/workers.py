"""The workers table: who is working, since when, last heartbeat, jobs done."""

from __future__ import annotations

import os
import socket
import time

from egoqa.store.db import Database


def register_worker(db: Database, worker_id: str, model: str, device: str) -> None:
    now = time.time()
    with db.write() as cur:
        cur.execute(
            """INSERT INTO workers (id, host, pid, model, device, state, started_at, heartbeat_at, jobs_done)
               VALUES (:id, :host, :pid, :model, :device, 'running', :now, :now, 0)""",
            {
                "id": worker_id,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "model": model,
                "device": device,
                "now": now,
            },
        )


def beat(db: Database, worker_id: str) -> None:
    with db.write() as cur:
        cur.execute(
            "UPDATE workers SET heartbeat_at = :now WHERE id = :id",
            {"id": worker_id, "now": time.time()},
        )


def stop_worker(db: Database, worker_id: str, jobs_done: int) -> None:
    with db.write() as cur:
        cur.execute(
            "UPDATE workers SET state = 'stopped', stopped_at = :now, jobs_done = :n WHERE id = :id",
            {"id": worker_id, "now": time.time(), "n": jobs_done},
        )
