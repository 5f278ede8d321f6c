"""A run's configuration: frozen, validated, canonical.

Sources, later wins: a named preset shipped in `egoqa/plan/presets/` or any TOML file by path, then
`--set key=value` overrides (dotted keys, TOML values). Unknown keys and bad values raise a
`ConfigError` that lists what is allowed.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from egoqa.errors import ConfigError
from egoqa.plan import samplers, tomlfiles


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class SamplerConfig(_Frozen):
    """Which frames a turn shows: the one sampler type (configs, job specs and frame code).

    uniform: `frames` spread over the clip, both ends included when `endpoints` (else bin
    centres); dense: `fps` frames a second, at most `max_frames`; shots: one keyframe (the middle
    frame) per shot PySceneDetect finds (`detector`, its threshold, `min_shot_sec`), at most
    `max_shots` (the shortest merged into a neighbour), `split_sec` pieces when none is found.
    `stamp` draws each frame's time (a shot's range) onto it.
    """

    kind: str = "uniform"  # a name in `egoqa.plan.samplers`
    frames: Annotated[int, Field(ge=1, le=4096)] = 8
    fps: Annotated[float, Field(gt=0, le=60)] = 1.0
    max_edge: Annotated[int, Field(ge=28, le=4096)] = 448
    max_frames: Annotated[int, Field(ge=2, le=4096)] = 768
    endpoints: bool = True
    max_shots: Annotated[int, Field(ge=1, le=512)] = 20
    detector: Literal["content", "adaptive"] = "content"
    threshold: Annotated[float, Field(gt=0, le=255)] = 27.0
    adaptive_threshold: Annotated[float, Field(gt=0, le=255)] = 3.0
    min_shot_sec: Annotated[float, Field(ge=0, le=600)] = 0.5
    split_sec: Annotated[float, Field(gt=0, le=3600)] = 20.0
    stamp: bool = False

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, value: str) -> str:
        if value not in samplers.KINDS:
            raise ValueError(f"unknown sampler kind {value!r}: use {samplers.choices()}")
        return value

    def identity(self) -> dict[str, Any]:
        """The fields that decide this sampler's frames (a job key holds these and no others)."""
        keep = ["kind", "max_edge", "stamp", *samplers.kind(self.kind).fields(self)]
        values = self.model_dump()
        return {k: values[k] for k in keep}


class GenerationConfig(_Frozen):
    """How a turn generates: the one type shared by run configs, job specs and backends.

    With `do_sample`, every sample of a job is drawn from its own random stream seeded from the
    job's key (which includes `seed`), so answers never depend on the batch a job ran in.
    """

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


class PricePerMTok(_Frozen):
    """What a hosted API charges, per million tokens (prompt and completion)."""

    input: Annotated[float, Field(ge=0)] = 0.0
    output: Annotated[float, Field(ge=0)] = 0.0


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class OpenAIConfig(_Frozen):
    """An OpenAI-compatible server (`backend = "openai"`): where it is, how hard to press it.

    `base_url`, `image_format` and `vllm_extensions` decide what the model is shown, so they are
    part of the engine (and every job key); the rest is how a worker talks to the server.
    `api_key_env` is the *name* of the environment variable holding the key, never the key.
    """

    base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1
    api_key_env: str | None = None
    concurrency: Annotated[int, Field(ge=1, le=1024)] = 8
    timeout_s: Annotated[float, Field(gt=0, le=3600)] = 300.0
    retries: Annotated[int, Field(ge=0, le=30)] = 6
    backoff_s: Annotated[float, Field(gt=0, le=60)] = 1.0
    max_backoff_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    image_format: Literal["jpeg", "png"] = "jpeg"
    # top_k and the frames' rate (`mm_processor_kwargs.fps`), which vLLM and SGLang read and
    # hosted APIs refuse: set false for those.
    vllm_extensions: bool = True
    price_per_mtok: PricePerMTok | None = None

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^/\s]+", value):
            raise ValueError(
                "base_url must start with http:// or https://, e.g. http://127.0.0.1:8000/v1"
            )
        return None if value is None else value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            # never echo the value: it may be the key itself, put here by mistake
            raise ValueError(
                "api_key_env takes the NAME of an environment variable (e.g. OPENAI_API_KEY) "
                "that holds the key, never the key itself"
            )
        return value

    def identity(self) -> dict[str, Any]:
        """What decides the answers (part of the engine)."""
        keep = ("base_url", "image_format", "vllm_extensions")
        return {k: v for k, v in self.model_dump(mode="json").items() if k in keep}


ENGINE_FIELDS = (
    "backend",
    "model",
    "revision",
    "dtype",
    "attn_implementation",
    "quantization",
    "max_pixels",
    "trust_remote_code",
)


class TurnOverride(_Frozen):
    """One turn's settings in this run, over the style's own (`[turns.answer]`, by turn name)."""

    model: str | None = None
    sampler: dict[str, Any] = {}
    max_new_tokens: Annotated[int, Field(ge=1, le=32768)] | None = None
    per_segment: bool | None = None  # a segments turn: one call per chosen segment
    zoom: Literal["model", "oracle"] | None = None  # who picks a zoom turn's next window

    @field_validator("sampler")
    @classmethod
    def _sampler_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            SamplerConfig.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(
                f"sampler.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
            )
            keys = ", ".join(SamplerConfig.model_fields)
            raise ValueError(f"{problems} (sampler keys: {keys})") from None
        return value


