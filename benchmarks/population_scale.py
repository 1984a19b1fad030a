"""Loading and querying a population of 100,000 variants.

Writes `--variants` result rows in the run folder's own format (Parquet
parts of `--per-part` rows under population/, merged by `Store.compact`),
then times, each the best of `--repeat` runs: `load_population`,
`load_arrow` and the lineage queries a notebook asks (ancestors of the
champion, descendants of the seed, the champion's lineage, per-operator
and per-generation rates, the Pareto front). For the ratio it also times
reading the same kind of rows from one-row parts, as an uncompacted run
would hold them, measured in this run on `--loose` parts.

    python benchmarks/population_scale.py --variants 100000
"""

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evolve.read.population import load_arrow, load_population  # noqa: E402
from evolve.record.store import RESULT_SCHEMA, Store  # noqa: E402

TARGET_S = 2.0
OPERATORS = ["perturb", "crossover", "llm", "llm", "llm"]


def rows(n: int, seed: int = 0) -> list[dict]:
    """A population shaped like a long search: one seed, mostly one parent, some crossovers."""
    rng = random.Random(seed)
    out, ids, fits = [], [], []
    for i in range(n):
        vid = f"{rng.getrandbits(128):032x}"
        op = "seed" if i == 0 else rng.choice(OPERATORS)
        if i == 0:
            parents = []
        else:  # parents drawn from the better recent half, as selection would
            lo = max(0, i - 2000)
            pick = lambda: min(rng.sample(range(lo, i), min(3, i - lo)), key=lambda j: fits[j])  # noqa: E731
            parents = [ids[pick()]] + ([ids[pick()]] if op == "crossover" else [])
        failed = rng.random() < 0.05
        fit = None if failed else 3.0 - 0.4 * (i / n) + rng.gauss(0, 0.02)
        tokens = rng.randint(2000, 9000) if op == "llm" else 0
        record = {"kind": op, "rationale": "lower the warm-up and clip harder " * 3,
                  "prompt_tokens": tokens, "completion_tokens": tokens // 8}
        curve = [[t * 20480, fit + 1.0 / t if fit else 9.0, fit + 0.5 / t if fit else 9.0] for t in range(1, 11)]
        out.append({"variant_id": vid, "parent_ids": parents, "operator": op, "record": json.dumps(record),
                    "island": i % 4, "status": "failed" if failed else "completed",
                    "failure_reason": "diverged" if failed else None, "fitness": fit,
                    "metrics": json.dumps({"heldout_loss": fit}), "curve": json.dumps(curve),
                    "final_train_loss": fit, "final_dev_loss": fit, "train_seconds": 30.0,
                    "trial_seconds": 41.0 + rng.random(), "tokens_trained": 204800, "setup_seconds": 6.0,
                    "eval_seconds": 1.0, "trial_id": f"t{i:06d}", "created_at": 1.0e9 + i,
                    "started_at": 1.0e9 + i, "first_step_at": 1.0e9 + i, "last_step_at": 1.0e9 + i,
                    "finished_at": 1.0e9 + i + 41})
        ids.append(vid)
        fits.append(fit if fit is not None else 99.0)
    return out


def write_parts(run: Path, data: list[dict], per_part: int) -> None:
    pop = run / "population"
    pop.mkdir(parents=True, exist_ok=True)
    (run / "spec.yaml").write_text("objective: {metric: heldout_loss, mode: min}\ntrial: {workers: 2}\n")
    for k in range(0, len(data), per_part):
        table = pa.Table.from_pylist(data[k:k + per_part], schema=RESULT_SCHEMA)
        pq.write_table(table, pop / f"{k:020d}-{data[k]['variant_id']}.parquet")


def best_of(repeat: int, fn):
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", type=int, default=100_000)
    ap.add_argument("--per-part", type=int, default=500, help="rows per part before compaction")
    ap.add_argument("--loose", type=int, default=2000, help="one-row parts timed for the ratio")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    data = rows(args.variants)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        write_parts(run, data, args.per_part)
        store = Store(run)
        t = time.perf_counter()
        merged = store.compact(at=1)
        compact_s = time.perf_counter() - t
        size = (run / "population" / "compacted.parquet").stat().st_size

        load_s, pop = best_of(args.repeat, lambda: load_population(run))
        arrow_s, table = best_of(args.repeat, lambda: load_arrow(run))
        assert len(pop) == args.variants == table.num_rows, (len(pop), table.num_rows)
        champion, seed = pop.best_id(), pop.seed_id()
        queries = {
            "best_id": lambda: pop.best_id(),
            "ancestors(champion)": lambda: pop.ancestors(champion),
            "descendants(seed)": lambda: pop.descendants(seed),
            "lineage(champion)": lambda: pop.lineage(champion),
            "operator_stats": lambda: pop.operator_stats(),
            "generation_stats": lambda: pop.generation_stats(),
            "pareto_front(compute)": lambda: pop.pareto_front("compute_seconds"),
            "pareto_front(tokens)": lambda: pop.pareto_front("llm_tokens"),
        }
        timed = {name: best_of(args.repeat, fn) for name, fn in queries.items()}
        # pop.lineage resolves ids through the store's manifests; this run has none, so it
        # walks the table alone (every variant in it finished), as it does for any finished one

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        write_parts(run, data[:args.loose], 1)
        loose_s, loose = best_of(args.repeat, lambda: load_population(run))
        assert len(loose) == args.loose

    per_row_compacted = load_s / args.variants
    per_row_loose = loose_s / args.loose
    print(f"population of {args.variants:,} variants, {merged} parts merged in {compact_s:.2f} s "
          f"into one file of {size / 2**20:.1f} MiB")
    print(f"load_population: {load_s:.3f} s (target {TARGET_S:.1f} s: {load_s / TARGET_S:.2f} of it)")
    print(f"load_arrow:      {arrow_s:.3f} s")
    for name, (secs, out) in timed.items():
        n = len(out) if hasattr(out, "__len__") else 1
        print(f"{name:<22} {secs * 1000:8.1f} ms  ({n:,} rows/ids)")
    print(f"one-row parts, uncompacted: {loose_s:.3f} s for {args.loose:,} "
          f"({per_row_loose * 1e6:.0f} us a row, so about {per_row_loose * args.variants:.0f} s for "
          f"{args.variants:,}); compacted {per_row_compacted * 1e6:.1f} us a row: "
          f"{per_row_loose / per_row_compacted:.0f}x faster")


if __name__ == "__main__":
    main()
