import json

import pytest

from ray.tune.search import Searcher

from evolve.read.population import load_population
from evolve.spec import load_spec
from evolve.driver import scaffold_files, trial_context
from evolve.search.searcher import EvolveSearcher
from evolve.record.store import Store

pytestmark = pytest.mark.unit


def make(experiment, tmp_path, *overrides):
    spec = load_spec(experiment, ["budget.trials=8", "budget.concurrent=8", "confirm.top=0", *overrides])
    store = Store(tmp_path / "run")
    return EvolveSearcher(spec, store, trial_context(spec, store.root, {}, None), scaffold_files(spec),
                          log=lambda s: None), store


def finish(searcher, trial_id, config, fitness):
    outcome = {"status": "completed" if fitness else "failed", "fitness": fitness,
               "failure_reason": None if fitness else "boom",
               "summary": {"curve": [[1024, 5.0, 4.0]], "train_seconds": 1.0, "tokens_trained": 1024}}
    searcher.on_trial_complete(trial_id, {"result_json": json.dumps(outcome)})


def test_seed_first_then_children_until_budget(experiment, tmp_path):
    s, store = make(experiment, tmp_path)
    first = s.suggest("t0")
    assert first["variant_id"] == s.seed_id and first["train_tokens"] == s.spec.budget.train_tokens
    assert (tmp_path / "run" / "work" / s.seed_id / "recipe.py").is_file()
    ids = [first["variant_id"]]
    for i in range(1, 8):
        cfg = s.suggest(f"t{i}")
        ids.append(cfg["variant_id"])
        finish(s, f"t{i - 1}", {}, 4.0 - 0.1 * i if i % 3 else None)
    assert s.suggest("t8") == Searcher.FINISHED
    finish(s, "t7", {}, 3.0)
    assert len(set(ids)) == 8  # no duplicates
    pop = load_population(tmp_path / "run")
    assert sorted(pop["variant_id"]) == sorted(ids)
    assert set(pop["status"]) == {"completed", "failed"}
    for _, row in pop.iterrows():
        assert all(p in ids for p in row["parent_ids"])
        assert row["trial_id"].startswith("t")
    # a repeated callback records nothing twice
    finish(s, "t7", {}, 3.0)
    assert len(load_population(tmp_path / "run")) == 8


def test_children_differ_only_in_the_settings_file(experiment, tmp_path):
    s, store = make(experiment, tmp_path)
    seed = s.suggest("t0")
    child = s.suggest("t1")
    a = store.read_files(store.get_variant(seed["variant_id"]))
    b = store.read_files(store.get_variant(child["variant_id"]))
    assert [p for p in a if a[p] != b[p]] == ["config.yaml"]
    v = store.get_variant(child["variant_id"])
    assert v.parents == (seed["variant_id"],) and v.record["changes"]


def test_save_restore_continues_identically(experiment, tmp_path):
    s1, _ = make(experiment, tmp_path / "a")
    s2, _ = make(experiment, tmp_path / "b")
    for s in (s1, s2):
        s.suggest("t0")
        s.suggest("t1")
        finish(s, "t0", {}, 3.5)
    s1.save(str(tmp_path / "state.pkl"))
    s3, _ = make(experiment, tmp_path / "a")
    s3.restore(str(tmp_path / "state.pkl"))
    nxt = [s2.suggest("t2")["variant_id"], s2.suggest("t3")["variant_id"]]
    assert [s3.suggest("t2")["variant_id"], s3.suggest("t3")["variant_id"]] == nxt
    assert s3.live == s2.live and s3.islands == s2.islands


def test_best_and_island_members_follow_the_results(experiment, tmp_path):
    s, _ = make(experiment, tmp_path, "budget.trials=16")
    fits = [2.5, None, 2.1, 2.4, 2.3, 2.0, None, 2.2]
    for i, fit in enumerate(fits):
        cfg = s.suggest(f"t{i}")
        finish(s, f"t{i}", cfg, fit)
    completed = {v: r["fitness"] for v, r in s.results.items() if r["fitness"] is not None}
    assert s.best_id() == min(completed, key=completed.get)
    pools = []
    for island, ids in enumerate(s.islands):  # each island's pool is exactly its scored members
        pools.append({v for v, _ in s.island_scored[island]})
        assert sorted(pools[-1]) == sorted(v for v in ids if v in completed)
    # and the next children are bred only from their island's pool: never a failed or unscored variant
    for i in range(len(fits), len(fits) + 6):
        child = s.variants[s.suggest(f"t{i}")["variant_id"]]
        assert child.parents and set(child.parents) <= pools[child.island], (child.island, child.parents)


