"""Loading a transformers model and its processor for an engine: offline by default, one-line
errors for what cannot load, and the engine options (dtype, attention, 4-bit NF4, placement)."""

from __future__ import annotations

import os
from typing import Any

import torch

from egoqa.backends.modelpath import check_model_path
from egoqa.errors import ConfigError, ModelLoadError

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
_OOM_MARKERS = ("out of memory", "can't allocate memory", "defaultcpuallocator")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _load_error(model: str, exc: Exception) -> ModelLoadError:
    first = first_line(exc)
    hint = " (offline: download it first, or set HF_HUB_OFFLINE=0)" if offline() else ""
    return ModelLoadError(f"cannot load model {model!r}{hint}: {first}")


def load_processor(model: str, load: dict[str, Any]):
    from transformers import AutoProcessor

    check_model_path(model)
    try:
        return AutoProcessor.from_pretrained(model, padding_side="left", **load)
    except Exception as exc:  # OSError, ValueError, EnvironmentError: all mean "not loadable"
        raise _load_error(model, exc) from exc


def check_engine_support(
    attn_implementation: str | None, quantization: str | None, device: torch.device
) -> None:
    """Refuse, in one line, an engine this machine cannot run (before loading any weights)."""
    import importlib.util

    if attn_implementation == "flash_attention_2":
        if device.type != "cuda":
            raise ModelLoadError(
                "attn_implementation = 'flash_attention_2' needs a CUDA GPU: use 'sdpa' on "
                f"{device.type}, or run the worker on a GPU"
            )
        if importlib.util.find_spec("flash_attn") is None:
            raise ModelLoadError(
                "attn_implementation = 'flash_attention_2' needs the flash-attn package: "
                "pip install flash-attn, or use attn_implementation = 'sdpa'"
            )
    if quantization == "nf4":
        if device.type != "cuda":
            raise ModelLoadError(
                f"quantization = 'nf4' (bitsandbytes 4-bit) needs a CUDA GPU, not {device.type}: "
                "drop the quantization or run the worker on a GPU"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ModelLoadError(
                "quantization = 'nf4' needs the bitsandbytes package: pip install bitsandbytes"
            )


def model_options(
    dtype: str,
    attn_implementation: str | None,
    quantization: str | None,
    device_map: str | None,
    device: torch.device,
) -> dict[str, Any]:
    """`from_pretrained` keywords for an engine: dtype, attention, 4-bit NF4, placement."""
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(dtype)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if quantization == "nf4":
        from transformers import BitsAndBytesConfig

        # What the original pipeline used to fit 72B: NF4 with double quantisation, bf16 compute.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        kwargs["device_map"] = device_map or {"": device.index or 0}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    return kwargs


def load_model(model: str, options: dict[str, Any], load: dict[str, Any]):
    from transformers import AutoModelForImageTextToText

    kwargs = dict(load, **options)
    try:
        return AutoModelForImageTextToText.from_pretrained(model, **kwargs).eval()
    except Exception as exc:
        if is_oom(exc):
            raise ModelLoadError(
                f"model {model!r} does not fit in memory; use a smaller dtype, "
                "device_map='auto' over more GPUs, or a smaller model"
            ) from exc
        raise _load_error(model, exc) from exc


def _torch_dtype(dtype: str):
    if dtype == "auto":
        return "auto"
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}"
    return str(device)


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors and CPU allocator failures."""
    if isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS)
