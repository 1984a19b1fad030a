import json
import math
import random

import pytest

from evolve.search.bandit import Bandit, BanditError, model_arms, reward

pytestmark = pytest.mark.unit


def test_reward_is_gain_per_million_tokens_in_the_objectives_direction():
    assert reward(2.0, 2.5, "completed", 500_000, "min") == pytest.approx(1.0)
    assert reward(0.8, 0.6, "completed", 2_000_000, "max") == pytest.approx(0.1)
    assert reward(2.6, 2.5, "completed", 1_000_000, "min") == 0.0  # worse than its parent: bought nothing
    assert reward(0.5, 0.6, "completed", 1_000_000, "max") == 0.0
    assert reward(None, 2.5, "failed", 300, "min") == 0.0
    assert reward(None, 2.5, "stopped", 300, "min") == 0.0
    assert reward(2.0, 2.5, "completed", 0, "min") == 0.0  # no tokens: no rate to speak of
    assert reward(float("nan"), 2.5, "completed", 1000, "min") == 0.0


def test_a_fresh_bandit_tries_every_arm_before_repeating_one():
    for policy in ("ucb", "thompson"):
        b = Bandit(policy, ["perturb", "crossover", "llm:a"])
        assert all(row["pulls"] == 0 and row["mean_reward"] is None for row in b.table())
    b = Bandit("ucb", ["perturb", "crossover", "llm:a"])
    rng = random.Random(0)
    seen = []
    for _ in range(3):  # concurrent draws, no reward in yet: each arm once
        arm = b.choose(rng)
        b.pull(arm)
        seen.append(arm)
    assert sorted(seen) == ["crossover", "llm:a", "perturb"]
    assert all(math.isfinite(b.ucb_index(a)) for a in seen)


def test_estimates_follow_the_rewards():
    b = Bandit("ucb", ["a", "b"])
    for v in (1.0, 3.0):
        b.pull("a")
        b.update("a", v)
    b.update("b", 0.0, pulled=False)
    assert b.mean("a") == 2.0 and b.mean("b") == 0.0
    assert b.arms["a"]["pending"] == 0 and b.arms["a"]["pulls"] == 2
    # pooled rewards 1, 3, 0: mean 4/3, sd sqrt(14/9)
    sd = math.sqrt((1 + 9 + 0) / 3 - (4 / 3) ** 2)
    assert b.ucb_index("a") == pytest.approx(2.0 + sd * math.sqrt(2 * math.log(3) / 2))
    assert b.ucb_index("b") == pytest.approx(0.0 + sd * math.sqrt(2 * math.log(3) / 1))
    t = Bandit("thompson", ["a", "b"])
    t.arms = {k: dict(v) for k, v in b.arms.items()}
    mu, s = t.posterior("a")
    assert mu == pytest.approx((4.0 + 4 / 3) / 3) and s == pytest.approx(sd / math.sqrt(3))
    assert t.estimate("b") == pytest.approx((0 + 4 / 3) / 2)


@pytest.mark.parametrize("policy", ["ucb", "thompson"])
def test_a_clearly_better_arm_wins_most_pulls(policy):
    rng, world = random.Random(7), random.Random(11)
    truth = {"perturb": 1.0, "crossover": 0.3, "llm:x": 3.0}
    b = Bandit(policy, truth)
    picks = []
    for _ in range(60):
        arm = b.choose(rng)
        b.pull(arm)
        b.update(arm, max(0.0, world.gauss(truth[arm], 0.5)))
        picks.append(arm)
    last = picks[20:]
    assert last.count("llm:x") >= 0.75 * len(last), (policy, {a: picks.count(a) for a in truth})
    assert b.mean("llm:x") > b.mean("perturb") > b.mean("crossover")


def test_ties_are_broken_by_the_rng_and_reproducibly():
    b = Bandit("ucb", ["a", "b", "c"])
    first = [Bandit("ucb", ["a", "b", "c"]).choose(random.Random(s)) for s in range(30)]
    assert set(first) == {"a", "b", "c"}  # no arm favoured by its position
    assert first == [b.choose(random.Random(s)) for s in range(30)]
    for arm in "abc":  # equal means, equal counts: equal indices, still a fair draw
        b.pull(arm)
        b.update(arm, 1.0)
    assert {b.choose(random.Random(s)) for s in range(30)} == {"a", "b", "c"}


def test_unknown_arms_and_bad_states_are_one_line_errors():
    b = Bandit("thompson", ["perturb"])
    with pytest.raises(BanditError, match=r"unknown arm 'merge' \(arms: perturb\)"):
        b.update("merge", 1.0)
    with pytest.raises(BanditError, match="unknown arm"):
        b.choose(random.Random(0), among=["hybrid"])
    with pytest.raises(BanditError, match="not a finite number"):
        b.update("perturb", float("inf"))
    b.add("merge")  # a new operator registers by name
    b.update("merge", 2.0, pulled=False)
    assert b.mean("merge") == 2.0
    with pytest.raises(BanditError, match="unknown policy 'greedy'"):
        Bandit("greedy")
    with pytest.raises(BanditError, match="no arm"):
        Bandit("ucb").choose(random.Random(0))
    for bad in ([], {"policy": "ucb"}, {"policy": "ucb", "arms": {"a": 3}},
                {"policy": "ucb", "arms": {"a": {"pulls": -1, "pending": 0, "sum": 0, "sumsq": 0}}},
                {"policy": "ucb", "arms": {"a": {"pulls": 1.5, "pending": 0, "sum": 0, "sumsq": 0}}},
                {"policy": "ucb", "arms": {"a": {"pulls": 1, "pending": 0, "sum": "x", "sumsq": 0}}}):
        with pytest.raises(BanditError) as e:
            Bandit.from_dict(bad)
        assert "\n" not in str(e.value)


def test_state_round_trips_through_json():
    b = Bandit("ucb", ["perturb", "crossover"])
    b.pull("perturb")
    b.update("perturb", 0.5)
    b.pull("crossover")
    data = json.loads(json.dumps(b.to_dict()))
    assert data["arms"]["crossover"]["estimate"] is not None and data["arms"]["crossover"]["pending"] == 1
    c = Bandit.from_dict(data)
    assert c.arms == b.arms and c.policy == "ucb"
    assert c.choose(random.Random(3)) == b.choose(random.Random(3))


def test_model_arms_name_each_drawable_model_once():
    entries = [{"model": "big", "weight": 1.0}, {"model": "small", "weight": 3.0},
               {"model": "big", "weight": 1.0}, {"model": "off", "weight": 0.0}]
    assert model_arms(entries) == {"llm:big#0": 0, "llm:small": 1, "llm:big#2": 2}
    assert model_arms([{"model": "m", "weight": 1.0}]) == {"llm:m": 0}


def test_the_spec_setting_is_off_by_default_and_checked(experiment):
    from evolve.spec import SpecError, load_spec

    assert load_spec(experiment).operator.bandit == "off"
    assert load_spec(experiment, ["operator.bandit=off"]).operator.bandit == "off"  # YAML's bare off is false
    assert load_spec(experiment, ["operator.bandit=thompson"]).operator.bandit == "thompson"
    for bad, shown in (("greedy", "'greedy'"), ("true", "True"), ("3", "3")):
        with pytest.raises(SpecError) as e:
            load_spec(experiment, [f"operator.bandit={bad}"])
        assert str(e.value).startswith("operator.bandit: ") and shown in str(e.value) and "\n" not in str(e.value)
