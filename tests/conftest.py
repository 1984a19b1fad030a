import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray stays on 127.0.0.1

ROOT = Path(__file__).resolve().parents[1]
TINY_LM = ROOT / "experiments" / "tiny_lm"


@pytest.fixture
def experiment(tmp_path):
    """A private copy of experiments/tiny_lm that a test may edit."""
    dest = tmp_path / "tiny_lm"
    shutil.copytree(TINY_LM, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest
