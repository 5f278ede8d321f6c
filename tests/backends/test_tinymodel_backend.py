"""The tiny Qwen2.5-VL built offline, and `TransformersBackend` on it: the real generation path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from egoqa.backends.base import Request
from egoqa.dev.tinymodel import MARKER, SPECIAL_TOKENS, build_tiny_model
from egoqa.errors import ModelLoadError, OutOfMemory
from egoqa.plan.config import GenerationConfig, SamplerConfig

from fixtures_model import clip_24s, clip_frames, frames_of, tiny_backend  # noqa: F401

pytestmark = pytest.mark.model

GREEDY = GenerationConfig(max_new_tokens=12, do_sample=False)
UNIFORM = SamplerConfig(
    frames=8, max_edge=224, endpoints=False
)  # 320x240 -> 224x168: 8 x 6 merged patches
DENSE = SamplerConfig(kind="dense", fps=1.0, max_edge=224)


@pytest.fixture(scope="module")
def uniform_frames(clip_24s):  # noqa: F811
    return clip_frames(clip_24s, UNIFORM)


@pytest.fixture(scope="module")
def dense_frames(clip_24s):  # noqa: F811
    return clip_frames(clip_24s, DENSE, duration=10.0, offset=3.0)


# --- the checkpoint ----------------------------------------------------------------------------


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_another_seed_gives_other_weights(tiny_model, tmp_path):
    """(The same seed gives the same bytes in every session: tests/plan/test_fingerprint.py pins the
    seed-0 build's fingerprint.)"""
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _files(other)["model.safetensors"] != _files(tiny_model)["model.safetensors"]


def test_building_into_a_complete_build_changes_nothing(tiny_model):
    before = {p.name: p.stat().st_mtime_ns for p in tiny_model.iterdir()}
    assert build_tiny_model(tiny_model) == tiny_model
    assert {p.name: p.stat().st_mtime_ns for p in tiny_model.iterdir()} == before
    assert (tiny_model / MARKER).is_file()
    assert not [p for p in tiny_model.parent.iterdir() if p.name.startswith(".")]


def test_tiny_model_loads_with_the_auto_classes(tiny_model):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model)
    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    assert type(processor).__name__ == "Qwen2_5_VLProcessor"
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    tok = processor.tokenizer
    ids = tok.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    assert ids == list(range(ids[0], ids[0] + len(SPECIAL_TOKENS)))
    assert (tok.eos_token, tok.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert model.config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    text = "Where did I put the cup? [12s] - [30s]\nStage name: description"
    assert tok.decode(tok(text).input_ids) == text
    assert len(tok(text).input_ids) < len(text) / 2  # the trained merges are used
    chat = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "hi"}]}]
    rendered = processor.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n"
    )


# --- the backend -------------------------------------------------------------------------------


def _mixed_requests(uniform_frames, dense_frames):
    return [
        Request(1, "Where did I put the cup?", uniform_frames, generation=GREEDY),
        Request(2, "Describe each stage of the video.", generation=GREEDY),
        Request(3, "When was the door open?", dense_frames, generation=GREEDY, system="Be brief."),
        Request(4, "List the stages.", generation=GREEDY),
    ]


def test_batched_generation_equals_row_by_row(tiny_backend, uniform_frames, dense_frames):  # noqa: F811
    requests = _mixed_requests(uniform_frames, dense_frames)
    batched = tiny_backend.generate(requests)
    single = [tiny_backend.generate([r])[0] for r in requests]
    assert [r.texts for r in batched] == [r.texts for r in single]
    assert [r.prompt_tokens for r in batched] == [r.prompt_tokens for r in single]
    assert [r.visual_tokens for r in batched] == [r.visual_tokens for r in single]
    assert [r.batch_size for r in batched] == [4] * 4
    assert batched[1].visual_tokens == 0 and batched[1].extra == {}
    assert batched[0].prompt_tokens > batched[0].visual_tokens > 0


