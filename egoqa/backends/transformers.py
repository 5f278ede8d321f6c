"""The `transformers` backend: Qwen2.5-VL (or any image-text-to-text model) via `AutoProcessor`.

Frames arrive decoded; they go through `qwen_vl_utils.process_vision_info` with their sampling
rate as video metadata, so `second_per_grid_ts` is right. `encode` prepares a batch's inputs on
the CPU (the worker does it ahead, while the previous batch generates); `generate` runs them.
Only workers import this module.
"""

from __future__ import annotations

import copy
import gc
import math
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network unless asked to
os.environ.setdefault("FORCE_QWENVL_VIDEO_READER", "decord")  # read before qwen_vl_utils import

import torch  # noqa: E402
from qwen_vl_utils import process_vision_info  # noqa: E402
from qwen_vl_utils.vision_process import smart_resize  # noqa: E402
from transformers import StoppingCriteria  # noqa: E402

from egoqa.backends import loading  # noqa: E402
from egoqa.backends.base import Frames, Request, Result, sample_seed  # noqa: E402
from egoqa.backends.loading import DTYPES, is_oom  # noqa: E402,F401 -- re-exported
from egoqa.backends.token_sampling import SeededSampling  # noqa: E402
from egoqa.errors import ConfigError, ModelLoadError, OutOfMemory  # noqa: E402
from egoqa.plan.config import GenerationConfig  # noqa: E402

INJECT_OOM_ENV = "EGOQA_INJECT_OOM_ABOVE"
PATCH_SIZE, MERGE_SIZE = 14, 2
FACTOR = PATCH_SIZE * MERGE_SIZE  # frame sides must be multiples of 28
DEFAULT_MIN_PIXELS = 4 * FACTOR * FACTOR  # the checkpoint's own minimum (3136)
DEFAULT_MAX_PIXELS = 768 * FACTOR * FACTOR  # qwen-vl-utils' per-frame video maximum


@dataclass
class _Row:
    """One generated sequence: a sample of request `index` (n samples are n rows)."""

    index: int
    conversation: list[dict[str, Any]]
    frames: Frames | None
    seed: int  # this sample's own random stream (used when sampling)


@dataclass
class _Output:
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    completion_tokens: list[int] = field(default_factory=list)
    prompt_tokens: int = 0
    visual_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Group:
    """The rows of one `model.generate` call and their inputs, still on the CPU."""

    settings: GenerationConfig
    rows: list[_Row]
    inputs: Any  # the processor's BatchFeature
    video_extras: list[dict[str, Any]]


@dataclass
class Encoded:
    """A batch's model inputs, prepared by `encode` for exactly these requests."""

    requests: list[Request]
    groups: list[_Group]

    def matches(self, requests: list[Request]) -> bool:
        return len(requests) == len(self.requests) and all(
            a is b for a, b in zip(requests, self.requests, strict=True)
        )


