"""Models for the GPU benchmark: Qwen2.5-VL-7B-Instruct's real architecture with random weights, built
on the meta device and materialised where it runs (no 15 GB through the CPU), or the tiny one.

The tokenizer and processor are the tiny checkpoint's (Qwen's special tokens, Qwen2.5-VL's vision
geometry), so prompts have the real shapes; the 7B keeps its real vocabulary (152,064 rows), so
the LM head costs what it costs. Rows of the LM head for ids the tokenizer does not have, and for
its special tokens, are zero: those logits are exactly 0 while about half the others are
positive, so generation never picks them — no EOS, ever (every sequence runs to
`max_new_tokens`: the worst case), and every answer decodes to text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# Qwen/Qwen2.5-VL-7B-Instruct's config.json (the published values; rope_scaling as transformers
# 5 spells it). Token ids come from the tokenizer in use.
QWEN25_VL_7B_TEXT = {
    "vocab_size": 152064,
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_hidden_layers": 28,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "max_position_embeddings": 128000,
    "max_window_layers": 28,
    "rms_norm_eps": 1e-6,
    "hidden_act": "silu",
    "sliding_window": 32768,
    "use_sliding_window": False,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
}
QWEN25_VL_7B_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "in_channels": 3,
    "out_hidden_size": 3584,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2,
    "hidden_act": "silu",
}


@dataclass(frozen=True)
class Built:
    model: object
    processor: object
    name: str
    params: int  # all parameters
    step_bytes: int  # weights one decode step reads: decoder layers, final norm, LM head
    vocab_in_use: int  # ids the tokenizer has
    seconds: float  # building the model: meta device, materialised, initialised


def token_ids(tokenizer) -> dict[str, int]:
    names = ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>")
    ids = {n: tokenizer.convert_tokens_to_ids(n) for n in names}
    ids |= {n: tokenizer.convert_tokens_to_ids(n) for n in ("<|vision_start|>", "<|vision_end|>")}
    return ids


def config_7b(tokenizer):
    """Qwen2.5-VL-7B-Instruct's architecture, with the special token ids of `tokenizer`."""
    from transformers import Qwen2_5_VLConfig

    ids = token_ids(tokenizer)
    special = {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    return Qwen2_5_VLConfig(
        text_config={**QWEN25_VL_7B_TEXT, **special},
        vision_config=QWEN25_VL_7B_VISION,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
        **special,
    )


def build(which: str, tiny_dir: Path, device: str, dtype) -> Built:
    """`which` is "7b" (the real architecture) or "tiny" (the tiny checkpoint's architecture);
    both built the same way: meta device, then random weights materialised on `device`."""
    import time

    from transformers import AutoConfig, AutoProcessor

    processor = AutoProcessor.from_pretrained(str(tiny_dir), padding_side="left")
    tokenizer = processor.tokenizer
    config = config_7b(tokenizer) if which == "7b" else AutoConfig.from_pretrained(str(tiny_dir))
    t0 = time.perf_counter()
    model = random_model(
        config, device, dtype, vocab_in_use=len(tokenizer), silent=silent_ids(tokenizer)
    )
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    name = "Qwen2.5-VL-7B architecture" if which == "7b" else "tiny Qwen2.5-VL"
    sizes = (n_params(model), step_bytes(model), len(tokenizer), seconds)
    return Built(model, processor, name, *sizes)


def silent_ids(tokenizer) -> list[int]:
    """Ids generation must never pick: every special token (EOS included)."""
    return sorted(set(tokenizer.all_special_ids) | set(token_ids(tokenizer).values()))


def random_model(config, device: str, dtype, *, vocab_in_use: int, silent: list[int]):
    """Random weights, initialised where the model runs (transformers' own init: normal(0, 0.02)
    for matrices, ones for norms, rotary tables recomputed), with the silent LM-head rows."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, dtype=dtype, attn_implementation="sdpa"
        )
    model.to_empty(device=device)
    with torch.no_grad():
        model.init_weights()
        head = model.lm_head.weight
        head[vocab_in_use:].zero_()
        head[silent] = 0.0  # (indexing with a list copies: assign, do not zero_())
    text = config.text_config
    model.generation_config = GenerationConfig(
        bos_token_id=text.bos_token_id,
        eos_token_id=text.eos_token_id,
        pad_token_id=text.pad_token_id,
        do_sample=False,
    )
    return model.eval()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def step_bytes(model) -> int:
    """Bytes of weights a decode step reads: the text decoder without its input embedding table
    (a step reads one row of it per sequence) plus the LM head; the vision tower is idle."""
    text = model.model.language_model
    skip = text.embed_tokens.weight
    decoder = sum(p.numel() * p.element_size() for p in text.parameters() if p is not skip)
    head = model.lm_head.weight
    return decoder + head.numel() * head.element_size()


def linear_params(model) -> int:
    """Parameters of the text decoder's matrices a prefill token multiplies (FLOPs = 2 x this)."""
    layers = model.model.language_model.layers
    return sum(p.numel() for p in layers.parameters() if p.dim() == 2)
