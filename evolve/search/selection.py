"""Selection with diversity: islands, tournaments and migration.

Pure functions over plain data, so tests call them directly. A member is a
`(variant_id, score)` pair where a higher score is better (the searcher turns
a "min" objective into a negated score). Islands are lists of variant ids;
a migrant is copied, not moved, so it competes on both islands.
"""

from __future__ import annotations

import math
import random


def score(fitness: float | None, mode: str) -> float:
    """Returns a higher-is-better score; a failed or missing fitness is -inf."""
    if fitness is None or not math.isfinite(fitness):
        return -math.inf
    return -fitness if mode == "min" else fitness


def island_for(n_suggested: int, n_islands: int) -> int:
    """Returns the island whose turn it is: round-robin over suggestions."""
    return n_suggested % n_islands


def tournament(rng: random.Random, members: list[tuple[str, float]], k: int) -> str:
    """Returns the id of the best of `k` members drawn without replacement.

    Ties go to the member drawn first, so the result depends only on `rng`.
    """
    if not members:
        raise ValueError("tournament: no members to choose from")
    drawn = rng.sample(members, min(k, len(members)))
    best = drawn[0]
    for m in drawn[1:]:
        if m[1] > best[1]:
            best = m
    return best[0]


def select_parents(rng: random.Random, members: list[tuple[str, float]], k: int,
                   n: int) -> list[str]:
    """Returns `n` distinct parents by tournament (fewer if the pool is smaller)."""
    pool = list(members)
    out: list[str] = []
    while pool and len(out) < n:
        pick = tournament(rng, pool, k)
        out.append(pick)
        pool = [m for m in pool if m[0] != pick]
    return out


def migrations(islands: list[list[str]], scores: dict[str, float]) -> list[tuple[str, int]]:
    """Returns (variant id, destination island) moves: each island's best to the next.

    A ring: island i sends its best scored member to island i+1. Members
    without a finite score never migrate; a member already on the destination
    is not sent again.
    """
    moves = []
    n = len(islands)
    if n < 2:
        return moves
    for i, members in enumerate(islands):
        scored = [m for m in members if math.isfinite(scores.get(m, -math.inf))]
        if not scored:
            continue
        best = max(scored, key=lambda m: (scores[m], m))
        dest = (i + 1) % n
        if best not in islands[dest]:
            moves.append((best, dest))
    return moves

