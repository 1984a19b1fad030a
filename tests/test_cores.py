"""The pure cores: the token and step plan, the trial's outcome decision, the agent's states and requests."""

import pytest

from evolve.agent.operator import agent_state, requests_wanted
from evolve.messages import TrialOutcome
from evolve.rank.lm import RecipeError, plan_steps
from evolve.trial.board import LOST
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
    assert done == TrialOutcome("completed", fitness=2.5, summary={"curve": [1]}, metrics={"heldout_loss": 2.5})
    failed = outcome({1: "RecipeError: bad", 0: "cancelled"}, {}, None, None, "heldout_loss")
    assert failed == TrialOutcome("failed", failure_reason="RecipeError: bad")
    refused = outcome({}, {"curve": []}, None, "EvaluationError: not a plain file", "heldout_loss")
    assert refused.status == "failed" and refused.failure_reason == "sealed evaluation: EvaluationError: not a plain file"
    assert refused.summary == {"curve": []}
    with pytest.raises(TrialLost, match="^the node went away$"):
        outcome({0: LOST + "the node went away"}, {}, None, None, "heldout_loss")


def test_the_agent_goes_down_after_failures_in_a_row_and_comes_back_on_an_accepted_child():
    assert agent_state("ok", False, 2, max_failures=3) == "ok"
    assert agent_state("ok", False, 3, max_failures=3) == "down"
    assert agent_state("down", False, 9, max_failures=3) == "down"  # a failed probe
    assert agent_state("down", True, 0, max_failures=3) == "ok"
    assert agent_state("off", True, 0, max_failures=3) == "off"  # no endpoint: for good
    assert agent_state("off", False, 5, max_failures=3) == "off"


def test_the_agent_keeps_parallel_requests_in_flight_ahead_of_the_slots_within_the_budget():
    want = lambda state="ok", in_flight=0, ready=0, left=10, parallel=2, ahead=3, probe_due=False: requests_wanted(
        state, in_flight, ready, left, parallel, ahead, probe_due)
    assert want() == 2  # parallel bounds it
    assert want(in_flight=1) == 1 and want(in_flight=2) == 0
    assert want(ready=2) == 1  # ahead: 2 ready + 1 coming
    assert want(ready=3) == 0
    assert want(left=1) == 1 and want(left=0) == 0 and want(ready=1, in_flight=1, left=2) == 0  # the budget
    assert want(ahead=0) == 1  # at least one ahead
    assert want("down") == 0 and want("down", probe_due=True) == 1  # one probe at a time
    assert want("down", in_flight=1, probe_due=True) == 0
    assert want("off", probe_due=True) == 0
