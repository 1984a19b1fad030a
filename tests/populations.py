"""Synthetic populations shaped like a search's, made without training: in memory, or as a run folder."""

from __future__ import annotations

import random

import pandas as pd

OPERATORS = ["perturb", "crossover", "llm", "llm", "llm"]


def rows(n: int, seed: int = 0, window: int = 40) -> list[dict]:
    """`n` variants: one seed, then children of the better of three drawn from the last `window`
    (crossovers take a second parent), about 5% failed, fitness drifting down with noise."""
    rng = random.Random(seed)
    out, fits = [], []
    for i in range(n):
        op = "seed" if i == 0 else rng.choice(OPERATORS)
        parents = []
        if i:
            lo = max(0, i - window)
            pick = lambda: min(rng.sample(range(lo, i), min(3, i - lo)), key=lambda j: fits[j])  # noqa: E731
            parents = [f"v{pick():04d}"] + ([f"v{pick():04d}"] if op == "crossover" else [])
            parents = list(dict.fromkeys(parents))
        failed = i > 0 and rng.random() < 0.05
        fit = None if failed else 3.0 - 0.4 * (i / n) + rng.gauss(0, 0.03)
        tokens = rng.randint(2000, 9000) if op == "llm" else 0
        out.append({"variant_id": f"v{i:04d}", "parent_ids": parents, "operator": op,
                    "status": "failed" if failed else "completed", "fitness": fit,
                    "failure_reason": "diverged" if failed else None, "trial_seconds": 40.0 + rng.random(),
                    "tokens_trained": 8192, "final_dev_loss": fit,
                    "record": {"kind": op, "rationale": f"variant {i}", "prompt_tokens": tokens,
                               "completion_tokens": tokens // 8},
                    # tokens and steps as floats, as a curve written from float arithmetic holds them
                    "curve": [[t * 2048.0, (fit or 9.0) + 1.0 / t, (fit or 9.0) + 0.5 / t, t * 4.0, 1e-3]
                              for t in range(1, 5)]})
        fits.append(fit if fit is not None else 99.0)
    return out


def frame(n: int, seed: int = 0) -> pd.DataFrame:
    """The population of `rows(n)` as a DataFrame with the columns `evolve.read.lineage` reads."""
    return pd.DataFrame(rows(n, seed))


def write_run(root, n: int, seed: int = 0):
    """A run folder holding `rows(n)`: each variant in the store (a config naming it) and its result.

    Returns the root and the map from the synthetic names (v0000...) to the store's variant ids.
    """
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from evolve.record.store import COMPACTED, RESULT_SCHEMA, Store
    from evolve.variant import Variant

    store = Store(root)
    (root / "spec.yaml").write_text("objective: {metric: heldout_loss, mode: min}\ntrial: {workers: 2}\n")
    made, results = {}, []
    for r in rows(n, seed):
        v = Variant(files=store.put_files({"config.yaml": f"name: {r['variant_id']}\nlr: {len(made)}\n".encode()}),
                    parents=tuple(made[p] for p in r["parent_ids"]), operator=r["operator"], record=r["record"])
        store.put_variant(v)
        made[r["variant_id"]] = v.id
        results.append({**{k: r.get(k) for k in RESULT_SCHEMA.names}, "variant_id": v.id,
                        "parent_ids": list(v.parents), "metrics": "{}", "record": json.dumps(r["record"]),
                        "curve": json.dumps(r["curve"]), "finished_at": 1.0e9 + len(results)})
    # the rows as one part, as a compaction leaves them (one part a row would take seconds to write)
    pq.write_table(pa.Table.from_pylist(results, schema=RESULT_SCHEMA), store.population / COMPACTED)
    return root, made
