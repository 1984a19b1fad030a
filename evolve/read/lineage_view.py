"""Which variants the lineage figure draws: all of a small population, a readable part of a large one.

A figure of every variant stops being readable past a few dozen: dots
overlap and edges become a grey mat. `choose` picks, from the population's
DataFrame alone (pure: no figure, no run folder), at most about `max_shown`
variants to draw:

1. the path from the seed to the champion along first parents, always and in full;
2. the paths of the `top_k` best completed variants (each down to where it
   meets a path already drawn), best first, while they fit;
3. a thinned sample of the rest (a fixed-seed shuffle, failed ones
   included), each with its path, until the budget is spent.

Every drawn variant's first parent is drawn too (or it is a root), so each
dot hangs from its real parent; what was left out is counted, for the legend.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from evolve.read import lineage

MAX_SHOWN = 120  # about what an 8-inch figure shows with dots still apart
TOP_K = 10


@dataclass(frozen=True)
class LineageView:
    shown: list[str]  # the variants to draw, in the table's order
    champion_path: list[str]  # seed first; empty when no variant completed
    top: list[str] = field(default_factory=list)  # the top-k variants whose paths are drawn, best first
    total: int = 0  # variants in the population
    hidden_failed: int = 0  # of the variants left out, how many did not complete

    @property
    def hidden(self) -> int:
        return self.total - len(self.shown)

    def title(self) -> str:
        """The figure's title: how many variants, and which are drawn when not all are."""
        if self.hidden == 0:
            return f"lineage of {self.total} variants"
        return (f"lineage of {self.total} variants: {len(self.shown)} drawn (the seed-to-champion path, "
                f"the top {len(self.top)}'s paths, a sample of the rest)")

    def left_out(self) -> str:
        """The legend's line for what is not drawn ("" when everything is)."""
        if self.hidden == 0:
            return ""
        return f"not drawn: {self.hidden} of {self.total} variants ({self.hidden_failed} of them failed)"


def champion_path(pop: pd.DataFrame, mode: str = "min", champion: str | None = None) -> list[str]:
    """The ids from the root (the seed) to `champion` (default: the best completed variant) along first parents."""
    ids = pop["variant_id"].tolist()
    up = lineage._first_parent_index(pop)
    if champion is None:
        best = _ranked(pop, mode)
        if len(best) == 0:
            return []
        row = int(best[0])
    elif champion in ids:
        row = ids.index(champion)
    else:
        raise ValueError(f"lineage view: variant {champion!r} is not in the population")
    chain = [row]
    while up[chain[-1]] >= 0 and len(chain) <= len(ids):
        chain.append(int(up[chain[-1]]))
    return [ids[i] for i in chain[::-1]]


def _ranked(pop: pd.DataFrame, mode: str) -> np.ndarray:
    """The rows of the completed variants with a finite fitness, best first (ties: the earlier row)."""
    fit = pd.to_numeric(pop["fitness"], errors="coerce").to_numpy(dtype=float)
    done = np.isfinite(fit)
    if "status" in pop:
        done &= (pop["status"] == "completed").to_numpy()
    rows = np.flatnonzero(done)
    key = fit[rows] if mode == "min" else -fit[rows]
    return rows[np.argsort(key, kind="stable")]


def choose(pop: pd.DataFrame, mode: str = "min", max_shown: int = MAX_SHOWN, top_k: int = TOP_K,
           seed: int = 0, champion: str | None = None) -> LineageView:
    """Returns the variants the lineage figure draws (see the module's text); everything when it fits."""
    if max_shown < 1 or top_k < 0:
        raise ValueError(f"lineage view: max_shown must be at least 1 and top_k at least 0, not {max_shown}, {top_k}")
    n = len(pop)
    ids = pop["variant_id"].tolist()
    path = champion_path(pop, mode, champion)
    if n <= max_shown:
        return LineageView(shown=ids, champion_path=path, total=n)
    up = lineage._first_parent_index(pop)
    row = {v: i for i, v in enumerate(ids)}
    keep = np.zeros(n, dtype=bool)
    keep[[row[v] for v in path]] = True  # always, even past the budget
    count = int(keep.sum())

    def add_path(i: int) -> bool:
        """Draws row i with its ancestors not yet drawn, if they fit in the budget."""
        nonlocal count
        new = []
        while i >= 0 and not keep[i] and count + len(new) < max_shown:
            new.append(i)
            i = int(up[i])
        if i >= 0 and not keep[i]:
            return False  # did not fit
        keep[new] = True
        count += len(new)
        return True

    top, on_path = [], set(path)
    for i in _ranked(pop, mode):
        if len(top) == top_k:
            break
        if ids[i] in on_path:  # the champion, or an ancestor of it that ranks high
            top.append(ids[i])
        elif count >= max_shown:
            break
        elif add_path(int(i)):
            top.append(ids[i])
    tries = 20 * max_shown  # a long search's deep paths rarely fit: give up rather than walk them all
    for i in np.random.default_rng(seed).permutation(n):
        if count >= max_shown or tries == 0:
            break
        if not keep[i]:
            tries -= 1
            add_path(int(i))
    done = pop["status"] == "completed" if "status" in pop else pd.Series(True, index=pop.index)
    failed = ~done.to_numpy() | ~np.isfinite(pd.to_numeric(pop["fitness"], errors="coerce").to_numpy(dtype=float))
    return LineageView(shown=[ids[i] for i in np.flatnonzero(keep)], champion_path=path, top=top, total=n,
                       hidden_failed=int((failed & ~keep).sum()))
