"""Prompts are pure: the same state gives the same messages (golden files)."""

import json
import os
from pathlib import Path

import pytest

from evolve.agent.prompts import Candidate, child_messages, notebook_messages, prompt_hash, repair_messages

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
SCAFFOLD = Path(__file__).resolve().parents[1] / "experiments" / "tiny_lm" / "scaffold"


def _files(**changes):
    files = {p: (SCAFFOLD / p).read_text() for p in ("recipe.py", "config.yaml", "guidelines.md")}
    return {**files, **changes}


def _state():
    parent = Candidate("aaaaaaaaaaaa", _files(), 2.3366,
                       [[20480, 3.1, 3.0], [40960, 2.6, 2.55], [61440, 2.4, 2.38]],
                       {"heldout_loss": 2.3366, "heldout_bpb": 3.371})
    other_cfg = _files()["config.yaml"].replace("lr: 1.0e-3 ", "lr: 3.0e-3 ")
    other = Candidate("bbbbbbbbbbbb", _files(**{"config.yaml": other_cfg}), 2.2513,
                      rationale="raise the peak learning rate")
    return parent, [other], ["ccccccccccc (trained, failed): RecipeError: model_config: 1,200,000 "
                             "parameters exceed the cap of 1,000,000"]


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
                              "heldout_loss", "min")
    _golden("child_prompt.txt", messages)
    again = child_messages(*_state()[:1], _state()[1], _state()[2], "- lr 3e-3 beat 1e-3 (2.25 vs 2.34)",
                           "heldout_loss", "min")
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
