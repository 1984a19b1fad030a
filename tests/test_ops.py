"""DeepSpeed's CPU op loads even when a killed process left torch's build lock behind."""

import os
import subprocess
import sys

import pytest
from torch.utils.cpp_extension import _get_build_directory

from evolve.warm.commop import OP_NAME


@pytest.mark.warm
def test_a_lock_left_by_a_killed_process_does_not_hang_the_next_load():
    from pathlib import Path

    stale = Path(_get_build_directory(OP_NAME, verbose=False)) / "lock"
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("")  # what a process killed inside torch's build leaves
    out = subprocess.run([sys.executable, "-m", "evolve.warm.commop"],  # the command setup.sh runs
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "DS_ACCELERATOR": "cpu"})
    assert out.returncode == 0 and out.stdout.strip().endswith("ready"), out.stderr[-2000:]
    assert not stale.exists()


@pytest.mark.unit
def test_every_evolve_module_setup_sh_runs_exists():
    """A module renamed or moved must not break a fresh machine's set-up."""
    import importlib.util
    import re
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / "setup.sh").read_text()
    modules = re.findall(r"python -m (evolve[\w.]*)", script)
    assert modules, "setup.sh runs no evolve module"
    assert "python -c" not in script, "setup.sh should run modules (-m), which this test can check"
    for name in modules:
        assert importlib.util.find_spec(name) is not None, name
