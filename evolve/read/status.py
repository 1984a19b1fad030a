"""What a run has done so far, as lines of text: `evolve status`, the end of a search, the report."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from evolve.read.population import agent_lines, bandit_lines, fmt, load_population
from evolve.record.store import Store
from evolve.search import confirm


def population(run_dir: str):
    """Returns the run's population, warning on stderr about any part it could not read."""
    pop = load_population(run_dir)
    for line in pop.attrs.get("unreadable", []):
        print(f"evolve: warning: {line}", file=sys.stderr)
    return pop


def summary_lines(run_dir: str, pop=None) -> list[str]:
    """Returns the end-of-run report: best, its lineage, its loss against the seed's."""
    pop = population(run_dir) if pop is None else pop
    if pop.empty:
        return ["no variant has finished yet"]
    metric = "fitness"
    best, seed = pop.best_id(), pop.seed_id()
    by_id = pop.set_index("variant_id")
    stopped = (pop["status"] == "stopped").sum()
    lines = [f"variants: {len(pop)} finished ({(pop['status'] == 'completed').sum()} completed, "
             f"{(pop['status'] == 'failed').sum()} failed" + (f", {stopped} stopped early" if stopped else "") + ")"]
    if best is None:
        return lines + ["no variant completed"]
    b = by_id.loc[best, metric]
    s = by_id.loc[seed, metric] if seed in by_id.index else None
    gain = f" ({(b - s) / s * 100:+.1f}% vs seed)" if s else ""
    lines.append(f"best: {best}  held-out {fmt(b)}  seed {seed or '-'} held-out {fmt(s)}{gain}")
    lines.append("lineage (seed first):")
    store = Store(run_dir)
    for vid in pop.lineage("best"):
        v = store.get_variant(vid)
        f = by_id.loc[vid, metric] if vid in by_id.index else None
        lines.append(f"  {vid}  {fmt(f)}  {v.operator:<9} {v.record.get('rationale', '')}")
    return lines


def status_lines(run_dir: str, pop=None) -> list[str]:
    """Returns the run's state: counts by status, cost, depth, the agent, the leader and the champion."""
    pop = population(run_dir) if pop is None else pop
    counts = pop["status"].value_counts().to_dict() if not pop.empty else {}
    train = pop["train_seconds"].fillna(0).sum() if not pop.empty else 0.0
    trial = pop["trial_seconds"].fillna(0).sum() if not pop.empty else 0.0
    lines = [f"run: {run_dir}",
             "by status: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none yet"),
             f"cost: {trial:.0f} trial-seconds, {train:.0f} of them training; "
             f"{int(pop['tokens_trained'].fillna(0).sum()) if not pop.empty else 0:,} tokens trained",
             f"lineage depth: {pop.depth()}"]
    lines += speed_lines(pop) + inherit_lines(pop)
    lines += agent_lines(run_dir)
    lines += bandit_lines(run_dir, expected=_bandit_on(run_dir))
    lines += [ln.replace("best:", "single-run leader:", 1) for ln in summary_lines(run_dir, pop)[1:2]]
    return lines + confirm.lines(confirm.load_verdict(run_dir))


def speed_lines(pop) -> list[str]:
    """Returns the GPU-hours spent and the MFU reached, when the trials ran on GPUs."""
    if pop.empty or "gpu_hours" not in pop or not pop["gpu_hours"].fillna(0).any():
        return []
    util = pop["mfu"].dropna()
    line = f"GPU: {pop['gpu_hours'].fillna(0).sum():.2f} GPU-hours"
    if not util.empty:
        best = pop.loc[util.idxmax()]
        line += f"; MFU median {util.median():.1%}, best {util.max():.1%} ({best['variant_id']})"
    return [line]


def inherit_lines(pop) -> list[str]:
    """How many trials continued from their parent's weights, and the tokens those weights held."""
    if pop.empty or "inherited_from" not in pop or not pop["inherited_from"].notna().any():
        return []
    got = pop[pop["inherited_from"].notna()]
    return [f"inherited weights: {len(got)} of {len(pop)} trials continued from their parent's final weights "
            f"({int(got['tokens_inherited'].fillna(0).sum()):,} tokens held by those weights, not counted above)"]
def _bandit_on(run_dir: str) -> bool:
    """Whether the run's saved spec turned the operator bandit on (False when it cannot tell)."""
    try:
        raw = yaml.safe_load((Path(run_dir) / "spec.yaml").read_text()) or {}
        return (raw.get("operator") or {}).get("bandit", "off") not in ("off", False)
    except (OSError, yaml.YAMLError, AttributeError):
        return False
