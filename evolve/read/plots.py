"""Figures of a population, drawn with matplotlib.

Each function takes the population (`evolve.read.population.load_population`)
and returns a `matplotlib.figure.Figure` made without pyplot, so nothing
global is left open: a notebook shows it as the cell's value, and
`evolve report` saves it. Pass `ax` to draw into an axes of your own.

- `best_so_far`: the best fitness against trials, worker-hours and LLM tokens;
- `lineage_tree`: every variant by generation, coloured by fitness, edges to
  its parents, the path from the seed to the champion drawn bold;
- `learning_curves`: dev loss against tokens for chosen variants;
- `operator_rates`: how often each operator's children beat their first parent.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from evolve.read import lineage
from evolve.read.population import workers_per_trial

X_AXES = {"trials": "trials finished", "worker_hours": "worker-hours (GPU-hours on GPUs)",
          "llm_tokens": "LLM tokens"}


def _axes(ax, size=(6.0, 4.0)):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _metric(pop) -> str:
    return f"fitness ({'lower' if getattr(pop, 'mode', 'min') == 'min' else 'higher'} is better)"


def best_so_far_table(pop: pd.DataFrame, workers: int = 1) -> pd.DataFrame:
    """In the order results were recorded: cumulative trials, worker-hours, LLM tokens and the best fitness so far."""
    mode = getattr(pop, "mode", "min")
    order = pop.sort_values("finished_at", kind="stable") if "finished_at" in pop else pop
    c = lineage.costs(order, workers)
    fit = pd.to_numeric(c["fitness"], errors="coerce").to_numpy(dtype=float)
    signed = np.where(np.isfinite(fit), fit if mode == "min" else -fit, np.inf)
    best = np.minimum.accumulate(signed) if len(signed) else signed
    best = np.where(np.isfinite(best), best if mode == "min" else -best, np.nan)
    return pd.DataFrame({"trials": np.arange(1, len(c) + 1), "worker_hours": c["compute_seconds"].cumsum() / 3600,
                         "llm_tokens": c["llm_tokens"].cumsum(), "best": best})


def best_so_far(pop: pd.DataFrame, x: str | tuple | None = None, workers: int | None = None, ax=None) -> Figure:
    """The best fitness so far against `x`: one of X_AXES, or several side by side.

    By default: trials and worker-hours, and LLM tokens when the agent spent any.
    """
    if x is None:
        x = ("trials", "worker_hours") + (("llm_tokens",) if lineage.costs(pop)["llm_tokens"].sum() else ())
    xs = [x] if isinstance(x, str) else list(x)
    bad = [k for k in xs if k not in X_AXES]
    if bad:
        raise ValueError(f"best_so_far: x must be among {sorted(X_AXES)}, not {bad[0]!r}")
    if workers is None:
        workers = workers_per_trial(pop.run_dir) if getattr(pop, "run_dir", None) is not None else 1
    table = best_so_far_table(pop, workers)
    if ax is not None and len(xs) > 1:
        raise ValueError("best_so_far: pass one x with ax=")
    fig = ax.figure if ax is not None else Figure(figsize=(4.2 * len(xs), 3.6), layout="constrained")
    axes = [ax] if ax is not None else fig.subplots(1, len(xs), squeeze=False)[0]
    for a, k in zip(axes, xs):
        a.step(table[k], table["best"], where="post", color="tab:blue")
        a.scatter(table[k], table["best"], s=8, color="tab:blue")
        a.set_xlabel(X_AXES[k])
        a.set_ylabel(f"best {_metric(pop)}")
        a.grid(alpha=0.3)
    fig.suptitle("best so far")
    return fig


def tree_layout(pop: pd.DataFrame) -> pd.DataFrame:
    """x = generation, y = place within the generation, children ordered under their first parent."""
    gen = lineage.generations(pop)
    parent = lineage._first_parent_index(pop)
    y = np.zeros(len(pop))
    for g in range(int(gen.max()) + 1 if len(gen) else 0):
        rows = np.flatnonzero(gen == g)
        key = [(y[parent[i]] if parent[i] >= 0 else -1.0, i) for i in rows]
        for place, (_, i) in enumerate(sorted(key)):
            y[i] = place
    return pd.DataFrame({"variant_id": pop["variant_id"].to_numpy(), "generation": gen, "y": y})


def lineage_tree(pop: pd.DataFrame, ax=None, highlight: str = "best") -> Figure:
    """Every variant at its generation, coloured by fitness (failed ones grey), with edges to its parents."""
    fig, ax = _axes(ax, (8.0, 5.0))
    lay = tree_layout(pop)
    where = {v: (g, y) for v, g, y in zip(lay["variant_id"], lay["generation"], lay["y"])}
    for v, ps in zip(pop["variant_id"].tolist(), pop["parent_ids"].tolist()):
        for k, p in enumerate(ps):
            if p in where:
                (x0, y0), (x1, y1) = where[p], where[v]
                ax.plot([x0, x1], [y0, y1], color="0.75", lw=0.6, ls="-" if k == 0 else ":", zorder=1)
    chain = pop.lineage(highlight) if hasattr(pop, "lineage") and len(pop) else []
    pts = [where[v] for v in chain if v in where]
    if len(pts) > 1:
        ax.plot(*zip(*pts), color="tab:red", lw=2.0, zorder=2, label="seed to champion")
        ax.legend(loc="upper left", fontsize="small")
    fit = pd.to_numeric(pop["fitness"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(fit)
    ax.scatter(lay["generation"][~ok], lay["y"][~ok], marker="x", color="0.5", s=20, zorder=3, label="failed")
    if ok.any():
        cmap = "viridis_r" if getattr(pop, "mode", "min") == "min" else "viridis"
        dots = ax.scatter(lay["generation"][ok], lay["y"][ok], c=fit[ok], cmap=cmap, s=30, zorder=3,
                          edgecolors="k", linewidths=0.3)
        fig.colorbar(dots, ax=ax, label=_metric(pop))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation (first-parent depth from the seed)")
    ax.set_ylabel("variants of the generation")
    ax.set_title(f"lineage of {len(pop)} variants")
    return fig


def learning_curves(pop: pd.DataFrame, ids=None, ax=None, loss: str = "dev_loss") -> Figure:
    """`loss` against tokens for `ids` (default: the path from the seed to the champion)."""
    fig, ax = _axes(ax)
    ids = list(ids) if ids is not None else (pop.lineage("best") if hasattr(pop, "lineage") else [])
    long = lineage.curves(pop, ids)
    for vid in ids:
        c = long[long["variant_id"] == vid]
        if len(c):
            ax.plot(c["tokens"], c[loss], marker=".", label=vid[:8])
    ax.set_xlabel("tokens trained")
    ax.set_ylabel(loss.replace("_", " "))
    if ids:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    ax.set_title("learning curves")
    return fig


def operator_rates(pop: pd.DataFrame, ax=None) -> Figure:
    """Per operator: the share of children that improved on their first parent, with the counts."""
    fig, ax = _axes(ax)
    stats = lineage.operator_stats(pop, getattr(pop, "mode", "min"))
    bars = ax.bar(stats["operator"], stats["improve_rate"], color="tab:green")
    for bar, improved, n in zip(bars, stats["improved"], stats["children"]):
        ax.annotate(f"{int(improved)}/{int(n)}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize="small")
    top = max([r for r in stats["improve_rate"] if isinstance(r, float) and math.isfinite(r)], default=0.0)
    ax.set_ylim(0, max(1.0, top * 1.15))
    ax.set_ylabel("children better than their first parent")
    ax.set_title("operator success")
    return fig
