"""Sampling that depends on the job alone: a Gumbel-max draw per row from its own seeded stream.

`model.generate` runs greedy search; this logits processor turns each row's logits into a one-hot
choice drawn from the turn's distribution — temperature, then top-k, then top-p, as transformers'
warpers apply them — using a generator owned by the row. The arg-max of log-probabilities plus
Gumbel noise is a sample from that distribution, and each row's noise comes from its own stream,
so what a job generates depends on its seed, never on which rows share its batch, their order, an
out-of-memory split or a retry.

Noise is drawn only for the candidates top-k leaves (in token-id order), not the whole vocabulary:
with top-k 50 that is 50 numbers per row per step instead of 152,064.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor

from egoqa.config import GenerationConfig

_TINY = torch.finfo(torch.float32).tiny


class SeededSampling(LogitsProcessor):
    """Temperature → top-k → top-p → a Gumbel-max pick from one seeded generator per row."""

    def __init__(self, seeds: list[int], settings: GenerationConfig, device) -> None:
        self.settings = settings
        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.generators):
            raise ValueError(
                f"seeded sampling was set up for {len(self.generators)} rows, got {scores.shape[0]}"
            )
        tokens, logp = candidates(scores.float(), self.settings)
        noise = torch.stack([self._gumbel(g, logp) for g in self.generators])
        picked = tokens.gather(-1, torch.argmax(logp + noise, dim=-1, keepdim=True))
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, picked, 0.0)

    @staticmethod
    def _gumbel(generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        u = torch.rand(like.shape[-1], generator=generator, device=like.device)
        return -torch.log(-torch.log(u.clamp_(min=_TINY)))


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
