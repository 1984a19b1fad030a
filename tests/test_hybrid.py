"""The hybrid search's pure parts and its searcher, trials simulated (tests/test_hybrid_search.py trains them)."""

import json
import math
import pickle

import pytest
import yaml
from ray.tune.search import Searcher

from evolve.agent.edits import EditError, check_tunable, parse_reply, parse_tunable
from evolve.agent.prompts import child_messages, Candidate, tunable_format
from evolve.driver import scaffold_files, trial_context
from evolve.read.population import load_population
from evolve.record.store import Store
from evolve.search import studies
from evolve.search.baselines import search_space
from evolve.search.hybrid import Tuning, current_values, settings_text, tuning_space, within
from evolve.search.searcher import EvolveSearcher, hybrid_code_left
from evolve.search.yamledit import flatten
from evolve.spec import SpecError, load_spec

pytestmark = pytest.mark.unit


def seed_text(experiment):
    return (experiment / "scaffold" / "config.yaml").read_text()


def test_the_space_is_the_baselines_space_plus_the_declared_ranges(experiment):
    spec = load_spec(experiment)
    text = seed_text(experiment)
    space = tuning_space(text, spec.operator.heuristic)
    assert sorted(space) == sorted(search_space(spec, text))  # the same keys as random search and TPE
    assert space["lr"] == ("float", 1e-5, 0.1, True)  # log_scale: log-uniform
    assert space["weight_decay"] == ("float", 0.0, 0.3, False)
    assert space["batch_size"] == ("int", 4, 64, True) and space["n_layer"] == ("int", 1, 6, False)
    assert space["optimizer"] == ("choice", ("adamw", "adam", "sgd"))
    assert "n_head" not in space  # frozen
    declared = tuning_space(text, spec.operator.heuristic,
                            {"lr": [1e-4, 1e-2, False], "n_head": [2, 8, False], "gone": [1, 2, False]})
    assert declared["lr"] == ("float", 1e-4, 1e-2, False)  # the agent's range wins
    assert declared["n_head"] == ("int", 2, 8, False) and "gone" not in declared


def test_values_are_written_in_place_and_checked_against_the_space(experiment):
    spec = load_spec(experiment)
    text = seed_text(experiment)
    space = tuning_space(text, spec.operator.heuristic)
    mine = current_values(text, space)
    assert within(space, mine) and mine["lr"] == 1e-3
    new = settings_text(text, {"lr": 0.00123456, "optimizer": "sgd", "n_layer": 3})
    flat = flatten(yaml.safe_load(new))
    assert (flat["lr"], flat["optimizer"], flat["n_layer"]) == (0.001235, "sgd", 3)
    assert "# peak learning rate" in new  # comments kept
    assert not within(space, {**mine, "lr": 0.5}) and not within(space, {**mine, "optimizer": "lion"})
    assert not within(space, {**mine, "n_layer": 2.5}) and not within(space, {k: mine[k] for k in list(mine)[1:]})


def test_a_tunable_block_is_parsed_and_checked_with_one_line_errors():
    reply = ("RATIONALE: a longer warm-up\n\nTUNABLE:\nlr: [1.0e-4, 1.0e-2] log\ndeepspeed.gradient_clipping: [0.5, 2]\n"
             "n_layer: [1.5, 4.2]\n\nFILE: config.yaml\n```\nlr: 1\n```\n")
    rationale, _ = parse_reply(reply)
    assert rationale == "a longer warm-up"  # the block is not part of the rationale
    declared = parse_tunable(reply)
    assert declared == {"lr": [1e-4, 1e-2, True], "deepspeed.gradient_clipping": [0.5, 2.0, False],
                        "n_layer": [1.5, 4.2, False]}
    settings = b"n_layer: 2\nlr: 0.001\noptimizer: adam\nuse_x: true\ndeepspeed:\n  gradient_clipping: 1.0\n"
    assert check_tunable(declared, settings, "config.yaml")["n_layer"] == [2, 4, False]  # whole numbers
    assert parse_tunable("RATIONALE: x\n\nFILE: a.py\n```\nTUNABLE:\nlr: [1, 2]\n```\n") == {}  # only before FILE
    bad = {"lr: [a, 2]": "TUNABLE: lr: 'a' is not a number", "lr: [2, 1]": "TUNABLE: lr: low 2 is not below high 1",
           "lr: [0, 1] log": "TUNABLE: lr: a log range needs low above 0, got 0",
           "lr: [1, 2] cubic": "TUNABLE: lr: expected 'log' or nothing after the range, got 'cubic'",
           "lr: [1, inf]": "TUNABLE: lr: 'inf' is not a finite number",
           "lr 1..2": "TUNABLE: expected 'key: [low, high]' or 'key: [low, high] log', got 'lr 1..2'",
           "lr: [1, 2]\nlr: [1, 3]": "TUNABLE: lr: declared twice", "": "TUNABLE: the block declares no key",
           "\n".join(f"k{i}: [1, 2]" for i in range(9)): "TUNABLE: more than 8 keys"}
    for block, error in bad.items():
        with pytest.raises(EditError) as e:
            parse_tunable(f"RATIONALE: x\nTUNABLE:\n{block}\n\nFILE: config.yaml\n")
        assert str(e.value) == error
    for key, error in {"nope": "TUNABLE: nope: not a key of config.yaml",
                       "optimizer": "TUNABLE: optimizer: 'adam' in config.yaml is not a number",
                       "use_x": "TUNABLE: use_x: True in config.yaml is not a number",
                       "deepspeed": "TUNABLE: deepspeed: not a key of config.yaml"}.items():
        with pytest.raises(EditError) as e:
            check_tunable({key: [1, 2, False]}, settings, "config.yaml")
        assert str(e.value) == error
    with pytest.raises(EditError, match="needs two whole numbers"):
        check_tunable({"n_layer": [2.2, 2.8, False]}, settings, "config.yaml")


