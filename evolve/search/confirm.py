"""Confirmed champions: an improvement counts only when it beats its parent beyond seed noise.

One training run is one sample of a noisy number. When a search's budget is
spent, the top candidates by single-run fitness, their parents and the seed
variant are trained again with `confirm.seeds` other seeds (fresh ones: the
run that put a candidate on top is left out, so luck that selected it does
not also confirm it). Pure functions here decide from those re-runs:

- the seed's seed-to-seed noise (its re-runs' spread), shown in the status;
- a candidate is a confirmed improvement when Welch's one-sided t-test says
  its re-runs beat its parent's at `confirm.alpha`;
- a candidate whose single run beat its parent's by more than
  `confirm.flag_sigmas` times the seed's noise is flagged for review: it is
  shown with its re-runs and its diff, and becomes champion only once a
  person approves it (`evolve approve`), whatever its re-runs say;
- with `confirm.approval` on, no candidate becomes champion without approval;
- the confirmed champion is the best mean among the confirmed (and, where
  needed, approved) candidates.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from statistics import stdev

from evolve.record.store import Store, atomic_write
from evolve.search.stats import mean_ci, welch
from evolve.spec import run_settings

FOLDER, APPROVALS = "confirmations", "approvals"


def plan(rows: list[dict], seed_id: str, mode: str, top: int, seeds: list[int]) -> list[tuple[str, int]]:
    """Returns the (variant, seed) re-runs: the seed, the `top` best completed variants and their parents."""
    done = [r for r in rows if r["status"] == "completed" and _finite(r["fitness"])
            and r["variant_id"] != seed_id]
    done.sort(key=lambda r: r["fitness"] if mode == "min" else -r["fitness"])
    chosen = [seed_id]
    for r in done[:top]:
        for vid in ([r["parent_ids"][0]] if r["parent_ids"] else []) + [r["variant_id"]]:
            if vid not in chosen:
                chosen.append(vid)
    return [(vid, s) for vid in chosen for s in seeds]


def rerun_key(vid: str, seed: int) -> str:
    """Names a re-run: its record, its kept result and its trial folder."""
    return f"{vid}-s{seed}"


def recorded(run_dir: str | Path, vid: str, seed: int) -> bool:
    return (Path(run_dir) / FOLDER / f"{rerun_key(vid, seed)}.json").exists()


def record(run_dir: str | Path, vid: str, seed: int, outcome: dict) -> None:
    """Keeps one re-run's outcome in confirmations/<variant>-s<seed>.json, atomically."""
    row = {"variant_id": vid, "seed": seed, "status": outcome["status"], "fitness": outcome.get("fitness"),
           "failure_reason": outcome.get("failure_reason")}
    atomic_write(Path(run_dir) / FOLDER / f"{rerun_key(vid, seed)}.json", json.dumps(row).encode())


def read(run_dir: str | Path) -> dict[str, list[float]]:
    """Returns variant -> the fitness of each completed re-run (unreadable files are left out)."""
    out: dict[str, list[float]] = {}
    for path in sorted((Path(run_dir) / FOLDER).glob("*.json")):
        try:
            row = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if row.get("status") == "completed" and _finite(row.get("fitness")):
            out.setdefault(row["variant_id"], []).append(float(row["fitness"]))
    return out


def approved(run_dir: str | Path) -> set[str]:
    return {p.stem for p in (Path(run_dir) / APPROVALS).glob("*.json")}


def approve(run_dir: str | Path, vid: str, note: str = "") -> None:

    atomic_write(Path(run_dir) / APPROVALS / f"{vid}.json",
                 json.dumps({"variant_id": vid, "approved_at": time.time(), "note": note}).encode())


