"""The LLM operator inside the searcher, against a real HTTP endpoint on 127.0.0.1.

Trials are simulated here (the searcher is driven the way Tune drives it);
tests/test_end_to_end.py trains the LLM's children for real.
"""

import json
import os
import time

import pytest
from ray.tune.search import Searcher

from evolve.agent import audit, notebook
from evolve.read.population import load_population
from evolve.spec import load_spec
from evolve.driver import scaffold_files, trial_context
from evolve.search.searcher import EvolveSearcher
from evolve.record.store import Store
from tests.agent_replies import EMPTY, MALFORMED, NOTEBOOK_TEXT, OUTSIDE_EDIT, SEALED_EDIT, counting_responder, lr_edit
from tests.openai_server import Reply, ScriptedOpenAI

FAST = ["operator.kind=llm", "operator.model=scripted", "operator.smoke_steps=0", "operator.parallel=1",
        "operator.ahead=1", "operator.retries=0", "operator.timeout_s=5", "operator.wait_s=30",
        "operator.notebook_every=0", "confirm.top=0"]


@pytest.fixture
def server():
    with ScriptedOpenAI(counting_responder()) as s:
        yield s


def make(experiment, tmp_path, server_url, *overrides):
    spec = load_spec(experiment, FAST + [f"operator.base_url={server_url}", *overrides])
    lines = []
    run = tmp_path / "run"
    searcher = EvolveSearcher(spec, Store(run), trial_context(spec, run, {}, None), scaffold_files(spec), log=lines.append)
    return searcher, lines, run


def fitness_of(searcher, vid):
    """A made-up fitness: a higher lr scores better, so LLM children can win."""
    files = searcher.store.read_files(searcher.variants[vid])
    lr = float([ln for ln in files["config.yaml"].decode().splitlines() if ln.startswith("lr:")][0].split()[1])
    return 3.0 - lr * 100


def drive(searcher, trials, deadline_s=60, trial_s=0.0):
    """Runs `trials` simulated trials of `trial_s` seconds one at a time; returns the configs suggested."""
    configs, t_end = [], time.monotonic() + deadline_s
    while len(configs) < trials and time.monotonic() < t_end:
        tid = f"t{len(configs)}"
        cfg = searcher.suggest(tid)
        if cfg is None:
            time.sleep(0.02)
            continue
        if cfg == Searcher.FINISHED:
            break
        configs.append(cfg)
        time.sleep(trial_s)
        fit = fitness_of(searcher, cfg["variant_id"])
        searcher.on_trial_complete(tid, {"result_json": json.dumps({
            "status": "completed", "fitness": fit, "metrics": {"heldout_loss": fit},
            "summary": {"curve": [[100, fit + 0.1, fit + 0.05]]}})})
    searcher.close()
    return configs


@pytest.mark.warm
def test_children_are_checked_recorded_and_audited(experiment, tmp_path, server):
    searcher, lines, run = make(experiment, tmp_path, server.url, "budget.trials=5", "operator.max_failures=10")
    # proposal 1 is rejected for a sealed edit, its repair round is a valid edit;
    # proposal 2 edits outside the surface, then its repair does not parse;
    # proposal 3 is empty twice; later ones are valid.
    first = {"n": 0}

    def scripted(body):
        first["n"] += 1
        n = first["n"]
        if n == 1:
            return SEALED_EDIT
        if n == 2:
            return Reply(text=lr_edit({"messages": body["messages"][:2]}, 1.5, " (repaired)"))
        if n == 3:
            return OUTSIDE_EDIT
        if n == 4:
            return MALFORMED
        if n in (5, 6):
            return EMPTY
        return Reply(text=lr_edit(body, 1.0 + 0.1 * n))

    server.responder = scripted
    configs = drive(searcher, 5)
    assert len(configs) == 5
    pop = load_population(run)
    llm = pop[pop["operator"] == "llm"]
    assert len(llm) == 4 and all(r["rationale"].startswith("scale the peak") for r in llm["record"])
    assert llm.iloc[0]["record"]["repairs"] == 1 and "(repaired)" in llm.iloc[0]["record"]["rationale"]
    table = audit.read(run).to_pandas()
    p1 = table[table["proposal_id"] == llm.iloc[0]["record"]["proposal_id"]].sort_values("attempt")
    assert p1.iloc[0]["stage"] == "policy" and p1["stage"].isna().iloc[1]
    assert p1.iloc[0]["reason"] == "FILE: harness/evaluate.py: sealed; the agent may not change it"
    assert (p1["variant_id"] == llm.iloc[0]["variant_id"]).all() and (p1["outcome"] == "accepted").all()
    rejected = table[table["outcome"] == "rejected"].sort_values(["created_at", "attempt"])
    assert list(zip(rejected["stage"], rejected["reason"].str[:30])) == [
        ("policy", "FILE: helpers/fast.py: outside"), ("parse", "reply has no RATIONALE"),
        ("parse", "reply is empty"), ("parse", "reply is empty")]
    assert rejected["variant_id"].isna().all()
    # the repair round showed the agent its own reply and the reason
    repair = server.requests[1]["body"]["messages"]
    assert repair[-2]["role"] == "assistant" and "sealed" in repair[-1]["content"]
    assert searcher.llm.rejections == {"parse": 2}  # a proposal counts at the stage that ended it
    assert (table["prompt_tokens"] > 0).all() and (table["latency_s"] >= 0).all()
    # a later prompt shows the rejections as recent failures
    last_prompt = server.requests[-1]["body"]["messages"][1]["content"]
    assert "a proposal rejected at parse: reply is empty" in last_prompt


