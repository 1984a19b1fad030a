"""The warm zygote: fresh children per call, isolation, failures as one line."""

import os
import signal
import time

import pytest

from evolve.warm import zygote


@pytest.fixture(scope="module")
def warm(tmp_path_factory):
    path = zygote.ensure()
    pid = zygote.ping(path)
    yield path
    if zygote.ping(path) == pid:
        zygote.shutdown(path)
        for _ in range(50):
            if zygote.ping(path) is None:
                break
            time.sleep(0.1)


@pytest.mark.warm
def test_calls_run_in_fresh_children_with_reports(warm):
    reports = []
    first = zygote.call("tests.zygote_targets:identify", {"n": 3}, on_report=reports.append)
    second = zygote.call("tests.zygote_targets:identify", {"n": 0})
    assert first["pid"] != second["pid"] != zygote.ping(warm)
    assert first["parent"] == zygote.ping(warm)  # forked from the zygote itself
    assert reports == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert first["torch_loaded_before"] is True  # preloaded: no import in the child
    assert first["weight_table_built"] is True  # transformers' renaming table: no rank's save_pretrained builds it


@pytest.mark.warm
def test_state_a_child_changes_does_not_reach_the_next(warm):
    assert zygote.call("tests.zygote_targets:poison", {})["poisoned"] is True
    assert zygote.call("tests.zygote_targets:is_poisoned", {})["poisoned"] is False


@pytest.mark.warm
def test_failures_come_back_as_one_line(warm):
    with pytest.raises(zygote.ChildFailed, match=r"^ValueError: bad value 7$"):
        zygote.call("tests.zygote_targets:fail", {"x": 7})
    with pytest.raises(zygote.ChildFailed, match=r"ended without a result \(killed or crashed\)$"):
        zygote.call("tests.zygote_targets:die", {})


@pytest.mark.warm
def test_a_child_exits_when_its_caller_goes_away(warm, tmp_path):
    import json
    import socket

    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(warm))
    s.sendall((json.dumps({"op": "call", "secret": zygote.secret(warm), "fn": "tests.zygote_targets:sleep",
                          "kwargs": {"s": 60}}) + "\n").encode())
    pid = json.loads(s.makefile("r").readline())["pid"]
    s.close()
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        pytest.fail("the orphaned child kept running")


def _gone(pid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.warm
def test_a_call_past_its_time_out_is_killed_with_what_it_started(warm, tmp_path):
    pidfile = tmp_path / "pids"
    t0 = time.monotonic()
    with pytest.raises(zygote.ChildFailed, match=r"^killed after 2 s without finishing$"):
        zygote.call("tests.zygote_targets:spawn_and_sleep", {"s": 60, "pidfile": str(pidfile)},
                    timeout_s=2)
    assert time.monotonic() - t0 < 10
    pids = [int(p) for p in pidfile.read_text().split()]
    for pid in pids:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"process {pid} outlived its call's time-out")


@pytest.mark.warm
def test_a_cancelled_call_is_killed(warm, tmp_path):
    import threading

    cancel = threading.Event()
    threading.Timer(1.0, cancel.set).start()
    pidfile = tmp_path / "pids"
    with pytest.raises(zygote.ChildFailed, match=r"^cancelled$"):
        zygote.call("tests.zygote_targets:spawn_and_sleep", {"s": 60, "pidfile": str(pidfile)}, cancel=cancel)
    for pid in [int(p) for p in pidfile.read_text().split()]:
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)
            pytest.fail(f"process {pid} outlived its cancelled call")


def _ask(path, request: dict) -> dict:
    import json
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.sendall((json.dumps(request) + "\n").encode())
        return json.loads(s.makefile("r").readline())


