"""The typed records on the data path: a trial's config and its outcome, checked where they are read."""

import json

import pytest

from evolve.messages import RecordError, Resources, TrialConfig, TrialOutcome, split_tokens

pytestmark = pytest.mark.unit

SOLO = {"variant_dir": "/v", "out_dir": "/o", "data_dir": "/d", "task": {"corpus": "x"}, "seed": 1,
        "train_tokens": 8192}


def test_a_trial_config_round_trips_through_its_dict_with_nested_resources():
    config = TrialConfig.from_dict({**SOLO, "resources": {"workers": 2, "cpus_per_worker": 1, "gpus_per_worker": 0,
                                                          "placement": "spread"}, "peak_tflops": 989})
    assert config.resources == Resources(2, 1.0, 0.0, "spread") and config.peak_tflops == 989.0
    assert TrialConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # as Tune and the socket carry it
    assert config.trainer == "lm" and config.sandbox is None and config.key == ""
    rerun = config.replace(variant_id="abc", trial_key="abc-s7")
    assert rerun.key == "abc-s7" and config.replace(variant_id="abc").key == "abc"


@pytest.mark.parametrize("change, message", [
    ({"trian_tokens": 5}, "^trial config: unknown field 'trian_tokens'$"),
    ({"train_tokens": "8192"}, "^trial config: train_tokens: expected int, got str '8192'$"),
    ({"seed": True}, "^trial config: seed: expected int, got bool 'True'$"),
    ({"task": None}, "^trial config: task: must not be empty$"),
    ({"resources": {"workers": 1, "gpus": 1}}, "^trial config: resources: unknown field 'gpus'$"),
    ({"resources": {"workers": 1.5}}, "^trial config: resources: workers: expected int, got float '1.5'$"),
])
def test_a_bad_trial_config_is_one_line_naming_the_field(change, message):
    with pytest.raises(RecordError, match=message):
        TrialConfig.from_dict({**SOLO, **change})


def test_a_trial_config_without_a_required_field_names_it():
    with pytest.raises(RecordError, match="^trial config: missing field 'out_dir'$"):
        TrialConfig.from_dict({k: v for k, v in SOLO.items() if k != "out_dir"})
    with pytest.raises(RecordError, match="^trial config: expected a mapping, got list$"):
        TrialConfig.from_dict([])


def test_a_trial_config_as_the_flat_layout_saved_it_in_tunes_state_still_reads():
    old = {"experiment_root": "/e", "run_dir": "/runs/one", "data_dir": "/runs/one/data", "task": {}, "trainer": "lm",
           "sealed": {"harness/data.py": "ab"}, "metric": "heldout_loss", "seed": 0, "train_tokens": 8192,
           "report_every": 2, "checkpoint_tokens": 0, "sandbox": {"level": "full"}, "timeout_s": 0,
           "peak_tflops": 0.0, "train_storage": "/runs/one/train", "slots": "k", "search": "k",
           "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0, "placement": "pack"},
           "variant_id": "v", "trial_id": "t", "variant_dir": "/runs/one/variant/v", "out_dir": "/runs/one/trials/v"}
    assert TrialConfig.from_dict(old).to_dict() | old == TrialConfig.from_dict(old).to_dict()


def test_an_outcome_round_trips_and_a_damaged_one_is_refused_in_one_line():
    done = TrialOutcome("completed", fitness=2.5, metrics={"heldout_loss": 2.5}, summary={"curve": [[1, 2, 3]]},
                        trial_seconds=3.0)
    assert TrialOutcome.from_json(done.to_json()) == done
    stopped = TrialOutcome.stopped([[100, 3.0, 3.5], [200, 2.0, 2.25]])
    assert stopped.status == "stopped" and stopped.summary["tokens_trained"] == 200
    assert stopped.failure_reason == "stopped early by the scheduler at 200 tokens (dev loss 2.2500)"
    with pytest.raises(RecordError, match="^trial outcome: status must be one of completed, failed, stopped, "
                                          "got 'done'$"):
        TrialOutcome.from_dict({"status": "done"})
    with pytest.raises(RecordError, match="^trial outcome: fitness: expected float, got str 'low'$"):
        TrialOutcome.from_dict({"status": "completed", "fitness": "low"})
    with pytest.raises(RecordError, match="^trial outcome: not JSON"):
        TrialOutcome.from_json("{")


def test_the_training_split_has_its_own_name():
    assert split_tokens({"train_tokens": 373_018, "dev_tokens": 46_627}) == 373_018