class TransformersBackend:
    """Batched generation with `AutoModelForImageTextToText`, left padding, greedy or sampled."""

    name = "transformers"

    @classmethod
    def from_engine(cls, engine: dict, config: Any, device: str) -> TransformersBackend:
        """The checkpoint the engine names (the registry's precheck has refused a missing local
        path, or one that no longer holds the weights its jobs were keyed by, before torch)."""
        return cls(
            model=engine["model"],
            revision=engine.get("revision"),
            dtype=engine["dtype"],
            attn_implementation=engine.get("attn_implementation"),
            quantization=engine.get("quantization"),
            max_pixels=engine.get("max_pixels"),
            trust_remote_code=bool(engine.get("trust_remote_code", False)),
            device=device,
            device_map=config.device_map,
        )

    def __init__(
        self,
        model: str,
        *,
        revision: str | None = None,
        dtype: str = "auto",
        attn_implementation: str | None = None,
        quantization: str | None = None,
        device: str = "auto",
        device_map: str | None = None,
        trust_remote_code: bool = False,
        max_pixels: int | None = None,
        min_pixels: int | None = None,
    ) -> None:
        target = loading.resolve_device(device)
        loading.check_engine_support(attn_implementation, quantization, target)
        load = {"trust_remote_code": trust_remote_code, "local_files_only": loading.offline()}
        if revision is not None:
            load["revision"] = revision
        processor = loading.load_processor(str(model), load)
        options = loading.model_options(
            dtype, attn_implementation, quantization, device_map, target
        )
        loaded = loading.load_model(str(model), options, load)
        if device_map is None and quantization is None:
            loaded.to(target)
        self._wrap(str(model), loaded, processor, min_pixels, max_pixels, quantization)

    @classmethod
    def from_parts(
        cls,
        name: str,
        model,
        processor,
        *,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ) -> TransformersBackend:
        """A backend around a model and processor already in memory (built, not loaded)."""
        backend = cls.__new__(cls)
        backend._wrap(name, model.eval(), processor, min_pixels, max_pixels, None)
        return backend

    def _wrap(self, name, model, processor, min_pixels, max_pixels, quantization) -> None:
        self.model_id = name
        self.should_stop = _never  # a worker sets its stop check: generation ends between steps
        self.min_pixels = min_pixels or DEFAULT_MIN_PIXELS
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS
        if self.max_pixels < self.min_pixels:
            raise ConfigError(f"max_pixels {self.max_pixels} is below min_pixels {self.min_pixels}")
        self.processor, self.model = processor, model
        self.device = loading.device_name(next(self.model.parameters()).device)
        self.dtype = quantization or str(self.model.dtype).removeprefix("torch.")
        self.video_token_id = getattr(self.model.config, "video_token_id", None)
        # A fast tokenizer is not safe to use from two threads at once ("Already borrowed"):
        # inputs are encoded ahead in another thread while this one decodes answers.
        self._tokenizer_lock = threading.Lock()

    # --- Backend protocol ----------------------------------------------------------------------

    def generate(self, requests: list[Request], encoded: Encoded | None = None) -> list[Result]:
        """One `Result` per request; raises `OutOfMemory` (after freeing memory) when it does not fit.

        `encoded` is what `encode` made of these very requests (used as is), or None.
        """
        if not requests:
            return []
        start = time.perf_counter()
        oom = None
        try:
            _inject_oom(len(requests))
            if encoded is None or not encoded.matches(requests):
                encoded = self.encode(requests)
            outputs = self._generate_all(encoded)
        except (RuntimeError, MemoryError) as exc:
            if not is_oom(exc):
                raise
            oom = loading.first_line(exc)
        if oom is not None:
            # Only now, outside the handler: the error's traceback holds the batch's tensors.
            self.clear_memory()
            raise OutOfMemory(
                f"a batch of {len(requests)} requests did not fit in {self.device} memory "
                f"({oom}); split the batch or lower max_pixels / frames"
            )
        latency = time.perf_counter() - start
        return [_result(out, latency, len(requests)) for out in outputs]

    def encode(self, requests: list[Request]) -> Encoded:
        """The batch's model inputs on the CPU: chat text tokenised, frames cut into patches."""
        groups = _group_rows(requests, self.min_pixels, self.max_pixels)
        return Encoded(
            list(requests),
            [_Group(settings, rows, *self._encode(rows)) for settings, rows in groups.items()],
        )

    def free_memory_bytes(self) -> int | None:
        """Bytes a batch could still use: free device memory plus what torch holds unused."""
        if self.device.startswith("cuda"):
            device = torch.device(self.device)
            cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
            return int(torch.cuda.mem_get_info(device)[0] + cached)
        import psutil

        return int(psutil.virtual_memory().available)

    def bytes_per_token(self) -> int:
        """Memory one token of a sequence holds: its KV cache plus the prefill's activations."""
        text = getattr(self.model.config, "text_config", self.model.config)
        width = torch.finfo(self.model.dtype).bits // 8 if self.model.dtype.is_floating_point else 2
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        kv = 2 * text.num_hidden_layers * text.num_key_value_heads * head_dim * width
        activations = (3 * text.intermediate_size + 4 * text.hidden_size) * width
        return int(kv + activations)

    def clear_memory(self) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- generation ----------------------------------------------------------------------------

    def _generate_all(self, encoded: Encoded) -> list[_Output]:
        outputs = [_Output() for _ in encoded.requests]
        for group in encoded.groups:
            self._generate_group(group, outputs)
        return outputs

    def _generate_group(self, group: _Group, outputs: list[_Output]) -> None:
        settings, rows = group.settings, group.rows
        inputs = group.inputs.to(self.model.device)
        config = self._generation_config(settings)
        processors = []
        if settings.do_sample:
            # Sampling as greedy search over Gumbel-perturbed logits, each row drawing from its
            # own seeded stream: a row's tokens depend on its seed, never on its batch mates.
            seeds = [row.seed for row in rows]
            processors.append(SeededSampling(seeds, settings, self.model.device))
        with torch.inference_mode():
            sequences = self.model.generate(
                **inputs,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=[_StopRequested(self.should_stop)],
            )
        prompt_len = inputs["input_ids"].shape[1]
        generated = sequences[:, prompt_len:].tolist()
        prompt_tokens = inputs["attention_mask"].sum(dim=1).tolist()
        visual = self._visual_tokens(inputs)
        eos_ids = _eos_ids(config, self.processor.tokenizer)
        extras = iter(group.video_extras)  # one per video row, in row order
        with self._tokenizer_lock:
            for i, row in enumerate(rows):
                out = outputs[row.index]
                self._record(out, generated[i], eos_ids)
                out.prompt_tokens, out.visual_tokens = int(prompt_tokens[i]), int(visual[i])
                if row.frames is not None:
                    out.extra.update(next(extras))

    def _visual_tokens(self, inputs) -> list[int]:
        if self.video_token_id is None:
            return [0] * inputs["input_ids"].shape[0]
        return (inputs["input_ids"] == self.video_token_id).sum(dim=1).tolist()

    def _encode(self, rows: list[_Row]) -> tuple[Any, list[dict[str, Any]]]:
        conversations = [row.conversation for row in rows]
        kwargs: dict[str, Any] = {}
        if any(row.frames is not None for row in rows):
            videos, metadata = _row_videos(rows)
            kwargs = {"videos": videos, "video_metadata": metadata, "do_sample_frames": False}
        with self._tokenizer_lock:
            texts = [
                self.processor.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                for c in conversations
            ]
            inputs = self.processor(text=texts, padding=True, return_tensors="pt", **kwargs)
        extras = _video_extras(inputs, rows, self._temporal_patch()) if kwargs else []
        return inputs, extras

    def _temporal_patch(self) -> int:
        return int(getattr(self.processor.video_processor, "temporal_patch_size", 2))

    def _generation_config(self, settings: GenerationConfig):
        config = copy.deepcopy(self.model.generation_config)
        config.max_new_tokens = settings.max_new_tokens
        # Sampled turns run as greedy search too: `SeededSampling` turns the logits into a
        # draw from the tempered, top-k / top-p filtered distribution, per row.
        config.do_sample = False
        # the checkpoint's sampling defaults would only draw warnings under greedy search
        config.temperature = config.top_p = config.top_k = None
        if config.pad_token_id is None:
            config.pad_token_id = self.processor.tokenizer.pad_token_id
        return config

    def _record(self, out: _Output, generated: list[int], eos_ids: set[int]) -> None:
        tokens, stopped = _until_eos(generated, eos_ids)
        text = self.processor.tokenizer.decode(tokens, skip_special_tokens=True)
        out.texts.append(text)
        out.finish_reasons.append(finish_reason(text, stopped))
        out.completion_tokens.append(len(tokens) + int(stopped))


