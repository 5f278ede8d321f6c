"""What the hardware allows and what plain `generate` reaches, measured in the benchmark's own run:
device-to-device copy bandwidth (the decode bound), bf16 matmul rate (the prefill bound), decode
steps/s by batch, prefill FLOP/s, static KV cache with and without `torch.compile`, and a
profile of decode steps."""

from __future__ import annotations

import time
from dataclasses import dataclass

from transformers import LogitsProcessor


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_time(fn, device: str, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def copy_bandwidth(device: str, megabytes: int, repeats: int = 5) -> float:
    """Bytes/s of a device-to-device copy, counting what is read and what is written."""
    import torch

    n = megabytes * 2**20
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    seconds = best_time(lambda: dst.copy_(src), device, repeats)
    return 2 * n / seconds


def matmul_rate(device: str, dtype, n: int, repeats: int = 5, inner: int = 10) -> float:
    """FLOP/s of square matmuls in `dtype` (the prefill's ceiling)."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run():
        for _ in range(inner):
            torch.matmul(a, b)

    return 2 * n**3 * inner / best_time(run, device, repeats)


def text_batch(model, batch: int, tokens: int, vocab: int, seed: int = 0):
    """Random ordinary token ids (no special token), all rows of one length: no padding."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(vocab, 700), (batch, tokens), generator=g)
    return ids.to(model.device), torch.ones_like(ids).to(model.device)


class StepClock(LogitsProcessor):
    """A logits processor that notes when each step's logits are ready (after a device sync)."""

    def __init__(self, device: str) -> None:
        self.device, self.times = device, []

    def __call__(self, input_ids, scores):
        sync(self.device)
        self.times.append(time.perf_counter())
        return scores

    def steps_s(self) -> float:
        """Decode steps/s between the first logits (the prefill's) and the last: the median gap,
        so a step slowed by another process on a shared machine does not skew it."""
        gaps = sorted(b - a for a, b in zip(self.times, self.times[1:], strict=False))
        return 1.0 / gaps[len(gaps) // 2]


def _generate(model, ids, mask, new: int, processors=(), **kw) -> None:
    import torch

    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            logits_processor=list(processors),
            **kw,
        )


def decode_rate(
    model, batch, prompt, steps, vocab, device, *, sampler=None, warm=True, **kw
) -> float:
    """Decode steps/s of one `generate` call of `steps` steps (after a short warm-up call)."""
    ids, mask = text_batch(model, batch, prompt, vocab)
    extra = [sampler(batch)] if sampler else []
    if warm:
        _generate(model, ids, mask, 2, [*extra, StepClock(device)], **kw)
    clock = StepClock(device)
    _generate(model, ids, mask, 1 + steps, [*extra, clock], **kw)
    return clock.steps_s()


def prefill(model, batch: int, tokens: int, vocab: int, device: str, linear: int) -> dict:
    """One forward over batch x tokens (text): tokens/s and FLOP/s (matrices and attention)."""
    import torch

    ids, mask = text_batch(model, batch, tokens, vocab)
    text = model.config.text_config

    def run():
        with torch.inference_mode():
            model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)

    seconds = best_time(run, device, 2)
    # matrices: 2 FLOPs per parameter per token; causal attention: QK^T and AV over half the
    # square, 2 x 2 x (P^2 / 2) x hidden per layer and sequence; the LM head on the last token.
    flops = 2 * linear * batch * tokens
    flops += 2 * tokens**2 * text.hidden_size * text.num_hidden_layers * batch
    flops += 2 * batch * text.vocab_size * text.hidden_size
    return {"seconds": seconds, "tokens_s": batch * tokens / seconds, "flops": flops / seconds}


@dataclass
class CacheVariant:
    name: str
    steps_s: float | None
    first_call_s: float | None
    note: str = ""


def cache_variants(model, batch, prompt, steps, vocab, device, allow_compile: bool) -> list:
    """Decode steps/s with the default dynamic cache, a static cache, and a static cache compiled
    (`torch.compile` with CUDA graphs, transformers' automatic path for static caches on CUDA)."""
    rows = [
        CacheVariant(
            "dynamic cache, eager (what the worker runs)",
            decode_rate(model, batch, prompt, steps, vocab, device),
            None,
        )
    ]
    static = {"cache_implementation": "static"}
    rows.append(_variant("static cache, eager", model, batch, prompt, steps, vocab, device,
                         disable_compile=True, **static))  # fmt: skip
    if not device.startswith("cuda"):
        rows.append(CacheVariant("static cache + torch.compile", None, None, "n/a on CPU"))
    elif not allow_compile:
        rows.append(CacheVariant("static cache + torch.compile", None, None, "not run (budget)"))
    else:
        rows.append(_variant("static cache + torch.compile", model, batch, prompt, steps, vocab,
                             device, disable_compile=False, **static))  # fmt: skip
    return rows


def _variant(name, model, batch, prompt, steps, vocab, device, **kw) -> CacheVariant:
    ids, mask = text_batch(model, batch, prompt, vocab)
    try:
        t0 = time.perf_counter()
        # The first call compiles, if it does; the measured call has the same shapes (a static
        # cache as long as it), so nothing is compiled again.
        _generate(model, ids, mask, 1 + steps, [StepClock(device)], **kw)
        sync(device)
        first = time.perf_counter() - t0
        rate = decode_rate(model, batch, prompt, steps, vocab, device, warm=False, **kw)
    except Exception as exc:  # noqa: BLE001 -- report what does not work, keep measuring
        return CacheVariant(name, None, None, f"fails: {type(exc).__name__}: {str(exc)[:120]}")
    return CacheVariant(name, rate, first)


def profile_decode(model, batch, prompt, steps, vocab, device, top: int = 8) -> dict:
    """Where decode steps spend their time: device busy share and the busiest operators."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    ids, mask = text_batch(model, batch, prompt, vocab)
    _generate(model, ids, mask, 2)
    cuda = device.startswith("cuda")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        _generate(model, ids, mask, steps)
        sync(device)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    busiest = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
    device_s = sum(e.self_device_time_total for e in events) / 1e6 if cuda else None
    return {
        "wall": wall,
        "device_s": device_s,
        "ops": [(e.key, getattr(e, key) / 1e6, e.count) for e in busiest],
        "torch_threads": torch.get_num_threads(),
    }
