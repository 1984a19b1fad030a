"""The checks before training: each stage rejects what it should, with its reason."""

import json
from pathlib import Path

import pytest

from evolve.agent.cascade import Rejected, check_reply, check_syntax, smoke_run
from evolve.spec import load_spec
from evolve.driver import prepare_run, scaffold_files
from evolve.variant import content_hash, variant_id
from tests.conftest import TINY_LM

MUTABLE = ["recipe.py", "config.yaml", "guidelines.md"]
SEALED = ["harness/data.py", "harness/evaluate.py"]
LR = "<<<<<<< SEARCH\nlr: 1.0e-3            # peak learning rate\n=======\nlr: 2.0e-3            # peak learning rate\n>>>>>>> REPLACE"


@pytest.fixture
def parent(experiment):
    return scaffold_files(load_spec(experiment))


def _check(reply, parent, known=frozenset()):
    return check_reply(reply, parent, MUTABLE, SEALED, known)


@pytest.mark.unit
def test_a_valid_multi_file_reply_passes(parent):
    reply = (f"RATIONALE: raise lr and say so\n\nFILE: config.yaml\n{LR}\n\n"
             "FILE: guidelines.md\n```\n# Guidelines\n- lr 2e-3 at this budget\n```\n")
    files, rationale, changes = _check(reply, parent)
    assert rationale == "raise lr and say so"
    assert changes == [{"file": "config.yaml", "how": "edited"}, {"file": "guidelines.md", "how": "rewritten"}]
    assert b"lr: 2.0e-3" in files["config.yaml"] and files["recipe.py"] == parent["recipe.py"]


@pytest.mark.unit
@pytest.mark.parametrize("reply, stage, reason", [
    ("", "parse", "reply is empty"),
    ("RATIONALE: x\nFILE: ../harness/evaluate.py\n```\nrigged\n```", "policy",
     "FILE: ../harness/evaluate.py: sealed; the agent may not change it"),
    ("RATIONALE: x\nFILE: run.sh\n```\nrm -rf /\n```", "policy",
     "FILE: run.sh: outside the mutable surface (recipe.py, config.yaml, guidelines.md)"),
    ("RATIONALE: x\nFILE: config.yaml\n<<<<<<< SEARCH\nlr: 9\n=======\nlr: 1\n>>>>>>> REPLACE", "apply",
     "FILE: config.yaml: SEARCH text not found: 'lr: 9'"),
    ("RATIONALE: x\nFILE: recipe.py\n<<<<<<< SEARCH\nimport math\n=======\nimport math(\n>>>>>>> REPLACE",
     "syntax", "recipe.py line"),
    ("RATIONALE: x\nFILE: config.yaml\n<<<<<<< SEARCH\nn_layer: 2            # transformer blocks\n"
     "=======\nn_layer: [2\n>>>>>>> REPLACE", "syntax", "config.yaml: not valid YAML"),
])
def test_each_stage_rejects_with_its_reason(parent, reply, stage, reason):
    with pytest.raises(Rejected) as e:
        _check(reply, parent)
    assert e.value.stage == stage and e.value.reason.startswith(reason), e.value.reason
    assert "\n" not in e.value.reason


@pytest.mark.unit
def test_duplicates_are_rejected(parent):
    same = "RATIONALE: x\nFILE: config.yaml\n<<<<<<< SEARCH\nlr: 1.0e-3  # peak learning rate\n=======\nlr: 1.0e-3            # peak learning rate\n>>>>>>> REPLACE"
    with pytest.raises(Rejected, match="duplicate: the edits leave every file as it was"):
        _check(same.replace("lr: 1.0e-3  # peak", "lr: 1.0e-3            # peak"), parent)
    files, _, _ = _check(f"RATIONALE: x\nFILE: config.yaml\n{LR}", parent)
    known = {variant_id({p: content_hash(b) for p, b in files.items()})}
    with pytest.raises(Rejected, match=r"^duplicate: the child is identical to variant [0-9a-f]{12}$"):
        _check(f"RATIONALE: x\nFILE: config.yaml\n{LR}", parent, known)


@pytest.mark.unit
def test_syntax_never_runs_the_code():
    check_syntax("recipe.py", b"import os\nos._exit(1)\n")  # compiled, not run
    with pytest.raises(Rejected, match="not UTF-8"):
        check_syntax("recipe.py", b"\xff\xfe")


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    """One run folder for the module's smoke runs: they share its zygote, as a search's smoke runs do
    (the conftest stops it when the module ends)."""
    _, context = prepare_run(load_spec(TINY_LM), tmp_path_factory.mktemp("cascade") / "run")
    return context


def _smoke(parent, context, tmp_path, **edits):
    files = {**parent, **{k: v.encode() for k, v in edits.items()}}
    return smoke_run(files, context, str(tmp_path / "smoke"), steps=2, timeout_s=60)


@pytest.mark.warm
def test_smoke_run_trains_a_good_child_and_keeps_nothing(parent, context, tmp_path):
    assert _smoke(parent, context, tmp_path) > 0
    assert not (tmp_path / "smoke").exists()


@pytest.mark.warm
def test_import_and_smoke_failures_are_told_apart(parent, context, tmp_path):
    broken_import = parent["recipe.py"].decode() + "\nimport no_such_module_anywhere\n"
    with pytest.raises(Rejected) as e:
        _smoke(parent, context, tmp_path, **{"recipe.py": broken_import})
    assert e.value.stage == "import" and "no_such_module_anywhere" in e.value.reason
    bad_loss = parent["recipe.py"].decode().replace("def loss(", "def loss(*a, **k):\n    raise ValueError('boom')\n\n\ndef _old_loss(")
    with pytest.raises(Rejected) as e:
        _smoke(parent, context, tmp_path, **{"recipe.py": bad_loss})
    assert e.value.stage == "smoke" and "boom" in e.value.reason and "recipe.py line" in e.value.reason


@pytest.mark.warm
def test_a_smoke_run_that_hangs_is_killed(parent, context, tmp_path):
    hang = parent["recipe.py"].decode().replace("def loss(", "def loss(*a, **k):\n    import time\n    time.sleep(600)\n\n\ndef _old_loss(")
    with pytest.raises(Rejected) as e:
        smoke_run({**parent, "recipe.py": hang.encode()}, context, str(tmp_path / "s"), steps=2, timeout_s=8)
    assert e.value.stage == "smoke" and e.value.reason == "killed after 8 s without finishing"


@pytest.mark.warm
def test_sgd_with_zero_trains(parent, context, tmp_path):
    """DeepSpeed calls any optimizer but Adam-likes 'untested' with ZeRO; the harness allows the recipe's choice."""
    cfg = parent["config.yaml"].decode().replace("optimizer: adamw ", "optimizer: sgd   ").replace(
        "zero_stage: 0 ", "zero_stage: 1 ")
    assert "optimizer: sgd" in cfg and "zero_stage: 1 " in cfg
    assert _smoke(parent, context, tmp_path, **{"config.yaml": cfg}) > 0
