"""Hybrid search, the pure part: the numbers a code variant's tuning trials sample, and their bookkeeping.

With `operator.kind: hybrid` the LLM (or, with no endpoint, the heuristic
operator) writes a *code variant*; a classical optimiser then tunes its
numbers over `operator.hybrid_trials` trials, the code variant as written
being the first. The space is the one the classical baselines search (the
heuristic operator's `choices`, `bounds` and booleans, log-uniform for
`log_scale` keys) plus the ranges the agent declared in its reply's
TUNABLE block, which override the spec's for the same key. A dimension is
plain data: ("float" | "int", low, high, log) or ("choice", values).
Optuna itself is reached only through `evolve.search.studies`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from evolve.search.heuristic import mutable_keys
from evolve.search.yamledit import flatten, load, set_value
from evolve.spec import Heuristic


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def tuning_space(text: str, policy: Heuristic, tunable: dict | None = None) -> dict[str, tuple]:
    """Returns {key: dimension} of the settings text `text`: the spec's space, then the agent's declared ranges."""
    settings = load(text) or {}
    flat = flatten(settings) if isinstance(settings, dict) else {}
    space = {}
    for key in mutable_keys(settings, policy) if isinstance(settings, dict) else []:
        value = flat[key]
        if key in policy.choices:
            space[key] = ("choice", tuple(policy.choices[key]))
        elif isinstance(value, bool):
            space[key] = ("choice", (True, False))
        elif key in policy.bounds:
            lo, hi = policy.bounds[key]
            log = key in policy.log_scale
            if isinstance(value, int):
                lo, hi = int(math.ceil(lo)), int(math.floor(hi))
                space[key] = ("int", max(1, lo) if log else lo, hi, log)
            else:
                space[key] = ("float", float(lo), float(hi), log and lo > 0)
    for key, (lo, hi, log) in (tunable or {}).items():
        if _number(flat.get(key)):  # checked against the file when the reply was accepted
            kind = "int" if isinstance(flat[key], int) else "float"
            space[key] = (kind, int(lo) if kind == "int" else float(lo), int(hi) if kind == "int" else float(hi),
                          bool(log))
    return {k: d for k, d in sorted(space.items()) if d[0] == "choice" or d[1] < d[2]}


def current_values(text: str, space: dict) -> dict:
    """Returns the values the settings text holds for the keys of `space`."""
    flat = flatten(load(text) or {})
    return {k: flat[k] for k in space if k in flat}


def within(space: dict, values: dict) -> bool:
    """True when `values` names every key of `space` and each value lies inside its dimension."""
    for key, dim in space.items():
        if key not in values:
            return False
        v = values[key]
        if dim[0] == "choice":
            if v not in dim[1] or isinstance(v, bool) != any(isinstance(c, bool) and c == v for c in dim[1]):
                return False
        elif not _number(v) or not dim[1] <= v <= dim[2] or (dim[0] == "int" and v != int(v)):
            return False
    return True


def written(values: dict) -> dict:
    """Returns `values` as they are written into a settings file: floats to four significant digits."""
    return {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in sorted(values.items())}


def settings_text(text: str, values: dict) -> str:
    """Returns the settings YAML `text` with `values` written in place (comments kept; floats as `written`)."""
    for key, v in written(values).items():
        text = set_value(text, key, v)
    return text


def startup_trials(target: int) -> int:
    """Random trials before the model-based sampler takes over: half a code variant's samples, 1 to 10."""
    return max(1, min(10, (target - 1) // 2))


@dataclass
class Tuning:
    """One code variant's tuning: its space, its Optuna study, and which trials are out and back."""

    code_variant: str
    space: dict
    target: int  # trials in all, the code variant as written included
    study: object = None  # an Optuna study (pickled with the searcher's state), None for an empty space
    asked: int = 1  # trials suggested so far: the code variant's own counts
    done: int = 0  # trials recorded
    trials: list = field(default_factory=list)  # variant ids, the code variant first
    numbers: dict = field(default_factory=dict)  # variant id -> Optuna trial number, until told
    exhausted: bool = False  # no new settings could be drawn: the trials out are the last
    duplicates: int = 0  # draws that named a variant trained before
    best: str | None = None  # set when it finished: the best trial's variant id (None: every trial failed)

    def to_ask(self) -> bool:
        return self.study is not None and not self.exhausted and self.asked < self.target

    def finished(self) -> bool:
        return not self.to_ask() and self.done >= self.asked
