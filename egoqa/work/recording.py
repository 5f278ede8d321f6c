"""Recording a batch's outcomes: pick each job's kept sample, write results under the lease, fail
what failed, and score the run items whose graded job just finished (only those)."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field, replace

from egoqa.backends.base import Request, Result
from egoqa.errors import OutOfMemory, UpstreamError
from egoqa.store import queue

log = logging.getLogger("egoqa.work.worker")


@dataclass
class Prepared:
    """A claimed job ready to generate: its request and what its selection rules need."""

    job: queue.ClaimedJob
    request: Request
    context: dict


@dataclass
class WorkerStats:
    done: int = 0
    failed: int = 0
    lost: int = 0
    batches: int = 0
    claimed_ahead: int = 0  # batches claimed and prepared while the one before generated
    generate_calls: int = 0  # a batch cut by prompt length generates in several calls
    oom_splits: int = 0
    generate_s: float = 0.0
    prepare_s: float = 0.0  # preparing batches, in whichever thread did it
    wait_s: float = 0.0  # the main thread waiting for a batch to be claimed and prepared
    record_s: float = 0.0
    padding_tokens: int = 0  # left padding prefilled for nothing, one count per row
    prompt_tokens: int = 0  # real prompt tokens prefilled, one count per row
    failures: dict[str, int] = field(default_factory=dict)
    # the main thread, the claim-ahead thread and the heartbeat all count: one lock for all
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: float) -> None:
        """Add to counters (name=amount) as one step, whichever thread calls."""
        with self._lock:
            for name, amount in counts.items():
                setattr(self, name, getattr(self, name) + amount)

    def count_failure(self, kind: str) -> None:
        with self._lock:
            self.failed += 1
            self.failures[kind] = self.failures.get(kind, 0) + 1

    @property
    def padding_share(self) -> float:
        """Padding as a share of all prompt positions prefilled."""
        total = self.prompt_tokens + self.padding_tokens
        return self.padding_tokens / total if total else 0.0

    def summary(self) -> str:
        """One line for the end of a worker's run."""
        return (
            f"worker: {self.done} done, {self.failed} failed, {self.lost} lost lease, "
            f"{self.batches} batches ({self.claimed_ahead} claimed ahead), "
            f"{self.oom_splits} OOM splits; generate {self.generate_s:.1f} s, waiting for "
            f"batches {self.wait_s:.1f} s; left padding {self.padding_share:.1%} of "
            f"{self.prompt_tokens + self.padding_tokens:,} prompt tokens"
        )


class Recorder:
    def __init__(self, db, worker_id: str, device: str, dtype: str, stats: WorkerStats) -> None:
        self.db, self.worker_id, self.stats = db, worker_id, stats
        self.device, self.dtype = device, dtype

    def record(self, claim: queue.Claim, outcomes: list[tuple[Prepared, object]]) -> None:
        """Results and failures of one generated chunk."""
        done: list[tuple[Prepared, Result]] = []
        for item, outcome in joined(outcomes):
            if isinstance(outcome, Result):
                done.append((item, outcome))
            elif isinstance(outcome, OutOfMemory):
                self.fail(claim, item.job.id, "oom", f"out of memory even alone: {outcome}")
            elif isinstance(outcome, UpstreamError):
                retry = outcome.retryable
                self.fail(claim, item.job.id, outcome.kind, str(outcome), retryable=retry)
            else:
                msg = f"{type(outcome).__name__}: {outcome}"
                self.fail(claim, item.job.id, "backend_error", msg, retryable=True)
        self._complete(claim, done)

    def _complete(self, claim: queue.Claim, done: list[tuple[Prepared, Result]]) -> None:
        completions, graded = [], []
        for item, res in done:
            kept = _kept_sample(item, res)
            if kept is None:
                # Not retried: sampling is seeded by the job's key, so a retry would draw the
                # same empty answer (and greedy search is deterministic anyway).
                msg = "the model generated no text"
                self.fail(claim, item.job.id, "empty_generation", msg)
                continue
            completions.append(self._completion(item, res, kept))
            if item.job.spec.get("graded"):
                graded.append(item.job.id)
        zooming = any("zoom" in item.job.spec for item, _ in done)
        after = _settle if zooming else None
        won = queue.complete(self.db, claim, completions, after) if completions else set()
        self._score([i for i in graded if i in won])
        for c in completions:
            if c.job_id in won:
                self.stats.add(done=1)
                log.info(
                    "job %d done (%s, %d tokens, batch %s, %.2fs)",
                    c.job_id,
                    c.finish_reason,
                    c.completion_tokens or 0,
                    c.batch_size,
                    c.latency_s or 0.0,
                )
            else:
                self.stats.add(lost=1)
                log.warning(
                    "job %d: lease lost, result discarded (another worker owns it)", c.job_id
                )

    def _completion(self, item: Prepared, res: Result, kept: int) -> queue.Completion:
        note = None
        if "zoom" in item.job.spec:
            from egoqa.plan.zoom import decide

            shown = [tuple(w) for w in item.context.get("intervals") or []]
            note = decide(item.job.spec, res.texts[kept], shown)
        return queue.Completion(
            job_id=item.job.id,
            response=res.texts[kept],
            responses=list(res.texts),
            prompt=item.request.prompt,
            finish_reason=res.finish_reasons[kept],
            latency_s=res.latency_s,
            prompt_tokens=res.prompt_tokens,
            visual_tokens=res.visual_tokens,
            completion_tokens=sum(res.completion_tokens),
            batch_size=res.batch_size,
            device=self.device,
            dtype=self.dtype,
            note=None if note is None else json.dumps(note),
            stop_reason=None if note is None or not note["final"] else note["reason"],
            served_model=res.extra.get("served_model"),
            system_fingerprint=(res.extra.get("system_fingerprint") or "")[:128] or None,
        )

    def fail(
        self, claim: queue.Claim, job_id: int, kind: str, message: str, retryable: bool = False
    ) -> None:
        failed = queue.fail(self.db, claim, job_id, kind, message, retryable=retryable)
        if failed is not None:
            self.stats.count_failure(kind)
            self._score(failed)
        log.warning(
            "job %d %s: %s%s", job_id, kind, message, "" if failed is not None else " (lease lost)"
        )

    def _score(self, job_ids: list[int]) -> None:
        if job_ids:
            from egoqa.answers.scoring import score_items

            score_items(self.db, job_ids=job_ids)


