"""Questions about a population's history: pure functions over its DataFrame.

Every function takes the population (`evolve.read.population.load_population`, or
any DataFrame with its columns) and answers without touching the run
folder (`path_to` takes the function that reads each diff from the store):

- `ancestors` and `descendants` of a variant (all parents, transitively);
- `path_to`: the steps from the seed to a variant, each with its operator,
  rationale, fitness and diff;
- `operator_stats` and `generation_stats`: how often each operator's
  children, and each generation, improve on their first parent;
- `costs` and `pareto_front`: fitness against compute seconds and LLM
  tokens, and the variants no other beats on both;
- `curves`: chosen variants' learning curves as one long table;
- `code_variants`: a hybrid search's code variants, each with its tuning
  trials, its fitness as written and its tuned best.
"""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pandas as pd


def _parents(pop: pd.DataFrame) -> dict[str, list[str]]:
    return {v: p if isinstance(p, list) else list(p)
            for v, p in zip(pop["variant_id"].tolist(), pop["parent_ids"].tolist())}


def _first_parent_index(pop: pd.DataFrame) -> np.ndarray:
    """For each row, the row of its first parent, or -1 (the seed, or a parent not in the table)."""
    row = {v: i for i, v in enumerate(pop["variant_id"].tolist())}
    return np.fromiter((row.get(p[0], -1) if len(p) else -1 for p in pop["parent_ids"].tolist()),
                       dtype=np.int64, count=len(pop))


def generations(pop: pd.DataFrame) -> np.ndarray:
    """Each row's depth along first parents from a root (the seed, or a variant whose parent is unknown)."""
    up = _first_parent_index(pop)
    depth = (up >= 0).astype(np.int64)
    for _ in range(64):  # pointer jumping: each round doubles how far every row has looked up
        live = up >= 0
        if not live.any():
            return depth
        hop = up[live]
        depth[live] += depth[hop]
        up[live] = up[hop]
    raise ValueError("population: a cycle among first parents")


def _reach(edges: dict[str, list[str]], start: str) -> set[str]:
    """Returns every node reachable from `start` along `edges` (not `start` itself unless on a cycle)."""
    out, todo = set(), list(edges.get(start, []))
    while todo:
        n = todo.pop()
        if n not in out:
            out.add(n)
            todo.extend(edges.get(n, []))
    return out


def ancestors(pop: pd.DataFrame, vid: str) -> set[str]:
    """Returns every variant `vid` descends from, through any parent."""
    return _reach(_parents(pop), vid)


def descendants(pop: pd.DataFrame, vid: str) -> set[str]:
    """Returns every variant that has `vid` among its ancestors."""
    children = defaultdict(list)
    for v, ps in _parents(pop).items():
        for p in ps:
            children[p].append(v)
    return _reach(children, vid)


def improvements(pop: pd.DataFrame, mode: str = "min") -> pd.DataFrame:
    """Returns, per variant with a parent: operator, generation, fitness, its first parent's, and whether it improved."""
    parent = _first_parent_index(pop)
    fit = pd.to_numeric(pop["fitness"], errors="coerce").to_numpy(dtype=float)
    pfit = np.where(parent >= 0, fit[np.maximum(parent, 0)], np.nan)
    has_parent = np.fromiter((len(p) > 0 for p in pop["parent_ids"].tolist()), dtype=bool, count=len(pop))
    gain = pfit - fit if mode == "min" else fit - pfit  # NaN unless both are finite
    gain[~(np.isfinite(fit) & np.isfinite(pfit))] = np.nan
    out = pd.DataFrame({"variant_id": pop["variant_id"].to_numpy(), "operator": pop["operator"].to_numpy(),
                        "generation": generations(pop), "fitness": fit, "parent_fitness": pfit,
                        "improved": np.nan_to_num(gain, nan=0.0) > 0, "gain": gain})
    return out[has_parent].reset_index(drop=True)


def _rates(df: pd.DataFrame, by: str) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame(columns=[by, "children", "completed", "improved", "improve_rate", "mean_gain"])
    g = df.groupby(by)
    out = pd.DataFrame({"children": g.size(), "completed": g["fitness"].count(),
                        "improved": g["improved"].sum(), "mean_gain": g["gain"].mean()})
    out["improve_rate"] = out["improved"] / out["children"]
    return out.reset_index()[[by, "children", "completed", "improved", "improve_rate", "mean_gain"]]


def operator_stats(pop: pd.DataFrame, mode: str = "min") -> pd.DataFrame:
    """Per operator: children, completed, how many improved on their first parent, the rate, the mean gain."""
    return _rates(improvements(pop, mode), "operator")


