"""Sampling that depends on the job alone: a Gumbel-max draw keyed by (seed, step, token id).

`model.generate` runs greedy search; this logits processor turns each row's logits into a one-hot
choice drawn from the turn's distribution — temperature, then top-k, then top-p, as transformers'
warpers apply them. The arg-max of log-probabilities plus Gumbel noise is a sample from that
distribution. Each candidate's noise is a counter-based hash of the row's seed, the decoding step
and the candidate's token id, so it never depends on the batch, the order of rows, or which other
tokens are candidates: when low-precision arithmetic (bfloat16 on a GPU) moves a logit a little and
one token enters or leaves the top-k, every other candidate keeps its noise. What a job generates
then changes only where two candidates' perturbed scores nearly tie — exactly as a greedy answer
can — and identical logits always give identical answers.

Noise is computed only for the candidates top-k leaves, not the whole vocabulary: with top-k 50
that is 50 hashes per row per step instead of 152,064.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from egoqa.plan.config import GenerationConfig

_M32 = 0xFFFFFFFF


class SeededSampling(LogitsProcessor):
    """Temperature → top-k → top-p → a Gumbel-max pick, each candidate's noise keyed by the row's
    seed, the step and its token id. One instance serves one `generate` call (it counts steps)."""

    def __init__(self, seeds: list[int], settings: GenerationConfig, device) -> None:
        self.settings = settings
        seeds_t = torch.tensor([[s & (2**63 - 1)] for s in seeds], dtype=torch.int64, device=device)
        self.seed_lo, self.seed_hi = seeds_t & _M32, seeds_t >> 32
        self.step = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != self.seed_lo.shape[0]:
            raise ValueError(
                f"seeded sampling was set up for {self.seed_lo.shape[0]} rows, got {scores.shape[0]}"
            )
        tokens, logp = candidates(scores.float(), self.settings)
        noise = gumbel(self.seed_lo, self.seed_hi, self.step, tokens)
        self.step += 1
        picked = tokens.gather(-1, torch.argmax(logp + noise, dim=-1, keepdim=True))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, picked, 0.0)


def gumbel(
    seed_lo: torch.Tensor, seed_hi: torch.Tensor, step: int, tokens: torch.Tensor
) -> torch.Tensor:
    """Gumbel(0, 1) noise for each (row, candidate): a pure function of the row's seed (its low
    and high 32 bits, shape (rows, 1)), the step and the token id — no state, no generator."""
    h = _mix(tokens ^ 0x68E31DA4)
    h = _mix(h ^ (step & _M32))
    h = _mix(h ^ seed_lo)
    h = _mix(h ^ seed_hi)
    hi, lo = _mix(h ^ 0x1B56C4E9), _mix(h ^ 0x2C2FE6A1)
    u = ((hi & 0x1FFFFF) * 2**32 + lo).double().add_(0.5).div_(2**53)  # 53 bits, in (0, 1)
    return (-torch.log(-torch.log(u))).float()


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply rounds) in int64 arithmetic: every operand stays
    below 2**32 and each multiplier below 2**31, so no product overflows on any device."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x6B43A9B5) & _M32
    return x ^ (x >> 16)


def candidates(
    logits: torch.Tensor, settings: GenerationConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, log-probabilities) of each row's candidates, in token-id order: the top-k
    tokens of the tempered logits, with those outside the top-p nucleus at -inf."""
    logits = logits / settings.temperature
    k = settings.top_k if 0 < settings.top_k < logits.shape[-1] else logits.shape[-1]
    values, tokens = torch.topk(logits, k, dim=-1)
    tokens, order = tokens.sort(dim=-1)
    values = values.gather(-1, order)
    if settings.top_p < 1.0:
        values = _nucleus(values, settings.top_p)
    return tokens, torch.log_softmax(values, dim=-1)


def _nucleus(values: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' TopPLogitsWarper: drop the least likely tokens whose mass is at most 1 - p
    (the most likely token always stays)."""
    ordered, order = torch.sort(values, descending=False)
    cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
    drop = cumulative <= (1 - top_p)
    drop[..., -1:] = False
    return values.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
