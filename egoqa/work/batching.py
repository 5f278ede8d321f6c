"""Batch sizes and shapes: a first guess from free memory and the tokens a sample holds, bounded by
what was learned; where to cut a batch so left padding does not cost more than it saves.

Pure functions; the worker feeds them what the backend and the database report.
"""

from __future__ import annotations

import math

from egoqa.plan import samplers

PATCH = 14
MERGE = 2
TEMPORAL_PATCH = 2
# Text turns: characters per token assumed when a prompt has not been tokenised yet. English BPE
# averages about 4; 3 errs towards more tokens, so towards smaller batches.
CHARS_PER_TOKEN = 3.0
# Memory one token of a sequence holds when the backend cannot say (KV cache plus prefill
# activations): the 72B's figure in bf16, the largest model egoqa is run with.
DEFAULT_BYTES_PER_TOKEN = 560_000


def visual_tokens(frames: int, max_edge: int) -> int:
    """Upper bound on Qwen2.5-VL visual tokens for `frames` frames no larger than max_edge²."""
    side = max(1, math.ceil(max_edge / (PATCH * MERGE)))
    return math.ceil(frames / TEMPORAL_PATCH) * side * side


def frames_in(media: dict) -> int:
    """How many frames a job's media spec shows (an estimate for dense sampling of segments)."""
    if media.get("kind", "none") == "none":
        return 0
    s = media["sampler"]
    return samplers.kind(s["kind"]).frames(s, float(media.get("duration", 0.0)))


def text_tokens(prompt_chars: int, max_new_tokens: int) -> int:
    """Tokens a text-only sample holds at its longest: its prompt (estimated) plus its answer."""
    return math.ceil(prompt_chars / CHARS_PER_TOKEN) + max_new_tokens


def per_sample_bytes(
    media: dict,
    samples: int,
    *,
    per_sample_gb: float | None,
    gb_per_1k_visual_tokens: float,
    base_gb: float,
    text_tokens: int = 0,
    bytes_per_token: int | None = None,
) -> float:
    """Device memory one job needs (all its samples).

    A turn that shows frames: the configured figure, else a base plus a cost per visual token.
    A text-only turn has no visual tokens and no vision tower to run: a base plus the memory of
    its own tokens (prompt and answer), which is why its batches are larger; `per_sample_gb`,
    a figure for frames turns, does not apply to it.
    """
    if media.get("kind", "none") == "none":
        per_token = bytes_per_token or DEFAULT_BYTES_PER_TOKEN
        return (base_gb * 2**30 + text_tokens * per_token) * samples
    if per_sample_gb is not None:
        gb = per_sample_gb
    else:
        sampler = media.get("sampler", {})
        vt = visual_tokens(frames_in(media), sampler.get("max_edge", 0))
        gb = base_gb + gb_per_1k_visual_tokens * vt / 1000
    return gb * samples * 2**30


def auto_batch_size(
    free_bytes: int | None,
    per_sample: float,
    max_batch: int,
    learned: tuple[int | None, int | None] = (None, None),
) -> int:
    """Free memory ÷ per-sample estimate, at most `max_batch`, below the smallest batch that failed."""
    guess = max_batch if free_bytes is None else int(free_bytes // max(per_sample, 1.0))
    size = max(1, min(max_batch, guess))
    max_ok, min_fail = learned
    if min_fail is not None:
        size = min(size, max(1, min_fail - 1))
        if max_ok is not None and max_ok < min_fail:
            size = max(min(size, min_fail - 1), min(max_ok, min_fail - 1))
    return max(1, size)


def split(items: list) -> tuple[list, list]:
    """Halves for an out-of-memory retry."""
    mid = len(items) // 2
    return items[:mid], items[mid:]


def length_groups(
    lengths: list[int], rows: list[int], new_tokens: int, step_tokens: float
) -> list[list[int]]:
    """Indices of a batch, shortest prompt first, cut into groups that are generated one by one.

    Left padding makes every row of a group as long as its longest prompt, and each padded
    position is prefilled for nothing; but each extra group is another decode pass of
    `new_tokens` steps, and a step costs about as much as prefilling `step_tokens` tokens (a
    device's FLOP rate over its memory bandwidth: hundreds on a GPU). The cut minimises
    padded prompt tokens + passes x new_tokens x step_tokens (exactly, by dynamic programming
    over the sorted lengths); `rows` weights each entry by the rows it runs as (its samples).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    n, pass_cost = len(order), new_tokens * step_tokens
    best = [0.0] + [math.inf] * n  # best[j]: cost of the first j entries
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        longest, count = lengths[order[j - 1]], 0
        for i in range(j - 1, -1, -1):  # the last group is order[i:j]
            count += rows[order[i]]
            cost = best[i] + count * longest + pass_cost
            if cost < best[j]:
                best[j], cut[j] = cost, i
    groups, j = [], n
    while j > 0:
        groups.append(order[cut[j] : j])
        j = cut[j]
    return groups[::-1]


def padding(lengths: list[int], rows: list[int]) -> tuple[int, int]:
    """(prompt tokens, padding tokens) of one left-padded generate call."""
    if not lengths:
        return 0, 0
    longest = max(lengths)
    real = sum(n * r for n, r in zip(lengths, rows, strict=True))
    return real, longest * sum(rows) - real
