"""The task's facts a child prompt carries, built from the spec, the data's meta and the harness's records."""

import json

import pytest

from evolve.search.facts import corpus_name, read_meta, steps_from_settings, task_facts
from evolve.spec import load_spec
from tests.test_prompts import FACTS

pytestmark = pytest.mark.unit


def test_steps_are_the_harness_arithmetic_on_the_settings(experiment):
    text = (experiment / "scaffold" / "config.yaml").read_text()
    steps, how = steps_from_settings(text, 327_680, 1)
    assert steps == 320 and how.startswith("16 sequences x 64 tokens x 1 worker x 1 micro-batch = 1,024 tokens")
    wider = text.replace("gradient_accumulation_steps: 1", "gradient_accumulation_steps: 3")
    assert steps_from_settings(wider, 327_680, 2) == (53, "16 sequences x 64 tokens x 2 workers x 3 micro-batches "
                                                          "= 6,144 tokens per step, from its config.yaml; whole "
                                                          "steps only")
    assert steps_from_settings(text, 1000, 1) == (0, "one optimizer step needs 1,024 tokens, more than the budget "
                                                     "of 1,000")
    assert steps_from_settings(text.replace("seq_len: 64", "seq_len: -4"), 327_680, 1)[0] is None
    assert steps_from_settings("a: [unclosed", 327_680, 1) == (None, "its config.yaml does not parse")
    assert steps_from_settings(None, 327_680, 1) == (None, "")


def test_facts_come_from_the_spec_the_meta_and_the_parents_record(experiment, tmp_path):
    spec = load_spec(experiment, [])
    settings = (experiment / "scaffold" / "config.yaml").read_text()
    meta = {"vocab_size": 256, "train_tokens": 372_301, "dev_tokens": 46_537}
    assert task_facts(spec, meta, settings, {"n_params": 124_672}) == FACTS  # the golden prompt's facts
    trained = task_facts(spec, meta, settings, {"n_params": 124_672, "optimizer_steps": 7})  # the record wins
    assert trained.steps == 7 and trained.steps_how == "as the harness planned them in its trial"
    fresh = task_facts(spec, None, settings, None)
    assert fresh.parent_params is None and fresh.split_tokens is None and fresh.steps == 320
    assert task_facts(spec, {"vocab_size": 256}, settings, {"n_params": True}).parent_params is None
    assert read_meta(tmp_path) is None
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    assert read_meta(tmp_path) == meta
    (tmp_path / "meta.json").write_text("{not json")
    assert read_meta(tmp_path) is None


def test_the_corpus_is_named_by_its_file_else_its_name_else_the_experiment():
    assert corpus_name({"corpus": "data/fineweb-10B.bin", "corpus_name": "x"}, "e") == "fineweb-10B.bin"
    assert corpus_name({"corpus": None, "corpus_name": "Python documentation"}, "e") == "Python documentation"
    assert corpus_name({}, "rl_arith") == "the one the harness of experiment rl_arith prepares"
