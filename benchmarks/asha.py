"""ASHA: the compute a search spends to reach a held-out loss, with and without early stopping.

Runs evolve's search on tiny_lm twice with the same seed, trials and
tokens per trial: once with every trial training its whole budget (FIFO),
once with Ray Tune's ASHA stopping weak trials on their dev-loss curves.
The target is the worse of the two runs' best held-out losses, so both
reach it; for each run, the tokens trained (all trials, stopped ones up to
where they stopped, in the order results came in) until its best reached
the target. Prints both and their ratio, measured in this run.

    python benchmarks/asha.py --trials 16 --train-tokens 163840
"""

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evolve.read.population import load_population  # noqa: E402
from evolve.spec import load_spec  # noqa: E402
from evolve.driver import run_search  # noqa: E402


def tokens_to_reach(pop, target: float) -> float | None:
    """Tokens trained, in order of results, until a completed trial's loss is <= target."""
    spent = 0
    for _, row in pop.sort_values("finished_at").iterrows():
        spent += int(row["tokens_trained"]) if row["tokens_trained"] == row["tokens_trained"] else 0
        if row["status"] == "completed" and row["fitness"] <= target:
            return spent
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=16)
    ap.add_argument("--train-tokens", type=int, default=163_840)
    ap.add_argument("--reduction-factor", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="evolve-bench-"))
    pops = {}
    for kind in ("fifo", "asha"):
        spec = load_spec(ROOT / "experiments" / "tiny_lm", [
            "confirm.top=0", f"budget.trials={args.trials}", f"budget.train_tokens={args.train_tokens}", f"seed={args.seed}",
            f"scheduler.kind={kind}", f"scheduler.reduction_factor={args.reduction_factor}"])
        run_search(spec, base / kind, log=lambda line: None, verbose=0)
        pops[kind] = load_population(base / kind)
        p = pops[kind]
        done = p[p["status"] == "completed"]
        print(f"{kind}: {len(p)} trials ({len(done)} completed, {(p['status'] == 'stopped').sum()} stopped "
              f"early), {int(p['tokens_trained'].fillna(0).sum()):,} tokens in all, best held-out loss "
              f"{done['fitness'].min():.4f}", flush=True)
    target = max(pops[k][pops[k]["status"] == "completed"]["fitness"].min() for k in pops)
    spent = {k: tokens_to_reach(pops[k], target) for k in pops}
    print(f"target (the worse best): {target:.4f}")
    for k, v in spent.items():
        print(f"  {k}: {v:,} tokens to reach it")
    print(f"compute to reach the target, ASHA / FIFO: {spent['asha'] / spent['fifo']:.3f}")


if __name__ == "__main__":
    main()