def test_second_per_grid_ts_follows_the_sampling_rate(tiny_backend, uniform_frames, dense_frames):  # noqa: F811
    # two settings in one call (the default would let random weights write 512 tokens)
    other = GenerationConfig(max_new_tokens=4, do_sample=False)
    uniform, dense = tiny_backend.generate(
        [
            Request(1, "q", uniform_frames, generation=GREEDY),
            Request(2, "q", dense_frames, generation=other),
        ]
    )
    assert uniform_frames.fps == pytest.approx(1 / 3)
    assert uniform.extra["second_per_grid_ts"] == pytest.approx(6.0)
    assert dense.extra["second_per_grid_ts"] == pytest.approx(2.0)


class _ProcessorWithoutMetadata:
    """The real processor, minus the video timing metadata (what a careless caller passes)."""

    def __init__(self, real):
        self.real = real

    def __getattr__(self, name):
        return getattr(self.real, name)

    def __call__(self, **kwargs):
        kwargs.pop("video_metadata", None)
        return self.real(**kwargs)


def test_a_processor_ignoring_the_timing_metadata_stops_the_batch(
    tiny_backend,  # noqa: F811
    uniform_frames,
    monkeypatch,
):
    monkeypatch.setattr(
        tiny_backend, "processor", _ProcessorWithoutMetadata(tiny_backend.processor)
    )
    with pytest.raises(ModelLoadError, match="ignored the video metadata"):
        tiny_backend.generate([Request(1, "q", uniform_frames, generation=GREEDY)])


def test_visual_tokens_match_the_frame_grid(tiny_backend, uniform_frames, dense_frames):  # noqa: F811
    for frames in (uniform_frames, dense_frames):
        t, h, w = frames.array.shape[:3]
        (result,) = tiny_backend.generate([Request(1, "q", frames, generation=GREEDY)])
        assert (h, w) == (168, 224)
        assert result.visual_tokens == (t // 2) * (h // 28) * (w // 28)
        assert result.extra["video_grid_thw"] == [t // 2, h // 14, w // 14]


def test_frames_reach_the_processor_without_resampling():
    from egoqa.backends.transformers import conversation_for, video_inputs

    rng = np.random.default_rng(0)
    for h, w in ((168, 224), (252, 336)):  # 252 is a multiple of 28 but not of 56
        array = rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8)
        videos, metadata = video_inputs([conversation_for(Request(1, "q", frames_of(array)))])
        assert videos[0].shape == (4, 3, h, w)
        np.testing.assert_array_equal(videos[0].numpy(), array.transpose(0, 3, 1, 2))
        assert len(metadata[0]["frames_indices"]) / metadata[0]["total_num_frames"] == 1.0


def test_frames_off_the_grid_are_resized_to_multiples_of_28(tiny_backend):  # noqa: F811
    array = np.zeros((2, 240, 320, 3), dtype=np.uint8)
    (result,) = tiny_backend.generate([Request(1, "q", frames_of(array), generation=GREEDY)])
    t, gh, gw = result.extra["video_grid_thw"]
    assert (t, gh * 14, gw * 14) == (1, 252, 308)
    assert result.visual_tokens == 1 * 9 * 11


def test_sampling_is_reproducible_and_draws_n_samples(tiny_backend, uniform_frames):  # noqa: F811
    sampled = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.5)
    requests = [
        Request(1, "Where is the bag?", uniform_frames, samples=3, generation=sampled, seed=7),
        Request(2, "Describe the stages.", generation=GREEDY),
    ]
    first = tiny_backend.generate(requests)
    again = tiny_backend.generate(requests)
    assert [r.texts for r in first] == [r.texts for r in again]
    assert len(first[0].texts) == len(first[0].finish_reasons) == 3
    assert len(first[0].completion_tokens) == 3 and len(first[1].texts) == 1
    assert len(set(first[0].texts)) > 1
    reseeded = [dataclasses.replace(requests[0], seed=8)]
    assert tiny_backend.generate(reseeded)[0].texts != first[0].texts


