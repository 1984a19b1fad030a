"""The operator bandit inside the searcher (driven without Ray) and in a real search."""

import json
import pickle

import pytest

from evolve.read.population import load_bandit, load_population
from evolve.search.bandit import reward

from tests.test_searcher import finish, make


def arms_of(s):
    return {vid: v.record.get("arm") for vid, v in s.variants.items() if v.parents}


@pytest.mark.unit
def test_each_child_is_drawn_by_an_arm_and_its_reward_updates_that_arm(experiment, tmp_path):
    s, store = make(experiment, tmp_path, "operator.bandit=ucb", "budget.trials=10")
    assert sorted(s.bandit.arms) == ["crossover", "perturb"]
    fits = [3.0, 2.9, 3.2, None, 2.7, 2.8, 2.6, 2.65, 2.5, 2.55]
    ids = []
    for i, fit in enumerate(fits):
        ids.append(s.suggest(f"t{i}")["variant_id"])
        finish(s, f"t{i}", {}, fit)
    arms = arms_of(s)
    assert len(arms) == 9 and set(arms.values()) == {"perturb", "crossover"}
    for vid, arm in arms.items():  # the record names the arm, and the arm is the operator that made it
        assert s.variants[vid].operator == arm
    expected = {"perturb": [], "crossover": []}
    pop = load_population(tmp_path / "run").set_index("variant_id")
    for vid, arm in arms.items():
        row, parent = pop.loc[vid], pop.loc[s.variants[vid].parents[0]]
        fit = row["fitness"] if row["status"] == "completed" else None
        assert row["tokens_trained"] == 1024  # what the rank said: a variant could shrink it, so the reward
        # divides by the tokens the searcher gave the trial instead
        expected[arm].append(reward(fit, parent["fitness"], row["status"], s.spec.budget.train_tokens, "min"))
    assert any(v > 0 for r in expected.values() for v in r) and any(v == 0 for r in expected.values() for v in r)
    on_disk = json.loads((tmp_path / "run" / "bandit.json").read_text())
    for arm, rewards in expected.items():
        assert s.bandit.arms[arm]["pulls"] == len(rewards) == on_disk["arms"][arm]["pulls"]
        assert s.bandit.arms[arm]["sum"] == pytest.approx(sum(rewards))
        assert s.bandit.arms[arm]["pending"] == 0
    table = load_bandit(tmp_path / "run").set_index("arm")
    assert table.loc["perturb", "pulls"] == len(expected["perturb"])
    assert table.loc["crossover", "mean_reward"] == pytest.approx(sum(expected["crossover"]) / len(expected["crossover"]))


@pytest.mark.unit
def test_bandit_off_keeps_todays_children_and_writes_nothing(experiment, tmp_path):
    off, _ = make(experiment, tmp_path / "off")
    plain, _ = make(experiment, tmp_path / "plain", "operator.bandit=off")
    assert off.bandit is None
    for s in (off, plain):
        for i in range(5):
            s.suggest(f"t{i}")
            finish(s, f"t{i}", {}, 3.0 - 0.1 * i)
    assert list(off.variants) == list(plain.variants)
    assert all(a is None for a in arms_of(off).values())
    assert not (tmp_path / "off" / "run" / "bandit.json").exists()


@pytest.mark.unit
def test_the_bandit_resumes_with_the_searcher(experiment, tmp_path):
    s1, _ = make(experiment, tmp_path / "a", "operator.bandit=thompson")
    s2, _ = make(experiment, tmp_path / "b", "operator.bandit=thompson")
    for s in (s1, s2):
        for i in range(4):
            s.suggest(f"t{i}")
            finish(s, f"t{i}", {}, 3.0 - 0.1 * i)
        s.suggest("t4")  # training when the snapshot is taken
    s1.save(str(tmp_path / "state.pkl"))
    s3, _ = make(experiment, tmp_path / "a", "operator.bandit=thompson")
    s3.restore(str(tmp_path / "state.pkl"))
    assert s3.bandit.arms == s2.bandit.arms and sum(a["pending"] for a in s3.bandit.arms.values()) == 1
    nxt = []
    for s in (s2, s3):
        finish(s, "t4", {}, 2.5)
        nxt.append([(s.suggest(f"t{i}")["variant_id"], finish(s, f"t{i}", {}, 2.4))[0] for i in range(5, 8)])
    assert nxt[0] == nxt[1] and s3.bandit.arms == s2.bandit.arms
    assert json.loads((tmp_path / "a" / "run" / "bandit.json").read_text())["arms"] == json.loads(
        (tmp_path / "b" / "run" / "bandit.json").read_text())["arms"]
    # a state saved before the bandit existed restores with the bandit the spec asks for now
    state = pickle.loads((tmp_path / "state.pkl").read_bytes())
    del state["bandit"], state["llm_arms"]
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(state))
    s4, _ = make(experiment, tmp_path / "a", "operator.bandit=ucb")
    s4.restore(str(tmp_path / "old.pkl"))
    assert s4.bandit.policy == "ucb" and sorted(s4.bandit.arms) == ["crossover", "perturb"]
    old = pickle.loads(pickle.dumps(s4))
    old.__dict__.pop("bandit")
    old.__setstate__({k: v for k, v in old.__dict__.items() if k not in ("bandit", "llm_arms")})
    assert old.bandit is None and old.llm_arms == {}


