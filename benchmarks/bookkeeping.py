"""The searcher's own cost: `suggest` and recording a result, with a large population.

Drives the real `EvolveSearcher` (heuristic operator, real store on disk)
the way Tune does, with simulated trial results, until the population
holds `--population` variants; then times `--samples` more suggestions and
result records. Prints medians, 99th percentiles and their ratio to the
20 ms target, all measured in this run.

    python benchmarks/bookkeeping.py --population 10000 --samples 200
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

from evolve.spec import load_spec  # noqa: E402
from evolve.driver import scaffold_files, trial_context  # noqa: E402
from evolve.search.searcher import EvolveSearcher  # noqa: E402
from evolve.record.store import Store  # noqa: E402

TARGET_S = 0.020


def result(i: int) -> dict:
    fit = 2.5 - (i % 997) / 5000.0
    return {"result_json": json.dumps({
        "status": "completed", "fitness": fit, "metrics": {"heldout_loss": fit},
        "summary": {"curve": [[t * 20480, fit + 1.0 / t, fit + 0.5 / t] for t in range(1, 17)],
                    "train_seconds": 30.0, "tokens_trained": 327680}})}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--population", type=int, default=10_000)
    ap.add_argument("--samples", type=int, default=200)
    args = ap.parse_args()
    total = args.population + args.samples
    run = Path(tempfile.mkdtemp(prefix="evolve-bench-")) / "run"
    spec = load_spec(ROOT / "experiments" / "tiny_lm", [f"budget.trials={total}"])
    s = EvolveSearcher(spec, Store(run), trial_context(spec, run, {}, None), scaffold_files(spec),
                       log=lambda line: None)
    suggest_t, record_t = [], []
    t0 = time.time()
    for i in range(total):
        tid = f"t{i}"
        a = time.perf_counter()
        cfg = s.suggest(tid)
        b = time.perf_counter()
        if not isinstance(cfg, dict):
            raise SystemExit(f"suggest stopped at {i}: {cfg!r}")
        s.on_trial_complete(tid, result(i))
        c = time.perf_counter()
        if i >= args.population:
            suggest_t.append(b - a)
            record_t.append(c - b)
        if i and i % 2000 == 0:
            print(f"  ... {i:,} variants ({time.time() - t0:.0f} s)", flush=True)
    for name, xs in (("suggest", suggest_t), ("record a result", record_t)):
        xs = sorted(xs)
        med, p99 = statistics.median(xs), xs[int(0.99 * (len(xs) - 1))]
        print(f"{name} with {args.population:,} variants: median {med * 1e3:.2f} ms, p99 {p99 * 1e3:.2f} ms; "
              f"median / 20 ms target = {med / TARGET_S:.3f}")


if __name__ == "__main__":
    main()
