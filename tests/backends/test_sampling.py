"""Seeded sampling draws from the distribution the settings describe, row by row."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from egoqa.plan.config import GenerationConfig

LOGITS = [2.0, 1.0, 0.5, 0.0, -1.0, -3.0]


@pytest.fixture(scope="module")
def torch():
    """torch, imported when a test runs (collecting this module stays light)."""
    return pytest.importorskip("torch")


def _seeded(seeds: list[int], settings: GenerationConfig):
    from egoqa.backends.token_sampling import SeededSampling

    return SeededSampling(seeds, settings, "cpu")


def _picks(torch, settings: GenerationConfig, n: int, seed0: int = 0) -> Counter:
    scores = torch.tensor([LOGITS] * n)
    out = _seeded(list(range(seed0, seed0 + n)), settings)(None, scores)
    assert torch.all((out == 0).sum(dim=-1) == 1), "each row picks exactly one token"
    return Counter(torch.argmax(out, dim=-1).tolist())


def _expected(temperature: float, keep: list[int]) -> dict[int, float]:
    """Softmax of the tempered logits over the kept tokens, by hand."""
    weights = {i: math.exp(LOGITS[i] / temperature) for i in keep}
    total = sum(weights.values())
    return {i: w / total for i, w in weights.items()}


@pytest.mark.parametrize(
    ("settings", "keep"),
    [
        (GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0), [0, 1, 2, 3, 4, 5]),
        (GenerationConfig(do_sample=True, temperature=0.7, top_k=3, top_p=1.0), [0, 1, 2]),
        # top-p 0.8 at temperature 1: probabilities .57 .21 .13 .08 ... -> the first three
        (GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=0.8), [0, 1, 2]),
    ],
)
def test_draws_follow_the_tempered_filtered_softmax(torch, settings, keep):
    n = 6000
    got = _picks(torch, settings, n)
    assert set(got) <= set(keep), f"picked tokens outside the candidates: {set(got) - set(keep)}"
    for token, p in _expected(settings.temperature, keep).items():
        sd = math.sqrt(p * (1 - p) / n)
        assert abs(got[token] / n - p) < 5 * sd + 1e-3, (token, got[token] / n, p)


def test_a_rows_draw_depends_on_its_seed_only(torch):
    settings = GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    scores = torch.tensor([LOGITS, LOGITS[::-1], LOGITS])
    steps = []
    for seeds in ([7, 8, 9], [7, 100, 200]):
        sampler = _seeded(seeds, settings)
        steps.append([torch.argmax(sampler(None, scores), dim=-1)[0].item() for _ in range(20)])
    assert steps[0] == steps[1]  # row 0 kept seed 7: the same 20 draws whatever its neighbours
    assert len(set(steps[0])) > 1
