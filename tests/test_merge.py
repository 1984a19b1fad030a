"""The merge operator's pure parts: the three-way merge, the choice of a pair, the cascade's conflict
stage, the merge prompt and a kept merge proposal."""

import json

import pytest
import yaml

from evolve.agent import outbox
from evolve.agent.cascade import Rejected, check_reply
from evolve.agent.prompts import Candidate, merge_messages
from evolve.agent.writer import Outcome, Request
from evolve.record.store import Store
from evolve.search.merge import (CLOSE, OPEN, MergeError, choose_pair, common_base, marker_lines,
                                 merge_files, merge_text)

pytestmark = pytest.mark.unit

SETTINGS = """\
# optimisation
lr: 1.0e-3            # peak learning rate
weight_decay: 0.01    # decoupled for adamw
beta2: 0.99           # Adam second-moment decay
warmup_frac: 0.05
deepspeed:
  zero_stage: 0
  gradient_clipping: 1.0
"""


def test_a_file_changed_on_one_side_takes_that_side():
    ours = SETTINGS.replace("lr: 1.0e-3", "lr: 2.0e-3")
    assert merge_text(SETTINGS, ours, SETTINGS).text == ours
    assert merge_text(SETTINGS, SETTINGS, ours).text == ours
    assert merge_text(SETTINGS, ours, ours).conflicts == []


def test_yaml_settings_with_different_keys_changed_merge_cleanly():
    ours = SETTINGS.replace("lr: 1.0e-3", "lr: 2.0e-3")
    theirs = SETTINGS.replace("beta2: 0.99", "beta2: 0.995").replace("zero_stage: 0", "zero_stage: 2")
    m = merge_text(SETTINGS, ours, theirs)
    assert m.conflicts == []
    got = yaml.safe_load(m.text)
    assert got["lr"] == 2.0e-3 and got["beta2"] == 0.995 and got["deepspeed"]["zero_stage"] == 2
    assert got["weight_decay"] == 0.01 and "# peak learning rate" in m.text  # comments kept


def test_yaml_settings_with_the_same_key_changed_differently_conflict():
    ours = SETTINGS.replace("lr: 1.0e-3", "lr: 2.0e-3").replace("zero_stage: 0", "zero_stage: 1")
    theirs = SETTINGS.replace("lr: 1.0e-3", "lr: 5.0e-4")
    m = merge_text(SETTINGS, ours, theirs, ("a1", "s0", "b2"))
    assert len(m.conflicts) == 1
    c = m.conflicts[0]
    assert c.base == (1, 2) and c.ours == (1, 2) and c.theirs == (1, 2)
    lines = m.text.split("\n")
    assert lines[1:9] == [f"{OPEN} a1", "lr: 2.0e-3            # peak learning rate",
                          "||||||| BASE s0", "lr: 1.0e-3            # peak learning rate",
                          "------- THEIRS b2", "lr: 5.0e-4            # peak learning rate", CLOSE,
                          "weight_decay: 0.01    # decoupled for adamw"]
    assert "zero_stage: 1" in m.text  # ours' clean change outside the conflict is taken
    assert marker_lines(m.text) == [2, 4, 6, 8]


def test_an_identical_change_on_both_sides_is_not_a_conflict():
    both = SETTINGS.replace("warmup_frac: 0.05", "warmup_frac: 0.1")
    ours = both.replace("lr: 1.0e-3", "lr: 2.0e-3")
    m = merge_text(SETTINGS, ours, both)
    assert m.conflicts == [] and m.text == ours


def test_python_edits_in_different_functions_merge_and_overlapping_ones_conflict():
    base = "def a():\n    return 1\n\n\ndef b():\n    return 2\n\n\ndef c():\n    return 3\n"
    ours = base.replace("return 1", "return 10")
    theirs = base.replace("return 3", "return 30").replace("def b():\n", "def b():\n    x = 0\n")
    m = merge_text(base, ours, theirs)
    assert m.conflicts == [] and m.text == base.replace("return 1", "return 10").replace(
        "return 3", "return 30").replace("def b():\n", "def b():\n    x = 0\n")
    compile(m.text, "recipe.py", "exec")
    clash = merge_text(base, ours, base.replace("return 1", "return 11"))
    assert len(clash.conflicts) == 1 and "return 10\n||||||| BASE" in clash.text


