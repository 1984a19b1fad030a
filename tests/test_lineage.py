"""The population's history in a notebook: lineage, operator and generation rates, costs, curves."""

import pytest

from evolve.analysis import load_arrow, load_population
from evolve.store import Store
from evolve.variant import Variant


@pytest.fixture
def run(tmp_path):
    """seed 3.0 -> a 2.8 (perturb) -> c 2.6 (llm, 900 tokens) and d failed (llm);
    seed -> b 3.1 (perturb); a + b -> e 2.7 (crossover)."""
    root = tmp_path / "run"
    store = Store(root)
    (root / "spec.yaml").write_text("objective: {metric: heldout_loss, mode: min}\ntrial: {workers: 2}\n")
    made = {}

    def add(name, parents, op, fitness, seconds, tokens=0):
        v = Variant(files=store.put_files({"config.yaml": f"name: {name}\n".encode()}),
                    parents=tuple(made[p].id for p in parents), operator=op,
                    record={"kind": op, "rationale": f"make {name}", "prompt_tokens": tokens, "completion_tokens": 0})
        store.put_variant(v)
        store.append_result({"variant_id": v.id, "parent_ids": list(v.parents), "operator": op, "record": v.record,
                             "status": "completed" if fitness else "failed", "fitness": fitness,
                             "metrics": {}, "curve": [[1000, 4.0, 3.9], [2000, 3.5, fitness or 9.0]],
                             "trial_seconds": seconds})
        made[name] = v

    add("seed", [], "seed", 3.0, 10.0)
    add("a", ["seed"], "perturb", 2.8, 12.0)
    add("b", ["seed"], "perturb", 3.1, 8.0)
    add("c", ["a"], "llm", 2.6, 30.0, 900)
    add("d", ["a"], "llm", None, 1.0, 500)
    add("e", ["a", "b"], "crossover", 2.7, 11.0)
    return root, {k: v.id for k, v in made.items()}


def test_ancestors_descendants_and_the_path_with_diffs(run):
    root, ids = run
    pop = load_population(root)
    assert pop.ancestors(ids["e"]) == {ids["a"], ids["b"], ids["seed"]}
    assert pop.descendants(ids["a"]) == {ids["c"], ids["d"], ids["e"]}
    assert pop.descendants(ids["c"]) == set()
    steps = pop.path("best")
    assert [s["variant_id"] for s in steps] == [ids["seed"], ids["a"], ids["c"]]
    assert steps[2]["rationale"] == "make c" and steps[2]["fitness"] == 2.6
    assert "-name: a" in steps[2]["diff"] and "+name: c" in steps[2]["diff"]


def test_operator_and_generation_rates(run):
    root, ids = run
    pop = load_population(root)
    ops = pop.operator_stats().set_index("operator")
    assert ops.loc["perturb", "children"] == 2 and ops.loc["perturb", "improved"] == 1
    assert ops.loc["llm", "improve_rate"] == 0.5 and ops.loc["llm", "completed"] == 1
    assert ops.loc["crossover", "mean_gain"] == pytest.approx(0.1)  # 2.8 -> 2.7 against its first parent
    gens = pop.generation_stats().set_index("generation")
    assert list(gens.index) == [1, 2] and gens.loc[2, "best"] == 2.6 and gens.loc[1, "children"] == 2


def test_pareto_front_of_fitness_against_compute_and_tokens(run):
    root, ids = run
    pop = load_population(root)
    front = pop.pareto_front("compute_seconds")
    # workers: 2, so a 10 s trial costs 20 compute seconds; b is cheapest, then seed, e, then c
    assert list(front["variant_id"]) == [ids["b"], ids["seed"], ids["e"], ids["c"]]
    assert front.iloc[0]["compute_seconds"] == 16.0
    tokens = pop.pareto_front("llm_tokens")
    assert list(tokens["variant_id"]) == [ids["e"], ids["c"]]  # 0 tokens at 2.7, then 900 tokens for 2.6


def test_curves_and_arrow(run):
    root, ids = run
    pop = load_population(root)
    long = pop.curves([ids["c"], ids["a"]])
    assert len(long) == 4 and set(long["variant_id"]) == {ids["a"], ids["c"]}
    assert long[long["variant_id"] == ids["c"]]["dev_loss"].tolist() == [3.9, 2.6]
    table = pop.to_arrow()
    assert table.num_rows == 6 and set(table.column("variant_id").to_pylist()) == set(ids.values())
    assert load_arrow(root).schema.field("record").type == "string"
