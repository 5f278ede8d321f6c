"""The worker's loop for an engine behind a server: up to `concurrency` requests in flight.

Jobs are claimed as slots free up (a claim takes as many as there are free slots, of one media
spec, in clip order, so the requests of one clip go out together), prepared here, and handed to
the backend's request threads. Each job is recorded the moment its last request answers — no
waiting for the slowest of a batch. The heartbeat renews every claim still held; on a stop the
backend abandons what is in flight and the worker releases it. Every write happens in this thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from egoqa.errors import UpstreamAuthError
from egoqa.recording import Prepared
from egoqa.store import queue

log = logging.getLogger("egoqa.worker")


@dataclass
class _Job:
    claim: queue.Claim
    parts: list[Prepared]
    outcomes: dict[int, object] = field(default_factory=dict)  # part index → outcome


class InFlight:
    """Runs `worker`'s loop against a backend with `submit` / `next_outcome` / `cancel`."""

    def __init__(self, worker) -> None:
        self.w = worker
        self.backend = worker.backend
        self.jobs: dict[int, _Job] = {}  # job id → its requests' outcomes so far
        self.open: dict[str, set[int]] = {}  # claim token → job ids not yet recorded
        self.claims: dict[str, queue.Claim] = {}

    @property
    def requests(self) -> int:
        return self.backend.in_flight

    def run(self) -> None:
        try:
            self._loop()
        finally:
            self.backend.cancel()  # the worker releases what is still held

    def _loop(self) -> None:
        w, idle, last_reap = self.w, 0, 0.0
        while True:
            if time.monotonic() - last_reap > w.opts.reap_every_s:
                w._reap()
                last_reap = time.monotonic()
            free = self.backend.concurrency - self.requests
            claimed = free > 0 and not w._enough() and self._claim_and_send(free)
            if self.requests:
                idle = 0
                self._take(timeout=0.05 if free > 0 and claimed else 0.5)
                continue
            if claimed:
                continue
            if w._enough() or (w.opts.until_done and queue.pending(w.db, w.served.engine) == 0):
                return
            idle += 1
            w._idle_since = w._idle_since or time.monotonic()
            w._say_what_we_wait_for()
            time.sleep(min(w.opts.idle_max_s, 0.05 * 2**idle))

    def _claim_and_send(self, free: int) -> bool:
        """Claim up to `free` jobs, prepare them and send their requests; False when none."""
        w = self.w
        with w.signals.critical():  # a stop must not land between COMMIT and the hold
            claim = queue.claim(w.db, w.id, w.served.engine, free, w.lease_s)
            w.heartbeat.hold(claim)
        if not claim.jobs:
            return False
        w._idle_since = None
        w.stats.batches += 1
        batch = w.runner.prepare(claim)
        self.claims[claim.token] = claim
        self.open[claim.token] = set(claim.ids)
        with w.signals.critical():
            for job_id, kind, message, retryable in batch.failed:
                w.runner.recorder.fail(claim, job_id, kind, message, retryable=retryable)
                self._closed(claim, job_id)
        for items in batch.groups:
            for item in items:
                job = self.jobs.setdefault(item.job.id, _Job(claim, []))
                job.parts.append(item)
        for items in batch.groups:
            for item in items:
                job = self.jobs[item.job.id]
                self.backend.submit((item.job.id, job.parts.index(item)), item.request)
        return True

    def _take(self, timeout: float) -> None:
        """Record the next finished job(s): whatever has answered, without waiting for more."""
        got = self.backend.next_outcome(timeout)
        while got is not None:
            (job_id, part), outcome = got
            if isinstance(outcome, UpstreamAuthError):
                raise outcome  # the worker stops; its jobs are released, still ready
            job = self.jobs[job_id]
            job.outcomes[part] = outcome
            if len(job.outcomes) == len(job.parts):
                self._record(job_id, job)
            got = self.backend.next_outcome(0)

    def _record(self, job_id: int, job: _Job) -> None:
        w = self.w
        outcomes = [(job.parts[i], job.outcomes[i]) for i in range(len(job.parts))]
        t0 = time.perf_counter()
        with w.signals.critical():
            w.runner.recorder.record(job.claim, outcomes)
            del self.jobs[job_id]
            self._closed(job.claim, job_id)
        w.stats.record_s += time.perf_counter() - t0

    def _closed(self, claim: queue.Claim, job_id: int) -> None:
        """A job recorded; a claim with nothing left open is no longer held."""
        left = self.open.get(claim.token)
        if left is None:
            return
        left.discard(job_id)
        if not left:
            del self.open[claim.token], self.claims[claim.token]
            self.w.heartbeat.drop(claim)
