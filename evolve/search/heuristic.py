"""The heuristic operator: numeric perturbation, categorical flips, crossover.

Both functions are pure: given settings text, an RNG and the policy (a
`Heuristic` spec section), they return the child's text and a record of
exactly what changed. The record is stored in the lineage.
"""

from __future__ import annotations

import random

from evolve.search.yamledit import flatten, load, set_value
from evolve.spec import Heuristic

LOG_FACTORS = (0.5, 0.7, 1.4, 2.0)  # multiplicative steps for rates and scales
LINEAR_STEP = 0.2  # fraction of the bounds' width (or of the value) per step


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def mutable_keys(settings: dict, policy: Heuristic) -> list[str]:
    """Returns the keys the operator may change, sorted."""
    flat = flatten(settings)
    keys = []
    for key, value in flat.items():
        if key in policy.frozen:
            continue
        if key in policy.choices or isinstance(value, bool) or _is_number(value):
            keys.append(key)
    return sorted(keys)


def _clip(key: str, value, policy: Heuristic):
    if key in policy.bounds:
        lo, hi = policy.bounds[key]
        value = min(max(value, lo), hi)
    return value


def perturb_value(rng: random.Random, key: str, value, policy: Heuristic):
    """Returns a new value for `key`, different from `value` where possible."""
    if key in policy.choices:
        others = [c for c in policy.choices[key] if c != value]
        return rng.choice(others)
    if isinstance(value, bool):
        return not value
    log = key in policy.log_scale
    if isinstance(value, int):
        if log and value > 0:
            new = max(1, round(value * rng.choice(LOG_FACTORS)))
        else:
            step = max(1, round(abs(value) * LINEAR_STEP))
            new = value + rng.choice((-step, step))
        new = int(_clip(key, new, policy))
        return new if new != value else int(_clip(key, value + (1 if new <= value else -1), policy))
    if log and value > 0:
        new = value * rng.choice(LOG_FACTORS)
    elif key in policy.bounds:
        lo, hi = policy.bounds[key]
        new = value + rng.uniform(-1, 1) * LINEAR_STEP * (hi - lo)
    else:
        new = value + rng.uniform(-1, 1) * LINEAR_STEP * (abs(value) or 1.0)
    new = float(_clip(key, new, policy))
    return float(f"{new:.4g}")  # four significant digits: readable diffs


def perturb(rng: random.Random, text: str, policy: Heuristic) -> tuple[str, dict]:
    """Returns (child text, record) with up to `policy.mutations` keys changed."""
    settings = load(text) or {}
    keys = mutable_keys(settings, policy)
    if not keys:
        raise ValueError(f"{policy.file}: no key the heuristic operator may change")
    flat = flatten(settings)
    chosen = rng.sample(keys, min(policy.mutations, len(keys)))
    chosen = chosen[: rng.randint(1, len(chosen))]
    changes = []
    for key in sorted(chosen):
        old = flat[key]
        new = perturb_value(rng, key, old, policy)
        if new == old:
            continue
        text = set_value(text, key, new)
        changes.append({"key": key, "from": old, "to": new})
    summary = ", ".join(f"{c['key']} {c['from']!r} -> {c['to']!r}" for c in changes)
    return text, {"kind": "perturb", "file": policy.file, "changes": changes,
                  "rationale": f"perturbed {summary}" if changes else "no change"}


def crossover(rng: random.Random, text_a: str, text_b: str,
              policy: Heuristic) -> tuple[str, dict]:
    """Returns (child text, record): parent A's file with a uniform mix of B's values.

    Only keys both parents hold and the operator may change are mixed; each
    is taken from B with probability 1/2.
    """
    a = flatten(load(text_a) or {})
    b = flatten(load(text_b) or {})
    keys = [k for k in mutable_keys(load(text_a) or {}, policy) if k in b]
    changes = []
    for key in keys:
        if a[key] != b[key] and rng.random() < 0.5:
            text_a = set_value(text_a, key, b[key])
            changes.append({"key": key, "from": a[key], "to": b[key]})
    summary = ", ".join(f"{c['key']} from B ({c['to']!r})" for c in changes)
    return text_a, {"kind": "crossover", "file": policy.file, "changes": changes,
                    "rationale": f"crossed over {summary}" if changes else "parents agree"}