# --- requests to chat rows ---------------------------------------------------------------------


def _group_rows(
    requests: list[Request], min_pixels: int, max_pixels: int
) -> dict[GenerationConfig, list[_Row]]:
    """Rows grouped by generation settings (one `model.generate` each); n samples are n rows.

    The configured seed is not a grouping key: each row carries its own seed, derived from its
    job's key (which includes the configured seed) and its sample index.
    """
    groups: dict[GenerationConfig, list[_Row]] = {}
    for index, request in enumerate(requests):
        conversation = conversation_for(request, min_pixels, max_pixels)
        settings = request.generation.model_copy(update={"seed": 0})
        for sample in range(max(1, request.samples)):
            row = _Row(index, conversation, request.frames, sample_seed(request.seed, sample))
            groups.setdefault(settings, []).append(row)
    return groups


def conversation_for(
    request: Request, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS
) -> list[dict[str, Any]]:
    """The chat for one request: optional system message, then the video (if any) and the text."""
    content: list[dict[str, Any]] = []
    if request.frames is not None:
        content.append(video_item(request.frames, min_pixels, max_pixels))
    content.append({"type": "text", "text": request.prompt})
    messages: list[dict[str, Any]] = []
    if request.system is not None:
        messages.append({"role": "system", "content": request.system})
    messages.append({"role": "user", "content": content})
    return messages


