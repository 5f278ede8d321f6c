"""The GPU benchmark's model is what it claims to be: Qwen2.5-VL-7B-Instruct's published size, built
without materialising a byte (meta device), and random weights that never end a sequence early."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))


def test_the_7b_architecture_has_the_published_size(tiny_model):
    import torch
    from _gpu_model import config_7b, n_params, step_bytes
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    tokenizer = AutoProcessor.from_pretrained(str(tiny_model)).tokenizer
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config_7b(tokenizer), dtype=torch.bfloat16
        )
    assert round(n_params(model) / 1e9, 2) == 8.29  # the model card's "8.29B params"
    # a decode step reads the 28 decoder layers, the final norm and the LM head (bf16)
    hidden, kv, mlp, vocab = 3584, 4 * 128, 18944, 152064
    attention = 2 * hidden * hidden + 2 * hidden * kv + hidden + 2 * kv  # q, o, k, v, biases
    layer = attention + 3 * hidden * mlp + 2 * hidden
    assert step_bytes(model) == 2 * (28 * layer + hidden + vocab * hidden)


@pytest.mark.model
def test_random_weights_never_pick_a_special_token_and_always_decode_to_text(tiny_model):
    import torch
    from _gpu_model import build, silent_ids

    built = build("tiny", tiny_model, "cpu", torch.float32)
    silent = set(silent_ids(built.processor.tokenizer))
    assert built.processor.tokenizer.eos_token_id in silent
    ids = torch.randint(0, 700, (4, 24), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = built.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=40,
            do_sample=True,
            top_k=50,
        )
    new = out[:, ids.shape[1] :]
    assert new.shape == (4, 40)  # nobody stopped early
    assert not silent & set(new.flatten().tolist())
    assert int(new.max()) < built.vocab_in_use
    texts = built.processor.tokenizer.batch_decode(new, skip_special_tokens=True)
    assert all(t.strip() for t in texts)
