"""The backend contract: a batch of `Request`s in, one `Result` per request out.

A backend receives the whole batch and batches it itself. It raises `egoqa.errors.OutOfMemory`
when the batch does not fit; the worker splits the batch in halves and retries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    seed: int = 0


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
    generation: GenerationSettings = field(default_factory=GenerationSettings)
    system: str | None = None


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

    def generate(self, requests: list[Request]) -> list[Result]: ...

    def free_memory_bytes(self) -> int | None: ...

    def clear_memory(self) -> None: ...


def load_backend(kind: str, **kwargs: Any) -> Backend:
    """Import and construct a backend by name ("transformers" or "fake")."""
    if kind == "transformers":
        from egoqa.backends.transformers import TransformersBackend

        return TransformersBackend(**kwargs)
    if kind == "fake":
        from egoqa.backends.fake import FakeBackend

        return FakeBackend(**kwargs)
    from egoqa.errors import ConfigError

    raise ConfigError(f"unknown backend {kind!r}: use 'transformers' or 'fake'")