def test_the_spec_fields_are_checked(experiment):
    spec = load_spec(experiment, ["operator.kind=hybrid", "operator.hybrid_trials=6", "operator.hybrid_sampler=cmaes"])
    assert (spec.operator.kind, spec.operator.hybrid_trials, spec.operator.hybrid_sampler) == ("hybrid", 6, "cmaes")
    assert load_spec(experiment).operator.hybrid_trials == 4
    for override, error in {"operator.hybrid_trials=0": "operator.hybrid_trials: must be at least 1, got 0",
                            "operator.hybrid_sampler=grid": "operator.hybrid_sampler: expected one of tpe, cmaes, got 'grid'",
                            "operator.kind=tuned": "operator.kind: unknown operator 'tuned' (available: heuristic, llm, hybrid)"}.items():
        with pytest.raises(SpecError) as e:
            load_spec(experiment, [override])
        assert str(e.value) == error


def test_the_prompt_asks_for_tunable_numbers_only_in_a_hybrid_search():
    parent = Candidate("abc", {"config.yaml": "lr: 0.001\n"}, 3.0)
    plain = child_messages(parent, [], [], "", "heldout_loss", "min")
    hybrid = child_messages(parent, [], [], "", "heldout_loss", "min", tunable=tunable_format("config.yaml", 8))
    assert "TUNABLE" not in plain[0]["content"]
    assert hybrid[0]["content"].startswith(plain[0]["content"])
    assert "TUNABLE:\n<key of config.yaml, dotted when nested>: [<low>, <high>] log" in hybrid[0]["content"]
    assert hybrid[1] == plain[1]


@pytest.mark.parametrize("sampler", ["tpe", "cmaes"])
def test_a_study_pickles_and_goes_on_asking_and_learning(experiment, sampler):
    spec = load_spec(experiment)
    text = seed_text(experiment)
    space = tuning_space(text, spec.operator.heuristic)
    t = Tuning("cv", space, 8, studies.new_study(sampler, 0, "min", 8), trials=["cv"])
    studies.tell(t, "cv", current_values(text, space), 3.0, "completed")  # the code variant as written
    drawn = []
    for i in range(6):
        number, values = studies.ask(t)
        assert within(space, values)
        drawn.append(values)
        t.numbers[f"v{i}"] = number
        t = pickle.loads(pickle.dumps(t))  # the searcher's state is saved between any two calls
        studies.tell(t, f"v{i}", values, 2.0 + abs(math.log10(values["lr"]) + 2) if i != 2 else None,
                     "completed" if i != 2 else "failed")
    states = [tr.state.name for tr in t.study.trials]
    assert states == ["COMPLETE"] * 3 + ["FAIL"] + ["COMPLETE"] * 3
    assert len({v["lr"] for v in drawn}) == 6


def test_code_left_for_the_agent():
    assert hybrid_code_left(10, [2], 3, any_tuned=False) == 0  # nothing tuned yet: no new code
    assert hybrid_code_left(10, [2], 3, any_tuned=True) == 3  # 8 trials left: 3 code variants (the last cut short)
    assert hybrid_code_left(2, [2], 3, any_tuned=True) == 0


def fitness_of(store, variant):
    """A made-up fitness, best at lr 10^-2.5."""
    lr = flatten(yaml.safe_load(store.read_files(variant)["config.yaml"]))["lr"]
    return 3.0 + abs(math.log10(lr) + 2.5)


def finish(s, tid, vid, fail=False):
    f = fitness_of(s.store, s.variants[vid])
    outcome = ({"status": "failed", "fitness": None, "failure_reason": "boom", "summary": {}} if fail else
               {"status": "completed", "fitness": f, "metrics": {}, "summary": {"curve": [[1024, f, f]]}})
    s.on_trial_complete(tid, {"result_json": json.dumps(outcome)})


def make(experiment, run, *overrides):
    spec = load_spec(experiment, ["budget.trials=11", "budget.concurrent=8", "confirm.top=0", "operator.kind=hybrid",
                                  "operator.hybrid_trials=3", *overrides])
    store = Store(run)
    lines = []
    return EvolveSearcher(spec, store, trial_context(spec, store.root, {}, None), scaffold_files(spec),
                          log=lines.append), lines


