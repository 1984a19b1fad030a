"""The benchmark scripts still run against today's modules (they call internals a refactor can move)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.warm
def test_the_throughput_benchmark_trains_both_loops_prints_its_ratio_and_leaves_no_files(tmp_path):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--steps", "2", "--rounds", "1"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(r"DeepSpeed / plain = \d+\.\d{3}$", out.stdout.strip()), out.stdout
    assert not [p.name for p in tmp_path.glob("evolve-bench-*")]  # its prepared run and saved model removed
