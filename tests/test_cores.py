"""The pure cores of a trial: the token and step plan, and the outcome decision."""

import pytest

from evolve.rank.lm import RecipeError, plan_steps
from evolve.trial.slots import LOST
from evolve.trial.train import TrialLost, outcome

pytestmark = pytest.mark.unit


def test_the_budget_buys_whole_optimizer_steps():
    assert plan_steps(10_000, 0, 0, tokens_per_micro=1024, gas=2) == (4, 8, 4)  # 2,048 a step; 1,808 left over
    assert plan_steps(10_000, 4096, 2, 1024, 2) == (2, 4, 4)  # resumed at step 2: the same total
    assert plan_steps(10_000, 0, 0, 1024, 1, max_steps=3) == (3, 3, 3)  # a smoke run
    assert plan_steps(8192, 8192, 8, 1024, 1, resumed=True) == (0, 0, 8)  # resumed at its budget
    with pytest.raises(RecipeError, match=r"^config.yaml: one optimizer step needs 4,096 tokens, more than the "
                                          r"budget of 4,000$"):
        plan_steps(4000, 0, 0, 2048, 2)


def test_a_trial_outcome_follows_its_ranks_then_its_evaluation():
    done = outcome({}, {"curve": [1]}, {"heldout_loss": 2.5}, None, "heldout_loss")
    assert done == {"status": "completed", "failure_reason": None, "summary": {"curve": [1]},
                    "metrics": {"heldout_loss": 2.5}, "fitness": 2.5}
    failed = outcome({1: "RecipeError: bad", 0: "cancelled"}, {}, None, None, "heldout_loss")
    assert failed == {"status": "failed", "failure_reason": "RecipeError: bad", "summary": {}}
    refused = outcome({}, {"curve": []}, None, "EvaluationError: not a plain file", "heldout_loss")
    assert refused["status"] == "failed" and refused["failure_reason"] == "sealed evaluation: EvaluationError: not a plain file"
    with pytest.raises(TrialLost, match="^the node went away$"):
        outcome({0: LOST + "the node went away"}, {}, None, None, "heldout_loss")
