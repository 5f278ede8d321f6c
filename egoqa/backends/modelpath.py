"""Whether a model reference names a local checkpoint that is not there: answered without
torch or transformers, so a worker given a missing path refuses at once, before any heavy import."""

from __future__ import annotations

import os
from pathlib import Path

from egoqa.errors import ModelLoadError


def looks_like_path(model: str) -> bool:
    """A reference that can only be a local directory (a hub id is `owner/name`)."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or os.sep in model[:1]


def check_model_path(model: str) -> None:
    """Refuse, in one line, a local model path that does not exist (a hub id passes)."""
    if Path(model).expanduser().exists() or not looks_like_path(model):
        return
    raise ModelLoadError(
        f"model path {model} does not exist; pass an existing checkpoint directory "
        "(build the tiny one with egoqa.dev.tinymodel.build_tiny_model) or a hub id"
    )


def check_weights(engine: dict) -> None:
    """Refuse to serve jobs keyed by weights the model's directory no longer holds: their
    answers would be stored under the old weights' keys."""
    from egoqa.plan.fingerprint import model_fingerprint

    expected, path = engine.get("weights"), engine["model"]
    if not expected or not os.path.isdir(path):
        return
    found = model_fingerprint(path)
    if found != expected:
        raise ModelLoadError(
            f"the weights in {path} changed since these jobs were enqueued (fingerprint "
            f"{found}, jobs keyed by {expected}): enqueue the run again to key it by the new "
            "weights, or restore the old ones"
        )


def check_local_model(engine: dict) -> None:
    """Before torch loads: the engine's local checkpoint is there and holds its keyed weights."""
    check_model_path(engine["model"])
    check_weights(engine)
