"""What the sandbox costs a rank, at each level, measured in the same run.

1. Set-up: a zygote call that returns at once, with no sandbox, at the
   full level and at the unprivileged level. The differences are what the
   walls add to every rank of every trial: namespaces and mounts (full),
   the Landlock allowlist, the supervisor's fork, the seccomp filter.
   Calls alternate between the kinds so all see the same machine load.
2. Throughput: one CPU rank trains the tiny_lm seed for `--tokens` tokens
   inside the walls and outside; the training loop's tokens per second
   (the harness's `train_seconds`, set-up excluded), alternated, medians.

    python benchmarks/sandbox_overhead.py --calls 40 --runs 5 --tokens 81920
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ["EVOLVE_ZYGOTE_ENTRY_POINTS"] = "tests.zygote_targets:walls"

from evolve.warm import zygote  # noqa: E402
from evolve.spec import load_spec  # noqa: E402
from evolve.driver import prepare_data  # noqa: E402
from evolve.rank.sandbox import policy_for  # noqa: E402
from evolve.messages import TrialConfig  # noqa: E402

SEARCH = "benchmark-sandbox-overhead"
KINDS = ("off", "full", "unprivileged")
ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def base(level: str, run: Path) -> dict | None:
    if level == "off":
        return None
    return {"level": level, "hidden": [str(run / "data" / "heldout.bin")], "hidden_trees": [str(zygote.folder())],
            "memory_bytes": 8 << 30, "disk_bytes": 20 << 30}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=40)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=81_920)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="evolve-sandbox-bench-"))
    run = tmp / "run"
    spec = load_spec(ROOT / "experiments" / "tiny_lm", [])
    prepare_data(spec, run)
    variant = run / "work" / "seed"
    shutil.copytree(ROOT / "experiments" / "tiny_lm" / "scaffold", variant)
    zygote.ensure(search=SEARCH)  # warm: the first start imports torch and DeepSpeed
    setup = {k: [] for k in KINDS}
    inside = {k: [] for k in KINDS}
    try:
        for i in range(args.calls):
            for kind in KINDS:
                out = tmp / "calls" / f"{kind}-{i}"
                out.mkdir(parents=True)
                config = TrialConfig(variant_dir=str(variant), out_dir=str(out), data_dir=str(run / "data"),
                                     task=spec.task, seed=0, train_tokens=args.tokens, run_dir=str(run),
                                     sandbox=base(kind, run))
                t0 = time.perf_counter()
                got = zygote.call("tests.zygote_targets:walls", {}, sandbox=policy_for(config, str(out)),
                                  search=SEARCH)
                setup[kind].append(time.perf_counter() - t0)
                inside[kind].append(got["confine_s"])
        rates = {k: [] for k in KINDS}
        for i in range(args.runs):
            for kind in KINDS:
                out = tmp / "train" / f"{kind}-{i}"
                out.mkdir(parents=True)
                config = TrialConfig(variant_dir=str(variant), out_dir=str(out), data_dir=str(run / "data"),
                                     task=spec.task, seed=0, train_tokens=args.tokens, run_dir=str(run),
                                     sandbox=base(kind, run))
                summary = zygote.call("evolve.rank.entry:solo_rank", {"config": config.to_dict()}, env=ENV,
                                      sandbox=policy_for(config, str(out)), search=SEARCH)
                rates[kind].append(summary["tokens_trained"] / summary["train_seconds"])
    finally:
        zygote.shutdown(search=SEARCH)
        shutil.rmtree(tmp, ignore_errors=True)
    plain = statistics.median(setup["off"])
    print(f"set-up per rank, median of {args.calls} calls (fork, walls, supervisor, seccomp):")
    print(f"  no sandbox    {plain * 1000:6.1f} ms per call")
    for kind in ("full", "unprivileged"):
        m = statistics.median(setup[kind])
        print(f"  {kind:13s} {m * 1000:6.1f} ms per call: the walls add {(m - plain) * 1000:5.1f} ms "
              f"(seccomp filter {statistics.median(inside[kind]) * 1000:.1f} ms of it)")
    off = statistics.median(rates["off"])
    print(f"training throughput, median of {args.runs} runs of {args.tokens:,} tokens on one CPU rank:")
    print(f"  no sandbox    {off:8.0f} tokens/s")
    for kind in ("full", "unprivileged"):
        m = statistics.median(rates[kind])
        print(f"  {kind:13s} {m:8.0f} tokens/s: inside / outside = {m / off:.3f}")


if __name__ == "__main__":
    main()