def test_a_trial_restored_from_a_checkpoint_keeps_its_whole_curve(experiment, tmp_path):
    s, _ = make(experiment, tmp_path)
    cfg = s.suggest("t0")
    for tokens, dev in ((1024, 4.0), (2048, 3.5), (3072, 3.2)):  # the first run reached 3072, then died
        s.on_trial_result("t0", {"tokens": tokens, "train_loss": dev + 0.1, "dev_loss": dev})
    for tokens, dev in ((3072, 3.2), (4096, 3.0)):  # restored from the checkpoint at 2048
        s.on_trial_result("t0", {"tokens": tokens, "train_loss": dev + 0.1, "dev_loss": dev})
    outcome = {"status": "completed", "fitness": 2.9, "summary": {
        "curve": [[3072, 3.3, 3.2], [4096, 3.1, 3.0]], "resumed_at_tokens": 2048, "tokens_trained": 2048}}
    s.on_trial_complete("t0", {"result_json": json.dumps(outcome)})
    curve = load_population(tmp_path / "run").curve(cfg["variant_id"])
    assert [p[0] for p in curve] == [1024, 2048, 3072, 4096]


def test_restore_takes_in_results_recorded_after_the_snapshot_once(experiment, tmp_path):
    s, store = make(experiment, tmp_path)
    seed = s.suggest("t0")["variant_id"]
    finish(s, "t0", {}, 3.5)
    a = s.suggest("t1")["variant_id"]
    s.save(str(tmp_path / "snapshot.pkl"))  # Tune's last snapshot: t1 is training
    b = s.suggest("t2")["variant_id"]  # Tune's state never saw t2
    s.suggest("t3")  # still training when the driver dies: trained again after the resume
    finish(s, "t1", {}, 3.0)
    finish(s, "t2", {}, 2.5)
    r, _ = make(experiment, tmp_path)
    r.restore(str(tmp_path / "snapshot.pkl"))
    assert set(r.results) == {seed, a, b} and r.n_suggested == 3 and r.best_id() == b
    assert b in r.variants and b in r.on_island[r.variants[b].island]
    assert "t1" not in r.live  # Tune runs t1 again: its trial reports it is recorded, the searcher skips it
    finish(r, "t1", {}, 3.0)
    pop = load_population(tmp_path / "run")
    assert sorted(pop["variant_id"]) == sorted([seed, a, b])
    r.restore(str(tmp_path / "snapshot.pkl"))  # restoring again changes nothing
    assert r.n_suggested == 3 and len(r.results) == 3


