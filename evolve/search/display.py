"""The search's progress display: a Ray Tune callback that keeps `evolve.progress`'s line current.

`Display` writes the line: on a terminal it rewrites it in place (and clears it
before each of evolve's own lines, so those stay whole); elsewhere it prints a
plain line now and then, with no control characters. `ProgressCallback` feeds
it from the searcher's counts and Tune's running trials, on Tune's loop.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time

from ray.tune import Callback

from evolve import progress

REDRAW_S = 1.0  # a terminal's line is redrawn at most this often


def is_terminal(stream) -> bool:
    """Whether `stream` is a terminal that understands a carriage return and erase-to-end."""
    try:
        return stream.isatty() and os.environ.get("TERM", "") != "dumb"
    except (AttributeError, ValueError):
        return False


class Display:
    """Writes the progress line to `stream` (default stdout), in place on a terminal."""

    def __init__(self, stream=None, terminal: bool | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.terminal = is_terminal(self.stream) if terminal is None else terminal
        self.shown = False  # a terminal's line is on screen (the cursor at its end)
        self.last: progress.Snapshot | None = None
        self.last_at = 0.0

    def show(self, snap: progress.Snapshot, now: float, force: bool = False) -> None:
        if self.terminal:
            if force or snap != self.last or now - self.last_at >= REDRAW_S:
                self._write("\r" + progress.line(snap) + "\x1b[K")
                self.shown = True
        elif force or progress.plain_due(self.last, snap, now - self.last_at):
            key = lambda x: (x.phase, x.done, x.failed, x.best)  # noqa: E731
            if force and self.last is not None and key(self.last) == key(snap):
                return  # nothing new to say at the end
            self._write(progress.line(snap) + "\n")
        else:
            return
        self.last, self.last_at = snap, now

    def wrap(self, log):
        """Returns `log` that first takes the terminal's progress line off the screen."""
        def log_line(text: str) -> None:
            self.clear()
            log(text)
        return log_line

    def clear(self) -> None:
        if self.shown:
            self._write("\r\x1b[K")
            self.shown = False

    def close(self) -> None:
        """Leaves the terminal's last line on screen, the cursor on the next."""
        if self.shown:
            self._write("\n")
            self.shown = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken output: the search goes on without it
            pass


class ProgressCallback(Callback):
    """Tune callback: reads the searcher's counts on Tune's loop and shows them.

    It holds the searcher (the driver's own object; Tune calls both from the same
    loop). Pickled with Tune's state it keeps nothing: a resumed search is given
    a fresh one."""

    def __init__(self, searcher, concurrent: int, display: Display):
        self.searcher = searcher
        self.concurrent = concurrent
        self.display = display
        self.started: dict[str, float] = {}  # Tune's trial id -> when it started here
        self.t0 = time.time()
        self.ticked = 0.0

    def __getstate__(self):
        return {"dead": True}  # the searcher, the output and the clock belong to this driver only

    def on_trial_start(self, iteration, trials, trial, **info):
        if self.__dict__.get("dead"):
            return
        self.started[trial.trial_id] = time.time()
        self._tick(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trials, trial)

    def on_step_end(self, iteration, trials, **info):
        if self.__dict__.get("dead"):
            return
        now = time.time()
        if now - self.ticked >= REDRAW_S / 2:
            self._tick(trials)

    def on_experiment_end(self, trials, **info):
        if self.__dict__.get("dead"):
            return
        self._tick(trials, force=True)
        self.display.close()

    def _end(self, trials, trial):
        if self.__dict__.get("dead"):
            return
        self.started.pop(trial.trial_id, None)
        self._tick(trials)

    def _tick(self, trials, force: bool = False) -> None:
        now = self.ticked = time.time()
        self.display.show(self.snapshot(trials, now), now, force=force)

    def snapshot(self, trials, now: float) -> progress.Snapshot:
        s = self.searcher
        running = [now - self.started.get(t.trial_id, now) for t in trials if t.status == "RUNNING"]
        plan = getattr(s, "confirm_plan", None)
        left = None if plan is None else len(plan) + len(s.confirm_live)
        results = [{"variant_id": v, **r} for v, r in s.results.items()]
        return progress.snapshot(results, s.spec.budget.trials, s.best_id(), getattr(s, "confirm_total", None),
                                 left, running, now - self.t0, self.concurrent)


@contextlib.contextmanager
def tune_output(verbose: int):
    """Around a Tune run: with `verbose` 0, Tune's output engine that prints nothing at verbosity 0.

    Ray Tune's newer engine prints its experiment header, the TensorBoard hint and,
    on error, the trial tables whatever the verbosity; its older one, which
    `RAY_AIR_NEW_OUTPUT=0` selects, prints nothing at 0 but the errors it logs.
    The variable is read when the run starts, and put back after it."""
    if verbose:
        yield
        return
    old = os.environ.get("RAY_AIR_NEW_OUTPUT")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("RAY_AIR_NEW_OUTPUT", None)
        else:
            os.environ["RAY_AIR_NEW_OUTPUT"] = old
