"""One heartbeat thread per worker: renews the lease of every batch the worker holds (the one it
runs and the one it claimed ahead), every third of the lease (or more often: `egoqa.work.waits`), and
marks the worker alive in the registry, for as long as the worker lives. What it holds is what
the worker releases on a stop."""

from __future__ import annotations

import logging
import os
import signal
import threading

from egoqa.errors import EgoqaError
from egoqa.store import queue
from egoqa.store import workers as registry
from egoqa.store.db import Database
from egoqa.work import waits
from egoqa.work.stopping import orphaned

log = logging.getLogger("egoqa.work.worker")


class Heartbeat(threading.Thread):
    def __init__(self, db: Database, worker_id: str, lease_s: float) -> None:
        super().__init__(daemon=True, name="egoqa-heartbeat")
        self.db, self.worker_id, self.lease_s = db, worker_id, lease_s
        self.period_s = min(lease_s / 3, waits.heartbeat_s())
        self.renewals = 0  # leases renewed so far (one per batch per beat)
        self._held: dict[str, tuple[queue.Claim, list[int]]] = {}
        self._lock = threading.Lock()
        self._stop_event = threading.Event()

    def hold(self, claim: queue.Claim) -> None:
        """Keep renewing this batch's lease until `drop`."""
        if claim.jobs:
            with self._lock:
                self._held[claim.token] = (claim, claim.ids)

    def drop(self, claim: queue.Claim) -> None:
        with self._lock:
            self._held.pop(claim.token, None)

    def held(self) -> list[tuple[queue.Claim, list[int]]]:
        """Every batch held, with the ids still held under it (as of the last renewal)."""
        with self._lock:
            return list(self._held.values())

    def run(self) -> None:
        while not self._stop_event.wait(self.period_s):
            if orphaned():  # the supervisor died: stop like on SIGTERM (release, exit)
                log.warning("the supervising `egoqa work` is gone: stopping")
                os.kill(os.getpid(), signal.SIGTERM)
                return
            try:
                self.beat()
            except EgoqaError as exc:  # a full disk, a locked file: one line, try again
                log.warning("heartbeat failed: %s", exc)
            except Exception:  # a missed beat is not fatal; the next one may succeed
                log.exception("heartbeat failed")

    def beat(self) -> None:
        with self._lock:
            held = list(self._held.values())
        for claim, ids in held:
            still = queue.renew(self.db, claim, ids, self.lease_s)
            self.renewals += 1
            if len(still) < len(ids):
                log.debug("no longer holding %d job(s) (finished or lost)", len(ids) - len(still))
            with self._lock:
                if claim.token in self._held:
                    self._held[claim.token] = (claim, [i for i in ids if i in still])
        registry.beat(self.db, self.worker_id)
        log.debug("heartbeat: renewed %d batch lease(s)", len(held))

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)