@pytest.mark.unit
def test_a_missing_or_corrupt_bandit_file_is_one_warning(tmp_path, capsys):
    from evolve.read.population import bandit_lines

    run = tmp_path / "run"
    run.mkdir()
    assert load_bandit(run).empty
    assert capsys.readouterr().err.strip() == ("evolve: warning: bandit.json not found "
                                               "(no child has been drawn by the bandit yet)")
    assert bandit_lines(run, expected=False) == []
    assert len(bandit_lines(run, expected=True)) == 1
    for bad in ("{not json", '{"policy": "ucb", "arms": {"perturb": {"pulls": "many"}}}', "[]"):
        (run / "bandit.json").write_text(bad)
        assert load_bandit(run).empty
        err = capsys.readouterr().err.strip()
        assert err.startswith("evolve: warning: bandit.json is unreadable (") and "\n" not in err
        (line,) = bandit_lines(run, expected=False)
        assert line.startswith("bandit: warning: bandit.json is unreadable")


@pytest.mark.search
def test_a_real_search_draws_its_operators_by_the_bandit_and_resumes_it(experiment, tmp_path, capsys):
    import ray

    from evolve import cli
    from evolve.driver import init_ray, resume_search, run_search
    from evolve.spec import load_spec

    spec = load_spec(experiment, ["budget.train_tokens=8192", "trial.report_every=2", "confirm.top=0",
                                  "budget.trials=5", "budget.concurrent=2", "operator.bandit=ucb"])
    run = tmp_path / "run"
    lines = []
    init_ray(spec, num_cpus=2)
    try:
        run_search(spec, run, log=lines.append, verbose=0)
        pop = load_population(run)
        children = pop[pop["operator"] != "seed"]
        assert len(pop) == 5 and (pop["status"] == "completed").all(), pop[["status", "failure_reason"]]
        assert all(r["arm"] == op for r, op in zip(children["record"], children["operator"]))
        saved = json.loads((run / "bandit.json").read_text())
        assert sum(a["pulls"] for a in saved["arms"].values()) == 4
        assert all(a["pending"] == 0 for a in saved["arms"].values())
        for arm, a in saved["arms"].items():
            assert a["pulls"] == (children["operator"] == arm).sum()
        assert cli.main(["status", str(run)]) == 0
        out = capsys.readouterr().out
        assert "bandit (ucb): reward = gain over the parent per million tokens trained" in out
        for arm, a in saved["arms"].items():
            assert any(ln.strip().startswith(arm) and f"pulls {a['pulls']:>4}" in ln for ln in out.splitlines()), out
        # Tune's own snapshot of the searcher carries the bandit: a resume writes it back as it was
        (run / "bandit.json").unlink()
        resume_search(run, log=lines.append)
        again = json.loads((run / "bandit.json").read_text())
        assert {k: {f: v[f] for f in ("pulls", "pending", "sum")} for k, v in again["arms"].items()} == \
            {k: {f: v[f] for f in ("pulls", "pending", "sum")} for k, v in saved["arms"].items()}
        assert len(load_population(run)) == 5
    finally:
        ray.shutdown()


@pytest.mark.warm
def test_two_models_on_a_loopback_endpoint_are_arms_of_the_bandit(experiment, tmp_path):
    """One model writes children that beat their parents, the other only replies the checks reject."""
    from evolve.agent import audit
    from tests.agent_replies import MALFORMED, lr_edit
    from tests.openai_server import Reply, ScriptedOpenAI
    from tests.test_llm_operator import FAST, drive

    from evolve.driver import scaffold_files, trial_context
    from evolve.record.store import Store
    from evolve.search.searcher import EvolveSearcher
    from evolve.spec import load_spec

    n = {"good": 0}

    def respond(body):  # each good reply a new factor: no proposal is a duplicate of another
        if body["model"] != "good":
            return MALFORMED
        n["good"] += 1
        return Reply(text=lr_edit(body, 1.2 + 0.05 * n["good"]))

    with ScriptedOpenAI(respond) as server:
        spec = load_spec(experiment, FAST + [f"operator.base_url={server.url}", "budget.trials=14",
                                             "operator.bandit=ucb", "operator.repair_rounds=0",
                                             "operator.max_failures=100", "operator.parallel=2",
                                             "operator.models=[{model: good}, {model: bad}]"])
        run = tmp_path / "run"
        s = EvolveSearcher(spec, Store(run), trial_context(spec, run, {}, None), scaffold_files(spec),
                           log=lambda line: None)
        assert s.llm_arms == {"llm:good": 0, "llm:bad": 1}
        configs = drive(s, 14, trial_s=0.3)
    assert len(configs) == 14
    llm = [s.variants[c["variant_id"]] for c in configs if s.variants[c["variant_id"]].operator == "llm"]
    assert llm and all(v.record["arm"] == "llm:good" and v.record["model"] == "good" for v in llm)
    arms = s.bandit.arms
    calls = audit.read(run).to_pandas()
    bad_calls = (calls["model"] == "bad").sum()
    assert arms["llm:bad"]["pulls"] == bad_calls >= 1 and arms["llm:bad"]["sum"] == 0.0  # rejections bought nothing
    assert arms["llm:good"]["pulls"] == len(llm) and arms["llm:good"]["sum"] > 0
    assert (calls["model"] == "good").sum() > bad_calls, calls["model"].value_counts()
    heuristic = sum(arms[a]["pulls"] for a in ("perturb", "crossover"))
    assert heuristic + len(llm) == 13  # every child but the seed, each counted once
    saved = json.loads((run / "bandit.json").read_text())
    assert saved["arms"]["llm:good"]["pulls"] == len(llm)
