"""Training efficiency found: the tokens the champion recipe needs to reach the seed's loss.

Runs evolve's search on tiny_lm for `--cycles` trials (a cycle is one
variant trained and recorded; the seed is the first). After each cycle the
champion is the best variant so far by held-out loss; its ratio is the
tokens its learning curve needs to reach the seed recipe's final dev loss
over the tokens the seed trained, both read at the curves' own evaluation
points. Prints the ratio at milestones, the first cycle at which it is at
most `--aim`, and the final champion's ratio when champion and seed are
trained again with another seed outside the search (no selection on noise).

    python benchmarks/training_efficiency.py --cycles 100 --train-tokens 81920
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evolve.warm import zygote  # noqa: E402
from evolve.read.population import efficiency_ratio, load_population  # noqa: E402
from evolve.spec import load_spec  # noqa: E402
from evolve.driver import run_search  # noqa: E402
from evolve.record.store import Store  # noqa: E402


def retrain(run_dir: Path, spec, vid: str, seed: int, work: Path) -> list:
    """Trains variant `vid` again as one CPU rank with another seed; returns its curve."""
    store = Store(run_dir)
    vdir = store.materialize(store.get_variant(vid), work / vid / "variant")
    config = {"seed": seed, "task": spec.task, "data_dir": str(run_dir / "data"), "variant_dir": str(vdir),
              "out_dir": str(work / vid / "out"), "train_tokens": spec.budget.train_tokens,
              "report_every": spec.trial.report_every, "checkpoint_tokens": 0}
    summary = zygote.call("evolve.rank.entry:solo_rank", {"config": config},
                          env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"})
    return summary["curve"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--train-tokens", type=int, default=81_920)
    ap.add_argument("--report-every", type=int, default=5, help="optimizer steps between curve points")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--aim", type=float, default=0.5)
    ap.add_argument("--run-dir", default=None, help="an existing run to read instead of searching")
    args = ap.parse_args()
    spec = load_spec(ROOT / "experiments" / "tiny_lm", [
        "confirm.top=0", f"budget.trials={args.cycles}", f"budget.train_tokens={args.train_tokens}",
        f"trial.report_every={args.report_every}", f"seed={args.seed}"])
    if args.run_dir:
        run_dir = Path(args.run_dir).resolve()
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="evolve-bench-")) / "run"
        t0 = time.time()
        run_search(spec, run_dir, log=lambda line: None, verbose=0)
        print(f"search: {args.cycles} cycles of {args.train_tokens:,} tokens in {time.time() - t0:.0f} s ({run_dir})")
    pop = load_population(run_dir)
    pop = pop.sort_values("finished_at").reset_index(drop=True)
    seed_row = pop[pop["operator"] == "seed"].iloc[0]
    seed_curve = pop.curve(seed_row["variant_id"])
    print(f"seed: final dev loss {seed_curve[-1][2]:.4f} after {seed_curve[-1][0]:,.0f} tokens, "
          f"held-out {seed_row['fitness']:.4f}")
    best, first_at, ratios = None, None, []
    for cycle, row in enumerate(pop.itertuples(), start=1):
        if row.status == "completed" and (best is None or row.fitness < best.fitness):
            best = row
        ratio = efficiency_ratio(pop.curve(best.variant_id), seed_curve) if best is not None else None
        ratios.append((cycle, best, ratio))
        if first_at is None and ratio is not None and ratio <= args.aim:
            first_at = cycle
    for cycle, champ, ratio in ratios:
        if cycle in (1, 10, 25, 50, 75, 100) or cycle == len(ratios):
            shown = "never reaches it" if ratio is None else f"{ratio:.3f}"
            print(f"cycle {cycle:>3}: champion {champ.variant_id} held-out {champ.fitness:.4f}, "
                  f"tokens to the seed's loss / seed's tokens = {shown}")
    print(f"ratio <= {args.aim} first at cycle: {first_at if first_at else 'not within ' + str(len(ratios))}")
    champ = ratios[-1][1]
    zygote.ensure()
    work = Path(tempfile.mkdtemp(prefix="evolve-retrain-"))
    fresh_seed = retrain(run_dir, spec, seed_row["variant_id"], args.seed + 1, work)
    fresh_champ = retrain(run_dir, spec, champ.variant_id, args.seed + 1, work)
    ratio = efficiency_ratio(fresh_champ, fresh_seed)
    print(f"retrained with seed {args.seed + 1}: seed final dev loss {fresh_seed[-1][2]:.4f}, champion "
          f"{fresh_champ[-1][2]:.4f}; ratio {'never reaches it' if ratio is None else f'{ratio:.3f}'}")


if __name__ == "__main__":
    main()
