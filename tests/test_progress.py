"""The search's progress line: its text, its ETA, when a plain log gets one, and a whole search's output."""

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from evolve import progress
from evolve.progress import Snapshot

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # anything but tab and newline


@pytest.mark.unit
def test_durations_read_in_two_units_at_most():
    assert [progress.duration(s) for s in (0, 42.4, 60, 185, 3599, 7620)] == \
        ["0s", "42s", "1m00s", "3m05s", "59m59s", "2h07m"]


@pytest.mark.unit
def test_eta_charges_running_trials_what_they_have_left_and_shares_the_work_among_the_slots():
    # mean 60 s; two running for 20 s and 50 s: 40 + 10 left; two not started: 120; over 2 slots
    assert progress.eta([50, 70], 4, [20, 50], 2) == pytest.approx((40 + 10 + 120) / 2)
    assert progress.eta([50, 70], 1, [90], 2) == 0.0  # overdue: nothing charged, not negative
    assert progress.eta([], 3, [5], 2) is None  # nothing measured yet
    assert progress.eta([10, float("nan"), None], 0, [], 2) == 0.0
    assert progress.eta([30, None], 3, [], 8) == pytest.approx(30.0)  # 3 at once on 8 slots: one trial's time


@pytest.mark.unit
def test_the_line_names_the_phase_counts_best_and_times():
    s = Snapshot("search", 7, 16, 2, failed=1, best=2.25134, best_id="e52a3353abcdef", elapsed_s=192, eta_s=250)
    assert progress.line(s) == "search  7/16 done, 2 running, 1 failed | best 2.2513 (e52a3353) | 3m12s, about 4m10s left"
    c = Snapshot("confirming", 3, 6, 2, best=2.2513, best_id="e52a3353", elapsed_s=422, eta_s=65)
    assert progress.line(c) == "confirming 3/6, 2 running | best 2.2513 (e52a3353) | 7m02s, about 1m05s left"
    assert progress.line(Snapshot("search", 0, 4, 0, elapsed_s=3)) == "search 0/4 done | 3s"
    assert progress.line(Snapshot("confirming", 4, 4, 0, eta_s=0.0)) == "confirming 4/4 | 0s"  # done: no ETA
    assert progress.line(Snapshot("confirming", 1, None, 1)).startswith("confirming 1/?, 1 running")


@pytest.mark.unit
def test_a_snapshot_from_the_searchers_counts():
    results = [{"variant_id": "a" * 12, "status": "completed", "fitness": 3.0, "trial_seconds": 40.0},
               {"variant_id": "b" * 12, "status": "failed", "fitness": None, "trial_seconds": 2.0},
               {"variant_id": "c" * 12, "status": "completed", "fitness": 2.5, "trial_seconds": 60.0}]
    s = progress.snapshot(results, 16, "c" * 12, None, None, [10.0, 30.0], 100.0, 2)
    assert (s.phase, s.done, s.total, s.running, s.failed, s.best, s.best_id) == ("search", 3, 16, 2, 1, 2.5, "c" * 12)
    # the failed trial's 2 s are no measure of a trial: mean 50; 40 + 20 for the running, 11 x 50 to start
    assert s.eta_s == pytest.approx((40 + 20 + 11 * 50) / 2)
    c = progress.snapshot(results, 3, "c" * 12, 6, 4, [5.0], 300.0, 2)
    assert (c.phase, c.done, c.total, c.failed) == ("confirming", 2, 6, 0)
    assert progress.snapshot([], 4, None, None, None, [], 1.0, 2).best is None


@pytest.mark.unit
def test_a_plain_log_gets_a_line_at_the_start_each_phase_every_eighth_and_the_end_or_after_a_while():
    first = Snapshot("search", 0, 16, 2)
    assert progress.plain_due(None, first, 0.0)
    assert not progress.plain_due(first, Snapshot("search", 1, 16, 2), 5.0)  # 16 / 8: every 2nd variant
    assert progress.plain_due(first, Snapshot("search", 2, 16, 2), 5.0)
    assert progress.plain_due(Snapshot("search", 15, 16, 1), Snapshot("search", 16, 16, 0), 1.0)  # the end
    assert progress.plain_due(Snapshot("search", 16, 16, 0), Snapshot("confirming", 0, 6, 2), 1.0)  # a phase
    assert not progress.plain_due(first, Snapshot("search", 0, 16, 2, elapsed_s=500), progress.PLAIN_EVERY_S + 1)
    assert progress.plain_due(first, Snapshot("search", 1, 16, 2), progress.PLAIN_EVERY_S + 1)