def test_a_tiny_token_budget_finishes_with_length(tiny_backend):  # noqa: F811
    settings = GenerationConfig(max_new_tokens=2, do_sample=False)
    (result,) = tiny_backend.generate([Request(1, "Where did I put the cup?", generation=settings)])
    assert result.completion_tokens == [2]
    assert result.texts[0].strip() and result.finish_reasons == ["length"]
    assert result.latency_s > 0


def test_an_end_token_at_once_is_an_empty_generation(tiny_backend, monkeypatch):  # noqa: F811
    vocab = list(range(tiny_backend.model.config.text_config.vocab_size))
    monkeypatch.setattr(tiny_backend.model.generation_config, "eos_token_id", vocab)
    # the tiny model's own config keeps the end token out of the first step: lift that here
    monkeypatch.setattr(tiny_backend.model.generation_config, "min_new_tokens", None)
    (result,) = tiny_backend.generate([Request(1, "Where is it?", generation=GREEDY)])
    assert result.texts == [""] and result.finish_reasons == ["empty"]
    assert result.completion_tokens == [1]


def test_the_tiny_model_never_ends_an_answer_before_its_first_token(tiny_backend, monkeypatch):  # noqa: F811
    """Its random weights made the end token the first of some answers (an empty generation that
    failed the job, depending on the bytes a transformers release wrote); its generation config
    now keeps the end token out of the first step. Here the end token is made the top logit at
    every step: the answer is one token, then the end."""
    model = tiny_backend.model
    eos = model.generation_config.eos_token_id

    def end_on_top(_module, _inputs, logits):
        logits[..., eos] = logits.max() + 100.0
        return logits

    hook = model.lm_head.register_forward_hook(end_on_top)
    try:
        (answer,) = tiny_backend.generate([Request(1, "Where is it?", generation=GREEDY)])
        monkeypatch.setattr(model.generation_config, "min_new_tokens", None)
        (ended,) = tiny_backend.generate([Request(1, "Where is it?", generation=GREEDY)])
    finally:
        hook.remove()
    assert answer.completion_tokens == [2] and answer.finish_reasons != ["length"]
    assert ended.completion_tokens == [1] and ended.finish_reasons == ["empty"]


def test_finish_reasons():
    from egoqa.backends.transformers import finish_reason

    assert finish_reason("[1s] - [2s]", stopped=True) == "stop"
    assert finish_reason("[1s] - [2s]", stopped=False) == "length"
    assert finish_reason(" \n", stopped=True) == "empty"


def test_injected_oom_above_k_raises_out_of_memory(tiny_backend, monkeypatch):  # noqa: F811
    monkeypatch.setenv("EGOQA_INJECT_OOM_ABOVE", "1")
    requests = [Request(i, "q", generation=GREEDY) for i in range(2)]
    with pytest.raises(OutOfMemory, match="batch of 2"):
        tiny_backend.generate(requests)
    assert len(tiny_backend.generate(requests[:1])) == 1