@pytest.mark.warm
def test_fallback_to_heuristic_and_recovery(experiment, tmp_path, server):
    server.responder = lambda body: Reply(status=500)
    searcher, lines, run = make(experiment, tmp_path, server.url, "budget.trials=12",
                                "operator.max_failures=2", "operator.probe_every_s=0.5",
                                "operator.repair_rounds=0")
    configs = drive(searcher, 3)
    assert len(configs) == 3
    down = [ln for ln in lines if "takes over" in ln]
    assert down == ["evolve: the LLM operator failed 2 times in a row (last: rejected at endpoint: "
                    f"{server.url}: HTTP 500 (1 tries)); the heuristic operator takes over until it recovers"]
    ops = [searcher.variants[c["variant_id"]].operator for c in configs]
    assert ops[0] == "seed" and set(ops[1:]) <= {"perturb", "crossover"}
    server.responder = counting_responder()
    time.sleep(0.6)
    searcher2_configs = drive(searcher, 9, trial_s=0.3)
    assert any("answers again" in ln for ln in lines)
    assert any(searcher.variants[c["variant_id"]].operator == "llm" for c in searcher2_configs)
    assert len([ln for ln in lines if "takes over" in ln]) == 1


@pytest.mark.unit
def test_no_endpoint_means_heuristic_said_once(experiment, tmp_path):
    spec = load_spec(experiment, ["operator.kind=llm", "budget.trials=3"])
    lines = []
    s = EvolveSearcher(spec, Store(tmp_path / "run"), trial_context(spec, tmp_path / "run", {}, None),
                       scaffold_files(spec), log=lines.append)
    configs = drive(s, 3)
    assert len(configs) == 3
    assert len([ln for ln in lines if "no endpoint is configured" in ln]) == 1


@pytest.mark.warm
def test_a_reply_that_never_comes_does_not_stall_the_search(experiment, tmp_path, server):
    server.responder = lambda body: Reply(never=True)
    searcher, lines, run = make(experiment, tmp_path, server.url, "budget.trials=3",
                                "operator.timeout_s=0.5", "operator.wait_s=0.2", "operator.max_failures=5")
    t0 = time.monotonic()
    configs = drive(searcher, 3)
    assert len(configs) == 3 and time.monotonic() - t0 < 20
    assert any("fills free slots" in ln for ln in lines)


@pytest.mark.warm
def test_token_budget_stops_new_proposals(experiment, tmp_path, server):
    searcher, lines, run = make(experiment, tmp_path, server.url, "budget.trials=20", "budget.llm_tokens=3000")
    configs = drive(searcher, 20)
    calls = len(audit.read(run))
    assert 1 <= calls < 19 and len(configs) == 1 + calls
    assert searcher.llm.tokens() >= 3000
    spent_before_last = searcher.llm.tokens() - audit.read(run).to_pandas().iloc[-1][["prompt_tokens", "completion_tokens"]].sum()
    assert spent_before_last < 3000  # the last call was made with budget left
    assert len([ln for ln in lines if "token budget is spent" in ln]) == 1


