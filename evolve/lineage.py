"""Questions about a population's history: pure functions over its DataFrame.

Every function takes the population (`evolve.analysis.load_population`, or
any DataFrame with its columns) and answers without touching the run
folder, except `path_to`, which reads the diffs from the store:

- `ancestors` and `descendants` of a variant (all parents, transitively);
- `path_to`: the steps from the seed to a variant, each with its operator,
  rationale, fitness and diff;
- `operator_stats` and `generation_stats`: how often each operator's
  children, and each generation, improve on their first parent;
- `costs` and `pareto_front`: fitness against compute seconds and LLM
  tokens, and the variants no other beats on both;
- `curves`: chosen variants' learning curves as one long table.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pandas as pd


def _parents(pop: pd.DataFrame) -> dict[str, list[str]]:
    return {v: list(p) for v, p in zip(pop["variant_id"], pop["parent_ids"])}


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


def _better(mode: str):
    return (lambda a, b: a < b) if mode == "min" else (lambda a, b: a > b)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def improvements(pop: pd.DataFrame, mode: str = "min") -> pd.DataFrame:
    """Returns, per variant with a parent: operator, generation, fitness, its first parent's, and whether it improved."""
    fit = dict(zip(pop["variant_id"], pop["fitness"]))
    parents = _parents(pop)
    gen: dict[str, int] = {}

    def generation(v: str) -> int:
        if v not in gen:
            ps = parents.get(v, [])
            gen[v] = 0 if not ps or ps[0] not in parents else generation(ps[0]) + 1
        return gen[v]

    better, rows = _better(mode), []
    for v, op, ps in zip(pop["variant_id"], pop["operator"], pop["parent_ids"]):
        if len(ps) == 0:
            continue
        f, pf = fit.get(v), fit.get(ps[0])
        improved = _finite(f) and _finite(pf) and better(f, pf)
        gain = (pf - f if mode == "min" else f - pf) if _finite(f) and _finite(pf) else None
        rows.append({"variant_id": v, "operator": op, "generation": generation(v), "fitness": f,
                     "parent_fitness": pf, "improved": bool(improved), "gain": gain})
    return pd.DataFrame(rows, columns=["variant_id", "operator", "generation", "fitness", "parent_fitness",
                                       "improved", "gain"])


def _rates(df: pd.DataFrame, by: str) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame(columns=[by, "children", "completed", "improved", "improve_rate", "mean_gain"])
    g = df.groupby(by)
    out = pd.DataFrame({"children": g.size(), "completed": g["fitness"].apply(lambda s: s.map(_finite).sum()),
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
    c = c[c["fitness"].map(_finite)].sort_values([cost, "fitness"], ascending=[True, mode == "min"])
    better, front, best = _better(mode), [], None
    for _, row in c.iterrows():
        if best is None or better(row["fitness"], best):
            front.append(row)
            best = row["fitness"]
    return pd.DataFrame(front, columns=c.columns).reset_index(drop=True)


def curves(pop: pd.DataFrame, ids=None) -> pd.DataFrame:
    """Returns the learning curves of `ids` (default all) as rows of variant, tokens, train and dev loss."""
    chosen = set(ids) if ids is not None else None
    rows = [{"variant_id": v, "tokens": p[0], "train_loss": p[1], "dev_loss": p[2]}
            for v, curve in zip(pop["variant_id"], pop["curve"]) if chosen is None or v in chosen
            for p in (curve or [])]
    return pd.DataFrame(rows, columns=["variant_id", "tokens", "train_loss", "dev_loss"])


def path_to(pop, vid: str) -> list[dict]:
    """Returns the steps from the seed to `vid` along first parents: id, operator, rationale, fitness, diff."""
    from evolve.analysis import diff_against_parent

    rows = pop.set_index("variant_id")
    out = []
    for v in pop.lineage(vid):
        r = rows.loc[v] if v in rows.index else None
        record = (r["record"] if r is not None else {}) or {}
        out.append({"variant_id": v, "operator": r["operator"] if r is not None else None,
                    "rationale": record.get("rationale", ""), "fitness": r["fitness"] if r is not None else None,
                    "diff": diff_against_parent(pop.run_dir, v)})
    return out