class RunConfig(_Frozen):
    model: str
    revision: str | None = None
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "bfloat16"
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] | None = "sdpa"
    quantization: Literal["nf4"] | None = None
    # Per-frame pixel limit the processor resizes to (None: the processor's video default).
    max_pixels: Annotated[int, Field(ge=3136, le=16384 * 28 * 28)] | None = None
    device_map: str | None = None
    trust_remote_code: bool = False
    backend: str = "transformers"  # a name in `egoqa.backends.registry`
    openai: OpenAIConfig = OpenAIConfig()
    style: str = "baseline"
    system_prompt: str | None = None
    sampler: SamplerConfig = SamplerConfig()
    generation: GenerationConfig = GenerationConfig()
    batch: BatchConfig = BatchConfig()
    turns: dict[str, TurnOverride] = {}
    lease_seconds: Annotated[int, Field(ge=10)] = 900
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    priority: int = 0
    # The proposal set a `media = "proposals"` turn shows (`egoqa proposals import`).
    proposals: str | None = None

    @field_validator("backend")
    @classmethod
    def _known_backend(cls, value: str) -> str:
        from egoqa.backends import registry  # names only: no engine is imported

        try:
            return registry.check_name(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _openai_needs_url(self) -> RunConfig:
        if self.backend == "openai" and self.openai.base_url is None:
            raise ValueError(
                "backend = 'openai' needs openai.base_url, e.g. "
                "--set openai.base_url=http://127.0.0.1:8000/v1"
            )
        return self

    def canonical_json(self) -> str:
        # Without a proposal set the JSON (and so the hash) is what it was before the key existed.
        unset = {"proposals"} if self.proposals is None else set()
        data = self.model_dump(mode="json", exclude=unset)
        for turn in data["turns"].values():  # unset, a run's hash stays what it was before it
            if turn.get("zoom") is None:
                turn.pop("zoom", None)
        if self.openai == OpenAIConfig():  # runs planned before the openai backend keep their hash
            del data["openai"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def engine(self, model: str | None = None) -> dict[str, Any]:
        """What decides how a model computes: part of every job key, and what a worker loads.

        A turn's model override swaps the model and keeps the rest.
        """
        data = self.model_dump(mode="json", include=set(ENGINE_FIELDS))
        if model is not None:
            data["model"] = model
        if self.backend == "openai":
            data |= self.openai.identity()
        return with_weights(data)


def with_weights(engine: dict[str, Any]) -> dict[str, Any]:
    """The engine with `weights`, the fingerprint of its model's content, where the model is a
    local directory (`egoqa.plan.fingerprint`); a hub id is named by its id and revision instead."""
    from egoqa.plan.fingerprint import model_fingerprint

    path = Path(engine["model"])
    if path.is_absolute() and path.is_dir():
        return {**engine, "weights": model_fingerprint(path)}
    return engine


def key_engine(engine: dict[str, Any]) -> dict[str, Any]:
    """The engine as a job's key holds it: a local model by its fingerprint alone, so the same
    weights in another directory share the cache and new weights in the same directory miss."""
    if engine.get("weights"):
        return {**engine, "model": None}
    return engine


def engine_id(engine: dict[str, Any]) -> str:
    """A short, stable name for an engine (a hash of its canonical JSON, the model's path and
    fingerprint included: it names what a worker loads)."""
    text = json.dumps(engine, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def resolve_model_ref(model: str, base: Path | None = None) -> str:
    """A model given as a local directory becomes its absolute path (so `egoqa work` run from
    any directory finds it); a hub id is left as it is."""
    path = Path(model).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    return str(path.resolve()) if path.is_dir() else model


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


# `--set turns.answer.model=...`: a turn override, for any turn name.
_TURN_KEY = re.compile(
    r"turns\.[A-Za-z_][\w-]*\.(?:model|max_new_tokens|per_segment|zoom|sampler\.(?:"
    + "|".join(SamplerConfig.model_fields)
    + r"))"
)


def _known_key(key: str) -> bool:
    return key in allowed_keys() or _TURN_KEY.fullmatch(key) is not None


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
    if not _known_key(key):
        hint = near_keys(key)
        if key == "zoom":
            hint = "zoom belongs to a turn: --set turns.<turn>.zoom=oracle (or model)"
        elif key.startswith("turns."):
            hint = "a turn takes turns.<turn>.model, .max_new_tokens, .per_segment, .zoom or .sampler.<key>"
        raise ConfigError(f"--set: unknown key {key!r}; {hint}")
    *parents, leaf = key.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    value = _parse_value(raw.strip())
    if tomlfiles.non_finite(value) is not None:
        raise ConfigError(
            f"--set {key}={raw.strip()}: not a finite number (nan and inf are refused): give a number"
        )
    node[leaf] = value


def _explain(exc: ValidationError, origin: str) -> ConfigError:
    problems = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown key {key!r} ({near_keys(key)})")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{key}: {msg}" if key else msg)
    return ConfigError(f"{origin}: {'; '.join(problems)}")


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """A preset or TOML file plus overrides; a local model directory is made absolute."""
    data, origin = _read_toml(name_or_path)
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        config = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, origin) from None
    return config.model_copy(update={"model": resolve_model_ref(config.model)})


def sampler_from(data: dict[str, Any]) -> SamplerConfig:
    """A sampler from a job spec, with a one-line error for bad values. A uniform sampler
    stored before `endpoints` existed took bin centres, and its key says so: it keeps them."""
    if data.get("kind", "uniform") == "uniform" and "endpoints" not in data:
        data = {**data, "endpoints": False}
    try:
        return SamplerConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, "sampler") from None


def generation_from(data: dict[str, Any]) -> GenerationConfig:
    try:
        return GenerationConfig.model_validate(data)
    except ValidationError as exc:
        raise _explain(exc, "generation") from None


def config_from_json(text: str) -> RunConfig:
    return RunConfig.model_validate_json(text)
