"""The worker: claim a batch → frames → render → generate → write back, until stopped.

One worker serves one model. It renews its leases from a heartbeat thread while it generates,
splits a batch that runs out of memory and remembers the sizes that fit, fails only the jobs a
bad video or an empty generation touches, and on SIGINT/SIGTERM releases what it holds at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from egoqa import batching
from egoqa.backends.base import Backend, Request, Result
from egoqa.config import RunConfig, config_from_json
from egoqa.errors import EgoqaError, OutOfMemory, VideoError
from egoqa.store import queue
from egoqa.store import workers as registry
from egoqa.store.db import Database

log = logging.getLogger("egoqa.worker")


class StopRequested(BaseException):
    """Raised in the main thread by SIGINT/SIGTERM: abandon the batch, release, exit."""


@dataclass
class WorkerOptions:
    model: str | None = None
    batch_size: str | int = "auto"
    device: str = "auto"
    until_done: bool = False
    lease_s: float | None = None
    idle_max_s: float = 2.0
    reap_every_s: float = 5.0
    max_batches: int | None = None
    frame_cache_items: int = 32
    decode_threads: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    lost: int = 0
    batches: int = 0
    oom_splits: int = 0
    generate_s: float = 0.0
    started: float = field(default_factory=time.time)


@dataclass
class Prepared:
    job: queue.ClaimedJob
    request: Request
    context: dict


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


# --- which model, which settings -------------------------------------------------------------


def resolve_model(db: Database, model: str | None) -> tuple[str, RunConfig] | None:
    """The model to serve (given, or the one with most pending jobs) and the run config to load it with."""
    with db.read() as cur:
        if model is None:
            row = cur.execute(
                """SELECT model FROM jobs WHERE state IN ('ready', 'running', 'blocked')
                    GROUP BY model ORDER BY COUNT(*) DESC, model LIMIT 1"""
            ).fetchone()
            if row is None:
                return None
            model = row[0]
        row = cur.execute(
            """SELECT r.config FROM runs r JOIN run_items ri ON ri.run_id = r.id
                 JOIN item_jobs ij ON ij.item_id = ri.id JOIN jobs j ON j.id = ij.job_id
                WHERE j.model = :m ORDER BY r.id DESC LIMIT 1""",
            {"m": model},
        ).fetchone()
    if row is None:
        raise EgoqaError(f"no run uses model {model!r}: check --model, or enqueue a run for it")
    return model, config_from_json(row[0]).model_copy(update={"model": model})


def load_backend_for(config: RunConfig, device: str) -> Backend:
    from egoqa.backends.base import load_backend

    if config.backend == "fake":
        return load_backend("fake")
    return load_backend(
        "transformers",
        model=config.model,
        dtype=config.dtype,
        attn_implementation=config.attn_implementation,
        device=device,
        device_map=config.device_map,
        trust_remote_code=config.trust_remote_code,
    )


# --- the worker ------------------------------------------------------------------------------


class Worker:
    def __init__(
        self, db: Database, model: str, config: RunConfig, backend: Backend, opts: WorkerOptions
    ) -> None:
        from egoqa.frames import FrameDecoder

        self.db, self.model, self.config, self.backend, self.opts = db, model, config, backend, opts
        self.id = worker_id()
        self.lease_s = opts.lease_s or config.lease_seconds
        self.decoder = FrameDecoder(cache_items=opts.frame_cache_items)
        self.stats = WorkerStats()
        self._clips: dict[int, tuple[str, float, float]] = {}
        self._learned: dict[str, tuple[int | None, int | None]] = {}
        self.claim: queue.Claim | None = None  # the batch held now, released on stop

    # -- lifecycle --

    def run(self) -> WorkerStats:
        registry.register_worker(self.db, self.id, self.model, getattr(self.backend, "device", "?"))
        restore = _install_stop_handlers()
        try:
            self._loop()
        except StopRequested:
            log.info("worker %s: stop requested", self.id)
        finally:
            self._sign_off()
            restore()
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
        while self.opts.max_batches is None or self.stats.batches < self.opts.max_batches:
            if time.time() - last_reap > self.opts.reap_every_s:
                queue.reap(self.db)
                last_reap = time.time()
            # a stop between the claim's COMMIT and this assignment would strand the batch
            with _signals_deferred():
                self.claim = queue.claim(
                    self.db, self.id, self.model, self._claim_size(), self.lease_s
                )
            if self.claim.jobs:
                idle = 0
                self._process(self.claim)
                self.claim = None
                continue
            if self.opts.until_done and queue.pending_for_model(self.db, self.model) == 0:
                return
            idle += 1
            time.sleep(min(self.opts.idle_max_s, 0.05 * 2**idle))

    def _release(self) -> None:
        if self.claim is not None and self.claim.jobs:
            n = queue.release(self.db, self.claim)
            log.info("worker %s released %d job(s)", self.id, n)
        self.claim = None

    # -- one batch --

    def _process(self, claim: queue.Claim) -> None:
        self.stats.batches += 1
        beat = Heartbeat(self.db, claim, self.lease_s, self.id)
        beat.start()
        try:
            self._prefetch_frames(claim)
            prepared = [p for job in claim.jobs if (p := self._prepare(claim, job))]
            groups: dict[str, list[Prepared]] = {}
            for p in prepared:
                groups.setdefault(p.job.media_key, []).append(p)
            for key, items in groups.items():
                size = self._group_size(key, items)
                for i in range(0, len(items), size):
                    self._run_chunk(claim, key, items[i : i + size])
        finally:
            beat.stop()

    def _prefetch_frames(self, claim: queue.Claim) -> None:
        """Decode the batch's whole-clip frame sets side by side before preparing it job by job."""
        from egoqa.rendering import media_timestamps

        wanted = []
        for job in claim.jobs:
            media = job.spec["media"]
            if media["kind"] != "frames":
                continue  # segment frames depend on a parent's answer: decoded while preparing
            path, offset, duration = self._clip(job.clip_id)
            try:
                timestamps = media_timestamps(job.spec, duration, {})
            except Exception:  # noqa: BLE001 -- preparing the job reports it properly
                continue
            wanted.append((path, offset, timestamps, media["sampler"]["max_edge"], duration))
        self.decoder.prefetch(wanted, workers=self.opts.decode_threads)

    def _prepare(self, claim: queue.Claim, job: queue.ClaimedJob) -> Prepared | None:
        from egoqa import rendering

        try:
            path, offset, duration = self._clip(job.clip_id)
            request, context = rendering.build_request(
                self.db, job, path, offset, duration, self.decoder
            )
            return Prepared(job, request, context)
        except VideoError as exc:
            self._fail(claim, job.id, exc.kind, str(exc))
        except (
            Exception
        ) as exc:  # a bug preparing one job must not take the worker (and its batch) down
            log.exception("job %d: preparing the request failed", job.id)
            self._fail(
                claim, job.id, "prepare_error", f"{type(exc).__name__}: {exc}", retryable=True
            )
        return None

    def _run_chunk(self, claim: queue.Claim, key: str, items: list[Prepared]) -> None:
        outcomes: list[tuple[Prepared, object]] = []
        self._generate_into(key, items, outcomes)
        results = []
        for item, outcome in outcomes:
            if isinstance(outcome, Result):
                results.append((item, outcome))
            elif isinstance(outcome, OutOfMemory):
                self._fail(claim, item.job.id, "oom", f"out of memory even alone: {outcome}")
            else:
                msg = f"{type(outcome).__name__}: {outcome}"
                self._fail(claim, item.job.id, "backend_error", msg, retryable=True)
        self._complete(claim, results)

    def _generate_into(self, key: str, items: list[Prepared], out: list) -> None:
        """Generate, splitting in halves on out-of-memory; remembers what fit and what did not."""
        t0 = time.perf_counter()
        try:
            results = self.backend.generate([p.request for p in items])
        except OutOfMemory as exc:
            self.backend.clear_memory()
            self._learn(key, failed=len(items))
            if len(items) == 1:
                out.append((items[0], exc))
                return
            self.stats.oom_splits += 1
            log.warning("out of memory at batch %d (%s): splitting", len(items), key)
            for half in batching.split(items):
                self._generate_into(key, half, out)
            return
        except Exception as exc:  # a backend bug must not kill the worker: fail these jobs, go on
            log.exception("backend error on a batch of %d", len(items))
            out.extend((p, exc) for p in items)
            return
        self.stats.generate_s += time.perf_counter() - t0
        self._learn(key, ok=len(items))
        out.extend(zip(items, results, strict=True))

    def _complete(self, claim: queue.Claim, results: list[tuple[Prepared, Result]]) -> None:
        from egoqa.selection import select

        completions = []
        for item, res in results:
            if all(not t.strip() for t in res.texts):
                self._fail(
                    claim,
                    item.job.id,
                    "empty_generation",
                    "the model generated no text",
                    retryable=True,
                )
                continue
            idx = (
                select(res.texts, list(item.job.spec.get("select", ["first"])), item.context)
                if len(res.texts) > 1
                else 0
            )
            if not res.texts[idx].strip():  # never keep an empty sample while another has text
                idx = next(i for i, t in enumerate(res.texts) if t.strip())
            completions.append(
                queue.Completion(
                    job_id=item.job.id,
                    response=res.texts[idx],
                    responses=list(res.texts),
                    prompt=item.request.prompt,
                    finish_reason=res.finish_reasons[idx],
                    latency_s=res.latency_s,
                    prompt_tokens=res.prompt_tokens,
                    visual_tokens=res.visual_tokens,
                    completion_tokens=sum(res.completion_tokens),
                    batch_size=res.batch_size,
                )
            )
        won = queue.complete(self.db, claim, completions)
        self._after_complete(completions, won, results)

    def _after_complete(self, completions, won: set[int], results) -> None:
        from egoqa.scoring import score_items

        graded = [i.job.id for i, _ in results if i.job.id in won and i.job.spec.get("graded")]
        score_items(self.db, job_ids=graded)
        for c in completions:
            if c.job_id in won:
                self.stats.done += 1
                log.info(
                    "job %d done (%s, %d tokens, batch %s, %.2fs)",
                    c.job_id,
                    c.finish_reason,
                    c.completion_tokens or 0,
                    c.batch_size,
                    c.latency_s or 0.0,
                )
            else:
                self.stats.lost += 1
                log.warning(
                    "job %d: lease lost, result discarded (another worker owns it now)", c.job_id
                )

    def _fail(
        self, claim: queue.Claim, job_id: int, kind: str, message: str, retryable: bool = False
    ) -> None:
        won = queue.fail(self.db, claim, job_id, kind, message, retryable=retryable)
        if won:
            self.stats.failed += 1
            from egoqa.scoring import score_items

            score_items(self.db, stale_failures=True)
        log.warning("job %d %s: %s%s", job_id, kind, message, "" if won else " (lease lost)")

    # -- sizes --

    def _claim_size(self) -> int:
        if self.opts.batch_size != "auto":
            return int(self.opts.batch_size)
        if self.config.batch.size != "auto":
            return int(self.config.batch.size)
        return self.config.batch.max

    def _group_size(self, key: str, items: list[Prepared]) -> int:
        if self.opts.batch_size != "auto" or self.config.batch.size != "auto":
            fixed = self._claim_size()
            learned = self._learned.get(key) or queue.batch_limit(self.db, self.model, key)
            return batching.auto_batch_size(None, 1.0, fixed, learned)
        b = self.config.batch
        per = max(
            batching.per_sample_bytes(
                p.job.spec["media"],
                p.request.samples,
                per_sample_gb=b.per_sample_gb,
                gb_per_1k_visual_tokens=b.gb_per_1k_visual_tokens,
                base_gb=b.base_gb,
            )
            for p in items
        )
        learned = queue.batch_limit(self.db, self.model, key)
        self._learned[key] = learned
        return batching.auto_batch_size(self.backend.free_memory_bytes(), per, b.max, learned)

    def _learn(self, key: str, ok: int | None = None, failed: int | None = None) -> None:
        max_ok, min_fail = self._learned.get(key, (None, None))
        if (ok is not None and (max_ok is None or ok > max_ok)) or (
            failed is not None and (min_fail is None or failed < min_fail)
        ):
            queue.record_batch(self.db, self.model, key, ok=ok, failed=failed)
            self._learned[key] = queue.batch_limit(self.db, self.model, key)

    def _clip(self, clip_id: int) -> tuple[str, float, float]:
        if clip_id not in self._clips:
            with self.db.read() as cur:
                row = cur.execute(
                    "SELECT video_path, offset_sec, duration_sec FROM clips WHERE id = :id",
                    {"id": clip_id},
                ).fetchone()
            self._clips[clip_id] = (row[0], row[1], row[2])
        return self._clips[clip_id]


