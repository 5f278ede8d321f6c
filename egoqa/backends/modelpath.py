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
