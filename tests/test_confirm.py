"""The confirmation verdict: pure decisions from re-runs, approvals and the noise band."""

import pytest

from evolve.search.confirm import lines, plan, verdict

pytestmark = pytest.mark.unit

ROWS = [{"variant_id": "seed", "status": "completed", "fitness": 3.0, "parent_ids": [], "operator": "seed"},
        {"variant_id": "a", "status": "completed", "fitness": 2.9, "parent_ids": ["seed"], "operator": "perturb"},
        {"variant_id": "b", "status": "completed", "fitness": 2.85, "parent_ids": ["a"], "operator": "llm"},
        {"variant_id": "c", "status": "failed", "fitness": None, "parent_ids": ["a"], "operator": "llm"}]
RERUNS = {"seed": [3.0, 3.05, 2.95], "a": [2.88, 2.9, 2.92], "b": [2.84, 2.85, 2.86]}


def decide(**kw):
    args = dict(rows=ROWS, reruns=RERUNS, approvals=set(), seed_id="seed", mode="min", alpha=0.05,
                flag_sigmas=4.0, need_approval=False)
    args.update(kw)
    return verdict(**args)


def test_plan_reruns_the_seed_the_top_and_their_parents():
    assert plan(ROWS, "seed", "min", 1, [1, 2]) == [("seed", 1), ("seed", 2), ("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert [v for v, _ in plan(ROWS, "seed", "max", 1, [1])] == ["seed", "a"]  # maximising: a is the top
    assert plan(ROWS, "seed", "min", 0, [1]) == [("seed", 1)]


def test_the_champion_is_the_best_confirmed_candidate():
    v = decide()
    assert v["champion"]["variant_id"] == "b" and v["champion"]["p"] < 0.05
    assert v["noise"]["sd"] == pytest.approx(0.05) and v["noise"]["n"] == 3
    assert not any(c["flagged"] for c in v["candidates"])  # jumps of 2 and 1 noise sds


def test_without_a_significant_gain_there_is_no_champion():
    v = decide(reruns={**RERUNS, "b": [2.8, 2.95, 2.9], "a": [2.95, 2.85, 3.05]}, rows=ROWS)
    assert v["champion"] is None
    assert "confirmed champion: none" in "\n".join(lines({**v, "metric": "loss", "alpha": 0.05}))


def test_approval_mode_promotes_nothing_until_a_person_approves():
    v = decide(need_approval=True)
    assert v["champion"] is None and {c["variant_id"] for c in v["candidates"] if c["awaiting"]} == {"a", "b"}
    v = decide(need_approval=True, approvals={"a"})
    assert v["champion"]["variant_id"] == "a"  # b is better but not approved
    assert decide(need_approval=True, approvals={"a", "b"})["champion"]["variant_id"] == "b"


def test_a_jump_far_beyond_the_noise_is_flagged_until_approved():
    rows = [dict(r) for r in ROWS]
    rows[2]["fitness"] = 1.5  # b's single run: 28 noise sds better than a's
    v = decide(rows=rows)
    (b,) = [c for c in v["candidates"] if c["variant_id"] == "b"]
    assert b["flagged"] and b["jump_sigmas"] == pytest.approx(28.0) and b["awaiting"]
    assert v["champion"]["variant_id"] == "a"  # the next confirmed candidate, not the flagged one
    assert decide(rows=rows, approvals={"b"})["champion"]["variant_id"] == "b"
