"""The two systems the GPU benchmark compares on one workload, in one process, on one device:
the original pipeline's loop (one request at a time, every turn of every query, per-clip turns
cached per video) and egoqa's real worker path from a fresh database."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from egoqa.plan.dataset import load_nlq
from egoqa.plan.planner import enqueue_run
from egoqa.plan.styles import load_style
from egoqa.store.db import open_db
from egoqa.work.worker import Worker, WorkerOptions, resolve_engine


@dataclass
class SystemRun:
    name: str
    jobs: int = 0
    calls: int = 0  # generate calls
    wall: float = 0.0
    generate_s: float = 0.0  # inside the backend's generate
    model_generate_s: float = 0.0  # inside model.generate alone
    generated: int = 0
    visual: int = 0  # visual tokens prefilled (a job's samples are rows)
    text: int = 0
    padding: int = 0
    peak_gb: float | None = None
    extra: dict = field(default_factory=dict)

    @property
    def jobs_s(self) -> float:
        return self.jobs / self.wall


class ModelClock:
    """Times `model.generate` (the device's work plus transformers' loop) inside a run."""

    def __init__(self, model) -> None:
        self.model, self.seconds = model, 0.0

    def __enter__(self) -> ModelClock:
        real = self.model.generate

        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0

        self.model.generate = timed
        return self

    def __exit__(self, *exc) -> None:
        del self.model.generate  # the class's method again


def fresh_db(path: Path, data, config):
    db = open_db(path, create=True)
    dataset = load_nlq(data.annotations, data.videos, data.metadata)
    enqueue_run(db, dataset, config, load_style(config.style), "bench")
    return db


def _peak(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def run_egoqa(db_path: Path, data, config, backend, ahead: bool, device: str) -> SystemRun:
    """egoqa's `Worker`, auto batch size, until the run is done."""
    db = fresh_db(db_path, data, config)
    served = resolve_engine(db)
    options = WorkerOptions(batch_size="auto", until_done=True, claim_ahead=ahead)
    worker = Worker(db, served, backend, options)
    _reset_peak(device)
    with ModelClock(backend.model) as clock:
        t0 = time.perf_counter()
        stats = worker.run()
        wall = time.perf_counter() - t0
    name = "egoqa worker, claiming ahead" if ahead else "egoqa worker, no claiming ahead"
    out = SystemRun(name, stats.done, stats.generate_calls, wall, stats.generate_s, clock.seconds)
    out.peak_gb, out.padding = _peak(device), stats.padding_tokens
    out.extra = {"failed": stats.failed, "batches": stats.batches, "wait_s": stats.wait_s,
                 "claimed_ahead": stats.claimed_ahead}  # fmt: skip
    with db.read() as cur:
        rows = cur.all("SELECT prompt_tokens, visual_tokens, completion_tokens, responses "
                       "FROM jobs WHERE state = 'done'")  # fmt: skip
    for prompt, visual, completion, responses in rows:
        n = len(json.loads(responses))
        out.visual += visual * n
        out.text += (prompt - visual) * n
        out.generated += completion
    db.dispose()
    return out


def run_original(db_path: Path, data, config, backend, decoder, device: str) -> SystemRun:
    """The original's loop over the same jobs: query by query, turn by turn, one request per
    `generate`; a per-clip turn is computed once per video (its cache's key) and reused.

    Prompts and frames are built by egoqa's own code from a scratch database (so both systems
    see the same requests), and frames come through egoqa's decoder and its cache — both favour
    the original, which extracted every frame to JPEG first and rewrote its whole JSON output
    after every query; neither cost is counted here.
    """
    from egoqa.media import rendering
    from egoqa.store.work import clip_video
    from egoqa.work.recording import Prepared, _kept_sample

    db = fresh_db(db_path, data, config)
    style = load_style(config.style)
    per_clip = style.per_clip()
    out = SystemRun("original loop (batch 1)")
    with db.read() as cur:  # the workload, counted as egoqa counts it (the rate's numerator)
        out.jobs = cur.one("SELECT COUNT(*) FROM jobs")
    cached: set[tuple[str, str]] = set()
    _reset_peak(device)
    with ModelClock(backend.model) as clock:
        t0 = time.perf_counter()
        for video_uid, turn, job in _chains(db):
            if per_clip[turn] and (video_uid, turn) in cached:
                continue
            path, offset, duration = clip_video(db, job.clip_id)
            ((request, context),) = rendering.build_requests(
                db, job, path, offset, duration, decoder
            )  # the workload has no per-segment turn: one request a job
            t1 = time.perf_counter()
            (result,) = backend.generate([request])
            out.generate_s += time.perf_counter() - t1
            kept = _kept_sample(Prepared(job, request, context), result)
            _write_response(db, job.id, result.texts[0 if kept is None else kept])
            cached.add((video_uid, turn))
            _count(out, result)
        out.wall = time.perf_counter() - t0
    out.model_generate_s, out.peak_gb = clock.seconds, _peak(device)
    out.extra = {"per-clip calls skipped by the per-video cache": out.jobs - out.calls}
    db.dispose()
    return out


def _count(out: SystemRun, result) -> None:
    rows = len(result.texts)
    out.calls += 1
    out.visual += result.visual_tokens * rows
    out.text += (result.prompt_tokens - result.visual_tokens) * rows
    out.generated += sum(result.completion_tokens)


def _chains(db):
    """(video, turn name, job) for every query's turns, in query order then turn order."""
    from egoqa.store.queue import ClaimedJob

    with db.read() as cur:
        rows = cur.all(
            """SELECT c.video_uid, ij.turn_name, j.id, j.key, j.spec, j.clip_id, j.query_id,
                      j.turn_index, j.attempts, j.media_key, j.priority
                 FROM run_items ri JOIN item_jobs ij ON ij.item_id = ri.id
                 JOIN jobs j ON j.id = ij.job_id JOIN clips c ON c.id = j.clip_id
                ORDER BY ri.id, ij.turn_index"""
        )
    for video_uid, turn, *job in rows:
        job[2] = json.loads(job[2])
        yield video_uid or "", turn, ClaimedJob(*job)


def _write_response(db, job_id: int, text: str) -> None:
    """What the original kept in memory: the response later turns embed (read back by egoqa's
    prompt builder from the scratch database)."""
    with db.write() as cur:
        cur.execute(
            "UPDATE jobs SET state = 'done', response = :r WHERE id = :i", {"r": text, "i": job_id}
        )
