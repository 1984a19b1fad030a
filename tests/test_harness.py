import textwrap

import pytest

from evolve.rank.lm import RecipeError, build_model, deepspeed_settings, load_recipe, load_settings, one_line
from tests.conftest import TINY_LM

pytestmark = pytest.mark.unit

SCAFFOLD = TINY_LM / "scaffold"


def test_seed_recipe_builds_a_model_under_the_cap():
    recipe = load_recipe(SCAFFOLD)
    settings = load_settings(SCAFFOLD)
    model, n = build_model(recipe, settings, vocab_size=256, context=128, param_cap=1_000_000)
    assert 50_000 < n < 1_000_000
    assert model.config.vocab_size == 256 and model.config.n_positions == 128


def test_parameter_cap_is_enforced():
    recipe = load_recipe(SCAFFOLD)
    settings = {**load_settings(SCAFFOLD), "n_embd": 256, "n_layer": 6}
    with pytest.raises(RecipeError, match=r"^model_config: [\d,]+ parameters exceed the cap of 1,000,000$"):
        build_model(recipe, settings, 256, 128, 1_000_000)


def write_recipe(tmp_path, body):
    (tmp_path / "recipe.py").write_text(textwrap.dedent(body))
    return tmp_path


def test_missing_hooks_are_named(tmp_path):
    with pytest.raises(RecipeError, match="^recipe.py: missing hook\\(s\\) optimizer, lr_multiplier, deepspeed_config, batches, loss$"):
        load_recipe(write_recipe(tmp_path, "def model_config(cfg):\n    return {}\n"))
    with pytest.raises(RecipeError, match="recipe.py: not found"):
        load_recipe(tmp_path / "nowhere")


def test_reserved_model_keys_and_deepspeed_knobs(tmp_path):
    src = (SCAFFOLD / "recipe.py").read_text()
    recipe = load_recipe(write_recipe(tmp_path, src.replace('"n_layer": cfg["n_layer"],', '"n_layer": 1, "vocab_size": 10,')))
    with pytest.raises(RecipeError, match="^model_config: vocab_size is fixed by the harness$"):
        build_model(recipe, load_settings(SCAFFOLD), 256, 128, 10**9)
    settings = load_settings(SCAFFOLD)
    seed = load_recipe(SCAFFOLD)
    ds = deepspeed_settings(seed, settings, micro_batch=8)
    assert ds["train_micro_batch_size_per_gpu"] == 8 and ds["zero_optimization"] == {"stage": 0}
    bad = {**settings, "deepspeed": {**settings["deepspeed"], "zero_stage": 3}}
    with pytest.raises(RecipeError, match="zero_stage must be 0, 1 or 2, got 3"):
        deepspeed_settings(seed, bad, 8)


def test_one_line_points_at_the_recipe_line(tmp_path):
    recipe = load_recipe(write_recipe(tmp_path, """\
        def model_config(cfg):
            raise ValueError("bad width\\n  (really)")
        optimizer = lr_multiplier = deepspeed_config = batches = loss = model_config
        """))
    with pytest.raises(ValueError) as e:
        recipe.model_config({})
    assert one_line(e.value, str(tmp_path / "recipe.py")) == \
        "ValueError: bad width (really) (recipe.py line 2, in model_config)"
