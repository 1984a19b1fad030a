"""Prompts are pure: the same state gives the same messages (golden files)."""

import json
import os
from pathlib import Path

import pytest

from evolve.agent.prompts import (CURVE_POINTS, Candidate, TaskFacts, child_messages, curve_picks, curve_table,
                                  inspiration_diff, notebook_messages, prompt_chars, prompt_hash,
                                  repair_messages)

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
SCAFFOLD = Path(__file__).resolve().parents[1] / "experiments" / "tiny_lm" / "scaffold"


def _files(**changes):
    files = {p: (SCAFFOLD / p).read_text() for p in ("recipe.py", "config.yaml", "guidelines.md")}
    return {**files, **changes}


def _curve(n=16, columns=5):
    """A recorded curve: every 20 optimizer steps of 1,024 tokens, a cosine-like lr; `columns=3`: an old row."""
    rows = [[20480 * (i + 1), 3.2 - 0.05 * i, 3.1 - 0.048 * i, 20 * (i + 1), 1.0e-3 * (1 - i / n)] for i in range(n)]
    return [r[:columns] for r in rows]


FACTS = TaskFacts(train_tokens=327_680, param_cap=1_000_000, eval_seq_len=128,
                  corpus="Python documentation (pydoc_data.topics)", split_tokens=372_301, steps=320,
                  steps_how="16 sequences x 64 tokens x 1 worker x 1 micro-batch = 1,024 tokens per step, "
                            "from its config.yaml; whole steps only", parent_params=124_672)
SIBLINGS = ({"variant_id": "dddddddddddd", "status": "failed", "change": "widen the model to 256",
             "reason": "model_config: 1,661,440 parameters exceed the cap of 1,000,000"},
            {"variant_id": "eeeeeeeeeeee", "status": "stopped", "change": "perturbed lr 0.001 -> 0.02",
             "reason": "stopped early by the scheduler at 40,960 tokens (dev loss 3.0100)"})
IN_FLIGHT = ({"parent": "aaaaaaaaaaaa", "rationale": "switch the schedule to linear decay", "files": ["config.yaml"]},
             {"parent": "aaaaaaaaaaaa", "rationale": None}, {"parent": "bbbbbbbbbbbb", "rationale": None})


def _state():
    parent = Candidate("aaaaaaaaaaaa", _files(), 2.3366, _curve(),
                       {"heldout_loss": 2.3366, "heldout_bpb": 3.371},
                       speed={"tokens_per_s": 21_500.0, "trial_seconds": 41.2})
    other_cfg = _files()["config.yaml"].replace("lr: 1.0e-3 ", "lr: 3.0e-3 ")
    other = Candidate("bbbbbbbbbbbb", _files(**{"config.yaml": other_cfg}), 2.2513,
                      rationale="raise the peak learning rate")
    return parent, [other], ["ccccccccccc (trained, failed): RecipeError: model_config: 1,200,000 "
                             "parameters exceed the cap of 1,000,000",
                             "eeeeeeeeeeee (trained, failed): stopped early by the scheduler"]


