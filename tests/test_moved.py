"""A run made before the package was re-housed still loads, reports its status and resumes.

`tests/data/run-2026-12-01.tar.gz` is a tiny_lm search of 6 variants made by the
flat layout (`evolve.config`, `evolve.searcher`, ...) and killed with SIGKILL
after its second recorded variant, while its third trained. Its pickles (Ray
Tune's `tuner.pkl`, the searcher's state) name the old modules, and its paths
are absolute, so the test unpacks it where it was made.
"""

import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from evolve import moved
from evolve.read.population import load_population
from evolve.spec import Spec
from evolve.variant import Variant
from tests.test_resume import evolve, kill_group

ARCHIVE = Path(__file__).parent / "data" / "run-2026-12-01.tar.gz"
WHERE = Path("/tmp/evolve-old-run")  # where it was made: its state holds this path


@pytest.fixture
def old_run():
    if WHERE.exists():
        shutil.rmtree(WHERE)  # left by an earlier run of this test that was killed
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(WHERE.parent, filter="data")
    yield WHERE / "run"
    shutil.rmtree(WHERE, ignore_errors=True)


@pytest.mark.unit
def test_every_old_module_name_is_the_new_module_itself():
    import importlib

    for old, new in moved.OLD.items():
        if old in moved.SHADOWED:
            continue
        assert importlib.import_module(old) is importlib.import_module(new), old


@pytest.mark.unit
def test_the_shadowed_old_modules_answer_their_names_from_their_new_homes():
    import evolve.agent
    import evolve.rank
    import evolve.trial
    from evolve.agent.writer import Agent
    from evolve.rank.entry import run_rank
    from evolve.trial.train import trainable

    assert evolve.agent.Agent is Agent and evolve.rank.run_rank is run_rank
    assert evolve.trial.trainable is trainable
    import evolve.trial.slots

    assert evolve.trial.slots.__name__ == "evolve.trial.slots"  # a submodule, not an old attribute
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        evolve.trial.nothing


@pytest.mark.unit
def test_the_old_searcher_state_unpickles_into_the_new_classes(tmp_path):
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(tmp_path, filter="data")
    state_file, = (tmp_path / "evolve-old-run" / "run" / "tune").glob("searcher-state-*.pkl")
    raw = state_file.read_bytes()
    assert b"evolve.config" in raw and b"evolve.spec" not in raw  # made by the flat layout
    state = pickle.loads(raw)
    assert type(state["spec"]) is Spec and state["spec"].budget.trials == 6
    assert all(type(v) is Variant for v in state["variants"].values())


@pytest.mark.search
def test_an_old_run_reports_its_status_loads_and_resumes_to_the_end(old_run, tmp_path):
    before = load_population(old_run)
    assert len(before) == 2 and (before["status"] == "completed").all()
    status = subprocess.run([sys.executable, "-m", "evolve.cli", "status", str(old_run)],
                            capture_output=True, text=True, timeout=120)
    assert status.returncode == 0 and "completed 2" in status.stdout, status.stderr
    log = open(tmp_path / "resume.log", "wb")
    q = evolve("resume", str(old_run), log=log)
    try:
        assert q.wait(timeout=600) == 0, (tmp_path / "resume.log").read_text()[-3000:]
    finally:
        kill_group(q)
    after = load_population(old_run)
    assert len(after) == 6 and after["variant_id"].is_unique and (after["status"] == "completed").all()
    kept = after.set_index("variant_id").loc[list(before["variant_id"]), "fitness"]
    assert list(kept) == list(before["fitness"])  # what was recorded is untouched
