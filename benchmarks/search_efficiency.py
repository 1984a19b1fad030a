"""Search efficiency at equal training tokens: evolve's arms against random search, TPE and PBT on tiny_lm.

For each seed, every method gets the same training tokens, T = trials x
tokens per trial, 2 trials at once on warm slots:

- evolve: the heuristic operator;
- hybrid: `operator.kind: hybrid` (the heuristic writes code variants, Optuna's TPE tunes each one's numbers);
- inherit: `operator.inherit` (a child that changes only settings continues from its parent's weights and
  trains a quarter of the budget; it runs more trials, cut at T tokens);
- random, tpe, pbt: Ray Tune's random search, Optuna's TPE and Population Based Training over the space the
  heuristic operator's `choices` and `bounds` define;
- llm (only with --endpoint): `operator.kind: llm` against that OpenAI-compatible endpoint.

Each run is read back in the order its trials finished and cut at T tokens
trained. Prints each method's best held-out loss per seed, the mean and
spread over seeds, each mean relative to random search's, and the tokens
each method needed to reach random search's mean best (its mean over the
seeds that reached it, with how many did), all from this run.

    python benchmarks/search_efficiency.py --seeds 3 --trials 48 --train-tokens 16384
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

from evolve.driver import run_search  # noqa: E402
from evolve.read.population import load_population  # noqa: E402
from evolve.search.baselines import run_baseline  # noqa: E402
from evolve.spec import load_spec  # noqa: E402

METHODS = ("evolve", "hybrid", "inherit", "random", "tpe", "pbt")
OVERRIDES = {"evolve": [], "hybrid": ["operator.kind=hybrid", "operator.hybrid_trials=4"],
             "inherit": ["operator.inherit=true"]}
TRIALS_FACTOR = {"inherit": 3}  # inheriting children train a quarter of the budget: more trials fit in T tokens


def trace(run_dir: Path) -> list[tuple[int, float]]:
    """Returns [(tokens trained so far, best held-out loss so far)] in the order the trials finished."""
    pop = load_population(run_dir).sort_values("finished_at")
    out, tokens, best = [], 0, float("inf")
    for _, row in pop.iterrows():
        tokens += int(row["tokens_trained"]) if row["tokens_trained"] == row["tokens_trained"] else 0
        if row["status"] == "completed" and row["fitness"] < best:
            best = float(row["fitness"])
        out.append((tokens, best))
    return out


def within(points: list, cap: int) -> float:
    """The best loss reached within `cap` tokens."""
    return min((b for t, b in points if t <= cap), default=float("inf"))


def tokens_to(points: list, target: float) -> int | None:
    """The tokens trained when the best first reached `target`; None if it never did."""
    return next((t for t, b in points if b <= target), None)


def run_one(method: str, seed: int, args, run_dir: Path) -> list:
    trials = args.trials * TRIALS_FACTOR.get(method, 1)
    # curve points every 2 steps: PBT decides on them (at tiny_lm's 20 a short trial reports only its end,
    # and PBT never moves a trial: it would be random search again)
    common = ["confirm.top=0", f"budget.trials={trials}", f"budget.train_tokens={args.train_tokens}", f"seed={seed}",
              "trial.report_every=2"]
    if method == "llm":
        extra = ["operator.kind=llm", f"operator.base_url={args.endpoint}", f"operator.model={args.model}",
                 *([f"operator.api_key_env={args.api_key_env}"] if args.api_key_env else [])]
    else:
        extra = OVERRIDES.get(method, [])
    spec = load_spec(ROOT / "experiments" / "tiny_lm", common + extra)
    if method in ("random", "tpe", "pbt"):
        run_baseline(spec, run_dir, method, log=lambda line: None)
    else:
        run_search(spec, run_dir, log=lambda line: None, verbose=0)
    return trace(run_dir)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--trials", type=int, default=48, help="trials per run; T = trials x --train-tokens")
    ap.add_argument("--train-tokens", type=int, default=16_384)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--endpoint", default="", help="an OpenAI-compatible endpoint: adds the llm arm")
    ap.add_argument("--model", default="", help="the model's name at --endpoint")
    ap.add_argument("--api-key-env", default="", help="the NAME of the variable holding the endpoint's key")
    ap.add_argument("--out", default=None,
                    help="a JSON file of per-run traces, written after each run; runs already in it are not repeated")
    args = ap.parse_args()
    methods = args.methods.split(",") + (["llm"] if args.endpoint else [])
    unknown = [m for m in methods if m not in METHODS + ("llm",)]
    if unknown:
        sys.exit(f"--methods: unknown method {unknown[0]!r} (known: {', '.join(METHODS)})")
    if args.endpoint and not args.model:
        sys.exit("--endpoint: needs --model, the model's name there")
    base = Path(tempfile.mkdtemp(prefix="evolve-bench-"))
    out = Path(args.out) if args.out else None
    kept = json.loads(out.read_text()) if out and out.is_file() else {}
    cap = args.trials * args.train_tokens
    runs = {m: {int(s): p for s, p in kept.get(m, {}).items() if int(s) < args.seeds} for m in methods}
    for seed in range(args.seeds):
        for method in methods:
            if seed in runs[method]:
                continue
            t0 = time.time()
            points = run_one(method, seed, args, base / f"{method}-{seed}")
            runs[method][seed] = points
            print(f"seed {seed} {method:<7} best within T {within(points, cap):.4f} "
                  f"({len(points)} trials, {points[-1][0] if points else 0:,} tokens, {time.time() - t0:.0f} s)",
                  flush=True)
            if out:
                out.write_text(json.dumps({m: {str(s): p for s, p in r.items()} for m, r in runs.items()}))
    print(f"\nT = {args.trials} x {args.train_tokens:,} = {cap:,} training tokens per method and seed, "
          f"{args.seeds} seeds (runs under {base})")
    finals = {m: [within(runs[m][s], cap) for s in sorted(runs[m])] for m in methods if runs[m]}
    target = statistics.mean(finals["random"]) if finals.get("random") else None
    for method, bests in finals.items():
        mean = statistics.mean(bests)
        spread = statistics.stdev(bests) if len(bests) > 1 else 0.0
        line = f"{method:<7} mean best {mean:.4f} +- {spread:.4f}  per seed {', '.join(f'{b:.4f}' for b in bests)}"
        if target is not None:
            reached = [t for s in sorted(runs[method]) if (t := tokens_to(runs[method][s], target)) is not None
                       and t <= cap]
            line += f"  ({(mean - target) / target * 100:+.2f}% vs random)"
            line += (f"; reaches random's mean best {target:.4f} in {statistics.mean(reached) / cap:.2f} T "
                     f"({len(reached)}/{len(bests)} seeds)" if reached else f"; never reaches {target:.4f}")
        print(line)


if __name__ == "__main__":
    main()
