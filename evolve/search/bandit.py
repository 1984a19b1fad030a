"""A multi-armed bandit over the operators that write children (pure).

Each arm is a way to make a child, by name: the heuristic operator's
`perturb` and `crossover`, and with an LLM operator one arm per model
(`llm:<model>`). Other operators register by name with `add`. A child's
reward is the improvement it bought over its parent per million tokens it
trained (`reward`); `choose` draws the next arm by UCB1 or by Gaussian
Thompson sampling, `pull` marks an arm's child as training, `update` takes
in its reward. The state is plain data (`to_dict` / `from_dict`).
"""

from __future__ import annotations

import math
import random

POLICIES = ("ucb", "thompson")


class BanditError(ValueError):
    """A bad arm name or a bad saved state; the message is one line."""


def reward(child_fitness, parent_fitness, status: str, tokens, mode: str) -> float:
    """The improvement a child bought over its parent, per million tokens its trial trained.

    `mode` is the objective's ("min" or "max"). A child that failed, was
    stopped or did worse than its parent bought no improvement: 0 (a worse
    child is not scored below a failed one: both bought nothing).
    """
    if status != "completed" or not _finite(child_fitness) or not _finite(parent_fitness):
        return 0.0
    if not _finite(tokens) or tokens <= 0:
        return 0.0
    gain = parent_fitness - child_fitness if mode == "min" else child_fitness - parent_fitness
    return max(gain, 0.0) / (tokens / 1e6)


def model_arms(entries: list[dict]) -> dict[str, int]:
    """Arm name -> model entry index, one per model that may be drawn (weight above 0).

    Named `llm:<model>`; a model listed twice (e.g. at two endpoints) gets
    `#<index>` appended to each of its names.
    """
    names = [e["model"] for e in entries]
    out = {}
    for i, e in enumerate(entries):
        if e["weight"] > 0:
            out[f"llm:{e['model']}" + (f"#{i}" if names.count(e["model"]) > 1 else "")] = i
    return out