@pytest.mark.warm
def test_notebook_is_updated_versioned_and_used(experiment, tmp_path, server):
    searcher, lines, run = make(experiment, tmp_path, server.url, "budget.trials=7",
                                "operator.notebook_every=2")
    drive(searcher, 7)
    versions = notebook.versions(run)
    assert len(versions) >= 2 and versions[0]["text"] == NOTEBOOK_TEXT
    assert [v["version"] for v in versions] == list(range(1, len(versions) + 1))
    assert versions[1]["parent"] == 1
    asked = [r["body"]["messages"] for r in server.requests if "research notebook" in r["body"]["messages"][0]["content"]]
    assert '"status": "completed"' in asked[0][1]["content"]
    later = [r["body"]["messages"][1]["content"] for r in server.requests
             if "research notebook" not in r["body"]["messages"][0]["content"]][-1]
    assert NOTEBOOK_TEXT in later
    pop = load_population(run)
    assert pop[pop["operator"] == "llm"]["record"].map(lambda r: r["notebook_version"]).max() >= 1


@pytest.mark.warm
def test_the_api_key_is_sent_but_never_written(experiment, tmp_path, server, monkeypatch):
    secret = "sk-test-" + "9f3a" * 8
    monkeypatch.setenv("EVOLVE_TEST_KEY", secret)
    searcher, lines, run = make(experiment, tmp_path, server.url, "budget.trials=3",
                                "operator.api_key_env=EVOLVE_TEST_KEY", "operator.notebook_every=1")
    # held in the driver's memory only: no process started from here on inherits it
    assert "EVOLVE_TEST_KEY" not in os.environ
    drive(searcher, 3)
    searcher.save(str(run / "searcher.pkl"))
    assert all(r["headers"].get("authorization") == f"Bearer {secret}" for r in server.requests)
    for path in run.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert not any(secret in ln for ln in lines)


@pytest.mark.unit
def test_a_local_transformers_model_drives_the_operator(experiment, tmp_path, tiny_model):
    """A random local model writes nonsense: every reply is rejected, audited, and the heuristic takes over."""
    spec = load_spec(experiment, ["operator.kind=llm", "operator.backend=transformers",
                                  f"operator.model={tiny_model}", "operator.max_tokens=16",
                                  "operator.smoke_steps=0", "operator.parallel=1", "operator.repair_rounds=0",
                                  "operator.max_failures=2", "operator.probe_every_s=600",
                                  "operator.notebook_every=0", "budget.trials=4"])
    lines, run = [], tmp_path / "run"
    s = EvolveSearcher(spec, Store(run), trial_context(spec, run, {}, None), scaffold_files(spec), log=lines.append)
    configs = drive(s, 4, deadline_s=120)
    assert len(configs) == 4
    table = audit.read(run).to_pandas()
    assert len(table) >= 2 and (table["model"] == tiny_model.name).all()
    assert (table["outcome"] == "rejected").all() and (table["prompt_tokens"] > 0).all()
    assert set(table["stage"]) <= {"parse"}
    assert len([ln for ln in lines if "takes over" in ln]) == 1


@pytest.mark.warm
def test_resume_takes_in_the_kept_proposals_and_buys_none_again(experiment, tmp_path, server):
    """Replies that came after the searcher's last snapshot are kept on disk and used after a kill."""
    more = ["budget.trials=6", "operator.ahead=4", "operator.parallel=2"]
    searcher, lines, run = make(experiment, tmp_path, server.url, *more)  # asks for 2 children at once
    searcher.save(str(tmp_path / "snapshot.pkl"))  # Tune's last snapshot: no reply taken in yet

    def kept_reach(n):
        deadline = time.monotonic() + 30
        while len(list((run / "proposals").glob("*.json"))) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        return len(list((run / "proposals").glob("*.json")))

    assert kept_reach(2) == 2
    searcher.agent_turn()  # takes those 2 in (audited), asks for 2 more
    assert len(audit.read(run)) == 2 and len(searcher.llm.ready) == 2
    assert kept_reach(4) == 4
    searcher.close()  # the driver dies with 2 replies it never took in and 2 children it never trained

    restored, lines2, _ = make(experiment, tmp_path, server.url, *more)
    restored.restore(str(tmp_path / "snapshot.pkl"))
    assert len(restored.llm.ready) == 4
    assert len(audit.read(run)) == 4  # the 2 never taken in are audited now, the others not twice
    assert any("4 proposal(s) the agent finished after Tune's last snapshot" in ln for ln in lines2)
    assert len(drive(restored, 6)) == 6
    pop = load_population(run)
    llm = pop[pop["operator"] == "llm"]
    assert len(pop) == 6 and pop["variant_id"].is_unique and len(llm) == 5
    # every reply was bought once and became one trained child; none was asked for twice
    assert len(server.requests) == 5
    table = audit.read(run).to_pandas()
    assert len(table) == 5 and table["proposal_id"].is_unique and not table["cached"].any()
    assert set(table["variant_id"]) == set(llm["variant_id"])
    assert restored.llm.usage["calls"] == 5