@pytest.mark.unit
def test_the_display_rewrites_in_place_on_a_terminal_and_prints_plain_lines_elsewhere():
    from evolve.search.display import Display

    out = io.StringIO()
    tty = Display(out, terminal=True)
    tty.show(Snapshot("search", 0, 4, 1), 0.0)
    tty.wrap(lambda text: out.write(text + "\n"))("[  1/4] abc")
    tty.show(Snapshot("search", 1, 4, 1), 1.0)
    tty.close()
    assert out.getvalue() == ("\rsearch 0/4 done, 1 running | 0s\x1b[K\r\x1b[K[  1/4] abc\n"
                              "\rsearch 1/4 done, 1 running | 0s\x1b[K\n")
    out = io.StringIO()
    plain = Display(out, terminal=False)
    lines = []
    plain.show(Snapshot("search", 0, 4, 1), 0.0)
    plain.wrap(lines.append)("[  1/4] abc")
    plain.show(Snapshot("search", 0, 4, 2), 1.0)  # nothing to say yet
    plain.show(Snapshot("search", 1, 4, 1), 2.0)
    plain.show(Snapshot("search", 1, 4, 0), 3.0, force=True)  # the end, nothing new
    plain.close()
    assert lines == ["[  1/4] abc"]
    assert out.getvalue() == "search 0/4 done, 1 running | 0s\nsearch 1/4 done, 1 running | 0s\n"
    assert not CONTROL.search(out.getvalue())


# -- a whole search's output, as `evolve run` prints it into a pipe ------------------------------------------

SMALL = ["budget.trials=4", "budget.concurrent=2", "budget.train_tokens=8192", "trial.report_every=2",
         "confirm.top=1", "confirm.seeds=2"]


def evolve_run(experiment, run_dir, overrides=(), flags=()):
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "evolve.cli", "run", str(experiment), *SMALL, *overrides,
                           "--run-dir", str(run_dir), *flags], env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.search
def test_a_small_search_prints_a_few_plain_lines_per_variant(experiment, tmp_path):
    out = evolve_run(experiment, tmp_path / "run")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    text = out.stdout + out.stderr
    lines = text.splitlines()
    assert not CONTROL.search(text), [ln for ln in lines if CONTROL.search(ln)][:3]  # no \r, no ANSI escapes
    assert any(ln.startswith("ray: started a local cluster at 127.0.0.1:") for ln in lines), text  # the default
    finished = [ln for ln in lines if re.match(r"\[ +\d/4\] [0-9a-f]{8} <- ", ln)]
    reruns = [ln for ln in lines if ln.startswith("[confirm] ")]
    assert len(finished) == 4 and all("| best " in ln for ln in finished), text
    assert reruns and all("heldout_loss" in ln for ln in reruns), text
    assert any(re.match(r"search 4/4 done", ln) for ln in lines), text
    assert any(re.match(rf"confirming \d/{len(reruns)}", ln) for ln in lines), text
    # a header of a few lines, at most 3 lines per trial (variant or re-run), a few summary lines
    assert len(lines) <= 6 + 3 * (4 + len(reruns)) + 12, text
    for noise in ("Number of trials", "tensorboard", "Token authentication", "Trial status", "started with configuration"):
        assert noise not in text, noise


@pytest.mark.search
def test_verbose_brings_tunes_tables_back(experiment, tmp_path):
    out = evolve_run(experiment, tmp_path / "run", ["confirm.top=0", "budget.trials=2"], ["--verbose"])
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Trial status:" in out.stdout and "Number of trials" in out.stdout, out.stdout[-3000:]
    assert len(re.findall(r"^\[ +\d/2\] ", out.stdout, re.M)) == 2  # evolve's own lines as well
    assert not re.search(r"^search \d/2 done", out.stdout, re.M)  # and no progress line among Tune's
