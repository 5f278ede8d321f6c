"""What per-job seeded sampling costs, against transformers' own sampling, in the same run.

egoqa samples by greedy search over Gumbel-perturbed logits with one seeded generator per row
(`egoqa.backends.token_sampling.SeededSampling`), so a job's answer never depends on its batch. The
cost is one draw of a vocabulary-sized uniform vector per row per decode step, on top of the
same temperature / top-k / top-p filtering. Two measurements:

- the logits step alone at Qwen2.5-VL's real vocabulary (152,064) for batch 1, 8 and 32:
  transformers' warpers + softmax + multinomial vs `SeededSampling` + arg-max;
- whole `generate` calls on the tiny Qwen2.5-VL: `do_sample=True` (transformers) vs egoqa's.

    python bench/seeded_sampling.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _common import CACHE, banner, table

VOCAB = 152_064  # Qwen2.5-VL's


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def logits_step(batch: int, repeats: int) -> tuple[float, float]:
    """Seconds per decode step: transformers' sampling vs egoqa's seeded sampling."""
    import torch
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from egoqa.backends.token_sampling import SeededSampling
    from egoqa.plan.config import GenerationConfig

    settings = GenerationConfig(do_sample=True, temperature=0.8, top_p=0.95, top_k=50)
    scores = torch.randn(batch, VOCAB)
    ids = torch.zeros(batch, 1, dtype=torch.long)
    warpers = [TemperatureLogitsWarper(0.8), TopKLogitsWarper(50), TopPLogitsWarper(0.95)]

    def theirs() -> None:
        s = scores
        for w in warpers:
            s = w(ids, s)
        torch.multinomial(torch.softmax(s, dim=-1), 1)

    seeded = SeededSampling(list(range(batch)), settings, "cpu")

    def ours() -> None:
        torch.argmax(seeded(ids, scores), dim=-1)

    return _best(theirs, repeats), _best(ours, repeats)


def generate_calls(batch: int, repeats: int, new_tokens: int) -> tuple[float, float]:
    """Seconds per tiny-model `generate` of the same encoded batch of `new_tokens` new tokens."""
    import copy

    import torch

    from egoqa.backends.base import Request
    from egoqa.backends.token_sampling import SeededSampling
    from egoqa.backends.transformers import TransformersBackend, _group_rows
    from egoqa.dev.tinymodel import build_tiny_model
    from egoqa.plan.config import GenerationConfig

    backend = TransformersBackend(str(build_tiny_model(CACHE / "tiny-qwen2.5-vl")), device="cpu")
    settings = GenerationConfig(max_new_tokens=new_tokens, do_sample=True)
    prompts = [f"Where did I put the cup number {i}? Describe the stages." for i in range(batch)]
    requests = [Request(i, p, generation=settings, seed=i) for i, p in enumerate(prompts)]
    (rows,) = _group_rows(requests, backend.min_pixels, backend.max_pixels).values()
    inputs, _ = backend._encode(rows)
    greedy = backend._generation_config(settings)  # what egoqa runs: greedy + seeded noise
    sampling = copy.deepcopy(greedy)
    sampling.do_sample, sampling.temperature, sampling.top_p, sampling.top_k = True, 0.8, 0.95, 50

    def theirs() -> None:
        with torch.inference_mode():
            backend.model.generate(**inputs, generation_config=sampling)

    def ours() -> None:
        seeded = SeededSampling([r.seed for r in rows], settings, backend.model.device)
        with torch.inference_mode():
            backend.model.generate(**inputs, generation_config=greedy, logits_processor=[seeded])

    theirs()  # warm-up
    ours()
    return _best(theirs, repeats), _best(ours, repeats)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="Fewer repeats, 8 new tokens (the smoke test)."
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    repeats, new_tokens = (3, 8) if args.quick else (20, 32)
    print(banner("seeded_sampling", argv), flush=True)
    rows = []
    for batch in (1, 8) if args.quick else (1, 8, 32):
        theirs, ours = logits_step(batch, repeats)
        rows.append((batch, f"{theirs * 1e3:.2f}", f"{ours * 1e3:.2f}", f"{ours / theirs:.2f}x"))
    print(table("Logits step at vocabulary 152,064 (CPU), ms", ["batch", "transformers",
                "egoqa seeded", "ratio"], rows))  # fmt: skip
    rows = []
    for batch in (1, 8):
        theirs, ours = generate_calls(batch, max(2, repeats // 4), new_tokens)
        rows.append((batch, f"{theirs:.3f}", f"{ours:.3f}", f"{ours / theirs:.2f}x"))
    title = f"Tiny model generate, {new_tokens} new tokens (CPU), seconds"
    print(table(title, ["batch", "transformers", "egoqa seeded", "ratio"], rows))
    print(f"(median of ratios: {statistics.median(float(r[3][:-1]) for r in rows):.2f}x)")


if __name__ == "__main__":
    main(sys.argv[1:])