class Heartbeat(threading.Thread):
    """Renews a batch's leases every third of the lease while the main thread generates."""

    def __init__(self, db: Database, claim: queue.Claim, lease_s: float, owner: str) -> None:
        super().__init__(daemon=True, name="egoqa-heartbeat")
        self.db, self.claim, self.lease_s, self.owner = db, claim, lease_s, owner
        self._stop_event = threading.Event()

    def run(self) -> None:
        ids = [j.id for j in self.claim.jobs]
        while not self._stop_event.wait(self.lease_s / 3):
            try:
                held = queue.renew(self.db, self.claim, ids, self.lease_s)
                registry.beat(self.db, self.owner)
            except EgoqaError as exc:  # a full disk, a locked file: one line, try again
                log.warning("heartbeat failed: %s", exc)
                continue
            except Exception:  # a missed beat is not fatal; the next one may succeed
                log.exception("heartbeat failed")
                continue
            lost = set(ids) - held
            if lost:
                log.debug("no longer holding %d job(s) (finished or lost)", len(lost))
            ids = [i for i in ids if i in held]

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


@contextmanager
def _signals_deferred():
    """Hold SIGINT/SIGTERM (delivered on exit) while a claim is made and recorded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stops = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _install_stop_handlers():
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum, _frame):
        raise StopRequested(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)

    return restore
