"""The search's progress line: what it says, its ETA, and when a plain log gets one (pure).

One line for the whole search, kept current by `evolve.search.display`:

    search   7/16 done, 2 running, 1 failed | best 2.2513 (e52a3353) | 3m12s, about 4m10s left
    confirming 3/6, 2 running | best 2.2513 (e52a3353) | 7m02s, about 1m05s left

On a terminal it is rewritten in place; in a plain log (CI, a job's log) it is
printed as a line of its own every few variants or every `PLAIN_EVERY_S`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

PLAIN_EVERY_S = 60.0  # a plain log's progress line at least this often while the state changes
PLAIN_LINES = 8  # ... and about this many over a phase, one every total/8 finished trials


@dataclass(frozen=True)
class Snapshot:
    """Where the search stands: the phase ("search" or "confirming") and its counts."""

    phase: str
    done: int
    total: int | None  # None: not known yet
    running: int
    failed: int = 0
    best: float | None = None
    best_id: str | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None


def duration(seconds: float) -> str:
    """`42s`, `3m05s`, `2h07m`: a duration in at most two units."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def eta(durations: list[float], left: int, running_elapsed: list[float], concurrent: int) -> float | None:
    """Seconds until `left` more trials finish, from the measured durations of finished ones.

    `left` counts the running trials too; each running trial is charged the mean
    duration less what it has run, each trial not started yet the whole mean, and
    the work is shared by `concurrent` slots. None before any trial has finished.
    """
    times = [d for d in durations if d is not None and math.isfinite(d) and d > 0]
    if left <= 0:
        return 0.0
    if not times:
        return None
    mean = sum(times) / len(times)
    running = sorted(running_elapsed, reverse=True)[:left]
    work = sum(max(mean - e, 0.0) for e in running) + (left - len(running)) * mean
    return work / max(1, min(concurrent, left))


def line(s: Snapshot) -> str:
    """The progress line for a snapshot (no control characters)."""
    total = "?" if s.total is None else str(s.total)
    if s.phase == "confirming":
        head = f"confirming {s.done}/{total}"
    else:
        head = f"search {s.done:>{len(total)}}/{total} done"
    parts = [head]
    if s.running:
        parts.append(f"{s.running} running")
    if s.failed:
        parts.append(f"{s.failed} failed")
    out = ", ".join(parts)
    if s.best is not None:
        out += f" | best {s.best:.4f}" + (f" ({s.best_id[:8]})" if s.best_id else "")
    out += f" | {duration(s.elapsed_s)}"
    if s.eta_s is not None and (s.total is None or s.done < s.total):
        out += f", about {duration(s.eta_s)} left"
    return out


def plain_due(last: Snapshot | None, now: Snapshot, since_s: float) -> bool:
    """Whether a plain log gets a progress line now: the first, a new phase, every total/8 trials
    finished, the phase's end, or `PLAIN_EVERY_S` since the last one when something changed."""
    if last is None or last.phase != now.phase:
        return True
    if now.done != last.done and (now.done == now.total or now.done - last.done >= max(1, (now.total or 0) // PLAIN_LINES)):
        return True
    changed = (now.done, now.running, now.failed, now.best) != (last.done, last.running, last.failed, last.best)
    return changed and since_s >= PLAIN_EVERY_S


def snapshot(results: list[dict], budget: int, best_id: str | None, confirm_total: int | None, confirm_left: int | None,
             running_elapsed: list[float], elapsed_s: float, concurrent: int) -> Snapshot:
    """The snapshot of a search from plain data: `results` (one {"status", "fitness", "trial_seconds"}
    per recorded variant), the budget, the best variant's id, the confirmation plan's size and how
    many of its re-runs are not finished (None before it is made), and how long each running trial
    has run."""
    measured = [r.get("trial_seconds") for r in results if r.get("status") == "completed"] or \
               [r.get("trial_seconds") for r in results]
    best = next((r for r in results if r.get("variant_id") == best_id), None) if best_id else None
    fitness = best.get("fitness") if best else None
    if confirm_left is not None:
        total = confirm_total
        done = max(0, (total or 0) - confirm_left) if total is not None else 0
        left = confirm_left
        phase = "confirming"
        failed = 0
    else:
        total, done, phase = budget, len(results), "search"
        left = max(0, budget - done)
        failed = sum(1 for r in results if r.get("status") == "failed")
    return Snapshot(phase=phase, done=done, total=total, running=len(running_elapsed), failed=failed,
                    best=fitness, best_id=best_id if fitness is not None else None, elapsed_s=elapsed_s,
                    eta_s=eta(measured, left, running_elapsed, concurrent))
