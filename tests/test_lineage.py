"""The population's history in a notebook: lineage, operator and generation rates, costs, curves."""

import pytest

from evolve.read.population import load_arrow, load_population

pytestmark = pytest.mark.unit


def test_ancestors_descendants_and_the_path_with_diffs(small_run):
    root, ids = small_run
    pop = load_population(root)
    assert pop.ancestors(ids["e"]) == {ids["a"], ids["b"], ids["seed"]}
    assert pop.descendants(ids["a"]) == {ids["c"], ids["d"], ids["e"]}
    assert pop.descendants(ids["c"]) == set()
    steps = pop.path("best")
    assert [s["variant_id"] for s in steps] == [ids["seed"], ids["a"], ids["c"]]
    assert steps[2]["rationale"] == "make c <fast> & safe" and steps[2]["fitness"] == 2.6
    assert "-name: a" in steps[2]["diff"] and "+name: c" in steps[2]["diff"]


def test_operator_and_generation_rates(small_run):
    root, ids = small_run
    pop = load_population(root)
    ops = pop.operator_stats().set_index("operator")
    assert ops.loc["perturb", "children"] == 2 and ops.loc["perturb", "improved"] == 1
    assert ops.loc["llm", "improve_rate"] == 0.5 and ops.loc["llm", "completed"] == 1
    assert ops.loc["crossover", "mean_gain"] == pytest.approx(0.1)  # 2.8 -> 2.7 against its first parent
    gens = pop.generation_stats().set_index("generation")
    assert list(gens.index) == [1, 2] and gens.loc[2, "best"] == 2.6 and gens.loc[1, "children"] == 2


def test_pareto_front_of_fitness_against_compute_and_tokens(small_run):
    root, ids = small_run
    pop = load_population(root)
    front = pop.pareto_front("compute_seconds")
    # workers: 2, so a 10 s trial costs 20 compute seconds; b is cheapest, then seed, e, then c
    assert list(front["variant_id"]) == [ids["b"], ids["seed"], ids["e"], ids["c"]]
    assert front.iloc[0]["compute_seconds"] == 16.0
    tokens = pop.pareto_front("llm_tokens")
    assert list(tokens["variant_id"]) == [ids["e"], ids["c"]]  # 0 tokens at 2.7, then 900 tokens for 2.6


def test_curves_and_arrow(small_run):
    root, ids = small_run
    pop = load_population(root)
    long = pop.curves([ids["c"], ids["a"]])
    assert len(long) == 4 and set(long["variant_id"]) == {ids["a"], ids["c"]}
    assert long[long["variant_id"] == ids["c"]]["dev_loss"].tolist() == [3.9, 2.6]
    table = pop.to_arrow()
    assert table.num_rows == 6 and set(table.column("variant_id").to_pylist()) == set(ids.values())
    assert load_arrow(root).schema.field("record").type == "string"


def test_a_lineage_thousands_deep_needs_no_recursion(tmp_path):
    import pandas as pd

    from evolve.read import lineage

    n = 5000
    ids = [f"v{i}" for i in range(n)]
    pop = pd.DataFrame({"variant_id": ids[::-1], "parent_ids": [[f"v{i - 1}"] if i else [] for i in range(n)][::-1],
                        "operator": ["perturb"] * n, "fitness": [3.0 - i / n for i in range(n)][::-1]})
    assert list(lineage.generations(pop)) == list(range(n))[::-1]  # children listed before their parents
    assert lineage.ancestors(pop, "v4999") == set(ids[:-1])
    assert lineage.descendants(pop, "v0") == set(ids[1:])
    rates = lineage.operator_stats(pop)
    assert rates.loc[0, "children"] == n - 1 and rates.loc[0, "improved"] == n - 1
