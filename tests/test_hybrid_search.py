"""Real hybrid searches: code variants written by the heuristic operator or a scripted LLM, their numbers tuned by Optuna."""

from pathlib import Path

import pytest
import yaml

from evolve import cli
from evolve.driver import init_ray, run_search
from evolve.read.population import load_population
from evolve.record.store import Store
from evolve.search.yamledit import flatten
from evolve.spec import load_spec

TINY = ["budget.train_tokens=8192", "trial.report_every=2", "confirm.top=0", "budget.concurrent=2",
        "operator.kind=hybrid", "operator.hybrid_trials=3"]
TINY_LM = Path(__file__).parents[1] / "experiments" / "tiny_lm"


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    init_ray(load_spec(TINY_LM), num_cpus=2)
    yield
    ray.shutdown()


def settings(run_dir, vid) -> dict:
    store = Store(run_dir)
    return flatten(yaml.safe_load(store.read_files(store.get_variant(vid))["config.yaml"]))


@pytest.mark.search
def test_each_code_variant_gets_its_tuning_trials_and_its_best_is_its_fitness(ray_cluster, tmp_path, capsys):
    run_dir = tmp_path / "run"
    # a small space that trains quickly: lr (log-uniform) and the optimizer
    spec = load_spec(TINY_LM, TINY + ["budget.trials=6", "operator.heuristic.bounds={lr: [1.0e-4, 3.0e-2]}",
                                      "operator.heuristic.choices={optimizer: [adamw, adam]}"])
    lines = []
    run_search(spec, run_dir, log=lines.append)
    pop = load_population(run_dir)
    assert len(pop) == 6 and (pop["status"] == "completed").all(), pop[["status", "failure_reason"]]
    table = pop.code_variants()
    assert len(table) == 2 and list(table["trials"]) == [3, 3], table  # the seed's tuning, then one new code variant
    assert table.iloc[0]["code_variant"] == pop.seed_id()
    for _, r in table.iterrows():
        trials = pop[pop["code_variant"] == r["code_variant"]]
        assert r["best_fitness"] == trials["fitness"].min()
        assert r["best_variant"] == trials.loc[trials["fitness"].idxmin(), "variant_id"]
        tuned = trials[trials["operator"] == "tune"]
        assert len(tuned) == 2
        for _, t in tuned.iterrows():  # a real variant: its settings file holds the values it was tuned to
            assert set(t["record"]["values"]) == {"lr", "optimizer"}
            assert all(settings(run_dir, t["variant_id"])[k] == v for k, v in t["record"]["values"].items())
            assert 1e-4 <= t["record"]["values"]["lr"] <= 3e-2
        assert len({settings(run_dir, v)["lr"] for v in trials["variant_id"]}) == 3
    # the new code variant's parent is the seed's tuned best, not the seed
    second = table.iloc[1]
    assert list(pop.loc[pop["variant_id"] == second["code_variant"], "parent_ids"].iloc[0]) == [table.iloc[0]["best_variant"]]
    assert sum("tuned: 3 trials" in line for line in lines) == 2
    cli.main(["show", str(run_dir), second["code_variant"][:8]])
    out = capsys.readouterr().out
    assert f"tuning: code variant, 3 trials (3 completed), as written {second['as_written']:.4f}" in out
    tuned_id = pop[(pop["code_variant"] == second["code_variant"]) & (pop["operator"] == "tune")]["variant_id"].iloc[0]
    cli.main(["show", str(run_dir), tuned_id])
    assert f"of code variant {second['code_variant']}" in capsys.readouterr().out


def tunable_reply(body) -> str:
    """Scales lr by 1.5 and declares warmup_frac tunable."""
    from tests.agent_replies import lr_edit

    edit = lr_edit(body, 1.5)
    head, files = edit.split("\n\nFILE:", 1)
    return head + "\n\nTUNABLE:\nwarmup_frac: [0.0, 0.4]\n\nFILE:" + files


@pytest.mark.search
def test_a_number_the_llm_declares_tunable_is_varied_by_the_optimiser(ray_cluster, tmp_path):
    from tests.agent_replies import NOTEBOOK_TEXT
    from tests.openai_server import Reply, ScriptedOpenAI

    def respond(body):
        if "research notebook" in body["messages"][0]["content"]:
            return Reply(text=NOTEBOOK_TEXT)
        return Reply(text=tunable_reply(body))

    run_dir = tmp_path / "run"
    with ScriptedOpenAI(respond) as server:
        # no spec space: the seed is trained as written only, and the LLM's child is tuned over what it declared
        spec = load_spec(TINY_LM, TINY + ["budget.trials=4", "operator.heuristic.bounds={}",
                                          "operator.heuristic.choices={}", f"operator.base_url={server.url}",
                                          "operator.model=scripted", "operator.smoke_steps=0",
                                          "operator.parallel=1", "operator.ahead=1", "operator.notebook_every=0"])
        run_search(spec, run_dir, log=lambda line: None)
        prompts = [r["body"]["messages"][0]["content"] for r in server.requests]
    assert prompts and all("TUNABLE:\n<key of config.yaml" in p for p in prompts)
    pop = load_population(run_dir)
    assert len(pop) == 4 and (pop["status"] == "completed").all(), pop[["status", "failure_reason"]]
    table = pop.code_variants()
    assert list(table["trials"]) == [1, 3] and list(table["operator"]) == ["seed", "llm"], table
    llm = pop[pop["operator"] == "llm"].iloc[0]
    assert llm["record"]["tunable"] == {"warmup_frac": [0.0, 0.4, False]}
    assert llm["record"]["tuning"]["keys"] == ["warmup_frac"]
    tuned = pop[pop["operator"] == "tune"]
    assert len(tuned) == 2 and all(set(r["values"]) == {"warmup_frac"} for r in tuned["record"])
    values = [settings(run_dir, v)["warmup_frac"] for v in [llm["variant_id"], *tuned["variant_id"]]]
    assert len(set(values)) == 3 and all(0.0 <= v <= 0.4 for v in values)  # varied within the declared range
    lrs = {settings(run_dir, v)["lr"] for v in [llm["variant_id"], *tuned["variant_id"]]}
    assert len(lrs) == 1 and lrs.pop() == pytest.approx(settings(run_dir, pop.seed_id())["lr"] * 1.5)  # its own edit kept
    assert table.iloc[1]["best_fitness"] == pop[pop["code_variant"] == llm["variant_id"]]["fitness"].min()
