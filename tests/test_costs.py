"""The cost check of tests/conftest.py, on a suite of its own: a test whose marker understates what it
started fails in one line naming what it did; a test without exactly one cost marker fails."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.warm  # it runs pytest in a subprocess

CONFTEST = '''
from tests.conftest import *  # noqa: F401,F403  the machinery under test
from tests.conftest import _search_watch  # noqa: F401
from tests.conftest import pytest_configure as _register


def pytest_configure(config):
    for tier in TIERS:
        config.addinivalue_line("markers", f"{tier}: a cost tier")
    _register(config)
'''

SUITE = '''
import socket
import subprocess
import sys

import pytest

CLI = [sys.executable, "-c", "import sys; sys.exit(int(sys.argv[1]))"]  # stands in for `python -m evolve.cli`


@pytest.mark.unit
def test_pure():
    assert sorted([2, 1]) == [1, 2]


@pytest.mark.unit
def test_unit_starts_a_process():
    subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.unit
def test_unit_forks():
    import os

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


@pytest.mark.unit
def test_unit_opens_a_socket():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))


@pytest.mark.unit
def test_unit_imports_a_module_that_starts_a_process_as_it_loads():
    import noisy  # what an import does is not the test's


@pytest.fixture(scope="session")
def server():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield s
    s.close()


@pytest.mark.warm
def test_warm_sets_up_the_server(server):
    pass


@pytest.mark.unit
def test_unit_uses_the_server_set_up_before(server):
    pass  # its fixture's set-up, for the test before, is still its cost


@pytest.mark.warm
def test_warm_runs_the_cli_and_is_refused():
    assert subprocess.run([*CLI, "2", "evolve.cli", "run"]).returncode == 2  # exit 2: a refusal, no search


@pytest.mark.warm
def test_warm_runs_a_search_through_the_cli():
    subprocess.run([*CLI, "0", "evolve.cli", "resume"], check=True)


@pytest.mark.warm
def test_warm_calls_resume_search_on_a_folder_it_refuses(tmp_path):
    from evolve.spec import SpecError
    from evolve.driver import resume_search

    with pytest.raises(SpecError):
        resume_search(tmp_path)  # refused: no spec.yaml


@pytest.mark.warm
def test_warm_calls_run_baseline():
    from evolve.search.baselines import run_baseline

    with pytest.raises(Exception):
        run_baseline(None, None, "random")  # anything but a refusal counts


@pytest.mark.search
def test_search_runs_a_search_through_the_cli():
    subprocess.run([*CLI, "0", "evolve.cli", "run"], check=True)


def test_unmarked():
    pass


@pytest.mark.unit
@pytest.mark.warm
def test_two_markers():
    pass


@pytest.mark.unit
def test_unit_fails_on_its_own():
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    assert False, "its own failure"
'''

NOISY = "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'], check=True)\n"


def outcomes(tmp_path) -> dict[str, str]:
    """Runs SUITE under the cost check; returns {test: "passed" or the first line of its failure}."""
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_suite.py").write_text(SUITE)
    (tmp_path / "noisy.py").write_text(NOISY)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(tmp_path)])}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                          "--junitxml", str(tmp_path / "out.xml"), str(tmp_path / "test_suite.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert (tmp_path / "out.xml").is_file(), out.stdout[-3000:] + out.stderr[-3000:]
    got = {}
    for case in ET.parse(tmp_path / "out.xml").iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        got[case.get("name")] = "passed" if bad is None else bad.get("message", "").splitlines()[0]
    return got


def test_a_marker_that_understates_what_the_test_started_fails_it_in_one_line(tmp_path):
    got = outcomes(tmp_path)
    py = repr(sys.executable)
    assert got.pop("test_pure") == "passed"
    assert got.pop("test_unit_starts_a_process") == (
        f"Failed: marked unit but started a process (subprocess.Popen [{py}, '-c', 'pass']); mark it warm")
    assert got.pop("test_unit_forks") == "Failed: marked unit but started a process (os.fork ()); mark it warm"
    assert got.pop("test_unit_opens_a_socket") == (
        "Failed: marked unit but opened a socket (socket.bind ('127.0.0.1', 0)); mark it warm")
    assert got.pop("test_unit_imports_a_module_that_starts_a_process_as_it_loads") == "passed"
    assert got.pop("test_warm_sets_up_the_server") == "passed"
    assert got.pop("test_unit_uses_the_server_set_up_before") == (
        "Failed: marked unit but opened a socket (socket.bind ('127.0.0.1', 0), in fixture 'server'); mark it warm")
    assert got.pop("test_warm_runs_the_cli_and_is_refused") == "passed"
    assert got.pop("test_warm_runs_a_search_through_the_cli") == (
        f"Failed: marked warm but ran a whole search (subprocess.Popen [{py}, '-c', "
        "'import sys; sys.exit(int(sys.argv[1]))', '0', 'evolve.cli', 'resume']); mark it search")
    assert got.pop("test_warm_calls_resume_search_on_a_folder_it_refuses") == "passed"
    assert got.pop("test_warm_calls_run_baseline") == (
        "Failed: marked warm but ran a whole search (evolve.search.baselines.run_baseline); mark it search")
    assert got.pop("test_search_runs_a_search_through_the_cli") == "passed"
    # these fail at set-up, before any fixture starts anything
    assert got.pop("test_unmarked") == ('failed on setup with "Failed: test_suite.py::test_unmarked: no cost marker; '
                                        'mark it unit, warm or search (see docs/TESTING.md)"')
    assert got.pop("test_two_markers") == ('failed on setup with "Failed: test_suite.py::test_two_markers: more than '
                                           'one cost marker (unit, warm); keep one"')
    assert got.pop("test_unit_fails_on_its_own").startswith("AssertionError: its own failure")
    assert got == {}
