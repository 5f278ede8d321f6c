"""A run's configuration: frozen, validated, canonical.

Sources, later wins: a named preset shipped in `egoqa/presets/` or any TOML file by path, then
`--set key=value` overrides (dotted keys, TOML values). Unknown keys and bad values raise a
`ConfigError` that lists what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import tomllib
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from egoqa import tomlfiles
from egoqa.errors import ConfigError


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SamplerConfig(_Frozen):
    kind: Literal["uniform", "dense"] = "uniform"
    frames: Annotated[int, Field(ge=1, le=4096)] = 8
    fps: Annotated[float, Field(gt=0, le=60)] = 1.0
    max_edge: Annotated[int, Field(ge=28, le=4096)] = 448
    max_frames: Annotated[int, Field(ge=2, le=4096)] = 768


class GenerationConfig(_Frozen):
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] = 512
    do_sample: bool = True
    temperature: Annotated[float, Field(gt=0, le=5)] = 0.8
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95
    top_k: Annotated[int, Field(ge=0)] = 50
    seed: int = 0


class BatchConfig(_Frozen):
    size: Literal["auto"] | Annotated[int, Field(ge=1, le=4096)] = "auto"
    max: Annotated[int, Field(ge=1, le=4096)] = 64
    per_sample_gb: Annotated[float, Field(gt=0)] | None = None
    gb_per_1k_visual_tokens: Annotated[float, Field(gt=0)] = 1.5
    base_gb: Annotated[float, Field(ge=0)] = 0.5


class RunConfig(_Frozen):
    model: str
    revision: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = "sdpa"
    device_map: str | None = None
    trust_remote_code: bool = False
    backend: Literal["transformers", "fake"] = "transformers"
    style: str = "baseline"
    system_prompt: str | None = None
    sampler: SamplerConfig = SamplerConfig()
    generation: GenerationConfig = GenerationConfig()
    batch: BatchConfig = BatchConfig()
    lease_seconds: Annotated[int, Field(ge=10)] = 900
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    priority: int = 0

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def allowed_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key a config accepts, for error messages."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += allowed_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def near_keys(key: str) -> str:
    """What to offer for an unknown key: the allowed keys that look like it, or else the keys of
    its section (or the top-level names), never all of them."""
    keys = allowed_keys()
    section, _, leaf = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == section}
    close = [k for k in keys if leaf and k.rpartition(".")[2] == leaf]  # frames: sampler.frames
    close = close or [k for n, k in siblings.items() if leaf and n.startswith(leaf)]
    close = close or [
        siblings[n] for n in difflib.get_close_matches(leaf, list(siblings), n=3, cutoff=0.6)
    ]
    if not close:  # the section misspelt (samplr.frames) or joined on (batch_size)
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.8 if siblings else 0.6)
    if close:
        return "did you mean " + " or ".join(close[:3]) + "?"
    if section and siblings:
        return f"{section} has: {', '.join(siblings.values())}"
    top = dict.fromkeys(k.split(".")[0] for k in keys)
    return f"keys are: {', '.join(top)} (sampler, generation and batch have their own keys)"


def preset_names() -> list[str]:
    return tomlfiles.shipped("presets")


def _read_toml(name_or_path: str) -> tuple[dict, str]:
    return tomlfiles.load(name_or_path, "presets", "config", ConfigError)


def _parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def apply_override(data: dict, assignment: str) -> None:
    """`sampler.frames=16` → data["sampler"]["frames"] = 16 (TOML value syntax; bare words are strings)."""
    key, sep, raw = assignment.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {assignment!r}: expected key=value, e.g. --set sampler.frames=16")
    if key not in allowed_keys():
        raise ConfigError(f"--set: unknown key {key!r}; {near_keys(key)}")
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    node[leaf] = _parse_value(raw.strip())


def _explain(exc: ValidationError, origin: str) -> ConfigError:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r} ({near_keys(key)})")
        else:
            problems.append(f"{key}: {err['msg']}")
    return ConfigError(f"{origin}: {'; '.join(problems)}")


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    data, origin = _read_toml(name_or_path)
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, origin) from None


def config_from_json(text: str) -> RunConfig:
    return RunConfig.model_validate_json(text)
