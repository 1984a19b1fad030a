"""Per-trial overhead of a real search, measured from the run's own records.

Runs `evolve run experiments/tiny_lm` with N trials, 2 at once, then reads
the population: for each trial, overhead = (first training step - trial
start) + (result recorded - last training step). Prints the median and the
utilization (time spent between first and last step, over wall time x slots),
both measured in this run.

    python benchmarks/trial_overhead.py --trials 8 --train-tokens 163840
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evolve.read.population import load_population  # noqa: E402
from evolve.spec import load_spec  # noqa: E402
from evolve.driver import run_search  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--concurrent", type=int, default=2)
    ap.add_argument("--train-tokens", type=int, default=163_840)
    ap.add_argument("--run-dir", default=None)
    args = ap.parse_args()
    run_dir = Path(args.run_dir or tempfile.mkdtemp(prefix="evolve-bench-")) / "run"
    spec = load_spec(ROOT / "experiments" / "tiny_lm",
                     ["confirm.top=0", f"budget.trials={args.trials}", f"budget.concurrent={args.concurrent}",
                      f"budget.train_tokens={args.train_tokens}"])
    t0 = time.time()
    run_search(spec, run_dir, log=lambda line: None, verbose=0)
    wall = time.time() - t0
    pop = load_population(run_dir)
    done = pop[pop["status"] == "completed"]
    pre = done["first_step_at"] - done["started_at"]
    post = done["finished_at"] - done["last_step_at"]
    overhead = pre + post
    train_span = done["last_step_at"] - done["first_step_at"]
    first_start, last_end = pop["started_at"].min(), pop["finished_at"].max()
    print(f"trials: {len(pop)} ({len(done)} completed), {args.concurrent} at once, "
          f"{args.train_tokens:,} tokens each")
    print(f"per-trial overhead, median: {statistics.median(overhead):.1f} s "
          f"(start->first step {statistics.median(pre):.1f} s, last step->recorded {statistics.median(post):.1f} s; "
          f"min {overhead.min():.1f}, max {overhead.max():.1f})")
    print(f"  of which: set-up in the training process {statistics.median(done['setup_seconds']):.1f} s, "
          f"sealed evaluation {statistics.median(done['eval_seconds']):.1f} s (after every rank has exited); "
          f"the rest is Ray Tune/Train starting and stopping actors")
    print(f"training span per trial, median: {statistics.median(train_span):.1f} s "
          f"(pure step time {statistics.median(done['train_seconds']):.1f} s; the rest is dev-loss points)")
    print(f"overhead / training span (median ratio): {statistics.median(overhead / train_span):.2f}")
    print(f"utilization (sum of training spans / (trial window x slots)): "
          f"{train_span.sum() / ((last_end - first_start) * args.concurrent):.2f}")
    print(f"utilization (sum of training spans / (whole wall time x slots)): "
          f"{train_span.sum() / (wall * args.concurrent):.2f}  [wall {wall:.0f} s, incl. Ray start]")


if __name__ == "__main__":
    main()