def joined(outcomes: list[tuple[Prepared, object]]) -> list[tuple[Prepared, object]]:
    """One outcome a job: a per-segment job's calls become one, its answers joined a line per
    segment (`12s - 30s: ...`, in time order); any call that failed fails the job."""
    by_job: dict[int, list[tuple[Prepared, object]]] = {}
    for item, outcome in outcomes:
        by_job.setdefault(item.job.id, []).append((item, outcome))
    out = []
    for parts in by_job.values():
        if "part" not in parts[0][0].context:
            out.extend(parts)
            continue
        parts.sort(key=lambda p: p[0].context["part"])
        failed = [(item, o) for item, o in parts if not isinstance(o, Result)]
        out.append(failed[0] if failed else _join(parts))
    return out


def _join(parts: list[tuple[Prepared, Result]]) -> tuple[Prepared, Result]:
    from egoqa.plan.styles import fmt_range

    # one line a segment, so the joined answer splits back into its calls' answers
    answers = [(item.context["segment"], " ".join(res.texts[0].split())) for item, res in parts]
    text = "\n".join(f"{fmt_range(*seg)}: {a or '(no answer)'}" for seg, a in answers)
    text = text if any(a for _, a in answers) else ""
    results = [res for _, res in parts]
    finish = "length" if any(r.finish_reasons[0] == "length" for r in results) else "stop"
    merged = Result(
        texts=[text],
        finish_reasons=[finish if text else "empty"],
        prompt_tokens=sum(r.prompt_tokens for r in results),
        visual_tokens=sum(r.visual_tokens for r in results),
        completion_tokens=[sum(sum(r.completion_tokens) for r in results)],
        latency_s=max(r.latency_s for r in results),
        batch_size=max(r.batch_size for r in results),
    )
    first = parts[0][0]
    prompt = "\n\n".join(
        f"[call {i + 1} of {len(parts)}: {fmt_range(*item.context['segment'])}]\n"
        f"{item.request.prompt}"
        for i, (item, _) in enumerate(parts)
    )
    return Prepared(first.job, replace(first.request, prompt=prompt), first.context), merged


def _settle(cur, job_ids: list[int]) -> None:
    from egoqa.plan.zoom import settle

    settle(cur, job_ids)


def _kept_sample(item: Prepared, res: Result) -> int | None:
    """Index of the sample to keep (the turn's selection rules); None when all are empty."""
    from egoqa.answers.selection import select

    if all(not t.strip() for t in res.texts):
        return None
    rules = list(item.job.spec.get("select", ["first"]))
    idx = select(res.texts, rules, item.context) if len(res.texts) > 1 else 0
    if not res.texts[idx].strip():  # never keep an empty sample while another has text
        idx = next(i for i, t in enumerate(res.texts) if t.strip())
    return idx