def verdict(rows: list[dict], reruns: dict[str, list[float]], approvals: set[str], seed_id: str,
            mode: str, alpha: float, flag_sigmas: float, need_approval: bool) -> dict:
    """Returns the confirmation state of a run.

    {"noise": {"mean", "low", "high", "sd", "n"} or None,
     "candidates": [{"variant_id", "parent_id", "single", "parent_single", "mean", "low", "high", "n",
                     "parent_mean", "p", "confirmed", "flagged", "jump_sigmas", "approved", "awaiting"}],
     "champion": the candidate dict or None}
    """
    by_id = {r["variant_id"]: r for r in rows}
    sign = 1.0 if mode == "min" else -1.0  # lower is better after the sign
    seed_runs = reruns.get(seed_id, [])
    noise = None
    if len(seed_runs) >= 2:
        m, lo, hi = mean_ci(seed_runs)
        noise = {"mean": m, "low": lo, "high": hi, "sd": _sd(seed_runs), "n": len(seed_runs)}
    out = []
    for vid, runs in reruns.items():
        row = by_id.get(vid)
        if vid == seed_id or row is None or not row["parent_ids"]:
            continue
        pid = row["parent_ids"][0]
        parent_runs = reruns.get(pid, [])
        if len(runs) < 2 or len(parent_runs) < 2:
            continue
        m, lo, hi = mean_ci(runs)
        _, _, p = welch([sign * x for x in runs], [sign * x for x in parent_runs])
        single, parent_single = row["fitness"], (by_id.get(pid) or {}).get("fitness")
        jump = None
        if noise and noise["sd"] > 0 and _finite(single) and _finite(parent_single):
            jump = sign * (parent_single - single) / noise["sd"]
        flagged = jump is not None and jump > flag_sigmas
        confirmed = p < alpha
        needs = flagged or need_approval
        out.append({"variant_id": vid, "parent_id": pid, "single": single, "parent_single": parent_single,
                    "mean": m, "low": lo, "high": hi, "n": len(runs),
                    "parent_mean": sum(parent_runs) / len(parent_runs), "p": p, "confirmed": confirmed,
                    "flagged": flagged, "jump_sigmas": jump, "approved": vid in approvals,
                    "awaiting": confirmed and needs and vid not in approvals})
    out.sort(key=lambda c: sign * c["mean"])
    eligible = [c for c in out if c["confirmed"] and (c["approved"] or not (c["flagged"] or need_approval))]
    return {"noise": noise, "candidates": out, "champion": eligible[0] if eligible else None}


def _sd(xs: list[float]) -> float:

    return stdev(xs) if len(xs) > 1 else 0.0


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def load_verdict(run_dir: str | Path) -> dict | None:
    """Returns `verdict` of a run folder from its own spec and records; None when it has no re-runs."""
    run_dir = Path(run_dir)
    reruns = read(run_dir)
    if not reruns:
        return None
    settings = run_settings(run_dir)
    c = settings.confirm
    rows = Store(run_dir).read_results().to_pylist()
    seed_id = next((r["variant_id"] for r in rows if r["operator"] == "seed"), None)
    v = verdict(rows, reruns, approved(run_dir), seed_id, settings.objective.mode, c.alpha, c.flag_sigmas,
                c.approval)
    v["metric"], v["alpha"] = settings.objective.metric, c.alpha
    return v


def lines(v: dict | None) -> list[str]:
    """Returns the status lines of a verdict: seed noise, the confirmed champion, what awaits review."""
    if v is None:
        return ["confirmed champion: none yet (no confirmation re-runs recorded: they start when the budget "
                "is spent, unless confirm.top is 0)"]
    out, metric = [], v["metric"]
    n = v["noise"]
    if n:
        out.append(f"seed-to-seed noise: the seed's {metric} {n['mean']:.4f} [{n['low']:.4f}, {n['high']:.4f}] "
                   f"(95% CI), sd {n['sd']:.4f} over {n['n']} seeds")
    ch = v["champion"]
    if ch:
        out.append(f"confirmed champion: {ch['variant_id']} {metric} {ch['mean']:.4f} "
                   f"[{ch['low']:.4f}, {ch['high']:.4f}] over {ch['n']} seeds; beats its parent "
                   f"{ch['parent_id'][:8]} ({ch['parent_mean']:.4f}) at p = {ch['p']:.3g} (Welch, one-sided)")
    else:
        out.append(f"confirmed champion: none (no candidate beat its parent at p < {v['alpha']:g} "
                   f"with the approvals it needs)")
    for c in v["candidates"]:
        if c is ch:
            continue
        what = ("awaiting approval (evolve review)" if c["awaiting"] else
                "confirmed" if c["confirmed"] else f"not confirmed (p = {c['p']:.3g})")
        flag = f"; FLAGGED: single run {c['jump_sigmas']:.1f} noise sds better than its parent" if c["flagged"] else ""
        out.append(f"  candidate {c['variant_id']}: {metric} {c['mean']:.4f} [{c['low']:.4f}, {c['high']:.4f}] "
                   f"against parent {c['parent_mean']:.4f}: {what}{flag}")
    return out