def _golden(name: str, messages: list) -> None:
    text = "\n\n".join(f"=== {m['role']} ===\n{m['content']}" for m in messages) + "\n"
    path = GOLDEN / name
    if os.environ.get("EVOLVE_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert path.is_file(), f"{path} missing: run with EVOLVE_UPDATE_GOLDEN=1 once"
    assert text == path.read_text()


def test_child_prompt_matches_golden():
    parent, others, failures = _state()
    messages = child_messages(parent, others, failures, "- lr 3e-3 beat 1e-3 (2.25 vs 2.34)",
                              "heldout_loss", "min", facts=FACTS, siblings=SIBLINGS, in_flight=IN_FLIGHT,
                              max_chars=60_000)
    _golden("child_prompt.txt", messages)
    again = child_messages(*_state()[:1], _state()[1], _state()[2], "- lr 3e-3 beat 1e-3 (2.25 vs 2.34)",
                           "heldout_loss", "min", facts=FACTS, siblings=SIBLINGS, in_flight=IN_FLIGHT,
                           max_chars=60_000)
    assert prompt_hash(messages) == prompt_hash(again)


def test_prompt_shows_guidelines_once_and_no_unmeasured_number():
    parent, _, _ = _state()
    fresh = Candidate("aaaaaaaaaaaa", parent.files, None)
    user = child_messages(fresh, [], [], "", "heldout_loss", "min")[1]["content"]
    assert user.count("# Guidelines for changing this recipe") == 1
    assert "heldout_loss: not measured yet" in user and "(empty: nothing recorded yet)" in user
    assert "Recent children that failed" not in user


def test_sealed_files_never_reach_a_prompt():
    parent, _, _ = _state()
    leaky = Candidate("aaaaaaaaaaaa", {**parent.files, "evaluate.py": "SECRET"}, 1.0)
    with pytest.raises(ValueError, match=r"^prompt: refusing to show sealed file\(s\) evaluate.py$"):
        child_messages(leaky, [], [], "", "heldout_loss", "min", sealed=("evaluate.py",))


def test_repair_and_notebook_prompts_match_golden():
    parent, others, failures = _state()
    messages = child_messages(parent, others, failures, "", "heldout_loss", "max")
    repaired = repair_messages(messages, "I think lr should go up.", "parse: reply has no RATIONALE")
    assert repaired[:2] == messages and [m["role"] for m in repaired[2:]] == ["assistant", "user"]
    _golden("repair_turn.txt", repaired[2:])
    events = [{"variant": "bbbbbbbbbbbb", "change": "raise lr", "status": "completed",
               "heldout_loss": 2.2513, "parent_heldout_loss": 2.3366},
              {"rejected_at": "apply", "reason": "FILE: config.yaml: SEARCH text not found: 'lr: 9'"}]
    _golden("notebook_prompt.txt", notebook_messages("- nothing yet", events))
    assert json.loads(json.dumps(events)) == events


def _child(parent, others, failures, **kw):
    return child_messages(parent, others, failures, "- lr 3e-3 beat 1e-3", "heldout_loss", "min", facts=FACTS,
                          siblings=SIBLINGS, in_flight=IN_FLIGHT, **kw)


def test_curve_points_are_evenly_spread_with_step_and_lr_and_old_rows_still_show():
    assert curve_picks(16) == [0, 2, 4, 6, 9, 11, 13, 15] and curve_picks(5) == [0, 1, 2, 3, 4]
    assert curve_picks(100, 8)[0] == 0 and curve_picks(100, 8)[-1] == 99 and len(curve_picks(100, 8)) == 8
    table = curve_table(_curve(40))
    rows = table.split("```\n")[1].splitlines()[1:-1]
    assert len(rows) == CURVE_POINTS and "8 of 40 points" in table
    assert rows[0].split() == ["20", "20,480", "1.000e-03", "3.2000", "3.1000"]
    assert rows[-1].split()[:2] == ["800", "819,200"]
    old = curve_table(_curve(3, columns=3))  # a row recorded before step and lr were kept
    assert "every point" in old
    assert old.split("```\n")[1].splitlines()[1].split() == ["-", "20,480", "-", "3.2000", "3.1000"]
    assert curve_table([]) == "learning curve: none yet"


def test_an_inspiration_is_a_diff_against_the_parent_with_its_score():
    parent, others, failures = _state()
    diff = inspiration_diff(parent.files, others[0].files, "bbbbbbbbbbbb")
    assert [ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")] == [
        "-lr: 1.0e-3            # peak learning rate", "+lr: 3.0e-3            # peak learning rate"]
    user = _child(parent, others, failures)[1]["content"]
    inspiration = user[user.index("## Another strong variant bbbbbbbbbbbb"):]
    assert "heldout_loss: 2.2513" in inspiration and "raise the peak learning rate" in inspiration
    assert "optimizer: adamw" in inspiration and "schedule: cosine" not in inspiration  # context lines only
    added = inspiration_diff({"a.py": "x = 1\n"}, {"a.py": "x = 1\n", "b.py": "y = 2\n"}, "v")
    assert "+++ v/b.py" in added and "+y = 2" in added and "a.py" not in added


def test_the_child_prompt_carries_the_facts_siblings_and_changes_in_flight():
    parent, others, failures = _state()
    user = _child(parent, others, failures)[1]["content"]
    facts = user[user.index("## The task"):user.index("## Research notebook")]
    for fact in ("327,680 training tokens", "buy 320 optimizer steps", "cap: 1,000,000 parameters",
                 "has 124,672", "128 tokens (eval_seq_len)", "Python documentation", "372,301 tokens",
                 "21,500 tokens/s, 41 s per trial"):
        assert fact in facts, fact
    assert "\nspeed:" not in user[user.index("## Parent"):]  # the parent's speed is said once, in the facts
    assert "dddddddddddd (failed): tried: widen the model to 256; reason: model_config: 1,661,440" in user
    assert "eeeeeeeeeeee (trained, failed)" not in user  # a sibling's failure is not repeated among recent ones
    assert "ccccccccccc (trained, failed)" in user
    assert "waiting for a trial (changes config.yaml): switch the schedule to linear decay" in user
    assert "- 1 child of bbbbbbbbbbbb being written now" in user
    unknown = TaskFacts(train_tokens=8192, param_cap=10, eval_seq_len=64, corpus="x")
    fresh = child_messages(Candidate("aaaaaaaaaaaa", parent.files, None), [], [], "", "heldout_loss", "min",
                           facts=unknown)[1]["content"]
    assert "optimizer steps: not known yet" in fresh and "count: not measured yet" in fresh
    assert "training split: not prepared yet" in fresh and "speed: not measured yet" in fresh


def test_a_prompt_over_its_budget_drops_the_diffs_then_curve_points_never_the_facts_or_files():
    parent, others, failures = _state()
    full = _child(parent, others, failures)
    size = prompt_chars(full)
    assert _child(parent, others, failures, max_chars=size) == full
    no_diffs = _child(parent, others, failures, max_chars=size - 1)
    user = no_diffs[1]["content"]
    assert prompt_chars(no_diffs) <= size - 1 and "+lr: 3.0e-3" not in user
    assert "its diff against the parent: left out (prompt budget)" in user
    assert f"## Left out to keep this prompt under {size - 1:,} characters" in user
    assert "- the diffs of 1 other strong variant(s) (their scores and rationales are kept)" in user
    assert "learning-curve points" not in user and "8 of 16 points" in user
    thinner = _child(parent, others, failures, max_chars=prompt_chars(no_diffs) - 100)
    assert prompt_chars(thinner) <= prompt_chars(no_diffs) - 100
    assert "- 4 of the parent's 8 learning-curve points" in thinner[1]["content"]
    assert "4 of 16 points" in thinner[1]["content"]
    tiny = _child(parent, others, failures, max_chars=1000)[1]["content"]  # cannot fit: the essentials stay
    assert "2 of 16 points" in tiny and "- 6 of the parent's 8 learning-curve points" in tiny
    assert "## The task" in tiny and all(f"FILE: {p}" in tiny for p in parent.files)
    assert "def batches(data, cfg, generator):" in tiny
