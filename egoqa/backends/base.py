"""The backend contract: a batch of `Request`s in, one `Result` per request out.

A backend receives the whole batch and batches it itself. It raises `egoqa.errors.OutOfMemory`
when the batch does not fit; the worker splits the batch in halves and retries. A backend may also
offer `encode(requests)`, preparing inputs on the CPU, and accept its result as
`generate(requests, encoded)`: the worker encodes the next batch while the current one generates.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from egoqa.plan.config import GenerationConfig

GREEDY = GenerationConfig(do_sample=False)


def sample_seed(job_seed: int, sample: int) -> int:
    """The seed of one sample of a job: a function of the job (its key) and the sample index only."""
    digest = hashlib.sha256(f"{job_seed}:{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def job_seed(key: str) -> int:
    """A job's sampling seed, from its content key (which includes the configured seed)."""
    return int(key[:16], 16) & (2**63 - 1)


@dataclass
class Frames:
    """Decoded frames of one clip: uint8 array (T, H, W, 3) and their timestamps in clip seconds.

    `fps` is the sampling rate the frames represent (frames per second of clip time); for
    uniform sampling it is T / clip duration. The backend passes it as the video's timing
    metadata so that `second_per_grid_ts = temporal_patch_size / fps`.
    """

    array: Any  # numpy.ndarray (T, H, W, 3) uint8
    timestamps: list[float]
    fps: float


@dataclass
class Request:
    job_id: int
    prompt: str  # the user text, already rendered
    frames: Frames | None = None  # None for text-only turns
    samples: int = 1
    generation: GenerationConfig = GREEDY
    system: str | None = None
    seed: int = 0  # the job's seed (`job_seed(key)`): sample s draws from `sample_seed(seed, s)`


@dataclass
class Result:
    texts: list[str]  # one per sample
    finish_reasons: list[str]  # "stop" | "length" | "empty", one per sample
    prompt_tokens: int
    visual_tokens: int
    completion_tokens: list[int]
    latency_s: float  # wall time of the batch this request was in
    batch_size: int
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. second_per_grid_ts, grid thw


class Backend(Protocol):
    name: str
    device: str
    dtype: str  # what the weights actually are ("float32", "bfloat16", "nf4", ...)

    def generate(self, requests: list[Request]) -> list[Result]: ...

    def free_memory_bytes(self) -> int | None: ...

    def clear_memory(self) -> None: ...