def test_cpu_allocator_failure_is_out_of_memory_and_frees_the_batch(tiny_backend, monkeypatch):  # noqa: F811
    import weakref

    import torch

    held = []

    def fail(**_):
        activations = torch.ones(1000)
        held.append(weakref.ref(activations))
        raise RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(tiny_backend.model, "generate", fail)
    with pytest.raises(OutOfMemory) as info:
        tiny_backend.generate([Request(1, "q", generation=GREEDY)])
    assert held[0]() is None  # the failed batch's tensors are gone before the worker retries
    assert info.value.__cause__ is None and info.value.__context__ is None
    monkeypatch.setattr(tiny_backend.model, "generate", lambda **_: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # anything else is a bug, not memory
        tiny_backend.generate([Request(1, "q", generation=GREEDY)])


def test_backend_reports_device_and_memory(tiny_backend):  # noqa: F811
    assert tiny_backend.name == "transformers" and tiny_backend.device == "cpu"
    assert tiny_backend.free_memory_bytes() > 0
    tiny_backend.clear_memory()
    assert tiny_backend.generate([]) == []


def test_missing_model_path_is_a_model_load_error(tmp_path):
    from egoqa.backends.transformers import TransformersBackend

    with pytest.raises(ModelLoadError, match="does not exist"):
        TransformersBackend(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="cannot load model"):
        TransformersBackend(str(tmp_path / "empty"))


# --- the contract every backend keeps (the fake one stands in for it in scheduler tests) ------


@pytest.fixture(params=["transformers", "fake"])
def any_backend(request, tiny_backend):  # noqa: F811
    from egoqa.backends.registry import load_backend

    return tiny_backend if request.param == "transformers" else load_backend("fake")


def test_every_backend_answers_each_request_in_order(any_backend, uniform_frames, dense_frames):
    requests = _mixed_requests(uniform_frames, dense_frames)
    requests[3] = dataclasses.replace(requests[3], samples=2)
    results = any_backend.generate(requests)
    assert [len(r.texts) for r in results] == [1, 1, 1, 2]
    for result in results:
        assert len(result.finish_reasons) == len(result.completion_tokens) == len(result.texts)
        assert set(result.finish_reasons) <= {"stop", "length", "empty"}
        assert result.batch_size == 4 and result.latency_s >= 0
    assert results[0].visual_tokens > 0 and results[1].visual_tokens == 0
    assert results[0].extra["second_per_grid_ts"] == pytest.approx(6.0)
    assert results[2].extra["second_per_grid_ts"] == pytest.approx(2.0)


def test_fake_backend_is_deterministic_and_answers_with_segments(uniform_frames):
    from egoqa.answers.metrics import parse_segments
    from egoqa.backends.fake import FakeBackend

    request = Request(1, "Where is the bag?", uniform_frames, samples=3)
    first, again = FakeBackend().generate([request]), FakeBackend().generate([request])
    assert first[0].texts == again[0].texts and len(set(first[0].texts)) > 1
    assert first[0].visual_tokens == 4 * len(uniform_frames.timestamps)
    for text in first[0].texts:
        segments = parse_segments(text, 24.0)
        assert 1 <= len(segments) <= 3
        assert all(0 <= s.start < s.end <= max(uniform_frames.timestamps) for s in segments)


def test_fake_backend_fails_like_a_real_one_on_request():
    from egoqa.backends.fake import FakeBackend

    requests = [Request(i, "q") for i in range(3)]
    with pytest.raises(OutOfMemory):
        FakeBackend(oom_above=2).generate(requests)
    assert len(FakeBackend(oom_above=3).generate(requests)) == 3
    flaky = FakeBackend(fail_every=2)
    flaky.generate(requests)
    with pytest.raises(RuntimeError, match="fail_every"):
        flaky.generate(requests)


def test_a_stop_ends_generation_at_the_next_decode_step(tiny_backend):  # noqa: F811
    """A worker asked to stop must not wait out a long generation: the backend's stopping
    criterion reads the worker's stop at every decode step."""
    long = GenerationConfig(max_new_tokens=48, do_sample=False)
    requests = [Request(1, "Describe each stage of the video.", generation=long)]
    (full,) = tiny_backend.generate(requests)
    steps = []
    tiny_backend.should_stop = lambda: steps.append(1) or len(steps) >= 3
    try:
        (cut,) = tiny_backend.generate(requests)
    finally:
        tiny_backend.should_stop = lambda: False
    assert full.completion_tokens[0] > 3
    assert cut.completion_tokens == [3] and full.texts[0].startswith(cut.texts[0])
