"""What saving a trial's weights costs a forked rank, with transformers' renaming table built in the
parent (as the zygote now builds it) and without, measured in the same run.

Each sample forks a child of this process, as the zygote forks a rank; the child builds the tiny_lm
seed's GPT-2 and saves it with `save_pretrained` (what `evolve.rank.lm.save_result` does), and reports
the CPU seconds of the save alone. `--samples` children save before the parent builds the table,
as many after; the ratio printed is the medians' (without / with).

    python benchmarks/save_weights.py --samples 5
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

from evolve.rank.lm import build_model, load_recipe, load_settings  # noqa: E402
from evolve.warm.zygote import warm_tables  # noqa: E402

SCAFFOLD = ROOT / "experiments" / "tiny_lm" / "scaffold"


def save_in_a_child(out: Path) -> float:
    """Forks; the child saves the seed's model under `out` and writes its save's CPU seconds back."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        recipe, settings = load_recipe(str(SCAFFOLD)), load_settings(str(SCAFFOLD))
        model, _ = build_model(recipe, settings, 256, 128, 1_000_000)
        t0 = time.process_time()
        model.save_pretrained(out, safe_serialization=True)
        os.write(write, f"{time.process_time() - t0}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        seconds = float(f.read())
    os.waitpid(pid, 0)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=5)
    args = ap.parse_args()
    import transformers.models.gpt2.modeling_gpt2  # noqa: F401  (the zygote's preload)

    with tempfile.TemporaryDirectory(prefix="evolve-bench-save-") as tmp:
        work = Path(tmp)
        cold = [save_in_a_child(work / f"cold{i}") for i in range(args.samples)]
        warm_tables()
        warm = [save_in_a_child(work / f"warm{i}") for i in range(args.samples)]
    c, w = statistics.median(cold), statistics.median(warm)
    print(f"save_pretrained in a forked rank, CPU s (median of {args.samples}): table not built {c:.3f}, "
          f"built in the parent {w:.3f}; saved {c - w:.3f} s a rank; without / with = {c / w:.2f}")


if __name__ == "__main__":
    main()
