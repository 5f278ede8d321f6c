"""Build a tiny, randomly initialised Qwen2.5-VL checkpoint offline, for tests and the demo.

It uses the real processor classes and the real visual geometry (patch 14, merge 2, temporal
patch 2), so token counts and timing metadata match the real model; its answers are noise.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

from egoqa.errors import ConfigError

FORMAT_VERSION = 1
MARKER = "egoqa_tiny_model.json"  # written last: its presence means the build is complete

# Qwen2's 22 special tokens, in the order (and so with the relative ids) of the real tokenizer.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
)

# Qwen2.5-VL-Instruct's chat template.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

BPE_VOCAB_SIZE = 1024
PIXELS = {"min_pixels": 56 * 56, "max_pixels": 28 * 28 * 16384}  # the real checkpoint's bounds

_VOCABULARY = (
    "you are a helpful assistant the video clip frames frame segment segments query question "
    "answer where did i put what is when was who how many which after before first last "
    "find moment time start end seconds second minute camera wearer person hand hands table "
    "kitchen room door bag phone cup knife bowl box shelf floor car book pen "
    "stage stages name description relevant irrelevant verdict list describe each step "
    "watch look at between from to in on of and or it this that with for my see take "
    "interval intervals timestamp timestamps coarse dense fine grained output format only "
    "answer: reason: stage: verdict: user system assistant"
)
_WORDS = _VOCABULARY.split()
_PUNCT = (":", "-", "[", "]", "(", ")", ",", ".", "?", "s", " - ", "s] - [", "\n", "1.", "2.")


def build_tiny_model(out_dir: Path, *, seed: int = 0) -> Path:
    """Write the tiny checkpoint (model + processor) to `out_dir` and return it.

    Idempotent: a complete build for the same seed is left alone. The build goes to a temporary
    sibling directory that is renamed into place, so concurrent builders never see half a model.
    """
    out_dir = Path(out_dir)
    if is_complete(out_dir, seed=seed):
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError(
            f"{out_dir} is not empty and holds no complete tiny model (seed {seed}); "
            "remove it or choose another directory"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}.tmp-"))
    try:
        _write_build(tmp, seed)
        _move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if not is_complete(out_dir, seed=seed):  # another builder won the race with another seed
        raise ConfigError(f"{out_dir} holds a tiny model built with another seed; remove it")
    return out_dir


def is_complete(out_dir: Path, *, seed: int = 0) -> bool:
    """True if `out_dir` holds a finished build of this format for `seed`."""
    try:
        marker = json.loads((Path(out_dir) / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker == {"format": FORMAT_VERSION, "seed": seed}


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        try:
            out_dir.rmdir()  # only ever an empty directory here
        except OSError:
            return  # filled meanwhile by a concurrent builder
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if not out_dir.exists():
            raise


def _write_build(path: Path, seed: int) -> None:
    processor = build_processor(seed)
    model = build_model(processor.tokenizer, seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    (path / MARKER).write_text(json.dumps({"format": FORMAT_VERSION, "seed": seed}) + "\n")


# --- tokenizer and processor -------------------------------------------------------------------


def training_corpus(seed: int, lines: int = 3000) -> list[str]:
    """Prompt-like English with digits, segments like `[12s] - [30s]` and `Stage: ...` lines."""
    rng = random.Random(seed)
    corpus = []
    for _ in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(3, 14))]
        sentence = " ".join(words).capitalize()
        start = rng.randint(0, 480)
        choice = rng.random()
        if choice < 0.3:
            sentence += f": [{start}s] - [{start + rng.randint(1, 60)}s]"
        elif choice < 0.5:
            sentence = f"{rng.randint(1, 9)}. Stage {rng.choice(_WORDS)}: {sentence}."
        elif choice < 0.7:
            sentence += f" ({start}.{rng.randint(0, 9)} - {start + 4}) {rng.choice(_PUNCT)}"
        else:
            sentence += rng.choice(("?", ".", "!", ":", ","))
        corpus.append(sentence)
    corpus.append(" ".join(str(d) for d in range(10)) + " " + "".join(_PUNCT))
    return corpus


def build_tokenizer(seed: int):
    """A byte-level BPE trained on `training_corpus`, wrapped like Qwen2's tokenizer."""
    from tokenizers import Tokenizer, models, trainers
    from transformers import Qwen2Tokenizer

    template = Qwen2Tokenizer()  # carries Qwen2's normaliser, pre-tokeniser and decoder
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = template.backend_tokenizer.normalizer
    bpe.pre_tokenizer = template.backend_tokenizer.pre_tokenizer
    bpe.decoder = template.backend_tokenizer.decoder
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        show_progress=False,
        initial_alphabet=_byte_alphabet(),
        special_tokens=[],
    )
    bpe.train_from_iterator(training_corpus(seed), trainer=trainer)
    vocab = bpe.get_vocab()
    merges = [tuple(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    for token in SPECIAL_TOKENS:  # appended after the learnt vocabulary, as in Qwen's
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        extra_special_tokens=[
            t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")
        ],
        model_max_length=32768,
        padding_side="left",
    )


def _byte_alphabet() -> list[str]:
    from tokenizers import pre_tokenizers

    return sorted(pre_tokenizers.ByteLevel.alphabet())


def build_processor(seed: int):
    """`Qwen2_5_VLProcessor` with the real image/video processor settings and chat template."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    geometry = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2}
    image = Qwen2VLImageProcessor(**geometry, **PIXELS)
    video = Qwen2VLVideoProcessor(**geometry, **PIXELS, cap_pixels_per_frame=False)
    return Qwen2_5_VLProcessor(
        image_processor=image,
        tokenizer=build_tokenizer(seed),
        video_processor=video,
        chat_template=CHAT_TEMPLATE,
    )


# --- model -------------------------------------------------------------------------------------


def build_config(tokenizer):
    """Tiny text and vision towers with Qwen2.5-VL's real visual geometry and token ids."""
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = -(-len(tokenizer) // 64) * 64
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "max_window_layers": 2,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "window_size": 112,
        "tokens_per_second": 2,
        "fullatt_block_indexes": [1],
    }
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        dtype="float32",
    )


def build_model(tokenizer, seed: int):
    """The randomly initialised model; the same seed gives the same weights, byte for byte."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    config = build_config(tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).eval()
    # A trained model does not end an answer before its first token; random weights sometimes
    # would (an empty generation, failing the job and its dependents), and which jobs did changed
    # with the bytes each transformers release writes. `min_new_tokens` keeps the end token out
    # of the first step (transformers' own logits processor), so every job of the tiny model
    # answers, in every session and with every release.
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=config.text_config.eos_token_id,
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
        min_new_tokens=1,
    )
    return model