def test_a_side_without_a_final_newline_never_joins_a_marker():
    m = merge_text("x: 1\n", "x: 2", "x: 3")
    assert m.text.split("\n") == [OPEN, "x: 2", "||||||| BASE", "x: 1", "------- THEIRS", "x: 3", CLOSE, ""]


def test_files_merge_only_the_mutable_surface():
    base = {"config.yaml": SETTINGS.encode(), "recipe.py": b"A = 1\n", "guidelines.md": b"be brief\n",
            "sealed.py": b"S = 1\n"}
    ours = {**base, "config.yaml": SETTINGS.replace("lr: 1.0e-3", "lr: 2.0e-3").encode()}
    theirs = {**base, "recipe.py": b"A = 2\n", "config.yaml": SETTINGS.replace("beta2: 0.99", "beta2: 0.9").encode()}
    mutable = ["config.yaml", "recipe.py", "guidelines.md"]
    m = merge_files(base, ours, theirs, mutable)
    assert m.conflicts == {} and m.n_conflicts == 0
    assert m.files["recipe.py"] == b"A = 2\n" and m.files["sealed.py"] == b"S = 1\n"
    assert b"lr: 2.0e-3" in m.files["config.yaml"] and b"beta2: 0.9 " in m.files["config.yaml"]
    assert m.from_theirs == ["config.yaml", "recipe.py"]
    clash = merge_files(base, ours, {**base, "config.yaml": SETTINGS.replace("lr: 1.0e-3", "lr: 3e-3").encode()},
                        mutable)
    assert list(clash.conflicts) == ["config.yaml"] and clash.n_conflicts == 1
    with pytest.raises(MergeError, match="sealed.py: not mutable, yet it differs"):
        merge_files(base, ours, {**theirs, "sealed.py": b"S = 2\n"}, mutable)
    with pytest.raises(MergeError, match="recipe.py: ours's file is not UTF-8"):
        merge_files(base, {**ours, "recipe.py": b"\xff\xfe"}, theirs, mutable)


# seed -> a -> c ; seed -> b -> d ; seed -> e (a crossover of a and b) ; the seed is everyone's root
PARENTS = {"seed": (), "a": ("seed",), "b": ("seed",), "c": ("a",), "d": ("b",), "e": ("b", "a"), "f": ("c",)}


def test_the_base_is_the_nearest_common_first_parent_ancestor():
    assert common_base(PARENTS, "c", "d") == "seed"
    assert common_base(PARENTS, "f", "c") == "c"
    assert common_base(PARENTS, "d", "e") == "b"
    assert common_base({"x": ("y",), "z": ("w",)}, "x", "z") is None  # roots unknown: no base


def test_the_pair_is_the_best_two_from_different_lineages():
    scores = {"seed": 0.0, "a": 1.0, "b": 0.5, "c": 3.0, "d": 2.0, "f": 4.0}
    # f descends from c: the best pair is f and d, merged from the seed
    assert choose_pair(PARENTS, scores, 8, set()) == ("f", "d", "seed")
    assert choose_pair(PARENTS, scores, 8, {frozenset(("f", "d"))}) == ("c", "d", "seed")
    # only the pool's best are paired
    assert choose_pair(PARENTS, scores, 2, set()) is None  # f and c: one is the other's ancestor
    # e has a among its parents (a crossover), so a and e are never merged; d and e share b
    assert choose_pair(PARENTS, {"a": 2.0, "e": 1.0}, 8) is None
    assert choose_pair(PARENTS, {"e": 2.0, "d": 1.0}, 8) == ("e", "d", "b")
    assert choose_pair(PARENTS, {"seed": 1.0}, 8) is None
    # a variant whose chain leads to an unknown root has no base with the others
    assert choose_pair({**PARENTS, "x": ("gone",)}, {"x": 5.0, "c": 1.0}, 8) is None


