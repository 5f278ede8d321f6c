"""The engines egoqa drives, by the name a run config's `backend` gives: one entry each.

An entry names its class as text, so reading the registry imports no engine (the transformers
one imports torch); `load` imports the one asked for. A new engine is one entry here plus its
module, whose class has `from_engine(engine, config, device)`: how a worker builds it from the
engine spec jobs are keyed by and the run's config.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from egoqa.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    cls: str  # "module:Class"
    about: str
    precheck: str | None = None  # "module:function(engine)", run before `cls`'s module imports


ENGINES: dict[str, Entry] = {
    "transformers": Entry(
        "egoqa.backends.transformers:TransformersBackend",
        "Hugging Face transformers in this process",
        precheck="egoqa.backends.modelpath:check_local_model",
    ),
    "openai": Entry("egoqa.backends.openai:OpenAIBackend", "an OpenAI-compatible server"),
    "fake": Entry("egoqa.backends.fake:FakeBackend", "deterministic text, no model (tests)"),
}


def names() -> tuple[str, ...]:
    return tuple(ENGINES)


def check_name(kind: str) -> str:
    if kind not in ENGINES:
        raise ConfigError(f"unknown backend {kind!r}: use {_choices()}")
    return kind


def _load(ref: str) -> Any:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def backend_class(kind: str) -> type:
    return _load(ENGINES[check_name(kind)].cls)


def load_backend(kind: str, **kwargs: Any) -> Any:  # a `backends.base.Backend`
    """Import and construct a backend by name, with its own arguments."""
    return backend_class(kind)(**kwargs)


def from_engine(engine: dict, config: Any, device: str) -> Any:  # a `backends.base.Backend`
    """The backend an engine spec names (`backend`, default transformers), built for `config`'s
    run on `device`; its precheck refuses what would fail only after heavy imports."""
    entry = ENGINES[check_name(engine.get("backend", "transformers"))]
    if entry.precheck:
        _load(entry.precheck)(engine)
    return _load(entry.cls).from_engine(engine, config, device)


def _choices() -> str:
    quoted = [repr(n) for n in ENGINES]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]
