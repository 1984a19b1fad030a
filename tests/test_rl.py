"""The RL experiment: its sealed data and verifier, the RL loop's pieces, and a run that learns."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from evolve.rank import rl
from evolve.warm import zygote
from evolve.spec import SpecError, load_spec
from evolve.trial.evaluation import load_module
from evolve.rank.lm import RecipeError, load_recipe
from tests.conftest import ROOT

RL_ARITH = ROOT / "experiments" / "rl_arith"
ENV = {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
data_py = load_module(RL_ARITH / "harness" / "data.py", "rl_arith_data")
verifier = load_module(RL_ARITH / "harness" / "verifier.py", "rl_arith_verifier")
recipe = load_recipe(RL_ARITH / "scaffold", rl.HOOKS)
SETTINGS = yaml.safe_load((RL_ARITH / "scaffold" / "config.yaml").read_text())


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.unit
def test_the_splits_cover_the_space_once_and_answers_run_least_significant_first(tmp_path):
    task = load_spec(RL_ARITH).task
    meta = data_py.prepare(tmp_path, task)
    splits = {name: lines(tmp_path / f"{name}.bin") for name in ("train", "dev", "heldout")}
    prompts = [p["prompt"] for part in splits.values() for p in part]
    assert len(prompts) == len(set(prompts)) == 100 * 100  # every problem in exactly one split
    assert (len(splits["heldout"]), len(splits["dev"])) == (task["heldout"], task["dev"])
    assert meta["demo_problems"] == task["demos"] and meta["end"] == ";"
    assert meta["prompt_bytes"] == 6 and meta["answer_bytes"] == 4  # "198" and the end mark
    for p in splits["train"][:50]:
        a, b = int(p["prompt"][:2]), int(p["prompt"][3:5])
        assert p["answer"] == str(a + b)[::-1]
    assert data_py.space({"digits": 1, "ops": ["-"], "reverse": False})[10:12] == [("1-0=", "1"), ("1-1=", "0")]
    with pytest.raises(ValueError, match="task.ops"):
        data_py.space({"ops": ["/"]})
    with pytest.raises(ValueError, match="leave none to train"):
        data_py.prepare(tmp_path / "x", {"digits": 1, "heldout": 150, "dev": 50})


@pytest.mark.unit
@pytest.mark.parametrize("completion,answer,right,parsed", [
    ("132;", "132", True, 132), ("132;99", "132", True, 132), ("132", "132", False, None),
    ("0132;", "132", False, 132), ("13;", "132", False, 13), ("-7;", "-7", True, -7), ("1 3;", "13", False, None),
    (";", "1", False, None),
])
def test_the_sealed_verifier_wants_the_exact_digits_and_the_end_mark(completion, answer, right, parsed):
    assert verifier.correct(completion, answer) is right
    assert verifier.parse(completion) == parsed


@pytest.mark.unit
def test_a_plan_with_a_bad_value_is_one_line_naming_the_key():
    good = recipe.plan(SETTINGS)
    assert rl.check_plan(good)["group_size"] == SETTINGS["group_size"]
    for key, value, words in [("group_size", 0, "group_size must be an integer >= 1"),
                              ("top_p", 0.0, "top_p must be a number in (0.0, 1.0]"),
                              ("sft_frac", 1.5, "sft_frac must be a number in [0.0, 1.0]"),
                              ("temperature", "hot", "temperature must be")]:
        with pytest.raises(RecipeError, match=words.replace("(", r"\(").replace("[", r"\[")):
            rl.check_plan({**good, key: value})
    with pytest.raises(RecipeError, match="missing top_p"):
        rl.check_plan({k: v for k, v in good.items() if k != "top_p"})
    with pytest.raises(RecipeError, match="rollouts per step"):
        rl.check_plan({**good, "prompts_per_step": 1000, "group_size": 1000})


@pytest.mark.unit
def test_the_completion_mask_ends_with_the_first_end_mark():
    end = ord(";")
    rows = torch.tensor([list(b"12;;"), list(b"1;2;"), list(b"1234")])
    assert rl.completion_mask(rows, end).tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


@pytest.mark.unit
def test_teacher_forcing_masks_in_the_answer_and_its_end_mark_only():
    x, y, mask = rl.answer_tensors([("12+34=", "64"), ("99+99=", "891")], 4, ord(";"))
    assert x.shape == y.shape == mask.shape == (2, 9)
    assert bytes(y[0][mask[0] == 1].tolist()) == b"64;"
    assert bytes(y[1][mask[1] == 1].tolist()) == b"891;"


@pytest.mark.unit
def test_nucleus_sampling_keeps_the_smallest_set_holding_top_p():
    class Fixed(torch.nn.Module):  # next-byte probabilities 0.6, 0.3, 0.1 on bytes 7, 8, 9
        def forward(self, input_ids):
            logits = torch.full((input_ids.size(0), input_ids.size(1), 256), -1e9)
            logits[..., 7], logits[..., 8], logits[..., 9] = math.log(0.6), math.log(0.3), math.log(0.1)
            return type("Out", (), {"logits": logits})()

    gen = torch.Generator().manual_seed(0)
    prompts = torch.zeros((2000, 3), dtype=torch.long)
    only_top = rl.sample(Fixed(), prompts, 1, 1.0, 0.5, gen)
    assert set(only_top.flatten().tolist()) == {7}
    two = rl.sample(Fixed(), prompts, 1, 1.0, 0.85, gen).flatten()
    assert set(two.tolist()) == {7, 8} and abs((two == 7).float().mean().item() - 2 / 3) < 0.05
    full = rl.sample(Fixed(), prompts, 2, 1.0, 1.0, gen)
    assert full.shape == (2000, 2) and (full == 9).any()
    cold = rl.sample(Fixed(), prompts, 1, 0.05, 1.0, gen)  # a low temperature is nearly greedy
    assert (cold == 7).float().mean().item() > 0.99


@pytest.mark.unit
def test_the_seed_reward_pays_right_answers_most_and_its_advantages_centre_each_group():
    r = lambda c, a="231": recipe.reward("47+85=", c, a, SETTINGS)  # noqa: E731
    assert r("231;") == 1.0
    assert r("291;") == pytest.approx(SETTINGS["format_reward"] + SETTINGS["partial_credit"] * 2 / 3)
    assert r("23") == 0.0 and r("2x1;") == 0.0
    adv = recipe.advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.5, 0.5, 0.5, 0.5]]), SETTINGS)
    assert adv[0].sum().abs() < 1e-5 and adv[0, 0] > 0 and adv[1].abs().max() < 1e-5


@pytest.fixture(scope="module")
def arith(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl")
    spec = load_spec(RL_ARITH)
    data_py.prepare(root / "data", spec.task)
    path = zygote.ensure()
    pid = zygote.ping(path)
    yield root, spec
    if zygote.ping(path) == pid:
        zygote.shutdown(path)


def variant(root, name, settings=None, replace=None):
    dest = root / name
    shutil.copytree(RL_ARITH / "scaffold", dest)
    if settings:
        (dest / "config.yaml").write_text(yaml.safe_dump({**SETTINGS, **settings}))
    for old, new in (replace or {}).items():
        text = (dest / "recipe.py").read_text()
        assert old in text
        (dest / "recipe.py").write_text(text.replace(old, new))
    return dest


def train(root, spec, vdir, tokens, target="evolve.rank.entry:solo_rank", **extra):
    config = {"seed": 0, "task": spec.task, "data_dir": str(root / "data"), "variant_dir": str(vdir),
              "out_dir": str(root / f"out-{vdir.name}"), "train_tokens": tokens, "report_every": 25,
              "trainer": "rl", **extra}
    os.makedirs(config["out_dir"], exist_ok=True)
    points = []
    summary = zygote.call(target, {"config": config}, env=ENV, on_report=points.append)
    return points, summary


@pytest.mark.warm
def test_a_warm_up_then_rl_within_the_budget_learns_the_task(arith):
    root, spec = arith
    vdir = variant(root, "learner", {"sft_frac": 0.85, "lr": 0.006})
    points, summary = train(root, spec, vdir, 120_000)
    phases = [p["phase"] for p in points]
    assert phases == sorted(phases, key=["sft", "rl"].index) and {"sft", "rl"} <= set(phases)
    assert summary["sft_steps"] > 0 and summary["rl_steps"] > 0
    assert summary["tokens_trained"] <= 120_000 and points[-1]["last"]
    assert all("reward" in p for p in points if p["phase"] == "rl")
    assert [r[3:] for r in summary["curve"]] == [[p["step"], p["lr"]] for p in points]  # step and lr recorded
    model = __import__("transformers").GPT2LMHeadModel.from_pretrained(root / "out-learner" / "model")
    evaluate = load_module(RL_ARITH / "harness" / "evaluate.py", "rl_arith_evaluate")
    metrics = evaluate.evaluate(model, root / "data" / "heldout.bin", spec.task)
    # from nothing to answering held-out sums it never saw (chance is about 1 in 200)
    assert metrics["heldout_format"] > 0.9 and metrics["heldout_accuracy"] > 0.2, metrics
    assert points[-1]["dev_accuracy"] > points[0]["dev_accuracy"]


@pytest.mark.warm
@pytest.mark.parametrize("replace,words", [
    ({"yield torch.randint(0, len(problems), (size,), generator=generator).tolist()":
      "yield [len(problems)] * size"}, "batches: indices must be integers in"),
    ({"    return score\n": "    return float('nan')\n"}, "reward: expected a finite number"),
    ({"    while True:\n        yield torch": "    for _ in range(1):\n        yield torch"}, "batches: the sft phase's iterator ended"),
    ({"    return (rewards - mean) / (std + 1e-4)": "    return rewards.sum()"}, "advantages: expected a finite tensor"),
])
def test_a_recipe_hook_that_breaks_the_rules_fails_its_smoke_run_in_one_line(arith, replace, words):
    root, spec = arith
    vdir = variant(root, "bad-" + "".join(c if c.isalnum() else "-" for c in words), {"sft_frac": 0.1}, replace)
    with pytest.raises(zygote.ChildFailed, match=words):
        train(root, spec, vdir, 50_000, "evolve.rank.entry:smoke_rank", max_steps=2, smoke=True)


@pytest.mark.unit
def test_the_spec_names_its_trainer_and_the_rl_trainer_refuses_checkpoints():
    assert load_spec(RL_ARITH).trainer == "rl" and load_spec(ROOT / "experiments" / "tiny_lm").trainer == "lm"
    with pytest.raises(SpecError, match="trainer: expected one of lm, rl, got 'ppo'"):
        load_spec(RL_ARITH, ["trainer=ppo"])
    with pytest.raises(SpecError, match="trial.checkpoint_tokens: the rl trainer saves no checkpoints"):
        load_spec(RL_ARITH, ["trial.checkpoint_tokens=1000"])


@pytest.mark.search
def test_a_data_parallel_search_of_the_rl_experiment_records_accuracies_and_picks_the_highest(tmp_path):
    from evolve.read.population import load_population

    run = tmp_path / "run"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    # two data-parallel ranks per trial, each sampling rollouts from its own shard of the problems
    out = subprocess.run([sys.executable, "-m", "evolve.cli", "run", str(RL_ARITH), "budget.trials=2",
                          "budget.concurrent=1", "trial.workers=2", "budget.train_tokens=40_000", "confirm.top=0",
                          "--run-dir", str(run)],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    pop = load_population(run)
    assert len(pop) == 2 and (pop["status"] == "completed").all() and pop.mode == "max"
    assert pop["fitness"].between(0, 1).all()
    assert all(0 <= m["heldout_format"] <= 1 for m in pop["metrics"])
    assert pop.set_index("variant_id").loc[pop.best_id(), "fitness"] == pop["fitness"].max()
    assert all((run / "trials" / v / "rank1.log").is_file() for v in pop["variant_id"])
    assert "best:" in out.stdout
