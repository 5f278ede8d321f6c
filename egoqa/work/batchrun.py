"""Running one claimed batch: prepare it (frames decoded, requests built, inputs encoded: no writes,
so another thread can do it while the batch before generates), then generate it — cut by prompt
length where padding would cost more than another pass, split in halves on out-of-memory — and
hand the outcomes to the recorder.

`Sizer` decides how many jobs a claim takes: the fixed size, or with `auto` the free device
memory ÷ a per-sample estimate for the head job's media spec, bounded by what was learned.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from egoqa.backends.base import Backend, Request, Result
from egoqa.errors import OutOfMemory, VideoError
from egoqa.plan import samplers
from egoqa.plan.config import BatchConfig
from egoqa.store import limits, queue
from egoqa.store.db import Database
from egoqa.store.work import clip_video, responses_by_key
from egoqa.work import batching
from egoqa.work.recording import Prepared, Recorder, WorkerStats

log = logging.getLogger("egoqa.work.worker")

# What one decode step costs, in prompt tokens prefilled for the same price (a device's FLOP rate
# over its memory bandwidth, times the eager loop's overhead): a batch is cut by prompt length
# only where the padding saved outweighs another decode pass. `bench/gpu_throughput.py` measures it.
DECODE_STEP_TOKENS = 500.0


class Sizer:
    """How many jobs to claim and run at once, per media spec; learns from out-of-memory errors.

    `for_spec` may run in the thread that claims ahead while a batch generates, when the device's
    free memory is not what the next batch will find: it uses what `measure` saw last, between
    batches, in the main thread.
    """

    def __init__(
        self, db: Database, engine: str, policy: BatchConfig, backend: Backend, fixed: int | None
    ) -> None:
        self.db, self.engine, self.policy = db, engine, policy
        self.backend, self.fixed = backend, fixed
        self.learned: dict[str, tuple[int | None, int | None]] = {}
        self.free: int | None = None
        per_token = getattr(backend, "bytes_per_token", None)
        self.bytes_per_token: int | None = per_token() if per_token else None

    def measure(self) -> None:
        """Note the free device memory now (call while nothing generates)."""
        if self.fixed is None:
            self.free = self.backend.free_memory_bytes()

    def for_spec(self, spec: dict) -> int:
        """The batch size for jobs like this one (called while a claim is being made)."""
        from egoqa.plan.jobs import media_key

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
            text_tokens=self._text_tokens(spec),
            bytes_per_token=self.bytes_per_token,
        )
        free = self.free if self.free is not None else self.backend.free_memory_bytes()
        return batching.auto_batch_size(free, per, p.max, learned)

    def _text_tokens(self, spec: dict) -> int:
        """A text-only job's tokens: template, query and the responses it embeds, plus its answer."""
        if spec["media"]["kind"] != "none":
            return 0
        parents = responses_by_key(self.db, list(spec.get("reads", {}).values()))
        chars = len(spec.get("template", "")) + len(spec.get("query") or "")
        chars += len(spec.get("system") or "") + sum(len(r or "") for r in parents.values())
        return batching.text_tokens(chars, int(spec["generation"]["max_new_tokens"]))

    def learn(self, key: str, ok: int | None = None, failed: int | None = None) -> None:
        max_ok, min_fail = self.learned.get(key, (None, None))
        if (ok is not None and (max_ok is None or ok > max_ok)) or (
            failed is not None and (min_fail is None or failed < min_fail)
        ):
            limits.record_batch(self.db, self.engine, key, ok=ok, failed=failed)
            self.learned[key] = limits.batch_limit(self.db, self.engine, key)


@dataclass
class Batch:
    """A claimed batch made ready to generate; failures to prepare are recorded by the runner."""

    claim: queue.Claim
    groups: list[list[Prepared]] = field(default_factory=list)  # generated one after another
    encoded: list[object | None] = field(default_factory=list)  # the backend's inputs per group
    failed: list[tuple[int, str, str, bool]] = field(default_factory=list)  # id, kind, msg, retry
    ahead: bool = False  # claimed while the batch before generated

    @property
    def jobs(self) -> list[queue.ClaimedJob]:
        return self.claim.jobs


