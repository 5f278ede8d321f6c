"""What a run cost on a priced engine (`openai.price_per_mtok`): per turn and in all, and what
the cache saved (the answers the run reused from jobs enqueued before it, paid for once)."""

from __future__ import annotations

from typing import Any

from egoqa.store.db import Database
from egoqa.store.usage import turn_tokens


def prices(config: dict[str, Any]) -> tuple[float, float] | None:
    """(input, output) dollars per million tokens from a run's stored config, or None."""
    if config.get("backend") != "openai":
        return None
    price = (config.get("openai") or {}).get("price_per_mtok")
    return None if not price else (float(price["input"]), float(price["output"]))


def run_cost(db: Database, run: str, config: dict[str, Any]) -> dict[str, Any] | None:
    """The run's cost by turn (tokens and dollars), its total, and what the cache saved."""
    price = prices(config)
    if price is None:
        return None
    turns: dict[int, dict[str, Any]] = {}
    for row in turn_tokens(db, run):
        t = turns.setdefault(
            row["turn_index"],
            {
                "turn": row["turn"],
                "jobs": 0,
                "prompt_tokens": 0,
                "completion_tokens": 0,
                "cost": 0.0,
                "saved": 0.0,
            },
        )
        dollars = (row["prompt_tokens"] * price[0] + row["completion_tokens"] * price[1]) / 1e6
        t["jobs"] += row["jobs"]
        t["prompt_tokens"] += row["prompt_tokens"]
        t["completion_tokens"] += row["completion_tokens"]
        t["saved" if row["cached"] else "cost"] += dollars
    by_turn = [turns[i] for i in sorted(turns)]
    return {
        "price_per_mtok": {"input": price[0], "output": price[1]},
        "by_turn": by_turn,
        "total": sum(t["cost"] for t in by_turn),
        "saved_by_cache": sum(t["saved"] for t in by_turn),
    }
