"""The baselines' search space is the heuristic operator's, read from the spec."""

import pytest
import yaml

from evolve.search.baselines import search_space, settings_text
from evolve.spec import load_spec


@pytest.mark.unit
def test_space_follows_choices_bounds_and_log_scale(experiment):
    from ray.tune.search.sample import Categorical, Float, Integer

    spec = load_spec(experiment)
    text = (experiment / "scaffold" / "config.yaml").read_text()
    space = search_space(spec, text)
    assert "n_head" not in space  # frozen
    assert isinstance(space["optimizer"], Categorical) and space["optimizer"].categories == ["adamw", "adam", "sgd"]
    assert isinstance(space["lr"], Float) and (space["lr"].lower, space["lr"].upper) == (1e-5, 0.1)
    assert type(space["lr"].get_sampler()).__name__ == "_LogUniform"
    assert type(space["weight_decay"].get_sampler()).__name__ == "_Uniform"
    assert isinstance(space["n_layer"], Integer) and (space["n_layer"].lower, space["n_layer"].upper) == (1, 7)
    assert isinstance(space["deepspeed.zero_stage"], Categorical)


@pytest.mark.unit
def test_sampled_values_are_written_in_place(experiment):
    text = (experiment / "scaffold" / "config.yaml").read_text()
    out = settings_text(text, {"lr": 0.0031234567, "deepspeed.zero_stage": 2, "optimizer": "sgd"})
    settings = yaml.safe_load(out)
    assert settings["lr"] == 0.003123 and settings["deepspeed"]["zero_stage"] == 2 and settings["optimizer"] == "sgd"
    assert "# peak learning rate" in out and out.count("\n") == text.count("\n")


@pytest.mark.search
def test_pbt_trains_from_checkpoints_and_records_its_trials(tmp_path):
    import json

    from evolve.read.population import load_population
    from evolve.search.baselines import run_baseline
    from tests.conftest import TINY_LM

    spec = load_spec(TINY_LM, ["budget.trials=3", "budget.train_tokens=40960", "trial.report_every=5",
                               "operator.heuristic.bounds.n_layer=[1,2]", "operator.heuristic.choices.n_embd=[32,64]"])
    rows = run_baseline(spec, tmp_path / "run", "pbt", log=lambda line: None)
    assert len(rows) == 3 and {r["operator"] for r in rows} == {"pbt"}
    pop = load_population(tmp_path / "run")
    assert len(pop) == 3 and (pop["status"] == "completed").any()
    # each quarter of the budget the harness saved a DeepSpeed checkpoint that Tune kept for PBT
    saved = list((tmp_path / "run" / "tune-pbt").glob("*/checkpoint_*/evolve_state.json"))
    assert saved and all(json.loads(p.read_text())["tokens"] >= 40960 // 4 for p in saved)
    assert not list((tmp_path / "run" / "trials").glob("*/checkpoints/*"))  # local copies removed


@pytest.mark.unit
def test_pbt_perturbs_choices_by_list_and_keeps_numbers_in_bounds(experiment):
    from evolve.search.baselines import pbt_mutations, within_limits

    spec = load_spec(experiment)
    space = search_space(spec, (experiment / "scaffold" / "config.yaml").read_text())
    mutations, bounds = pbt_mutations(space, spec.operator.shape_keys)
    assert mutations["schedule"] == ["cosine", "linear", "constant"]
    assert "n_layer" not in mutations and "seq_len" not in mutations
    assert "schedule" not in bounds and bounds["batch_size"][2] is True  # an integer stays whole
    limits = {"batch_size": (4, 64, True), "warmup_frac": (0.0, 0.5, False)}
    out = within_limits({"batch_size": 76.8, "warmup_frac": 0.6, "lr": 2.0}, limits)
    assert out == {"batch_size": 64, "warmup_frac": 0.5, "lr": 2.0}
    assert within_limits({"batch_size": 27.6}, limits) == {"batch_size": 28}