def video_item(
    frames: Frames, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict[str, Any]:
    """A chat video item holding decoded frames, pinned to the size the model will see.

    The per-frame bounds are set to exactly that size, so qwen-vl-utils neither upscales small
    frames (its default minimum is 100,352 pixels) nor shrinks them.
    """
    from PIL import Image

    height, width = frames.array.shape[1:3]
    target_h, target_w = frame_size(height, width, min_pixels, max_pixels)
    pixels = target_h * target_w
    return {
        "type": "video",
        "video": [Image.fromarray(frame) for frame in frames.array],
        "sample_fps": float(frames.fps),
        "resized_height": target_h,
        "resized_width": target_w,
        "min_pixels": pixels,
        "max_pixels": pixels,
    }


def frame_size(height: int, width: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) as multiples of 28 within the pixel bounds, aspect kept (Qwen's rule)."""
    return smart_resize(height, width, factor=FACTOR, min_pixels=min_pixels, max_pixels=max_pixels)


def video_inputs(conversations: list[list[dict[str, Any]]]) -> tuple[list[Any], list[Any]]:
    """(videos, metadata) for the processor, in the order the video items appear.

    qwen-vl-utils 0.0.14 resizes each listed frame to a multiple of 56 before the video is
    resized to its final multiple of 28 (it passes the merged patch size, 28, as the patch size),
    which squashes and re-stretches e.g. 252-pixel sides. Passing half the patch size makes that
    first step land on the final size, so each frame is resampled once (or not at all).
    """
    _, videos, _ = process_vision_info(
        conversations,
        return_video_kwargs=True,
        return_video_metadata=True,
        image_patch_size=PATCH_SIZE // 2,
    )
    videos = videos or []
    return [v for v, _ in videos], [m for _, m in videos]


def _row_videos(rows: list[_Row]) -> tuple[list[Any], list[Any]]:
    """(videos, metadata) for the video rows; each request's frames are prepared once."""
    position: dict[int, int] = {}
    conversations = []
    for row in rows:
        if row.frames is not None and row.index not in position:
            position[row.index] = len(conversations)
            conversations.append(row.conversation)
    videos, metadata = video_inputs(conversations)
    picks = [position[row.index] for row in rows if row.frames is not None]
    return [videos[p] for p in picks], [metadata[p] for p in picks]


def _video_extras(inputs, rows: list[_Row], temporal_patch: int) -> list[dict[str, Any]]:
    """Timing and grid per video row, checked against the frames' sampling rate.

    A processor that ignored the metadata would assume 24 fps and silently misplace every event
    in time, so a mismatch stops the batch instead.
    """
    grids = inputs["video_grid_thw"].tolist()
    seconds = [float(s) for s in inputs["second_per_grid_ts"]]
    fps = [row.frames.fps for row in rows if row.frames is not None]
    for got, rate in zip(seconds, fps, strict=True):
        if not math.isclose(got, temporal_patch / rate, rel_tol=1e-4):
            raise ModelLoadError(
                f"the processor set second_per_grid_ts={got:g} for frames sampled at {rate:g} "
                f"fps (expected {temporal_patch / rate:g}): it ignored the video metadata; "
                "use a transformers version whose Qwen2.5-VL processor reads video_metadata"
            )
    return [
        {"second_per_grid_ts": s, "video_grid_thw": g} for s, g in zip(seconds, grids, strict=True)
    ]


def finish_reason(text: str, stopped: bool) -> str:
    """ "empty" for a blank text, else "stop" when an end token was generated, else "length"."""
    if not text.strip():
        return "empty"
    return "stop" if stopped else "length"


def _until_eos(generated: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    for position, token in enumerate(generated):
        if token in eos_ids:
            return generated[:position], True
    return generated, False


def _result(out: _Output, latency: float, batch_size: int) -> Result:
    return Result(
        texts=out.texts,
        finish_reasons=out.finish_reasons,
        prompt_tokens=out.prompt_tokens,
        visual_tokens=out.visual_tokens,
        completion_tokens=out.completion_tokens,
        latency_s=latency,
        batch_size=batch_size,
        extra=out.extra,
    )


def _eos_ids(generation_config, tokenizer) -> set[int]:
    eos = generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos) if isinstance(eos, (list, tuple)) else {eos}


# --- out of memory -----------------------------------------------------------------------------


def _inject_oom(batch: int) -> None:
    """Test hook: `EGOQA_INJECT_OOM_ABOVE=k` makes batches larger than k fail like a CUDA OOM."""
    value = os.environ.get(INJECT_OOM_ENV)
    if not value:
        return
    try:
        limit = int(value)
    except ValueError:
        raise ConfigError(f"{INJECT_OOM_ENV}={value!r} is not an integer") from None
    if batch > limit:
        raise torch.cuda.OutOfMemoryError(
            f"CUDA out of memory (injected by {INJECT_OOM_ENV}={limit} for a batch of {batch})"
        )


def _never() -> bool:
    return False


class _StopRequested(StoppingCriteria):
    """Ends every row's generation at the next decode step once the worker was asked to stop
    (its answers are then discarded, never recorded)."""

    def __init__(self, should_stop) -> None:
        self.should_stop = should_stop

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full(
            (input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device
        )
