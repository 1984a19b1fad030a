"""The baselines' search space is the heuristic operator's, read from the spec."""

import yaml

from evolve.baselines import search_space, settings_text
from evolve.config import load_spec


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


def test_sampled_values_are_written_in_place(experiment):
    text = (experiment / "scaffold" / "config.yaml").read_text()
    out = settings_text(text, {"lr": 0.0031234567, "deepspeed.zero_stage": 2, "optimizer": "sgd"})
    settings = yaml.safe_load(out)
    assert settings["lr"] == 0.003123 and settings["deepspeed"]["zero_stage"] == 2 and settings["optimizer"] == "sgd"
    assert "# peak learning rate" in out and out.count("\n") == text.count("\n")
