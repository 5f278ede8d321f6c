"""Claiming ahead: while a batch generates, one background thread claims the next batch and prepares
it (frames decoded, requests built, inputs encoded), so the device never waits on decoding or on
the database between batches.

Stop signals are the main thread's to act on: it waits for this thread in short slices and stops
between them when a signal arrived (`egoqa.work.stopping`). A claim made here is handed to the heartbeat, under `lock`, before anything else
happens, and `close` takes that lock: once it returns no claim is in flight and everything ever
claimed is in the heartbeat's hands, for the worker to release. What the thread was preparing is
simply dropped on a stop. A crash strands at most the two batches held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from egoqa.store import queue
from egoqa.work.batchrun import Batch
from egoqa.work.heartbeat import Heartbeat
from egoqa.work.stopping import StopSignals


class _Slot:
    """Where the thread leaves its batch (or its error) for the main thread."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.batch: Batch | None = None
        self.error: BaseException | None = None

    def put(self, batch: Batch | None = None, error: BaseException | None = None) -> None:
        self.batch, self.error = batch, error
        self.ready.set()

    def get(self, stop: StopSignals | None = None) -> Batch | None:
        while not self.ready.wait(StopSignals.POLL_S):
            if stop is not None:
                stop.check()  # the claim (if any) is the heartbeat's, released on the stop
        if self.error is not None:
            raise self.error
        return self.batch


class ClaimAhead:
    def __init__(
        self,
        claim: Callable[[], queue.Claim],
        prepare: Callable[[queue.Claim], Batch],
        heartbeat: Heartbeat,
        stop: StopSignals | None = None,
    ) -> None:
        self._claim, self._prepare, self._heartbeat = claim, prepare, heartbeat
        self._stop = stop
        self.lock = threading.Lock()  # held while a claim is made and handed to the heartbeat
        self._closed = False
        self._slot: _Slot | None = None

    def start(self) -> None:
        """Claim and prepare the next batch in the background (one at a time)."""
        if self._slot is not None:
            raise RuntimeError("a batch is already being claimed ahead")
        slot = self._slot = _Slot()
        thread = threading.Thread(
            target=self._run, args=(slot,), name="egoqa-claim-ahead", daemon=True
        )
        thread.start()

    def _run(self, slot: _Slot) -> None:
        try:
            with self.lock:
                if self._closed:
                    slot.put()
                    return
                claim = self._claim()
                self._heartbeat.hold(claim)
            if not claim.jobs:
                slot.put()
                return
            batch = self._prepare(claim)
            batch.ahead = True
            slot.put(batch)
        except BaseException as exc:  # handed to the main thread, which decides
            slot.put(error=exc)

    def take(self) -> Batch | None:
        """The batch claimed ahead, once prepared; None when none was started or none was ready."""
        slot, self._slot = self._slot, None
        return None if slot is None else slot.get(self._stop)

    def close(self) -> None:
        """No more claims; returns once a claim in progress is held by the heartbeat."""
        with self.lock:
            self._closed = True
