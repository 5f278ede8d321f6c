"""A deterministic stand-in backend for scheduler and worker tests: no torch, no model.

Each text is derived from a hash of (prompt, frame timestamps, sample index) and reads like a
model's answer, with one to three segments such as `[12s] - [30s]`.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from typing import Any

from egoqa.backends.base import Request, Result
from egoqa.errors import OutOfMemory

TOKENS_PER_FRAME = 4
DELAY_ENV = "EGOQA_FAKE_DELAY_S"
# Mixed into every answer: a test sets it to stand for new weights (a recompute then differs).
SALT_ENV = "EGOQA_FAKE_SALT"
_OPENERS = (
    "The moment happens at",
    "I see it in",
    "Relevant segments:",
    "The answer is in",
)


class FakeBackend:
    """`oom_above=k` fails batches of more than k requests with `OutOfMemory`; `fail_every=k`
    makes every k-th `generate` call raise a `RuntimeError` (a crashing backend); `delay_s`
    (default: $EGOQA_FAKE_DELAY_S, else 0) sleeps that long per batch."""

    name = "fake"
    device = "cpu"

    @classmethod
    def from_engine(cls, engine: dict, config: Any, device: str) -> FakeBackend:
        return cls()

    def __init__(
        self,
        delay_s: float | None = None,
        oom_above: int | None = None,
        fail_every: int | None = None,
        **_: Any,
    ) -> None:
        # $EGOQA_FAKE_DELAY_S slows every batch, so tests can signal or kill a worker mid-batch.
        self.delay_s = float(os.environ.get(DELAY_ENV, 0) or 0) if delay_s is None else delay_s
        self.oom_above = oom_above
        self.fail_every = fail_every
        self.calls = 0
        self.should_stop = _never  # set by a worker: its delay ends early on a stop

    def generate(self, requests: list[Request]) -> list[Result]:
        self.calls += 1
        if self.oom_above is not None and len(requests) > self.oom_above:
            raise OutOfMemory(
                f"fake backend: a batch of {len(requests)} exceeds oom_above={self.oom_above}; "
                "split the batch"
            )
        if self.fail_every and self.calls % self.fail_every == 0:
            raise RuntimeError(f"fake backend failure on call {self.calls} (fail_every)")
        start = time.perf_counter()
        if self.delay_s:
            deadline = start + self.delay_s
            while not self.should_stop() and time.perf_counter() < deadline:
                time.sleep(min(0.05, max(0.0, deadline - time.perf_counter())))
        results = [_result(request, len(requests)) for request in requests]
        latency = time.perf_counter() - start
        for result in results:
            result.latency_s = latency
        return results

    def free_memory_bytes(self) -> int | None:
        return None

    def clear_memory(self) -> None:
        return None


def _never() -> bool:
    return False


_NUMBERED = re.compile(r"^(\d+)\. (\S+) - (\S+):\s*$", re.MULTILINE)


def fake_text(prompt: str, timestamps: list[float], sample: int) -> str:
    """The deterministic answer for one sample of one prompt: segments, or, where the prompt
    lists numbered intervals to judge (`1. 0s - 16s:`), one verdict block per interval."""
    digest = _digest(prompt, timestamps, sample)
    listed = _NUMBERED.findall(prompt)
    if listed:
        return _verdicts(listed, digest)
    limit = max(1, int(max(timestamps))) if timestamps else 60
    count = 1 + digest[0] % 3
    segments = [_segment(digest[1 + 4 * i : 5 + 4 * i], limit) for i in range(count)]
    opener = _OPENERS[digest[-1] % len(_OPENERS)]
    return f"{opener} " + ", ".join(f"[{a}s] - [{b}s]" for a, b in sorted(segments)) + "."


def _verdicts(listed: list[tuple[str, str, str]], digest: bytes) -> str:
    """Every interval judged: one or two Relevant (confidence 5-9), the rest Irrelevant."""
    relevant = {digest[0] % len(listed), digest[1] % len(listed)}
    blocks = []
    for i, (n, a, b) in enumerate(listed):
        verdict = "Relevant" if i in relevant else "Irrelevant"
        confidence = 5 + digest[2 + i % 28] % 5 if i in relevant else digest[2 + i % 28] % 4
        blocks.append(
            f"{n}. {a} - {b}:\nDescription: a person at work\nRelevant: what the question asks\n"
            f"Irrelevant: the rest\nConfidence Score: {confidence}\nVerdict: {verdict}"
        )
    return "\n\n".join(blocks)


def _digest(prompt: str, timestamps: list[float], sample: int) -> bytes:
    key = repr((prompt, [round(float(t), 6) for t in timestamps], sample))
    if salt := os.environ.get(SALT_ENV):
        key += salt
    return hashlib.sha256(key.encode()).digest()


def _segment(chunk: bytes, limit: int) -> tuple[int, int]:
    """A segment [start, end] with 0 <= start < end <= limit."""
    start = int.from_bytes(chunk[:2], "big") % limit
    length = 1 + int.from_bytes(chunk[2:], "big") % (limit - start)
    return start, start + length


def _result(request: Request, batch_size: int) -> Result:
    frames = request.frames
    timestamps = list(frames.timestamps) if frames is not None else []
    texts = [fake_text(request.prompt, timestamps, s) for s in range(max(1, request.samples))]
    visual = len(timestamps) * TOKENS_PER_FRAME
    extra: dict[str, Any] = {}
    if frames is not None and frames.fps > 0:
        extra["second_per_grid_ts"] = 2 / frames.fps
    return Result(
        texts=texts,
        finish_reasons=["stop"] * len(texts),
        prompt_tokens=len(request.prompt.split()) + visual,
        visual_tokens=visual,
        completion_tokens=[len(t.split()) for t in texts],
        latency_s=0.0,
        batch_size=batch_size,
        extra=extra,
    )
