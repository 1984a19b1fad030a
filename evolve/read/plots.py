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

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from evolve.read import lineage, lineage_view
from evolve.read.population import workers_per_trial

X_AXES = {"trials": "trials finished", "worker_hours": "worker-hours (GPU-hours on GPUs)",
          "llm_tokens": "LLM tokens"}


def _axes(ax, size=(6.0, 4.0)):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=size, layout="constrained")
    return fig, fig.add_subplot()


def _mode(pop) -> str:
    """A Population's objective mode; "min" for a bare table (whose `mode` is DataFrame.mode, a method)."""
    mode = getattr(pop, "mode", "min")
    return mode if isinstance(mode, str) else "min"


def _metric(pop) -> str:
    return f"fitness ({'lower' if _mode(pop) == 'min' else 'higher'} is better)"


def best_so_far_table(pop: pd.DataFrame, workers: int = 1) -> pd.DataFrame:
    """In the order results were recorded: cumulative trials, worker-hours, LLM tokens and the best fitness so far."""
    mode = _mode(pop)
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


def lineage_tree(pop: pd.DataFrame, ax=None, highlight: str = "best", max_shown: int = lineage_view.MAX_SHOWN,
                 top_k: int = lineage_view.TOP_K) -> Figure:
    """Variants at their generation, coloured by fitness (failed ones grey), with edges to their parents.

    Up to `max_shown` variants every one is drawn; past that, the path from
    the seed to the champion in full, the paths of the `top_k` best (ringed)
    and a sample of the rest (`evolve.read.lineage_view.choose`), the legend
    counting what was left out.
    """
    mode = _mode(pop)
    ids = set(pop["variant_id"])
    # a Population names its champion (its lineage may pass through variants still training); a bare table: the best
    chain = [v for v in pop.lineage(highlight) if v in ids] if hasattr(pop, "lineage") and len(pop) else None
    view = lineage_view.choose(pop, mode, max_shown, top_k, champion=chain[-1] if chain else None)
    chain = view.champion_path if chain is None else chain
    scaled = view.hidden > 0 or len(pop) > 60
    fig, ax = _axes(ax, (10.0, 6.0) if scaled else (8.0, 5.0))
    sub = pop[pop["variant_id"].isin(set(view.shown))]
    lay = tree_layout(sub)
    where = {v: (g, y) for v, g, y in zip(lay["variant_id"], lay["generation"], lay["y"])}
    edges = ([], [])  # to first parents (solid), to other parents (dotted): one collection each
    for v, ps in zip(sub["variant_id"].tolist(), sub["parent_ids"].tolist()):
        for k, p in enumerate(ps):
            if p in where:
                edges[k > 0].append([where[p], where[v]])
    for segments, style in zip(edges, ("-", ":")):
        if segments:
            ax.add_collection(LineCollection(segments, colors="0.75", linewidths=0.6, linestyles=style, zorder=1))
    pts = [where[v] for v in chain if v in where]
    if len(pts) > 1:
        ax.plot(*zip(*pts), color="tab:red", lw=2.0, zorder=2, label="seed to champion")
    fit = pd.to_numeric(sub["fitness"], errors="coerce").to_numpy(dtype=float)
    ok = np.isfinite(fit)
    size = 30 if not scaled else 16
    if (~ok).any():
        ax.scatter(lay["generation"][~ok], lay["y"][~ok], marker="x", color="0.5", s=size * 0.7, zorder=3,
                   label="failed")
    if ok.any():
        cmap = "viridis_r" if mode == "min" else "viridis"
        dots = ax.scatter(lay["generation"][ok], lay["y"][ok], c=fit[ok], cmap=cmap, s=size, zorder=3,
                          edgecolors="k", linewidths=0.3)
        fig.colorbar(dots, ax=ax, label=_metric(pop))
    if chain and chain[-1] in where:
        x, y = where[chain[-1]]
        ax.scatter([x], [y], marker="*", s=size * 8, color="tab:red", edgecolors="k", linewidths=0.5, zorder=5,
                   label="champion")
    if view.hidden:
        top = lay.set_index("variant_id").loc[view.top]
        ax.scatter(top["generation"], top["y"], s=size * 4, facecolors="none", edgecolors="tab:orange",
                   linewidths=1.2, zorder=4, label=f"top {len(view.top)} (their paths drawn)")
        ax.plot([], [], ls="none", label=view.left_out())  # a legend line with no mark
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncols=2 if view.hidden else 3,
                  fontsize="small", frameon=False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("generation (first-parent depth from the seed)")
    ax.set_ylabel("variants of the generation" + (" drawn" if view.hidden else ""))
    ax.set_title(view.title(), fontsize="medium")
    return fig


LABELLED_CURVES = 8  # past this many curves, only the first and last are named; a colour bar orders the rest


def learning_curves(pop: pd.DataFrame, ids=None, ax=None, loss: str = "dev_loss") -> Figure:
    """`loss` against tokens for `ids` (default: the path from the seed to the champion).

    Up to LABELLED_CURVES curves each gets a legend entry; a longer path is
    coloured from its first curve (the seed) to its last (the champion),
    with a colour bar, and only those two are named.
    """
    fig, ax = _axes(ax)
    ids = list(ids) if ids is not None else (pop.lineage("best") if hasattr(pop, "lineage") else [])
    long = lineage.curves(pop, ids)
    many = len(ids) > LABELLED_CURVES
    cmap = ListedColormap(matplotlib.colormaps["plasma"](np.linspace(0, 0.85, 256)))  # no pale yellow end
    norm = Normalize(0, max(1, len(ids) - 1))
    for k, vid in enumerate(ids):
        c = long[long["variant_id"] == vid]
        if not len(c):
            continue
        if not many:
            ax.plot(c["tokens"], c[loss], marker=".", label=vid[:8])
            continue
        ends = k in (0, len(ids) - 1)
        name = f"{'first' if k == 0 else 'last'}: {vid[:8]}" if ends else None
        ax.plot(c["tokens"], c[loss], marker="." if ends else None, lw=1.6 if ends else 0.8,
                color=cmap(norm(k)), label=name, zorder=3 if ends else 2)
    if many:
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label="place on the path (0: first)")
        bar.locator = MaxNLocator(integer=True)
    ax.set_xlabel("tokens trained")
    ax.set_ylabel(loss.replace("_", " "))
    if ids:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    ax.set_title("learning curves" + (f" ({len(ids)} variants)" if many else ""))
    return fig


def operator_rates(pop: pd.DataFrame, ax=None) -> Figure:
    """Per operator: the share of children that improved on their first parent, with the counts."""
    fig, ax = _axes(ax)
    stats = lineage.operator_stats(pop, _mode(pop))
    bars = ax.bar(stats["operator"], stats["improve_rate"], color="tab:green")
    for bar, improved, n in zip(bars, stats["improved"], stats["children"]):
        ax.annotate(f"{int(improved)}/{int(n)}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize="small")
    top = max([r for r in stats["improve_rate"] if isinstance(r, float) and math.isfinite(r)], default=0.0)
    ax.set_ylim(0, max(1.0, top * 1.15))
    ax.set_ylabel("children better than their first parent")
    ax.set_title("operator success")
    return fig
