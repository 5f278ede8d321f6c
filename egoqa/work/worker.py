"""The worker: claim a batch → run it → record it, until stopped or, with --until-done, finished.

A worker serves one engine (model, revision, dtype, attention, quantisation, max pixels) and
claims only that engine's jobs. While a batch generates, the next one is claimed and prepared in
the background (`egoqa.work.claimahead`). One heartbeat thread renews what it holds (both batches);
SIGINT/SIGTERM release held jobs at once: the handler only notes the signal, and the worker stops
at its next safe point (before a claim, between two decode steps, in a wait, before recording),
so a stop never lands inside a claim or a recording. The batch runner (`egoqa.work.batchrun`) and the
recorder (`egoqa.work.recording`) do the rest.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass, field

from egoqa.backends.base import Backend
from egoqa.errors import EgoqaError
from egoqa.plan.config import RunConfig, config_from_json, engine_id, resolve_model_ref
from egoqa.store import queue
from egoqa.store import workers as registry
from egoqa.store.db import Database
from egoqa.store.work import (
    EngineRow,
    choose_engine,
    engine_row,
    engines_starting,
    pending_engines,
)
from egoqa.work import waits
from egoqa.work.batchrun import Batch, BatchRunner, Sizer
from egoqa.work.claimahead import ClaimAhead
from egoqa.work.heartbeat import Heartbeat
from egoqa.work.recording import Recorder, WorkerStats
from egoqa.work.stopping import StopRequested, StopSignals

log = logging.getLogger("egoqa.work.worker")

__all__ = [
    "Served",
    "Worker",
    "WorkerOptions",
    "WorkerStats",
    "load_backend_for",
    "resolve_engine",
    "served_from_config",
]


@dataclass
class WorkerOptions:
    batch_size: str | int = "auto"
    device: str = "auto"
    until_done: bool = False
    lease_s: float | None = None
    idle_max_s: float = field(default_factory=waits.idle_max_s)  # $EGOQA_IDLE_MAX_S, else 2 s
    reap_every_s: float = field(default_factory=waits.reap_s)  # $EGOQA_REAP_S, else 5 s
    wait_note_s: float = field(default_factory=waits.wait_note_s)  # $EGOQA_WAIT_NOTE_S, else 5 s
    max_batches: int | None = None
    frame_cache_items: int = 32
    decode_threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))
    claim_ahead: bool = True  # claim and prepare the next batch while one generates


@dataclass(frozen=True)
class Served:
    """The engine a worker serves, and the run settings it works under (batch policy, lease)."""

    engine: str  # the engine's id
    spec: dict  # model, revision, dtype, attn_implementation, quantization, max_pixels, ...
    config: RunConfig

    @property
    def model(self) -> str:
        return self.spec["model"]


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def resolve_engine(
    db: Database, model: str | None = None, engine: str | None = None
) -> Served | None:
    """The engine to serve: the one given, or the one (of `model`, or any) with most pending
    jobs; None when nothing is pending."""
    if engine is not None:
        row = engine_row(db, _engine_by_prefix(db, engine))
        if row is None:
            raise EgoqaError(f"no jobs of engine {engine!r}: see `egoqa status` for the engines")
        return served_from(row)
    if model is not None:
        model = resolve_model_ref(model)  # a local directory is stored as its absolute path
    row = choose_engine(db, model)
    if row is None:
        pending = pending_engines(db)
        if model is not None and pending:
            have = ", ".join(f"{m} ({n})" for _, m, n in pending)
            raise EgoqaError(
                f"no pending jobs for model {model!r}; models with pending jobs: {have}: pass "
                "one of them to --model, or leave it out to serve the one with most"
            )
        return None
    return served_from(row)


def _engine_by_prefix(db: Database, engine: str) -> str:
    """An engine id, or the one id an unambiguous prefix of it names."""
    matches = engines_starting(db, engine)
    if engine in matches or len(matches) != 1:
        if len(matches) > 1 and engine not in matches:
            raise EgoqaError(
                f"--engine {engine!r} begins {len(matches)} engine ids ({', '.join(matches)}): "
                "give more of the id"
            )
        return engine
    return matches[0]


def served_from(row: EngineRow) -> Served:
    engine = row.spec
    base = config_from_json(row.run_config) if row.run_config else RunConfig(model=engine["model"])
    fields = {k: v for k, v in engine.items() if k in RunConfig.model_fields}
    return Served(row.engine, engine, base.model_copy(update=fields))


def served_from_config(config: RunConfig, model: str | None = None) -> Served:
    """The engine a run config describes (before anything is enqueued)."""
    engine = config.engine(model)
    return Served(engine_id(engine), engine, config)


def load_backend_for(served: Served, device: str) -> Backend:
    """The engine a worker serves, built as its registry entry says."""
    from egoqa.backends import registry

    return registry.from_engine(served.spec, served.config, device)


class Worker:
    def __init__(self, db: Database, served: Served, backend: Backend, opts: WorkerOptions) -> None:
        from egoqa.media.frames import FrameDecoder

        self.db, self.served, self.backend, self.opts = db, served, backend, opts
        self.id = worker_id()
        self.lease_s = opts.lease_s or served.config.lease_seconds
        self.stats = WorkerStats()
        self.signals = StopSignals()
        self.heartbeat = Heartbeat(db, self.id, self.lease_s)
        fixed = _fixed_size(opts.batch_size, served.config)
        self.sizer = Sizer(db, served.engine, served.config.batch, backend, fixed)
        dtype = getattr(backend, "dtype", None) or "none"
        recorder = Recorder(db, self.id, getattr(backend, "device", "?"), dtype, self.stats)
        decoder = FrameDecoder(cache_items=opts.frame_cache_items)
        self.runner = BatchRunner(
            db, backend, decoder, self.sizer, recorder, self.stats, opts.decode_threads
        )
        self.runner.stop = self.signals
        # A server engine keeps its requests in flight instead (`egoqa.work.inflight`).
        self.streams = hasattr(backend, "submit")
        self.ahead = (
            ClaimAhead(self._claim, self.runner.prepare, self.heartbeat, self.signals)
            if opts.claim_ahead and not self.streams
            else None
        )
        self._last_wait_note = float("-inf")
        self._idle_since: float | None = None

    # -- lifecycle --

    def run(self) -> WorkerStats:
        device = getattr(self.backend, "device", "?")
        registry.register_worker(
            self.db, self.id, self.served.engine, self.served.model, device, self.lease_s
        )
        self.signals.install()
        # Generation ends between two decode steps once a stop arrived (given back on return:
        # a backend may outlive this worker).
        before = getattr(self.backend, "should_stop", None)
        if before is not None:
            self.backend.should_stop = self.signals.is_set
        self.heartbeat.start()
        try:
            if self.streams:
                from egoqa.work.inflight import InFlight

                InFlight(self).run()
            else:
                self._loop()
        except StopRequested as stop:
            log.info("worker %s: stop requested (%s)", self.id, stop)
        finally:
            if self.ahead is not None:
                self.ahead.close()  # a claim in progress is held once this returns
            self.heartbeat.stop()
            self._sign_off()
            self.signals.restore()
            if before is not None:
                self.backend.should_stop = before
        return self.stats

    def _sign_off(self) -> None:
        """Release held jobs and mark this worker stopped; a failing database must not hide
        the error that stopped the worker, and the reaper frees the jobs when their lease ends."""
        try:
            self._release()
            registry.stop_worker(self.db, self.id, self.stats.done)
        except EgoqaError as exc:
            log.warning("could not release held jobs (%s); they return when their lease ends", exc)

    def _loop(self) -> None:
        idle, last_reap = 0, 0.0
        while not self._enough():
            self.signals.check()  # a safe point: nothing claimed and unheld
            if time.monotonic() - last_reap > self.opts.reap_every_s:
                self._reap()
                last_reap = time.monotonic()
            batch = self._next_batch()
            if batch.jobs:
                idle, self._idle_since = 0, None
                self.stats.add(batches=1)
                if self.ahead is not None and not self._enough():
                    self.sizer.measure()  # between batches: the memory the next one will find
                    self.ahead.start()
                self.runner.run(batch)
                self._finish(batch)
                continue
            if self.opts.until_done and queue.pending(self.db, self.served.engine) == 0:
                return
            idle += 1
            self._idle_since = self._idle_since or time.monotonic()
            self._say_what_we_wait_for()
            self.signals.sleep(min(self.opts.idle_max_s, 0.05 * 2**idle))

    def _enough(self) -> bool:
        return self.opts.max_batches is not None and self.stats.batches >= self.opts.max_batches

    def _next_batch(self) -> Batch:
        """The batch claimed ahead if there is one, else one claimed and prepared now."""
        t0 = time.perf_counter()
        batch = self.ahead.take() if self.ahead is not None else None
        if batch is not None:
            self.stats.add(claimed_ahead=1)
        else:
            self.sizer.measure()
            claim = self._claim()  # a signal is only noted here: the hold always follows
            self.heartbeat.hold(claim)
            batch = self.runner.prepare(claim) if claim.jobs else Batch(claim)
        self.stats.add(wait_s=time.perf_counter() - t0)
        return batch

    def _claim(self) -> queue.Claim:
        return queue.claim(self.db, self.id, self.served.engine, self.sizer.for_spec, self.lease_s)

    def _say_what_we_wait_for(self, every_s: float = 30.0) -> None:
        """Idle a while as other workers hold jobs: say whose, how many and until when."""
        now = time.monotonic()
        if (
            now - (self._idle_since or now) < self.opts.wait_note_s
            or now - self._last_wait_note < every_s
        ):
            return
        self._last_wait_note = time.monotonic()
        held = [h for h in registry.held_jobs(self.db) if h[0] != self.id]
        for owner, host, pid, n, ends_in in held:
            where = f" (pid {pid} on {host})" if pid else ""
            log.warning(
                "waiting on %d job(s) held by worker %s%s; its lease ends in %.0f s",
                n,
                owner,
                where,
                max(0.0, ends_in or 0.0),
            )

    def _reap(self) -> None:
        """Expired leases, and the jobs of workers known dead, go back to the queue."""
        failed = queue.reap(self.db).failed + registry.release_dead(self.db).failed
        if failed:
            from egoqa.answers.scoring import score_items

            score_items(self.db, job_ids=failed)

    def _finish(self, batch: Batch) -> None:
        self.heartbeat.drop(batch.claim)

    def _release(self) -> None:
        """Give back every batch still held: the one running and the one claimed ahead."""
        n = sum(queue.release(self.db, claim, ids) for claim, ids in self.heartbeat.held())
        if n:
            log.info("worker %s released %d job(s)", self.id, n)


def _fixed_size(option: str | int, config: RunConfig) -> int | None:
    if option != "auto":
        return int(option)
    if config.batch.size != "auto":
        return int(config.batch.size)
    return None