def generation_stats(pop: pd.DataFrame, mode: str = "min") -> pd.DataFrame:
    """Per generation (first-parent depth from the seed): the same counts, plus the generation's best fitness."""
    imp = improvements(pop, mode)
    out = _rates(imp, "generation")
    if not imp.empty:
        best = imp.groupby("generation")["fitness"].agg("min" if mode == "min" else "max")
        out["best"] = out["generation"].map(best)
    return out


def costs(pop: pd.DataFrame, workers: int = 1) -> pd.DataFrame:
    """Returns variant, fitness, compute seconds (trial seconds times `workers`) and the LLM tokens that wrote it."""
    tokens = [int((r or {}).get("prompt_tokens") or 0) + int((r or {}).get("completion_tokens") or 0)
              for r in pop["record"]]
    return pd.DataFrame({"variant_id": pop["variant_id"].values, "fitness": pop["fitness"].values,
                         "compute_seconds": pop["trial_seconds"].fillna(0).values * workers,
                         "llm_tokens": tokens})


def pareto_front(pop: pd.DataFrame, cost: str = "compute_seconds", mode: str = "min",
                 workers: int = 1) -> pd.DataFrame:
    """Returns the completed variants no other beats on both fitness and `cost`, cheapest first."""
    c = costs(pop, workers)
    c = c[np.isfinite(pd.to_numeric(c["fitness"], errors="coerce").to_numpy(dtype=float))]
    c = c.sort_values([cost, "fitness"], ascending=[True, mode == "min"], kind="stable")
    score = c["fitness"].to_numpy(dtype=float) * (1 if mode == "min" else -1)  # lower is better
    before = np.concatenate([[np.inf], np.minimum.accumulate(score)[:-1]])
    return c[score < before].reset_index(drop=True)


def curves(pop: pd.DataFrame, ids=None) -> pd.DataFrame:
    """Returns the learning curves of `ids` (default all) as rows of variant, tokens, train and dev loss,
    optimizer step and learning rate (None for points recorded before they were kept)."""
    chosen = set(ids) if ids is not None else None
    rows = [{"variant_id": v, "tokens": p[0], "train_loss": p[1], "dev_loss": p[2],
             "step": p[3] if len(p) > 3 else None, "lr": p[4] if len(p) > 4 else None}
            for v, curve in zip(pop["variant_id"], pop["curve"]) if chosen is None or v in chosen
            for p in ((json.loads(curve) if isinstance(curve, str) else curve) or [])]
    return pd.DataFrame(rows, columns=["variant_id", "tokens", "train_loss", "dev_loss", "step", "lr"])


def path_to(pop, vid: str, diff) -> list[dict]:
    """Returns the steps from the seed to `vid` along first parents: id, operator, rationale, fitness, diff.

    `diff(variant_id)` returns a variant's diff against its first parent (the caller reads the store).
    """
    rows = pop.set_index("variant_id")
    out = []
    for v in pop.lineage(vid):
        r = rows.loc[v] if v in rows.index else None
        record = (r["record"] if r is not None else {}) or {}
        out.append({"variant_id": v, "operator": r["operator"] if r is not None else None,
                    "rationale": record.get("rationale", ""), "fitness": r["fitness"] if r is not None else None,
                    "diff": diff(v)})
    return out


def code_variants(pop: pd.DataFrame, mode: str = "min") -> pd.DataFrame:
    """Per code variant of a hybrid search: its operator, trials, completed, fitness as written, tuned best and values.

    Reads the `code_variant` of each row's record (a code variant names
    itself, a tuning trial its code variant); a run that tuned nothing
    gives an empty table.
    """
    cols = ["code_variant", "operator", "trials", "completed", "as_written", "best_variant", "best_fitness",
            "best_values"]
    records = [r if isinstance(r, dict) else {} for r in pop["record"]]
    fit = pd.to_numeric(pop["fitness"], errors="coerce").to_numpy(dtype=float)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        if r.get("code_variant"):
            groups[r["code_variant"]].append(i)
    ids = pop["variant_id"].tolist()
    rows = []
    for cv, idx in groups.items():
        own = next((i for i in idx if ids[i] == cv), None)
        done = [i for i in idx if np.isfinite(fit[i])]
        best = (min if mode == "min" else max)(done, key=lambda i: fit[i]) if done else None
        rows.append({"code_variant": cv, "operator": pop["operator"].iloc[own] if own is not None else None,
                     "trials": len(idx), "completed": len(done),
                     "as_written": fit[own] if own is not None else np.nan,
                     "best_variant": ids[best] if best is not None else None,
                     "best_fitness": fit[best] if best is not None else np.nan,
                     "best_values": (records[best].get("values") or {}) if best is not None else {}})
    return pd.DataFrame(rows, columns=cols)