@pytest.mark.search
def test_a_child_prompt_carries_the_searchs_real_facts_and_curve(experiment, tmp_path):
    """A real search: once the seed has trained, its children's prompts (as audited) carry its counted numbers."""
    import re

    import ray

    from evolve.driver import run_search
    from evolve.messages import split_tokens
    from evolve.read.population import load_audit

    run = tmp_path / "run"
    with ScriptedOpenAI(counting_responder()) as s:
        spec = load_spec(experiment, FAST + [
            f"operator.base_url={s.url}", "budget.trials=3", "budget.concurrent=1", "budget.train_tokens=16384",
            "trial.report_every=1", "task.param_cap=500000"])
        try:
            run_search(spec, run, log=lambda line: None)
        finally:
            ray.shutdown()
    pop = load_population(run)
    seed = pop[pop["operator"] == "seed"].iloc[0]
    assert seed["status"] == "completed" and seed["optimizer_steps"] == 16 and 0 < seed["n_params"] < 500_000
    curve = json.loads(seed["curve"])
    assert len(curve) == 16 and [p[3] for p in curve] == list(range(1, 17)) and all(p[4] > 0 for p in curve)
    meta = json.loads((run / "data" / "meta.json").read_text())
    table = load_audit(run)
    prompts = [m[1]["content"] for m, parent in zip(table["messages"], table["parent_id"])
               if parent == seed["variant_id"]]
    trained = [p for p in prompts if "counted in its trial" in p]
    assert len(prompts) == 2 and len(trained) == 1  # one written before the seed had trained, one after
    assert "the parent's count: not measured yet" in prompts[0] and "buy 16 optimizer steps" in prompts[0]
    user = trained[0]
    facts = user[user.index("## The task"):user.index("## Research notebook")]
    for fact in ("16,384 training tokens per trial", "buy 16 optimizer steps (as the harness planned them",
                 "cap: 500,000 parameters", f"the parent's model has {seed['n_params']:,} (counted in its trial)",
                 "context: 128 tokens", "corpus: Python documentation (pydoc_data.topics); training split "
                 f"{split_tokens(meta):,} tokens", f"{seed['tokens_per_s']:,.0f} tokens/s"):
        assert fact in facts, (fact, facts)
    shown = user[user.index("learning curve (8 of 16 points, evenly spread):"):]
    rows = shown.split("```\n")[1].split("\n```")[0].splitlines()[1:]
    assert len(rows) == 8 and [int(r.split()[0]) for r in rows] == [1, 3, 5, 7, 10, 12, 14, 16]
    assert all(re.fullmatch(r"\d+\.\d{3}e-0\d", r.split()[2]) for r in rows)  # the lr at each point


@pytest.mark.warm
def test_parallel_requests_are_told_the_changes_already_in_flight(experiment, tmp_path, server):
    searcher, lines, run = make(experiment, tmp_path, server.url, "budget.trials=8", "operator.parallel=2",
                                "operator.ahead=3")
    first, second = sorted(searcher.llm.agent.pending.values(), key=lambda r: r.proposal_id)  # asked at once
    assert "## Changes already in flight" not in first.messages[1]["content"]
    assert f"- 1 child of {searcher.seed_id} being written now" in second.messages[1]["content"]
    deadline = time.monotonic() + 30
    while searcher.llm.n_child_requests < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
        searcher.agent_turn()  # takes a finished one in and asks for a third while the other may be out
    third = [r for r in searcher.llm.agent.pending.values() if r.proposal_id.startswith("00002-")]
    searcher.close()
    assert len(third) == 1
    user = third[0].messages[1]["content"]
    waiting = [ln for ln in user.splitlines() if "waiting for a trial (changes config.yaml)" in ln]
    writing = [ln for ln in user.splitlines() if ln == f"- 1 child of {searcher.seed_id} being written now"]
    assert waiting and all(f"a child of {searcher.seed_id}, waiting" in ln and "scale the peak learning rate"
                           in ln for ln in waiting)
    assert len(waiting) + len(writing) == 2  # the other two requests: each either ready or still being written
