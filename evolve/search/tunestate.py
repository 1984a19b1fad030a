"""Which trials Ray Tune runs again on a resume, and how the searcher's own count must change to match.

Tune saves the searcher's state and its experiment state one after the
other, and a bucket's mirror may hold the two from different moments. A
resume restores its trials from the newest experiment state file alone; the
searcher must then count as live exactly those, or it waits for a trial
that never comes back, or ignores one that does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

STATE_GLOB = "experiment_state-*.json"  # Tune resumes from the newest by name
DONE = "TERMINATED"  # evolve resumes unfinished and errored trials; only these stay ended


def newest_state(tune_dir: str | Path) -> Path | None:
    states = sorted(Path(tune_dir).glob(STATE_GLOB))
    return states[-1] if states else None


def trials_run_again(tune_dir: str | Path) -> dict[str, dict] | None:
    """Trial id -> {variant_id, confirm, seed} of each trial Tune will run again from `tune_dir`'s
    newest experiment state (checked as read).

    None when there is no state file. ValueError, naming the file, when it
    cannot be read or a trial's config lacks those fields.
    """
    path = newest_state(tune_dir)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
        again = {}
        for entry in data["trial_data"]:
            trial = json.loads(entry[0])
            if trial["status"] != DONE:
                cfg = trial["config"]
                if not isinstance(cfg["variant_id"], str):
                    raise TypeError(f"trial {trial['trial_id']}: variant_id is not a string")
                again[str(trial["trial_id"])] = {"variant_id": cfg["variant_id"], "confirm": bool(cfg.get("confirm")),
                                                 "seed": int(cfg.get("seed", 0))}
        return again
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ValueError(f"{path.name}: {type(e).__name__}: {' '.join(str(e).split())[:200]}") from None


@dataclass(frozen=True)
class Match:
    """How the searcher's live trials change to be Tune's (see `match`)."""

    adopt: dict[str, str]  # trial id -> variant id: a child trial Tune runs that the searcher did not count
    lose: dict[str, str]  # trial id -> variant id: a child trial the searcher counted that Tune never saved
    adopt_reruns: dict[str, tuple[str, int]]  # the same for confirmation re-runs: trial id -> (variant, seed)
    lose_reruns: dict[str, tuple[str, int]]


def match(live: dict[str, str], reruns: dict[str, tuple], again: dict[str, dict], recorded: set[str]) -> Match:
    """Compares the searcher's live trials (`live`, `reruns`) with those Tune runs again (`again`) (pure).

    A child trial whose variant is `recorded` is neither adopted nor lost:
    Tune's run of it reports the recorded result and ends.
    """
    adopt, adopt_reruns, running = {}, {}, set()
    for tid, cfg in again.items():
        vid = cfg["variant_id"]
        if cfg["confirm"]:
            if tid not in reruns:
                adopt_reruns[tid] = (vid, cfg["seed"])
        else:
            running.add(vid)
            if tid not in live and vid not in recorded:
                adopt[tid] = vid
    # a variant Tune runs under another trial id is not lost: it would be trained twice
    lose = {tid: vid for tid, vid in live.items() if tid not in again and vid not in recorded | running}
    lose_reruns = {tid: pair for tid, pair in reruns.items() if tid not in again}
    return Match(adopt, lose, adopt_reruns, lose_reruns)


def restored_configs(tuner):
    """A restored Tuner's TuneConfig and RunConfig, which Tune keeps in its state (`tuner.pkl`) and
    offers no other way to reach: a resumed search sets its verbosity, progress callback and
    concurrency on them. Returns (None, None) if this Ray keeps them elsewhere."""
    inner = getattr(tuner, "_local_tuner", None)
    return getattr(inner, "_tune_config", None), getattr(inner, "_run_config", None)


def restored_searcher(tuner):
    """A restored Tuner's searcher (see `restored_configs`), or None."""
    return getattr(restored_configs(tuner)[0], "search_alg", None)
