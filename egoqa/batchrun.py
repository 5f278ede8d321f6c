"""Running one claimed batch: decode its frames, build its requests, generate — splitting in halves
on out-of-memory and remembering what fit — and hand the outcomes to the recorder.

`Sizer` decides how many jobs a claim takes: the fixed size, or with `auto` the free device
memory ÷ a per-sample estimate for the head job's media spec, bounded by what was learned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from egoqa import batching
from egoqa.backends.base import Backend, Result
from egoqa.config import BatchConfig
from egoqa.errors import OutOfMemory, VideoError
from egoqa.recording import Prepared, Recorder, WorkerStats
from egoqa.store import limits, queue
from egoqa.store.db import Database
from egoqa.store.work import clip_video

log = logging.getLogger("egoqa.worker")


class Sizer:
    """How many jobs to claim and run at once, per media spec; learns from out-of-memory errors."""

    def __init__(
        self, db: Database, engine: str, policy: BatchConfig, backend: Backend, fixed: int | None
    ) -> None:
        self.db, self.engine, self.policy, self.backend, self.fixed = (
            db,
            engine,
            policy,
            backend,
            fixed,
        )
        self.learned: dict[str, tuple[int | None, int | None]] = {}

    def for_spec(self, spec: dict) -> int:
        """The batch size for jobs like this one (called while a claim is being made)."""
        from egoqa.plan import media_key

        key = media_key(spec["media"])
        learned = self.learned.get(key)
        if learned is None:
            learned = self.learned[key] = limits.batch_limit(self.db, self.engine, key)
        if self.fixed is not None:
            return batching.auto_batch_size(None, 1.0, self.fixed, learned)
        p = self.policy
        per = batching.per_sample_bytes(
            spec["media"],
            int(spec.get("samples", 1)),
            per_sample_gb=p.per_sample_gb,
            gb_per_1k_visual_tokens=p.gb_per_1k_visual_tokens,
            base_gb=p.base_gb,
        )
        return batching.auto_batch_size(self.backend.free_memory_bytes(), per, p.max, learned)

    def learn(self, key: str, ok: int | None = None, failed: int | None = None) -> None:
        max_ok, min_fail = self.learned.get(key, (None, None))
        if (ok is not None and (max_ok is None or ok > max_ok)) or (
            failed is not None and (min_fail is None or failed < min_fail)
        ):
            limits.record_batch(self.db, self.engine, key, ok=ok, failed=failed)
            self.learned[key] = limits.batch_limit(self.db, self.engine, key)


@dataclass
class BatchRunner:
    db: Database
    backend: Backend
    decoder: object  # egoqa.frames.FrameDecoder
    sizer: Sizer
    recorder: Recorder
    stats: WorkerStats
    decode_threads: int = 1

    def __post_init__(self) -> None:
        self._clips: dict[int, tuple[str, float, float]] = {}

    def run(self, claim: queue.Claim) -> None:
        """Prepare, generate and record a whole claimed batch."""
        t0 = time.perf_counter()
        prepared = self.prepare(claim)
        self.stats.prepare_s += time.perf_counter() - t0
        outcomes: list[tuple[Prepared, object]] = []
        if prepared:
            self.generate_into(prepared[0].job.media_key, prepared, outcomes)
        t1 = time.perf_counter()
        self.recorder.record(claim, outcomes)
        self.stats.record_s += time.perf_counter() - t1

    # -- preparing --

    def prepare(self, claim: queue.Claim) -> list[Prepared]:
        """Requests for every job of the batch; a job that cannot be prepared fails alone."""
        self._prefetch_frames(claim)
        return [p for job in claim.jobs if (p := self._prepare(claim, job))]

    def _prefetch_frames(self, claim: queue.Claim) -> None:
        """Decode the batch's whole-clip frame sets side by side before preparing it job by job."""
        from egoqa.rendering import media_timestamps

        wanted = []
        for job in claim.jobs:
            media = job.spec["media"]
            if media["kind"] != "frames" or media["sampler"]["kind"] == "shots":
                # segment frames depend on a parent's answer, keyframes on the detected shots:
                # both are decoded while the job is prepared
                continue
            path, offset, duration = self.clip(job.clip_id)
            try:
                timestamps = media_timestamps(job.spec, duration, {})
            except Exception:  # noqa: BLE001 -- preparing the job reports it properly
                continue
            wanted.append((path, offset, timestamps, media["sampler"]["max_edge"], duration))
        self.decoder.prefetch(wanted, workers=self.decode_threads)

    def _prepare(self, claim: queue.Claim, job: queue.ClaimedJob) -> Prepared | None:
        from egoqa import rendering

        try:
            path, offset, duration = self.clip(job.clip_id)
            request, context = rendering.build_request(
                self.db, job, path, offset, duration, self.decoder
            )
            return Prepared(job, request, context)
        except VideoError as exc:
            self.recorder.fail(claim, job.id, exc.kind, str(exc))
        except Exception as exc:  # a bug preparing one job must not take its batch down
            log.exception("job %d: preparing the request failed", job.id)
            msg = f"{type(exc).__name__}: {exc}"
            self.recorder.fail(claim, job.id, "prepare_error", msg, retryable=True)
        return None

    def clip(self, clip_id: int) -> tuple[str, float, float]:
        if clip_id not in self._clips:
            self._clips[clip_id] = clip_video(self.db, clip_id)
        return self._clips[clip_id]

    # -- generating --

    def generate_into(self, key: str, items: list[Prepared], out: list) -> None:
        """Generate, splitting in halves on out-of-memory; remembers what fit and what did not."""
        t0 = time.perf_counter()
        try:
            results = self.backend.generate([p.request for p in items])
        except OutOfMemory as exc:
            self.backend.clear_memory()
            self.sizer.learn(key, failed=len(items))
            if len(items) == 1:
                out.append((items[0], exc))
                return
            self.stats.oom_splits += 1
            log.warning("out of memory at batch %d (%s): splitting", len(items), key)
            for half in batching.split(items):
                self.generate_into(key, half, out)
            return
        except Exception as exc:  # a backend bug must not kill the worker: fail these jobs, go on
            log.exception("backend error on a batch of %d", len(items))
            out.extend((p, exc) for p in items)
            return
        self.stats.generate_s += time.perf_counter() - t0
        self.sizer.learn(key, ok=len(items))
        out.extend(zip(items, results, strict=True))
        _count_padding(self.stats, results)


def _count_padding(stats: WorkerStats, results: list[Result]) -> None:
    """Prompt tokens and the padding left-padding added to them (what a batch wastes)."""
    if not results:
        return
    longest = max(r.prompt_tokens for r in results)
    stats.prompt_tokens += sum(r.prompt_tokens for r in results)
    stats.padding_tokens += sum(longest - r.prompt_tokens for r in results)