@pytest.mark.parametrize("spread, flagged", [(0.1, False), (0.01, True)])
def test_after_the_budget_the_top_candidate_is_rerun_and_confirmed(experiment, tmp_path, capsys, spread, flagged):
    """Fresh seeds re-train the seed, the best and its parent; Welch decides; a huge jump needs review."""
    import yaml

    from evolve import cli
    from evolve.search import confirm

    s, store = make(experiment, tmp_path, "budget.trials=4", "confirm.top=1", "confirm.seeds=3",
                    "confirm.flag_sigmas=4.0")
    (tmp_path / "run" / "spec.yaml").write_text(yaml.safe_dump(s.spec.to_dict()))
    single = [3.0, 2.9, 2.95, 2.7]
    ids = []
    for i, fitness in enumerate(single):
        ids.append(s.suggest(f"t{i}")["variant_id"])
        finish(s, f"t{i}", {}, fitness)
    best, seed = ids[3], s.seed_id
    parent = s.variants[best].parents[0]
    base = {vid: f for vid, f in zip(ids, single)}
    reruns = []
    while True:
        cfg = s.suggest(f"r{len(reruns)}")
        if cfg == Searcher.FINISHED:
            break
        assert cfg["confirm"] and cfg["trial_key"] == f"{cfg['variant_id']}-s{cfg['seed']}"
        assert cfg["out_dir"].endswith(cfg["trial_key"])
        reruns.append((cfg["variant_id"], cfg["seed"]))
        offset = {1: -spread, 2: 0.0, 3: spread}[cfg["seed"]]
        finish(s, f"r{len(reruns) - 1}", {}, base[cfg["variant_id"]] + offset)
    assert sorted(reruns) == sorted((v, k) for v in {seed, parent, best} for k in (1, 2, 3))
    assert len(pop_rows := load_population(tmp_path / "run")) == 4  # re-runs are not population rows
    v = confirm.load_verdict(tmp_path / "run")
    assert v["noise"]["sd"] == pytest.approx(spread) and v["noise"]["n"] == 3
    (cand,) = [c for c in v["candidates"] if c["variant_id"] == best]
    assert cand["confirmed"] and cand["p"] < 0.05 and cand["flagged"] is flagged
    assert cli.main(["status", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "single-run leader:" in out and "seed-to-seed noise:" in out
    if not flagged:
        assert v["champion"]["variant_id"] == best
        assert f"confirmed champion: {best}" in out
        return
    assert v["champion"] is None and cand["awaiting"]  # a jump far beyond the noise waits for a person
    assert "FLAGGED" in out and "awaiting approval" in out
    assert cli.main(["review", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert f"== {best} (awaiting approval; flagged" in out and "--- a/config.yaml" in out
    not_rerun = next(v for v in ids if v not in {seed, parent, best})
    assert cli.main(["approve", str(tmp_path / "run"), not_rerun]) == 2
    assert "has no confirmation re-runs" in capsys.readouterr().err
    assert cli.main(["approve", str(tmp_path / "run"), best[:6], "--note", "re-runs reproduce it"]) == 0
    assert f"confirmed champion: {best}" in capsys.readouterr().out
    assert confirm.load_verdict(tmp_path / "run")["champion"]["variant_id"] == best


def test_a_brief_carries_the_facts_and_the_parents_failed_and_stopped_children(experiment, tmp_path):
    import pickle

    s, store = make(experiment, tmp_path)
    seed = s.suggest("t0")["variant_id"]
    s.on_trial_complete("t0", {"result_json": json.dumps({
        "status": "completed", "fitness": 3.5, "summary": {
            "curve": [[1024, 5.0, 4.0, 1, 1e-3]], "tokens_trained": 1024, "n_params": 124_672, "optimizer_steps": 1}})})
    failed, stopped = s.suggest("t1")["variant_id"], s.suggest("t2")["variant_id"]
    finish(s, "t1", {}, None)
    point = {"tokens": 2048, "train_loss": 4.1, "dev_loss": 4.2, "step": 2, "lr": 5e-4}
    s.on_trial_result("t2", point)
    s.on_trial_complete("t2", point)  # the scheduler stopped it: its curve is its result
    pop = load_population(tmp_path / "run")
    assert pop.curve(stopped) == [[2048, 4.1, 4.2, 2, 5e-4]]
    row = pop[pop["variant_id"] == seed].iloc[0]
    assert row["n_params"] == 124_672 and row["optimizer_steps"] == 1
    brief = s._brief()
    assert brief.parent.variant_id == seed  # the only scored variant
    assert [(c["variant_id"], c["status"]) for c in brief.siblings] == [(failed, "failed"), (stopped, "stopped")]
    assert brief.siblings[0]["reason"] == "boom" and brief.siblings[1]["reason"].startswith("stopped early")
    assert brief.siblings[0]["change"].startswith(("perturbed", "flipped", "crossed", "set"))
    f = brief.facts
    assert (f.train_tokens, f.param_cap, f.eval_seq_len, f.parent_params, f.steps) == (
        s.spec.budget.train_tokens, 1_000_000, 128, 124_672, 1)
    assert f.split_tokens is None  # no data prepared in this test
    # a state saved before the briefs carried the failed children: rebuilt from the results
    state = pickle.loads((s.save(str(tmp_path / "state.pkl")), (tmp_path / "state.pkl").read_bytes())[1])
    del state["child_failures"]
    (tmp_path / "old.pkl").write_bytes(pickle.dumps(state))
    r, _ = make(experiment, tmp_path)
    r.restore(str(tmp_path / "old.pkl"))
    assert r.child_failures == s.child_failures and len(r.child_failures[seed]) == 2
    old = pickle.loads(pickle.dumps({k: v for k, v in s.__getstate__().items() if k != "child_failures"}))
    again = EvolveSearcher.__new__(EvolveSearcher)
    again.__setstate__(old)
    assert again.child_failures == s.child_failures


def tune_state(tune_dir, trials):
    """An experiment state file as Ray Tune writes it: one (trial, runtime) pair of JSON texts per trial."""
    tune_dir.mkdir(parents=True, exist_ok=True)
    data = [[json.dumps({"trial_id": tid, "status": status, "config": cfg}), "{}"] for tid, status, cfg in trials]
    (tune_dir / "experiment_state-2026-12-07_10-00-05.json").write_text(json.dumps({"trial_data": data}))


def test_a_resume_counts_the_trials_tune_restores_when_the_searchers_snapshot_is_older(experiment, tmp_path):
    """The bucket held the searcher's state from before the seed finished and Tune's from after the
    child started (they are saved apart): the child Tune restores counts as live, and is recorded."""
    s, store = make(experiment, tmp_path, "budget.concurrent=1")
    t0 = s.suggest("t0")
    (tmp_path / "tune").mkdir()
    s.save(str(tmp_path / "tune" / "searcher-state.pkl"))  # the searcher's state: t0 training
    finish(s, "t0", {}, 3.5)
    a = s.suggest("t1")
    tune_state(tmp_path / "tune", [("t0", "TERMINATED", t0), ("t1", "RUNNING", a)])
    lines = []
    r, _ = make(experiment, tmp_path, "budget.concurrent=1")
    r.log = lines.append
    r.restore(str(tmp_path / "tune" / "searcher-state.pkl"))
    assert r.live == {"t1": a["variant_id"]} and r.n_suggested == 2 and a["variant_id"] in r.variants
    assert any("1 trial(s) Tune runs again taken in" in ln for ln in lines), lines
    assert r.suggest("t2") is None  # one at a time: t1 is training
    finish(r, "t1", {}, 3.0)
    assert set(load_population(tmp_path / "run")["variant_id"]) == {t0["variant_id"], a["variant_id"]}
    assert r.suggest("t2")["variant_id"] not in (t0["variant_id"], a["variant_id"])


def test_a_resume_suggests_again_a_trial_tune_never_saved(experiment, tmp_path):
    s, store = make(experiment, tmp_path, "budget.concurrent=2")
    t0 = s.suggest("t0")
    finish(s, "t0", {}, 3.5)
    a, b = s.suggest("t1"), s.suggest("t2")
    (tmp_path / "tune").mkdir()
    s.save(str(tmp_path / "tune" / "searcher-state.pkl"))  # the searcher's state names t1 and t2
    tune_state(tmp_path / "tune", [("t0", "TERMINATED", t0), ("t1", "RUNNING", a)])  # Tune's, only t1
    r, _ = make(experiment, tmp_path, "budget.concurrent=2")
    r.restore(str(tmp_path / "tune" / "searcher-state.pkl"))
    assert r.live == {"t1": a["variant_id"]} and r.requeued == [b["variant_id"]] and r.n_suggested == 2
    again = r.suggest("t3")
    assert again["variant_id"] == b["variant_id"] and again["trial_id"] == "t3" and r.n_suggested == 3
    finish(r, "t1", {}, 3.0)
    finish(r, "t3", {}, 2.9)
    assert len(load_population(tmp_path / "run")) == 3


def test_a_corrupt_tune_state_is_a_warning_and_the_snapshot_stands(experiment, tmp_path):
    s, _ = make(experiment, tmp_path)
    s.suggest("t0")
    (tmp_path / "tune").mkdir()
    s.save(str(tmp_path / "tune" / "searcher-state.pkl"))
    (tmp_path / "tune" / "experiment_state-2026-12-07_10-00-05.json").write_text("{not json")
    lines = []
    r, _ = make(experiment, tmp_path)
    r.log = lines.append
    r.restore(str(tmp_path / "tune" / "searcher-state.pkl"))
    assert list(r.live) == ["t0"]
    assert [ln for ln in lines if "not matched" in ln and "experiment_state-2026-12-07_10-00-05.json" in ln], lines


def test_the_searcher_keeps_to_the_concurrency_itself(experiment, tmp_path):
    s, _ = make(experiment, tmp_path, "budget.concurrent=2")
    assert s.set_max_concurrency(2) is True  # Tune's ConcurrencyLimiter, if any, passes everything through
    s.suggest("t0"), s.suggest("t1")
    assert s.suggest("t2") is None
    finish(s, "t0", {}, 3.5)
    assert s.suggest("t2") is not None
