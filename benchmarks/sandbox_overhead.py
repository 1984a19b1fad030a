"""What the sandbox costs a rank: a zygote call with and without it, measured in the same run.

Each call forks a fresh zygote child that returns at once, so the time is
all overhead: the fork and, with the sandbox, the namespaces, the mounts,
the second fork and the waiter. Calls alternate between the two so both
see the same machine load. Prints the median of each and their difference,
which is what every rank of every trial pays.

    python benchmarks/sandbox_overhead.py --calls 40
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

from evolve import zygote  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=40)
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="evolve-sandbox-bench-"))
    zygote.ping(zygote.ensure())  # warm: the first start imports torch and DeepSpeed
    times = {"plain": [], "sandbox": []}
    try:
        for i in range(args.calls):
            for kind in ("plain", "sandbox"):
                policy = {"writable": [str(out)], "hidden": [], "memory_bytes": 0} if kind == "sandbox" else None
                t0 = time.perf_counter()
                got = zygote.call("tests.zygote_targets:identify", {"n": 0}, sandbox=policy)
                times[kind].append(time.perf_counter() - t0)
                assert got["torch_loaded_before"]
    finally:
        zygote.shutdown()
    plain, boxed = statistics.median(times["plain"]), statistics.median(times["sandbox"])
    print(f"zygote call, median of {args.calls}: plain {plain * 1000:.1f} ms, sandboxed {boxed * 1000:.1f} ms; "
          f"the sandbox adds {(boxed - plain) * 1000:.1f} ms per rank (ratio {boxed / plain:.2f})")


if __name__ == "__main__":
    main()
