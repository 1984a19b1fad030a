"""The slot board's protocol: trials and relays meeting on an async actor (no training here)."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray

from evolve.spec import load_spec
from evolve.driver import init_ray
from evolve.trial.board import SlotBoard

pytestmark = pytest.mark.warm


@pytest.fixture(scope="module")
def board():
    started = not ray.is_initialized()
    if started:
        init_ray(load_spec(Path(__file__).parents[1] / "experiments" / "tiny_lm"), num_cpus=2)
    b = SlotBoard.remote(2, lease_s=1.0)
    ray.get([b.slot_up.remote(0), b.slot_up.remote(1)])
    yield b
    ray.kill(b)
    if started:
        ray.shutdown()


def g(ref):
    return ray.get(ref, timeout=30)


def test_a_job_runs_on_every_rank_and_streams_its_curve(board):
    slot = g(board.acquire.remote(5.0))
    job = {"id": "j1", "config": {}, "world": 2}
    g(board.put_job.remote(slot, job))
    assert g(board.take_job.remote(slot, 0, None, 1.0))["id"] == "j1"
    assert g(board.take_job.remote(slot, 1, None, 1.0))["id"] == "j1"
    assert g(board.take_job.remote(slot, 0, "j1", 0.2)) is None  # a rank never runs a job twice
    g(board.set_rendezvous.remote(slot, "j1", "127.0.0.1", 29500))
    assert tuple(g(board.get_rendezvous.remote(slot, "j1", 1.0))) == ("127.0.0.1", 29500)
    g(board.report.remote(slot, "j1", {"step": 1}))
    g(board.report.remote(slot, "j1", {"step": 2}))
    st = g(board.wait.remote(slot, "j1", 0, 1.0))
    assert st["reports"] == [{"step": 1}, {"step": 2}] and st["cursor"] == 2 and not st["done"]
    g(board.finish.remote(slot, "j1", 1, "RuntimeError: boom"))
    g(board.finish.remote(slot, "j1", 0, None))
    st = g(board.wait.remote(slot, "j1", 2, 1.0))
    assert st["done"] and st["errors"] == {1: "RuntimeError: boom"}
    g(board.release.remote(slot))


def test_cancel_and_release_reach_the_relays(board):
    slot = g(board.acquire.remote(5.0))
    g(board.put_job.remote(slot, {"id": "j2", "config": {}, "world": 1}))
    assert g(board.cancelled.remote(slot, "j2", 0.1)) is False
    g(board.cancel.remote(slot, "j2"))
    assert g(board.cancelled.remote(slot, "j2", 0.1)) is True
    g(board.put_job.remote(slot, {"id": "j3", "config": {}, "world": 1}))
    g(board.release.remote(slot))
    assert g(board.cancelled.remote(slot, "j3", 0.1)) is True  # the trial left: the job is over


def test_a_slot_whose_trial_died_is_taken_back(board):
    a = g(board.acquire.remote(5.0))
    b = g(board.acquire.remote(5.0))
    jobs = {a: "j4a", b: "j4b"}
    for slot, jid in jobs.items():
        g(board.put_job.remote(slot, {"id": jid, "config": {}, "world": 1}))
    t0 = time.monotonic()
    c = g(board.acquire.remote(10.0))  # both busy, neither trial polls: one frees after the lease
    assert c in (a, b) and time.monotonic() - t0 >= 0.9
    assert g(board.cancelled.remote(c, jobs[c], 0.1)) is True  # its relays drop the dead trial's job
    g(board.release.remote(a))
    g(board.release.remote(b))


def test_a_dead_worker_group_fails_its_job_and_shutdown_ends_relays(board):
    slot = g(board.acquire.remote(5.0))
    g(board.put_job.remote(slot, {"id": "j5", "config": {}, "world": 2}))
    g(board.finish.remote(slot, "j5", 0, None))
    g(board.slot_down.remote(slot, "ActorDiedError: worker 1"))
    st = g(board.wait.remote(slot, "j5", 0, 1.0))
    assert st["done"] and st["errors"] == {1: "lost: the training worker group stopped: ActorDiedError: worker 1"}
    g(board.release.remote(slot))
    other = 1 - slot
    assert g(board.acquire.remote(0.5)) == other  # a slot that is down is never handed out
    g(board.release.remote(other))
    g(board.slot_up.remote(slot))
    g(board.shutdown.remote())
    assert g(board.take_job.remote(slot, 0, None, 1.0)) == "shutdown"


def test_the_boards_module_imports_no_ray_train():
    """Ray starts the board's process by importing its module; Ray Train would bring Ray Data, pyarrow and pandas
    with it (about 3 CPU-s to start instead of 1)."""
    heavy = ("ray.train", "ray.data", "pyarrow", "pandas")
    code = f"import sys, {{}}; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    board = subprocess.run([sys.executable, "-c", code.format("evolve.trial.board")], capture_output=True, text=True)
    assert board.returncode == 0 and board.stdout.strip() == "[]", board.stderr[-2000:]
    slots = subprocess.run([sys.executable, "-c", code.format("evolve.trial.slots")], capture_output=True, text=True)
    assert slots.stdout.strip() == str(sorted(heavy)), slots.stderr[-2000:]  # the check sees them when they are there
