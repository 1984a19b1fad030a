import math
import random

import pytest

from evolve.search import selection as pop

pytestmark = pytest.mark.unit


def test_score_orients_and_fails_to_minus_inf():
    assert pop.score(2.0, "min") == -2.0
    assert pop.score(2.0, "max") == 2.0
    assert pop.score(None, "min") == -math.inf
    assert pop.score(float("nan"), "max") == -math.inf


def test_tournament_returns_best_of_the_drawn():
    members = [("a", 1.0), ("b", 5.0), ("c", 3.0)]
    assert pop.tournament(random.Random(0), members, k=3) == "b"
    # k=1 is uniform: every member is drawn sometimes
    rng = random.Random(1)
    assert {pop.tournament(rng, members, 1) for _ in range(50)} == {"a", "b", "c"}
    with pytest.raises(ValueError):
        pop.tournament(rng, [], 2)


def test_tournament_is_deterministic_for_a_seed():
    members = [(str(i), float(i % 7)) for i in range(40)]
    rng = random.Random(42)  # one generator across the draws, as the searcher keeps one
    picks = [pop.tournament(rng, members, 3) for _ in range(30)]
    again = random.Random(42)
    assert [pop.tournament(again, members, 3) for _ in range(30)] == picks  # the seed pins the whole sequence
    assert len(set(picks)) > 1  # each draw is a new one, not the first again
    other = random.Random(43)
    assert [pop.tournament(other, members, 3) for _ in range(30)] != picks  # and another seed another sequence
    # each pick is the best of the three members the generator drew, the first drawn on a tie
    replay = random.Random(42)
    for pick in picks:
        drawn = replay.sample(members, 3)
        assert pick == max(drawn, key=lambda m: m[1])[0]


def test_select_parents_distinct():
    members = [("a", 1.0), ("b", 2.0)]
    assert sorted(pop.select_parents(random.Random(0), members, 2, 2)) == ["a", "b"]
    assert pop.select_parents(random.Random(0), members[:1], 2, 2) == ["a"]


def test_migrations_ring_of_bests():
    islands = [["a", "b"], ["c"], ["d"]]
    scores = {"a": 1.0, "b": 2.0, "c": 0.5, "d": -math.inf}
    assert pop.migrations(islands, scores) == [("b", 1), ("c", 2)]
    assert pop.migrations([["a"]], scores) == []
    assert pop.migrations([["a"], ["a"]], {"a": 1.0}) == []


def test_island_round_robin():
    assert [pop.island_for(i, 3) for i in range(5)] == [0, 1, 2, 0, 1]


def test_efficiency_ratio_reads_the_curves_own_points():
    from evolve.read.population import efficiency_ratio, tokens_to_reach

    seed = [[100, 5.0, 4.0], [200, 4.0, 3.0], [400, 3.5, 2.5]]
    fast = [[50, 5.0, 3.0], [150, 4.0, 2.6], [250, 3.0, 2.5], [400, 2.8, 2.2]]
    assert tokens_to_reach(fast, 2.5) == 250.0
    assert efficiency_ratio(fast, seed) == 250 / 400
    assert efficiency_ratio(seed, seed) == 1.0
    assert efficiency_ratio([[400, 5.0, 2.6]], seed) is None  # never reaches the seed's loss
    assert efficiency_ratio([], seed) is None and efficiency_ratio(fast, []) is None
