"""The worker's loop for an engine behind a server: up to `concurrency` requests in flight.

Jobs are claimed in chunks as requests finish (of one media spec, in clip order, so the requests
of one clip go out together), prepared here, and handed to the backend's request threads, up to
three times `concurrency` ahead. Each job is recorded as soon as its last request answers — no
waiting for the slowest of a batch. The heartbeat renews every claim still held; on a stop the
backend abandons what is in flight and the worker releases it. Every write happens in this thread.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from egoqa.errors import UpstreamAuthError
from egoqa.store import queue
from egoqa.work.recording import Prepared

log = logging.getLogger("egoqa.work.worker")


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
        self.idle = 0  # claims in a row that found nothing

    @property
    def requests(self) -> int:
        return self.backend.in_flight

    def run(self) -> None:
        try:
            self._loop()
        finally:
            self.backend.cancel()  # the worker releases what is still held

    def _loop(self) -> None:
        w, last_reap = self.w, 0.0
        # Up to three times `concurrency` jobs sent: the request threads find the next one
        # waiting while this thread records or prepares a claim (decoding a new clip's frames),
        # and claims come in chunks of at least half `concurrency` (one transaction for many).
        target, chunk = 3 * self.backend.concurrency, max(1, self.backend.concurrency // 2)
        while True:
            w.signals.check()  # a safe point: nothing is between a claim and its hold here
            if time.monotonic() - last_reap > w.opts.reap_every_s:
                w._reap()
                last_reap = time.monotonic()
            sent = self.requests
            claimed = False
            if target - sent >= chunk and not w._enough():
                claimed = self._claim_and_send(target - sent)
            if self.requests:
                self._take(timeout=w.signals.POLL_S * 4)  # short: a stop is looked for each time
                continue
            if claimed:
                continue
            if w._enough() or (w.opts.until_done and queue.pending(w.db, w.served.engine) == 0):
                return
            self._idle()

    def _idle(self) -> None:
        w = self.w
        self.idle += 1
        w._idle_since = w._idle_since or time.monotonic()
        w._say_what_we_wait_for()
        w.signals.sleep(min(w.opts.idle_max_s, 0.05 * 2**self.idle))

    def _claim_and_send(self, free: int) -> bool:
        """Claim up to `free` jobs, prepare them and send their requests; False when none."""
        w = self.w
        # A stop signal only notes itself (`StopSignals`): nothing lands between COMMIT and hold.
        claim = queue.claim(w.db, w.id, w.served.engine, free, w.lease_s)
        w.heartbeat.hold(claim)
        if not claim.jobs:
            return False
        w._idle_since, self.idle = None, 0
        w.stats.add(batches=1)
        batch = w.runner.prepare(claim)
        self.claims[claim.token] = claim
        self.open[claim.token] = set(claim.ids)
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
        """Record every job whose requests have all answered (waiting up to `timeout` for the
        first): what arrived together is written together, one transaction per claim."""
        finished: dict[str, list[int]] = {}
        got = self.backend.next_outcome(timeout)
        while got is not None:
            (job_id, part), outcome = got
            if isinstance(outcome, UpstreamAuthError):
                raise outcome  # the worker stops; its jobs are released, still ready
            job = self.jobs[job_id]
            job.outcomes[part] = outcome
            if len(job.outcomes) == len(job.parts):
                finished.setdefault(job.claim.token, []).append(job_id)
            got = self.backend.next_outcome(0)
        for job_ids in finished.values():
            self._record(job_ids)

    def _record(self, job_ids: list[int]) -> None:
        w = self.w
        claim = self.jobs[job_ids[0]].claim
        outcomes = [
            (job.parts[i], job.outcomes[i])
            for job in (self.jobs[j] for j in job_ids)
            for i in range(len(job.parts))
        ]
        t0 = time.perf_counter()
        w.runner.recorder.record(claim, outcomes)
        for job_id in job_ids:
            del self.jobs[job_id]
            self._closed(claim, job_id)
        w.stats.add(record_s=time.perf_counter() - t0)

    def _closed(self, claim: queue.Claim, job_id: int) -> None:
        """A job recorded; a claim with nothing left open is no longer held."""
        left = self.open.get(claim.token)
        if left is None:
            return
        left.discard(job_id)
        if not left:
            del self.open[claim.token], self.claims[claim.token]
            self.w.heartbeat.drop(claim)
