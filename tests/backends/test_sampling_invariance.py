"""Seeded sampling is as batch-invariant as greedy search, in bfloat16 too.

A candidate's Gumbel noise is keyed by (seed, step, token id): when low-precision arithmetic moves
a logit a little and one token enters or leaves the top-k, the other candidates keep their noise,
so a sampled answer changes only where perturbed scores nearly tie, as a greedy answer can.
"""

from __future__ import annotations

import pytest

from egoqa.plan.config import GenerationConfig

from fixtures_model import clip_24s, clip_frames  # noqa: F401

PROMPTS = [
    "Where is the bag?",
    "What did I cut?",
    "Who did I talk to?",
    "Stages?",
    "When did I open the fridge?",
    "Where did I put the knife?",
    "How many cups did I wash?",
    "What colour is the door?",
]


@pytest.fixture(scope="module")
def torch():
    """torch, imported when a test runs (collecting this module stays light)."""
    return pytest.importorskip("torch")


def test_a_token_entering_the_top_k_leaves_every_other_candidates_draw_alone(torch):
    """Two logit rows that differ only in which of two tail tokens is the 50th candidate: every
    draw that picks neither of them picks the same token from both rows."""
    settings = GenerationConfig(do_sample=True, temperature=1.0, top_k=50, top_p=1.0)
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1000, generator=g)
    ranked = torch.argsort(base, descending=True)
    inside, outside = ranked[49].item(), ranked[50].item()  # the 50th and the 51st token
    moved = base.clone()
    mid = (base[inside] + base[outside]) / 2
    moved[inside], moved[outside] = mid - 1e-4, mid + 1e-4  # they swap places, barely
    seeds = list(range(2000))
    a = _picks(settings, base, seeds)
    b = _picks(settings, moved, seeds)
    swapped = {inside, outside}
    differ = [s for s in seeds if a[s] != b[s] and not ({a[s], b[s]} & swapped)]
    assert differ == []
    assert len(set(a)) > 20, "the draws should spread over the candidates"


def _picks(settings, logits, seeds) -> list[int]:
    import torch

    from egoqa.backends.token_sampling import SeededSampling

    out = SeededSampling(seeds, settings, "cpu")(None, logits.repeat(len(seeds), 1))
    return torch.argmax(out, dim=-1).tolist()


def test_a_candidates_noise_depends_on_seed_step_and_token_only(torch):
    from egoqa.backends.token_sampling import gumbel

    lo, hi = torch.tensor([[5], [5], [6]]), torch.tensor([[1], [1], [1]])
    tokens = torch.tensor([[3, 7, 9], [7, 9, 11], [3, 7, 9]])
    noise = gumbel(lo, hi, 4, tokens)
    assert noise[0, 1] == noise[1, 0] and noise[0, 2] == noise[1, 1]  # token 7 and 9, same seed
    assert noise[0, 0] != noise[2, 0]  # another seed
    assert not torch.equal(gumbel(lo, hi, 5, tokens), noise)  # another step


class _Recorder:
    """Wraps the backend's sampler: for each (seed, step), every candidate's perturbed score
    (log-probability + its noise) and the token picked."""

    def __init__(self) -> None:
        self.runs: list[dict] = []

    def new_run(self) -> None:
        self.runs.append({})

    def factory(self, seeds, settings, device):
        import torch

        from egoqa.backends.token_sampling import SeededSampling, candidates, gumbel

        inner = SeededSampling(seeds, settings, device)
        log = self.runs[-1]

        def call(input_ids, scores):
            tokens, logp = candidates(scores.float(), settings)
            perturbed = logp + gumbel(inner.seed_lo, inner.seed_hi, inner.step, tokens)
            out = inner(input_ids, scores)
            picks = torch.argmax(out, dim=-1).tolist()
            for r, seed in enumerate(seeds):
                step = inner.step - 1
                log[(seed, step)] = (
                    picks[r],
                    dict(zip(tokens[r].tolist(), perturbed[r].tolist(), strict=True)),
                )
            return out

        return call


@pytest.mark.model
@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_a_sampled_answer_changes_with_its_batch_only_where_two_candidates_nearly_tie(
    tiny_model,
    clip_24s,  # noqa: F811
    dtype,
    monkeypatch,
):
    """The same requests alone, in one batch and reversed. float32: the same texts every way.
    bfloat16 (a batch moves logits by a few 1e-3): every candidate's perturbed score moves only
    that much between runs, so two runs pick differently only where two candidates' scores
    nearly tie, or where a pick sits on the top-k / top-p boundary that the change moved."""
    import egoqa.backends.transformers as tb
    from egoqa.backends.base import Request
    from egoqa.plan.config import SamplerConfig

    frames = clip_frames(clip_24s, SamplerConfig(frames=4, max_edge=112))
    backend = tb.TransformersBackend(str(tiny_model), device="cpu", dtype=dtype)
    recorder = _Recorder()
    monkeypatch.setattr(tb, "SeededSampling", recorder.factory)
    settings = GenerationConfig(max_new_tokens=12, do_sample=True, temperature=1.0)
    requests = [
        Request(i, p, frames if i % 2 else None, 2, settings, seed=100 + i)
        for i, p in enumerate(PROMPTS)
    ]
    recorder.new_run()
    batched = [r.texts for r in backend.generate(requests)]
    recorder.new_run()
    reversed_ = [r.texts for r in backend.generate(requests[::-1])][::-1]
    recorder.new_run()
    alone = [backend.generate([r])[0].texts for r in requests]
    if dtype == "float32":
        assert batched == reversed_ == alone
        return
    first, *others = recorder.runs
    checked = 0
    for other in others:
        for seed in {seed for seed, _ in first}:
            step = 0
            while (seed, step) in first and (seed, step) in other:
                (a, sa), (b, sb) = first[(seed, step)], other[(seed, step)]
                both = [t for t in set(sa) & set(sb) if abs(sa[t]) < 1e30 and abs(sb[t]) < 1e30]
                # a candidate's noise is the same in every run: its score moves with its logit
                assert max(abs(sa[t] - sb[t]) for t in both) < 0.02, (seed, step)
                checked += 1
                if a == b:
                    step += 1
                    continue
                if a in both and b in both:  # else a pick left the other run's top-k or top-p
                    assert abs(sa[a] - sa[b]) < 0.05 and abs(sb[a] - sb[b]) < 0.05, (seed, step)
                break  # the row's inputs differ from here on
    assert checked >= len(PROMPTS) * 2 * len(others)  # every row, at least once, in each way