def test_each_code_variant_is_tuned_and_only_tuned_ones_are_parents(experiment, tmp_path):
    s, lines = make(experiment, tmp_path / "run")
    live, n, parents_at_birth = [], 0, {}
    while True:
        cfg = s.suggest(f"t{n}")
        if cfg == Searcher.FINISHED:
            break
        if cfg is None:  # waiting for a tuning to finish before new code
            assert live
            finish(s, *live.pop(0))
            continue
        vid = cfg["variant_id"]
        v = s.variants[vid]
        if v.operator != "tune" and v.parents:
            parents_at_birth[vid] = v.parents[0]
            tuned = {t.best for t in s.tunings.values() if t.finished()}
            assert v.parents[0] in tuned, "a new code variant's parent is a tuned code variant's best trial"
        live.append((f"t{n}", vid))
        n += 1
        if n == 7:  # save and restore in the middle of a tuning
            s.save(tmp_path / "state.pkl")
            s2, _ = make(experiment, tmp_path / "run")
            s2.restore(tmp_path / "state.pkl")
            s2.log = lines.append
            asked = {cv: len(t.study.trials) for cv, t in s.tunings.items() if t.study is not None}
            assert {cv: len(t.study.trials) for cv, t in s2.tunings.items() if t.study is not None} == asked
            s = s2
        if len(live) == 2:
            tid, vid = live.pop(0)
            finish(s, tid, vid, fail=(n == 5))
    for tid, vid in live:
        finish(s, tid, vid)
    pop = load_population(tmp_path / "run")
    assert len(pop) == 11 and pop["variant_id"].is_unique
    table = pop.code_variants()
    assert len(table) == len(parents_at_birth) + 1  # the seed and each new code variant
    for _, r in table.iterrows():
        trials = pop[pop["code_variant"] == r["code_variant"]]
        assert r["trials"] == len(trials) and (r["trials"] == 3 or r["code_variant"] == table.iloc[-1]["code_variant"])
        assert r["best_fitness"] == trials["fitness"].min()
        own = trials.loc[trials["variant_id"] == r["code_variant"], "fitness"].iloc[0]
        assert r["as_written"] == own or (math.isnan(r["as_written"]) and math.isnan(own))  # one trial fails
        for _, trial in trials[trials["operator"] == "tune"].iterrows():  # the tuned values are in its settings
            files = s.store.read_files(s.store.get_variant(trial["variant_id"]))
            flat = flatten(yaml.safe_load(files["config.yaml"]))
            assert all(flat[k] == v for k, v in trial["record"]["values"].items())
            assert list(trial["parent_ids"]) == [r["code_variant"]]
        if r["trials"] == 3:
            t = s.tunings[r["code_variant"]]
            assert t.best == r["best_variant"] and s.scores[t.best] == -r["best_fitness"]
            assert sum(tr.state.name in ("COMPLETE", "FAIL") for tr in t.study.trials) == 3
    tune_rows = pop[pop["operator"] == "tune"]
    assert not set(tune_rows["variant_id"]) - set(table["best_variant"]) & set(s.scores)  # only bests select
    assert any("tuned: 3 trials, best" in line for line in lines)


def test_an_old_state_and_an_old_population_still_read(experiment, tmp_path):
    s, _ = make(experiment, tmp_path / "run", "operator.kind=heuristic")
    state = s.__getstate__()
    for name in ("hybrid", "tunings", "tuning_of"):
        del state[name]
    old = EvolveSearcher.__new__(EvolveSearcher)
    old.__setstate__(state)
    assert old.hybrid is False and old.tunings == {} and old.tuning_of == {}
    cfg = old.suggest("t0")
    finish(old, "t0", cfg["variant_id"])
    pop = load_population(tmp_path / "run")
    assert pop["code_variant"].isna().all() and pop.code_variants().empty


def test_a_tuning_trial_recorded_after_the_snapshot_counts_in_its_tuning(experiment, tmp_path):
    s, _ = make(experiment, tmp_path / "run")
    seed = s.suggest("t0")["variant_id"]
    first = s.suggest("t1")["variant_id"]
    s.save(tmp_path / "state.pkl")  # Tune's snapshot: the seed and one tuning trial out
    late = s.suggest("t2")["variant_id"]  # asked after the snapshot, recorded before the kill
    for tid, vid in (("t0", seed), ("t2", late)):
        finish(s, tid, vid)
    r, _ = make(experiment, tmp_path / "run")
    r.restore(tmp_path / "state.pkl")
    t = r.tunings[seed]
    assert t.trials == [seed, first, late] and (t.asked, t.done) == (3, 2) and not t.to_ask()
    assert r.tuning_of[late] == seed and not t.finished()
    finish(r, "t1", first)  # the trial Tune still had live finishes the tuning
    assert t.finished() and t.best in (seed, first, late) and t.best in r.scores
    assert len(t.study.trials) == 3 and all(tr.state.name == "COMPLETE" for tr in t.study.trials)
