"""`evolve check`: a good experiment passes, each broken one fails with exit 2 and one line naming the problem."""

import types

import pytest

from evolve import cli
from evolve.check import MIN_STEPS, budget_problem, cap_problem, signature_problem
from evolve.create import write_empty_experiment, write_text_experiment


def _check(capsys, *argv):
    code = cli.main(["check", *map(str, argv)])
    out = capsys.readouterr()
    return code, out.out, out.err.strip().splitlines()


# -- pure parts ----------------------------------------------------------------------------------------
@pytest.mark.unit
def test_signatures_are_checked_as_the_harness_calls_them():
    module = types.SimpleNamespace(prepare=lambda out_dir, task: {}, evaluate=lambda model, path: {},
                                   sources=lambda task, extra=None: [], value=3)
    assert signature_problem(module, "prepare", ("data_dir", "task"), "harness/data.py") is None
    assert signature_problem(module, "sources", ("task",), "harness/data.py", optional=True) is None
    assert signature_problem(module, "nothing", ("task",), "harness/data.py", optional=True) is None
    assert signature_problem(module, "nothing", ("task",), "harness/data.py") == \
        "harness/data.py: no function nothing(task)"
    assert signature_problem(module, "value", (), "x.py") == "x.py: value is not a function"
    why = signature_problem(module, "evaluate", ("model", "heldout_path", "task"), "harness/evaluate.py")
    assert why.startswith("harness/evaluate.py: evaluate cannot be called as evaluate(model, heldout_path, task)")


@pytest.mark.unit
def test_cap_and_budget_are_judged_on_the_seeds_numbers():
    assert cap_problem(1000, 1000) is None
    assert cap_problem(1001, 1000).startswith("task.param_cap: the seed's model has 1,001 parameters, over the cap of 1,000")
    assert budget_problem(1024 * 320, 1024) == (320, None)
    assert budget_problem(1024 * MIN_STEPS, 1024) == (MIN_STEPS, None)
    steps, why = budget_problem(1024 * MIN_STEPS - 1, 1024)
    assert steps == MIN_STEPS - 1 and why.startswith(f"budget.train_tokens: 4,095 tokens buy only {MIN_STEPS - 1}")
    assert budget_problem(1000, 1024) == (0, "budget.train_tokens: 1,000 tokens buy no optimizer step of the "
                                            "seed's settings (1,024 tokens a step)")


# -- broken folders that fail before anything runs -----------------------------------------------------
@pytest.mark.unit
def test_a_missing_evaluate_function_fails_in_one_line(experiment, capsys):
    path = experiment / "harness" / "evaluate.py"
    path.write_text(path.read_text().replace("def evaluate(", "def evaluate_it("))
    code, _, err = _check(capsys, experiment)
    assert code == 2 and err == ["evolve: error: harness/evaluate.py: no function evaluate(model, heldout_path, task)"]


@pytest.mark.unit
def test_a_bad_spec_and_a_harness_that_does_not_import_fail_in_one_line(experiment, capsys):
    assert _check(capsys, experiment, "budget.trials=zero")[2] == \
        ["evolve: error: budget.trials: expected an integer, got 'zero'"]
    path = experiment / "harness" / "data.py"
    path.write_text("import no_such_module_here\n" + path.read_text())
    code, _, err = _check(capsys, experiment)
    assert code == 2 and err == ["evolve: error: harness/data.py: does not import "
                                 "(ModuleNotFoundError: No module named 'no_such_module_here')"]


@pytest.mark.unit
def test_an_empty_experiment_names_the_hook_to_write_first(tmp_path, capsys):
    write_empty_experiment(tmp_path / "e")
    code, out, err = _check(capsys, tmp_path / "e")
    assert code == 2 and "ok   harness:" in out
    assert err == ["evolve: error: harness/data.py prepare: NotImplementedError: harness/data.py prepare: write "
                   "train.bin, dev.bin, heldout.bin and meta.json to out_dir, and return the meta dict"]


# -- the whole check: the zygote, a smoke run, the sealed evaluation ----------------------------------
@pytest.mark.warm
def test_tiny_lm_passes(experiment, capsys):
    code, out, err = _check(capsys, experiment)
    assert code == 0 and err == [], err
    for step in ("spec:", "harness:", "data:", "smoke run of the seed: 2 optimizer steps, 124,672 parameters",
                 "task.param_cap: 124,672 parameters of 1,000,000",
                 "budget.train_tokens: 327,680 tokens buy 320 optimizer steps", "sealed evaluation: heldout_loss "):
        assert f"ok   {step}" in out, step
    assert out.rstrip().endswith("is ready to run")


@pytest.mark.warm
def test_a_folder_from_init_text_passes(tmp_path, capsys):
    text = tmp_path / "tale.txt"
    text.write_text("It was the best of times, it was the worst of times, it was the age of wisdom. " * 80)
    write_text_experiment(tmp_path / "tale", text)
    code, out, err = _check(capsys, tmp_path / "tale")
    assert code == 0 and err == [], err
    assert "ok   sealed evaluation: heldout_loss" in out


@pytest.mark.warm
def test_a_param_cap_below_the_seed_fails_in_one_line(experiment, capsys):
    code, out, err = _check(capsys, experiment, "task.param_cap=100000")
    assert code == 2 and err == ["evolve: error: task.param_cap: the seed's model has 124,672 parameters, over the "
                                 "cap of 100,000; raise the cap or shrink the seed (scaffold/config.yaml)"]
    assert "sealed evaluation" not in out


@pytest.mark.warm
def test_a_budget_too_small_for_one_step_fails_in_one_line(experiment, capsys):
    code, out, err = _check(capsys, experiment, "budget.train_tokens=1000")
    assert code == 2 and err == ["evolve: error: budget.train_tokens: 1,000 tokens buy no optimizer step of the "
                                 "seed's settings (1,024 tokens a step)"]
    assert "ok   sealed evaluation" in out  # the rest of the seed was still checked


@pytest.mark.warm
def test_a_recipe_that_raises_fails_in_one_line(experiment, capsys):
    recipe = experiment / "scaffold" / "recipe.py"
    recipe.write_text(recipe.read_text().replace(
        "def loss(", "def loss(*a, **k):\n    raise ValueError('the loss is broken')\n\n\ndef _old_loss("))
    code, _, err = _check(capsys, experiment)
    assert code == 2 and len(err) == 1
    assert err[0].startswith("evolve: error: smoke run of the seed: ValueError: the loss is broken (recipe.py line")
