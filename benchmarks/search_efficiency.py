"""Search efficiency at equal compute: evolve's search against random search and TPE on tiny_lm.

For each seed, runs the same number of trials with the same tokens per
trial, 2 at once on warm slots, for: evolve's search (heuristic operator),
random search (Ray Tune's sampler), Optuna's TPE through Ray Tune and
Ray Tune's Population Based Training (from DeepSpeed checkpoints), all
over the space the heuristic operator's `choices` and `bounds` define.
Prints each method's best held-out loss per seed, the mean and spread over
seeds, and each mean relative to random search's, all from this run.

    python benchmarks/search_efficiency.py --seeds 3 --trials 24 --train-tokens 163840
"""

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evolve.read.population import load_population  # noqa: E402
from evolve.search.baselines import run_baseline  # noqa: E402
from evolve.spec import load_spec  # noqa: E402
from evolve.driver import run_search  # noqa: E402

METHODS = ("evolve", "random", "tpe", "pbt")


def best_of(run_dir: Path) -> tuple[float, int, int, int]:
    """Returns the best held-out loss, trials recorded, completed, and trials PBT restored."""
    pop = load_population(run_dir)
    done = pop[pop["status"] == "completed"]
    restored = sum(1 for r in pop["record"] if "restored_at_tokens" in r)
    return float(done["fitness"].min()), len(pop), len(done), restored


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--train-tokens", type=int, default=163_840)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--out", default=None,
                    help="a JSON file of per-run figures, written after each run; runs already in it are not repeated")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="evolve-bench-"))
    out = Path(args.out) if args.out else None
    kept = json.loads(out.read_text()) if out and out.is_file() else {}
    results = {m: [r for r in kept.get(m, []) if r["seed"] < args.seeds] for m in args.methods.split(",")}
    for seed in range(args.seeds):
        for method in results:
            if any(r["seed"] == seed for r in results[method]):
                continue
            spec = load_spec(ROOT / "experiments" / "tiny_lm", [
                "confirm.top=0", f"budget.trials={args.trials}", f"budget.train_tokens={args.train_tokens}",
                f"seed={seed}"])
            run_dir = base / f"{method}-{seed}"
            t0 = time.time()
            if method == "evolve":
                run_search(spec, run_dir, log=lambda line: None, verbose=0)
            else:
                run_baseline(spec, run_dir, method, log=lambda line: None)
            best, n, done, restored = best_of(run_dir)
            if n < args.trials:  # an interrupted run is not a figure
                sys.exit(f"seed {seed} {method}: only {n} of {args.trials} trials recorded; stopping")
            results[method].append({"seed": seed, "best": best, "trials": n, "completed": done,
                                    "restored": restored, "wall_s": time.time() - t0})
            print(f"seed {seed} {method:<7} best held-out loss {best:.4f} ({done}/{n} completed"
                  + (f", {restored} continued from another trial's checkpoint" if method == "pbt" else "")
                  + f", {time.time() - t0:.0f} s)", flush=True)
            if out:
                out.write_text(json.dumps({**kept, **results}, indent=1))
    table = {**kept, **results}
    print(f"\n{args.trials} trials x {args.train_tokens:,} tokens per method and seed, {args.seeds} seeds "
          f"(runs under {base})")
    rand = statistics.mean(r["best"] for r in table["random"]) if table.get("random") else None
    for method, runs in table.items():
        if not runs:
            continue
        bests = [r["best"] for r in sorted(runs, key=lambda r: r["seed"])]
        mean = statistics.mean(bests)
        spread = statistics.stdev(bests) if len(bests) > 1 else 0.0
        rel = f"  ({(mean - rand) / rand * 100:+.2f}% vs random)" if rand else ""
        print(f"{method:<7} mean best {mean:.4f} +- {spread:.4f}  per seed "
              f"{', '.join(f'{b:.4f}' for b in bests)}{rel}")


if __name__ == "__main__":
    main()