class Bandit:
    """Arms by name; per arm the rewards seen (count, sum, sum of squares) and children still training."""

    def __init__(self, policy: str, arms=()):
        if policy not in POLICIES:
            raise BanditError(f"bandit: unknown policy {policy!r} (available: {', '.join(POLICIES)})")
        self.policy = policy
        self.arms: dict[str, dict] = {}
        for arm in arms:
            self.add(arm)

    def add(self, arm: str) -> None:
        """Registers an arm (a no-op for a known one)."""
        if not isinstance(arm, str) or not arm:
            raise BanditError(f"bandit: an arm is named by a non-empty string, got {arm!r}")
        self.arms.setdefault(arm, {"pulls": 0, "pending": 0, "sum": 0.0, "sumsq": 0.0})

    def _arm(self, arm: str) -> dict:
        if arm not in self.arms:
            raise BanditError(f"bandit: unknown arm {arm!r} (arms: {', '.join(self.arms) or 'none'})")
        return self.arms[arm]

    # -- drawing --------------------------------------------------------------------------
    def choose(self, rng: random.Random, among=None) -> str:
        """Returns the arm to pull next (of `among`, default all); ties are broken by `rng`."""
        names = list(self.arms) if among is None else list(among)
        if not names:
            raise BanditError("bandit: no arm to choose from")
        for name in names:
            self._arm(name)
        if self.policy == "ucb":
            scores = [self.ucb_index(n) for n in names]
        else:
            scores = [self._sample(rng, n) for n in names]
        top = max(scores)
        tied = [n for n, s in zip(names, scores) if s == top]
        return tied[0] if len(tied) == 1 else rng.choice(sorted(tied))

    def pull(self, arm: str) -> None:
        """Notes that a child of `arm` is training (its reward is not in yet)."""
        self._arm(arm)["pending"] += 1

    def update(self, arm: str, value: float, pulled: bool = True) -> None:
        """Takes in one reward of `arm`; `pulled`: it answers a `pull` (no longer pending)."""
        a = self._arm(arm)
        if not _finite(value):
            raise BanditError(f"bandit: reward of {arm!r} is {value!r}, not a finite number")
        a["pulls"] += 1
        a["sum"] += float(value)
        a["sumsq"] += float(value) ** 2
        if pulled and a["pending"] > 0:
            a["pending"] -= 1

    def set_pending(self, counts) -> None:
        """Sets each arm's children still training from `counts` (arm -> n; other names ignored), e.g. after a resume."""
        for name, a in self.arms.items():
            a["pending"] = int(counts.get(name, 0))

    # -- estimates ----------------------------------------------------------------------
    def mean(self, arm: str) -> float | None:
        """The mean reward of `arm`, None before its first."""
        a = self._arm(arm)
        return a["sum"] / a["pulls"] if a["pulls"] else None

    def _pooled(self) -> tuple[float, float, int]:
        """(mean, standard deviation, count) of every reward seen, over all arms."""
        n = sum(a["pulls"] for a in self.arms.values())
        if not n:
            return 0.0, 1.0, 0
        s = sum(a["sum"] for a in self.arms.values())
        ss = sum(a["sumsq"] for a in self.arms.values())
        m = s / n
        var = max(ss / n - m * m, 0.0)
        sd = math.sqrt(var) if var > 0 else (abs(m) or 1.0)  # one value, or all equal: its own size
        return m, sd, n

    def ucb_index(self, arm: str) -> float:
        """UCB1: the arm's mean plus sqrt(2 ln N / n), scaled by the pooled rewards' spread.

        n counts the arm's rewards and its children still training, so
        concurrent draws spread out before their results are in; an arm
        with neither is infinite (tried first). An arm with only children
        training takes the pooled mean as its own.
        """
        a = self._arm(arm)
        n = a["pulls"] + a["pending"]
        if n == 0:
            return math.inf
        pooled_mean, sd, _ = self._pooled()
        total = sum(x["pulls"] + x["pending"] for x in self.arms.values())
        mean = a["sum"] / a["pulls"] if a["pulls"] else pooled_mean
        return mean + sd * math.sqrt(2.0 * math.log(max(total, 1)) / n)

    def posterior(self, arm: str) -> tuple[float, float]:
        """Thompson sampling's Gaussian for the arm's mean reward: (mean, sd).

        The prior is one pseudo-reward at the pooled mean; the spread is the
        pooled rewards' standard deviation over sqrt(n + 1).
        """
        a = self._arm(arm)
        pooled_mean, sd, _ = self._pooled()
        return (a["sum"] + pooled_mean) / (a["pulls"] + 1), sd / math.sqrt(a["pulls"] + 1)

    def _sample(self, rng: random.Random, arm: str) -> float:
        mu, sd = self.posterior(arm)
        return rng.gauss(mu, sd)

    def estimate(self, arm: str) -> float:
        """What the policy ranks the arm by now: UCB's index, or Thompson's posterior mean."""
        return self.ucb_index(arm) if self.policy == "ucb" else self.posterior(arm)[0]

    def table(self) -> list[dict]:
        """One row per arm: name, pulls, pending, mean reward, current estimate."""
        return [{"arm": name, "pulls": a["pulls"], "pending": a["pending"], "mean_reward": self.mean(name),
                 "estimate": self.estimate(name)} for name, a in self.arms.items()]

    # -- plain data ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The state, with each arm's current estimate (for readers; `from_dict` ignores it)."""
        out = {"policy": self.policy, "arms": {n: dict(a) for n, a in self.arms.items()}}
        for row in self.table():
            est = row["estimate"]
            out["arms"][row["arm"]]["estimate"] = est if math.isfinite(est) else None
        return out

    @classmethod
    def from_dict(cls, data) -> "Bandit":
        """Rebuilds a bandit from `to_dict`'s output; raises BanditError naming what is wrong."""
        if not isinstance(data, dict) or not isinstance(data.get("arms"), dict):
            raise BanditError("bandit: expected a mapping with 'policy' and 'arms'")
        b = cls(data.get("policy"))
        for name, a in data["arms"].items():
            if not isinstance(a, dict):
                raise BanditError(f"bandit: arm {name!r}: expected a mapping, got {a!r}")
            b.add(name)
            for key, kind in (("pulls", int), ("pending", int), ("sum", float), ("sumsq", float)):
                v = a.get(key)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v) or v < 0 and kind is int:
                    raise BanditError(f"bandit: arm {name!r}: {key} is {v!r}, not a number of the right kind")
                if kind is int and v != int(v):
                    raise BanditError(f"bandit: arm {name!r}: {key} is {v!r}, not a whole number")
                b.arms[name][key] = kind(v)
        return b


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