@pytest.mark.warm
def test_the_zygote_serves_only_its_search_and_its_entry_points(warm):
    key = zygote.secret(warm)
    assert _ask(warm, {"op": "call", "fn": "evolve.rank.entry:run_rank", "kwargs": {}}) == {
        "error": "zygote: wrong secret: not this search's zygote"}
    assert _ask(warm, {"op": "call", "secret": "0" * 64, "fn": "tests.zygote_targets:identify"})["error"] == (
        "zygote: wrong secret: not this search's zygote")
    assert _ask(warm, {"op": "call", "secret": key, "fn": "os:system", "kwargs": {"command": "true"}}) == {
        "error": "zygote: 'os:system' is not an entry point"}
    assert _ask(warm, {"op": "call", "secret": key, "fn": "tests.zygote_targets:identify", "kwargs": {"n": 0},
                       "env": {"LD_PRELOAD": "/tmp/x.so"}}) == {
        "error": "zygote: environment variable 'LD_PRELOAD' may not be set"}
    assert _ask(warm, {"op": "shutdown"}) == {"error": "zygote: wrong secret: not this search's zygote"}
    assert zygote.ping(warm)  # still serving
    assert oct(os.stat(zygote.folder()).st_mode & 0o777) == "0o700"
    assert oct(os.stat(warm.with_suffix(".secret")).st_mode & 0o777) == "0o600"


@pytest.mark.warm
def test_each_search_has_its_own_zygote(warm):
    other = zygote.ensure(search="another-search")
    try:
        assert other != warm and zygote.ping(other) != zygote.ping(warm)
        assert zygote.secret(other) != zygote.secret(warm)
    finally:
        assert zygote.shutdown(search="another-search")
    for _ in range(50):
        if zygote.ping(other) is None:
            break
        time.sleep(0.1)
    assert zygote.ping(other) is None and zygote.ping(warm)  # the other search's stop left ours alone


@pytest.mark.unit
def test_the_code_digest_covers_the_whole_package_not_only_the_zygotes_folder(tmp_path):
    import shutil
    from pathlib import Path

    package = Path(zygote.__file__).resolve().parents[1]
    copy = tmp_path / "evolve"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    before = zygote.code_digest(copy)
    assert before == zygote.code_digest(copy) == zygote._code_digest()  # the package as installed
    entry = copy / "rank" / "entry.py"  # what the zygote's children run, in another folder than the zygote
    entry.write_text(entry.read_text() + "\n# changed\n")
    assert zygote.code_digest(copy) != before


def _zygotes_serving(path) -> list:
    """The pids of the zygote servers of `path`: processes naming it whose parent does not (not their children)."""
    import psutil

    named = {}
    for p in psutil.process_iter(["pid", "ppid", "cmdline"]):
        if str(path) in (p.info["cmdline"] or []):
            named[p.info["pid"]] = p.info["ppid"]
    return sorted(pid for pid, ppid in named.items() if ppid not in named)


@pytest.mark.warm
def test_a_zygote_started_ahead_is_the_one_ensure_finds_and_warming_stops_it():
    """`warming` starts the zygote in the background (the driver goes on to start Ray), `ensure` waits for that
    start rather than making a second zygote, and the block's end stops it."""
    with zygote.warming(search="started-ahead"):
        path = zygote.ensure(search="started-ahead")
        pid = zygote.ping(path)
        assert pid and _zygotes_serving(path) == [pid]  # one zygote: the one the background start made
    assert _wait_gone(path)


@pytest.mark.warm
def test_a_stop_while_the_zygote_still_starts_leaves_no_zygote_behind():
    """A search that fails right after its zygote began to start (Ray refused, say) stops it: the stop waits for
    the start instead of finding no socket and leaving a zygote to idle for ten minutes."""
    path = zygote.start(search="stopped-while-starting")
    assert zygote.shutdown(search="stopped-while-starting")  # it was there, once its start ended
    assert _wait_gone(path)


def _wait_gone(path) -> bool:
    """Whether the zygote of `path` stops answering and its process exits, within 10 s."""
    for _ in range(100):
        if zygote.ping(path) is None and not _zygotes_serving(path):
            return True
        time.sleep(0.1)
    return False
