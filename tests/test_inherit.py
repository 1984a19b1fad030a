"""Inherited weights: a child that changes only settings continues from its parent's final weights."""

import json
from pathlib import Path

import pandas as pd
import pytest

from evolve.messages import TrialConfig
from evolve.rank.lm import inherited_budget
from evolve.read.population import load_population
from evolve.read.status import status_lines
from evolve.record.weights import keep_weights, read_inherit
from evolve.search.inherit import inherit_refusal, inherit_tokens
from evolve.spec import SpecError, load_spec

SETTINGS = "config.yaml"
PARENT = {"recipe.py": b"def f(): pass\n", SETTINGS: b"n_layer: 2\nn_embd: 64\nlr: 0.001\n"}
SHAPES = ["n_layer", "n_embd", "n_head", "seq_len"]


@pytest.mark.unit
def test_only_a_child_that_changes_settings_outside_the_shapes_inherits():
    assert inherit_refusal(PARENT, {**PARENT, SETTINGS: b"n_layer: 2\nn_embd: 64\nlr: 0.01\n"}, SETTINGS, SHAPES) is None
    assert inherit_refusal(PARENT, {**PARENT, SETTINGS: b"n_layer: 3\nn_embd: 64\nlr: 0.001\n"}, SETTINGS,
                           SHAPES) == "it changes n_layer, which shapes the weights"
    assert inherit_refusal(PARENT, {**PARENT, "recipe.py": b"def f(): return 1\n"}, SETTINGS,
                           SHAPES) == "it changes recipe.py, not only settings"
    assert inherit_refusal(PARENT, {**PARENT, "notes.md": b"x"}, SETTINGS, SHAPES) == "it changes notes.md, not only settings"
    assert inherit_refusal(PARENT, {**PARENT, SETTINGS: b"[1, 2]"}, SETTINGS, SHAPES) == "its config.yaml is not a mapping"
    assert inherit_refusal(PARENT, {**PARENT, SETTINGS: b"a: [1"}, SETTINGS, SHAPES) == "its config.yaml does not read as YAML"
    assert inherit_tokens(0, 8192) == 2048 and inherit_tokens(4096, 8192) == 4096


@pytest.mark.unit
def test_an_inheriting_trial_trains_its_own_tokens_whatever_its_parents_checkpoint_claims():
    config = TrialConfig(variant_dir="v", out_dir="o", data_dir="d", task={}, seed=0, train_tokens=4096,
                         inherited_from="p", inherited_tokens=8192)
    assert inherited_budget(config, {"tokens": 8192}) == (12288, 8192)
    # a parent that wrote a smaller count into its checkpoint buys its child nothing: the count the searcher set wins
    assert inherited_budget(config, {"tokens": 0}) == (12288, 8192)
    # the trial's own checkpoint after a retry is further on, and counts
    assert inherited_budget(config, {"tokens": 10240}) == (12288, 10240)
    with pytest.raises(RuntimeError, match="^the trial inherits p's weights, but has no checkpoint to load$"):
        inherited_budget(config, None)


@pytest.mark.unit
def test_kept_weights_carry_the_trial_process_count_and_a_forged_one_reads_as_none(tmp_path):
    sealed = tmp_path / "ckpt" / "tokens-8192"
    sealed.mkdir(parents=True)
    (sealed / "evolve_state.json").write_text(json.dumps({"tokens": 1}))  # what the variant's process wrote
    run = tmp_path / "run"
    dest = keep_weights(run, "abc", sealed, 8192)
    assert read_inherit(run, "abc") == 8192 and (dest / "weights" / "evolve_state.json").is_file()
    keep_weights(run, "abc", sealed, 16384)  # a retried trial's replaces it
    assert read_inherit(run, "abc") == 16384 and not [p for p in (run / "inherit").iterdir() if p.name.startswith(".")]
    (run / "inherit" / "abc" / "inherit.json").write_text(json.dumps({"variant_id": "other", "tokens": 5}))
    assert read_inherit(run, "abc") is None and read_inherit(run, "missing") is None
    (run / "inherit" / "abc" / "inherit.json").write_text(json.dumps({"variant_id": "abc", "tokens": "5"}))
    assert read_inherit(run, "abc") is None


@pytest.mark.unit
def test_inheritance_is_checked_in_the_spec(experiment):
    with pytest.raises(SpecError, match="^operator.inherit_tokens: must be 0"):
        load_spec(experiment, ["operator.inherit=true", "operator.inherit_tokens=-1"])
    with pytest.raises(SpecError, match="^operator.shape_keys: expected list"):
        load_spec(experiment, ["operator.shape_keys=n_layer"])
    rl = Path(__file__).parents[1] / "experiments" / "rl_arith"
    with pytest.raises(SpecError, match="^operator.inherit: the rl trainer saves no checkpoints"):
        load_spec(rl, ["operator.inherit=true"])


@pytest.mark.search
def test_children_continue_from_their_parents_weights_and_count_only_their_own_tokens(tmp_path):
    import ray

    from evolve.driver import init_ray, run_search

    tiny_lm = Path(__file__).parents[1] / "experiments" / "tiny_lm"
    frozen = "[n_head,n_layer,n_embd,seq_len,batch_size,deepspeed.gradient_accumulation_steps]"
    spec = load_spec(tiny_lm, ["budget.train_tokens=8192", "trial.report_every=2", "budget.trials=5",
                               "budget.concurrent=1", "operator.inherit=true", "operator.inherit_tokens=4096",
                               f"operator.heuristic.frozen={frozen}", "confirm.top=1", "confirm.seeds=2"])
    run = tmp_path / "run"
    init_ray(spec, num_cpus=2)
    try:
        run_search(spec, run, log=lambda line: None)
    finally:
        ray.shutdown()
    full = load_population(run)
    pop = full.set_index("variant_id")
    assert len(pop) == 5 and (pop["status"] == "completed").all(), pop[["status", "failure_reason"]]
    seed = pop[pop["operator"] == "seed"].iloc[0]
    assert pd.isna(seed["inherited_from"]) and seed["tokens_trained"] == 8192
    children = pop[pop["operator"] != "seed"]
    inherited = children[children["inherited_from"].notna()]
    assert len(inherited) >= 1  # with one slot, every child's parent has finished before it starts
    total = {vid: int(row["tokens_trained"]) + (0 if pd.isna(row["tokens_inherited"]) else int(row["tokens_inherited"]))
             for vid, row in pop.iterrows()}  # the tokens in each variant's final weights
    for vid, row in inherited.iterrows():
        parent = row["inherited_from"]
        assert parent == row["parent_ids"][0] and row["tokens_trained"] == 4096  # its own tokens only
        assert row["tokens_inherited"] == total[parent] == read_inherit(run, parent)
        curve = full.curve(vid)
        assert curve[0][0] > row["tokens_inherited"] and curve[-1][0] == total[vid]
        assert read_inherit(run, vid) == total[vid]
    assert (run / "inherit" / seed.name / "weights").is_dir()
    assert any(line.startswith(f"inherited weights: {len(inherited)} of 5 trials") for line in status_lines(str(run)))
    reruns = [json.loads(p.read_text()) for p in (run / "confirmations").glob("*.json")]
    assert reruns and all(r["status"] == "completed" for r in reruns)