@dataclass
class BatchRunner:
    db: Database
    backend: Backend
    decoder: object  # egoqa.media.frames.FrameDecoder
    sizer: Sizer
    recorder: Recorder
    stats: WorkerStats
    decode_threads: int = 1
    step_tokens: float = DECODE_STEP_TOKENS
    stop: object | None = (
        None  # egoqa.work.stopping.StopSignals: checked before and after generating
    )

    def __post_init__(self) -> None:
        self._clips: dict[int, tuple[str, float, float]] = {}

    def _check_stop(self) -> None:
        if self.stop is not None:
            self.stop.check()

    def run(self, batch: Batch) -> None:
        """Generate and record a prepared batch (main thread: every write happens here)."""
        claim = batch.claim
        for job_id, kind, message, retryable in batch.failed:
            self.recorder.fail(claim, job_id, kind, message, retryable=retryable)
        outcomes: list[tuple[Prepared, object]] = []
        for items, encoded in zip(batch.groups, batch.encoded, strict=True):
            self._check_stop()
            self.stats.add(generate_calls=1)
            self.generate_into(items[0].job.media_key, items, outcomes, encoded)
        # The last safe point: a generation a stop cut short is never recorded. Once recording
        # starts it finishes (a signal is only noted) and the stop waits for the next check.
        self._check_stop()
        t1 = time.perf_counter()
        self.recorder.record(claim, outcomes)
        self.stats.add(record_s=time.perf_counter() - t1)

    # -- preparing (no writes: safe in the thread that claims ahead) --

    def prepare(self, claim: queue.Claim) -> Batch:
        """Frames decoded (side by side), requests built, cut by prompt length, inputs encoded."""
        t0 = time.perf_counter()
        batch = Batch(claim)
        parents = self._parents(claim)
        self._prefetch_frames(claim, parents)
        ready = [p for job in claim.jobs for p in self._prepare(batch, job)]
        batch.groups = self._cut(ready)
        batch.encoded = [self._encode(group) for group in batch.groups]
        self.stats.add(prepare_s=time.perf_counter() - t0)
        return batch

    def _parents(self, claim: queue.Claim) -> dict[str, str | None]:
        """The responses segment-frame jobs take their segments from (their parents are done)."""
        keys = [j.spec["media"]["from"] for j in claim.jobs if "from" in j.spec["media"]]
        return responses_by_key(self.db, list(dict.fromkeys(keys)))

    def _prefetch_frames(self, claim: queue.Claim, parents: dict[str, str | None]) -> None:
        """Decode the batch's distinct frame sets side by side, whole-clip and segment ones."""
        from egoqa.media.rendering import SEGMENTS, media_timestamps

        wanted = []
        for job in claim.jobs:
            media = job.spec["media"]
            if media["kind"] == "none" or samplers.kind(media["sampler"]["kind"]).detected:
                continue  # nothing to decode; keyframes wait for the shots, found when prepared
            path, offset, duration = self.clip(job.clip_id)
            chosen = {SEGMENTS: parents.get(media.get("from"), "") or ""}
            try:
                timestamps = media_timestamps(job.spec, duration, chosen)
            except Exception:  # noqa: BLE001 -- preparing the job reports it properly
                continue
            wanted.append((path, offset, timestamps, media["sampler"]["max_edge"], duration))
        self.decoder.prefetch(wanted, workers=self.decode_threads)

    def _prepare(self, batch: Batch, job: queue.ClaimedJob) -> list[Prepared]:
        """The job's requests (one, or one per segment); none where it cannot be prepared."""
        from egoqa.media import rendering

        try:
            path, offset, duration = self.clip(job.clip_id)
            built = rendering.build_requests(self.db, job, path, offset, duration, self.decoder)
            return [Prepared(job, request, context) for request, context in built]
        except VideoError as exc:
            batch.failed.append((job.id, exc.kind, str(exc), False))
        except Exception as exc:  # a bug preparing one job must not take its batch down
            log.exception("job %d: preparing the request failed", job.id)
            batch.failed.append((job.id, "prepare_error", f"{type(exc).__name__}: {exc}", True))
        return []

    def _cut(self, items: list[Prepared]) -> list[list[Prepared]]:
        """Groups of similar prompt length, where that saves more prefill than a pass costs."""
        if len(items) < 2:
            return [items] if items else []
        lengths = [estimated_tokens(p.request) for p in items]
        rows = [max(1, p.request.samples) for p in items]
        new_tokens = min(p.request.generation.max_new_tokens for p in items)
        cuts = batching.length_groups(lengths, rows, new_tokens, self.step_tokens)
        return [[items[i] for i in group] for group in cuts]

    def _encode(self, items: list[Prepared]) -> object | None:
        encode = getattr(self.backend, "encode", None)
        if encode is None:
            return None
        try:
            return encode([p.request for p in items])
        except Exception:  # noqa: BLE001 -- generate encodes again and reports it properly
            return None

    def clip(self, clip_id: int) -> tuple[str, float, float]:
        if clip_id not in self._clips:
            self._clips[clip_id] = clip_video(self.db, clip_id)
        return self._clips[clip_id]

    # -- generating --

    def generate_into(
        self, key: str, items: list[Prepared], out: list, encoded: object | None = None
    ) -> None:
        """Generate, splitting in halves on out-of-memory; remembers what fit and what did not."""
        t0 = time.perf_counter()
        requests = [p.request for p in items]
        try:
            if encoded is None:
                results = self.backend.generate(requests)
            else:
                results = self.backend.generate(requests, encoded)
        except OutOfMemory as exc:
            self.backend.clear_memory()
            self.sizer.learn(key, failed=len(items))
            if len(items) == 1:
                out.append((items[0], exc))
                return
            self.stats.add(oom_splits=1)
            log.warning("out of memory at batch %d (%s): splitting", len(items), key)
            for half in batching.split(items):
                self.generate_into(key, half, out)
            return
        except Exception as exc:  # a backend bug must not kill the worker: fail these jobs, go on
            log.exception("backend error on a batch of %d", len(items))
            out.extend((p, exc) for p in items)
            return
        self.stats.add(generate_s=time.perf_counter() - t0)
        self.sizer.learn(key, ok=len(items))
        out.extend(zip(items, results, strict=True))
        _count_padding(self.stats, results)


def estimated_tokens(request: Request) -> int:
    """A request's prompt tokens before tokenising: its visual tokens (Qwen2.5-VL's geometry on
    the decoded frames) plus its text at `batching.CHARS_PER_TOKEN`."""
    text = len(request.prompt) + len(request.system or "")
    tokens = int(text / batching.CHARS_PER_TOKEN)
    if request.frames is not None:
        frames, height, width = request.frames.array.shape[:3]
        side = batching.PATCH * batching.MERGE
        groups = -(-frames // batching.TEMPORAL_PATCH)
        tokens += groups * max(1, round(height / side)) * max(1, round(width / side))
    return tokens


def _count_padding(stats: WorkerStats, results: list[Result]) -> None:
    """Prompt tokens and the left padding added to them, per row (a job's samples are rows)."""
    lengths = [r.prompt_tokens for r in results]
    real, pad = batching.padding(lengths, [max(1, len(r.texts)) for r in results])
    stats.add(prompt_tokens=real)
    stats.add(padding_tokens=pad)
