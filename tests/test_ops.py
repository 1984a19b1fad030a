"""DeepSpeed's CPU op loads even when a killed process left torch's build lock behind."""

import os
import subprocess
import sys

from torch.utils.cpp_extension import _get_build_directory

from evolve.ops import OP_NAME


def test_a_lock_left_by_a_killed_process_does_not_hang_the_next_load():
    from pathlib import Path

    stale = Path(_get_build_directory(OP_NAME, verbose=False)) / "lock"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("")  # what a process killed inside torch's build leaves
    out = subprocess.run([sys.executable, "-c", "from evolve.ops import load_cpu_comm_op; print(load_cpu_comm_op())"],
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert out.returncode == 0 and out.stdout.strip().endswith("True"), out.stderr[-2000:]
    assert not stale.exists()