def _conflicted():
    base = {"config.yaml": SETTINGS.encode(), "recipe.py": b"A = 1\n"}
    ours = {**base, "config.yaml": SETTINGS.replace("lr: 1.0e-3", "lr: 2.0e-3").encode()}
    theirs = {**base, "config.yaml": SETTINGS.replace("lr: 1.0e-3", "lr: 4.0e-3").encode()}
    return merge_files(base, ours, theirs, ["config.yaml", "recipe.py"], ("a1", "s0", "b2"))


def test_the_cascade_wants_every_conflict_region_resolved():
    m = _conflicted()
    region = "\n".join(m.files["config.yaml"].decode().split("\n")[1:8])
    fixed = "lr: 3.0e-3            # peak learning rate"
    reply = f"RATIONALE: between the two\n\nFILE: config.yaml\n<<<<<<< SEARCH\n{region}\n=======\n{fixed}\n>>>>>>> REPLACE\n"
    files, _, changes = check_reply(reply, m.files, ["config.yaml", "recipe.py"], [], frozenset(), ("config.yaml",))
    assert yaml.safe_load(files["config.yaml"])["lr"] == 3.0e-3 and changes == [{"file": "config.yaml", "how": "edited"}]
    left = reply.replace(f"{fixed}\n>>>>>>> REPLACE", f"{fixed}\n{CLOSE}\n>>>>>>> REPLACE")
    with pytest.raises(Rejected) as e:
        check_reply(left, m.files, ["config.yaml", "recipe.py"], [], frozenset(), ("config.yaml",))
    assert e.value.stage == "conflict" and e.value.reason.startswith(
        "FILE: config.yaml: 1 conflict marker line(s) left, the first at line 3; replace each region")
    untouched = "RATIONALE: only the recipe\n\nFILE: recipe.py\n```\nA = 2\n```\n"
    with pytest.raises(Rejected, match="conflict: FILE: config.yaml: 4 conflict marker line"):
        check_reply(untouched, m.files, ["config.yaml", "recipe.py"], [], frozenset(), ("config.yaml",))


def test_the_merge_prompt_shows_the_conflicts_and_refuses_sealed_files():
    m = _conflicted()
    ours, theirs = Candidate("a1", {"config.yaml": "x"}, 2.5, rationale="raise lr"), Candidate("b2", {}, 2.6)
    text = {"config.yaml": m.files["config.yaml"].decode()}
    msgs = merge_messages(ours, theirs, "s0", text, "heldout_loss", "min")
    assert msgs == merge_messages(ours, theirs, "s0", text, "heldout_loss", "min")  # the same state, the same prompt
    assert OPEN in msgs[0]["content"] and "lower heldout_loss is better" in msgs[0]["content"]
    user = msgs[1]["content"]
    assert "## Ours: a1\nheldout_loss: 2.5000" in user and "what made it: raise lr" in user
    assert "## Their common ancestor (the base): s0" in user and f"{OPEN} a1\nlr: 2.0e-3" in user
    with pytest.raises(ValueError, match="refusing to show sealed file"):
        merge_messages(ours, theirs, "s0", {"evaluate.py": "x"}, "heldout_loss", "min", sealed=("evaluate.py",))


def test_a_kept_merge_proposal_reads_back_with_its_merge(tmp_path):
    store = Store(tmp_path)
    merge = {"other": "b2", "base": "s0", "conflicted": ["config.yaml"], "conflicts": 1, "from_theirs": []}
    req = Request("00003-abc", "merge", [], 0, "abc", "a1", merge=merge)
    path = outbox.keep(store, Outcome(req, True, files={"config.yaml": b"lr: 3\n"}, rationale="r", calls=[]))
    (got,), bad = outbox.load(store)
    assert bad == [] and got.request.merge == merge and got.request.purpose == "merge"
    data = json.loads(path.read_text())
    del data["request"]["merge"]  # a proposal kept before merges existed
    path.write_text(json.dumps(data))
    (old,), _ = outbox.load(store)
    assert old.request.merge == {}
