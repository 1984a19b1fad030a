"""The merge operator inside the searcher: clean merges, conflicts resolved by the agent, and real searches."""

import json
import subprocess
from pathlib import Path

import pytest

from evolve import cli
from evolve.agent import audit
from evolve.driver import init_ray, run_search, scaffold_files, trial_context
from evolve.read.population import load_population
from evolve.record.seals import surface_violations
from evolve.record.store import Store
from evolve.search.merge import marker_lines, merge_files
from evolve.search.searcher import EvolveSearcher
from evolve.spec import load_spec
from tests.agent_replies import counting_responder, is_merge, merge_resolution
from tests.openai_server import Reply, ScriptedOpenAI
from tests.test_llm_operator import FAST, drive, make

TINY = ["budget.train_tokens=8192", "trial.report_every=2", "confirm.top=0"]


def merges_of(searcher):
    return [v for v in searcher.variants.values() if v.operator == "merge"]


def check_merge_child(searcher, v):
    """A merge child's files, its parents' and its base's; it differs from each parent on the mutable surface only."""
    a, b = v.parents
    base = v.record["base"]
    files = {x: searcher.store.read_files(searcher.variants[x]) for x in (a, b, base)}
    child = searcher.store.read_files(v)
    for side in (a, b):
        assert surface_violations(files[side], child, searcher.mutable) == []
    return files, child


@pytest.mark.unit
def test_clean_merges_are_children_of_two_parents_and_conflicted_ones_are_said_once(experiment, tmp_path):
    spec = load_spec(experiment, ["operator.merge_rate=1.0", "budget.trials=10", "confirm.top=0"])
    lines, run = [], tmp_path / "run"
    s = EvolveSearcher(spec, Store(run), trial_context(spec, run, {}, None), scaffold_files(spec), log=lines.append)
    configs = drive(s, 10)
    assert len(configs) == 10
    merged = merges_of(s)
    assert len(merged) >= 2
    for v in merged:
        files, child = check_merge_child(s, v)
        a, b = v.parents
        assert v.record["kind"] == "merge" and v.record["conflicts"] == 0 and v.record["resolved_by"] is None
        assert child == merge_files(files[v.record["base"]], files[a], files[b], s.mutable).files
        assert child != files[a] and child != files[b]
    pairs = [frozenset(v.parents) for v in merged]
    assert len(set(pairs)) == len(pairs)  # each pair merged once
    said = [ln for ln in lines if "a conflicted pair is merged only by an LLM operator" in ln]
    assert len(said) <= 1
    pop = load_population(run)
    assert set(pop[pop["operator"] == "merge"]["variant_id"]) == {v.id for v in merged}
    assert all(len(p) == 2 for p in pop[pop["operator"] == "merge"]["parent_ids"])
    # the pairs tried survive a save and restore
    s.save(str(tmp_path / "state.pkl"))
    again = EvolveSearcher(spec, Store(run), trial_context(spec, run, {}, None), scaffold_files(spec), log=lines.append)
    again.restore(str(tmp_path / "state.pkl"))
    assert again.merge_tried == s.merge_tried and len(again.merge_tried) >= len(merged)
    # off (the default), the same search draws and merges nothing
    spec0 = load_spec(experiment, ["budget.trials=10", "confirm.top=0"])
    s0 = EvolveSearcher(spec0, Store(tmp_path / "run0"), trial_context(spec0, tmp_path / "run0", {}, None),
                        scaffold_files(spec0), log=lines.append)
    drive(s0, 10)
    assert merges_of(s0) == [] and s0.merge_tried == set()


@pytest.mark.unit
def test_without_an_llm_a_conflicted_pair_is_not_merged(experiment, tmp_path):
    # every child changes the learning rate only: any two siblings conflict on that line
    spec = load_spec(experiment, ["operator.merge_rate=1.0", "budget.trials=8", "confirm.top=0",
                                  "operator.heuristic.mutations=1",
                                  "operator.heuristic.frozen=[n_head, n_layer, n_embd, dropout, seq_len, batch_size, "
                                  "optimizer, weight_decay, beta2, warmup_frac, schedule, min_lr_frac, "
                                  "label_smoothing, deepspeed.zero_stage, deepspeed.gradient_accumulation_steps, "
                                  "deepspeed.gradient_clipping]",
                                  "operator.heuristic.crossover_rate=0"])
    lines, run = [], tmp_path / "run"
    s = EvolveSearcher(spec, Store(run), trial_context(spec, run, {}, None), scaffold_files(spec), log=lines.append)
    assert len(drive(s, 8)) == 8
    assert merges_of(s) == [] and len(s.merge_tried) >= 2
    said = [ln for ln in lines if "conflict in config.yaml" in ln]
    assert len(said) == 1 and said[0].startswith("evolve: merge: ") and "operator.kind: llm" in said[0]


def lr_of(files):
    return float([ln for ln in files["config.yaml"].decode().splitlines() if ln.startswith("lr:")][0].split()[1])


@pytest.mark.warm
def test_the_agent_resolves_a_conflict_with_one_search_replace_reply(experiment, tmp_path):
    with ScriptedOpenAI(counting_responder()) as server:
        s, lines, run = make(experiment, tmp_path, server.url, "budget.trials=8", "operator.merge_rate=1.0")
        configs = drive(s, 8)
    assert len(configs) == 8
    merged = merges_of(s)
    assert merged, lines
    v = merged[0]
    files, child = check_merge_child(s, v)
    a, b = v.parents
    r = v.record
    assert r["kind"] == "merge" and r["resolved_by"] == "llm" and r["conflicts_resolved"] == r["conflicts"] == 1
    assert r["conflicted"] == ["config.yaml"] and r["rationale"].startswith("take the mean")
    assert lr_of(child) == pytest.approx((lr_of(files[a]) + lr_of(files[b])) / 2, rel=1e-5)
    assert marker_lines(child["config.yaml"].decode()) == []
    asked = [q["body"] for q in server.requests if is_merge(q["body"])]
    assert "<<<<<<< CONFLICT " + a in asked[0]["messages"][1]["content"]
    rows = audit.read(run).to_pandas()
    row = rows[rows["variant_id"] == v.id]
    assert list(row["purpose"]) == ["merge"] and list(row["outcome"]) == ["accepted"]
    pop = load_population(run)
    got = pop[pop["variant_id"] == v.id].iloc[0]
    assert list(got["parent_ids"]) == [a, b] and got["operator"] == "merge"


@pytest.mark.warm
def test_a_reply_that_leaves_a_marker_is_rejected_with_one_line(experiment, tmp_path):
    child = counting_responder()

    def respond(body):
        return Reply(text=merge_resolution(body, leave_marker=True)) if is_merge(body) else child(body)

    with ScriptedOpenAI(respond) as server:
        s, lines, run = make(experiment, tmp_path, server.url, "budget.trials=8", "operator.merge_rate=1.0",
                             "operator.repair_rounds=0", "operator.max_failures=20")
        drive(s, 8)
    assert merges_of(s) == []
    rows = audit.read(run).to_pandas()
    bad = rows[rows["purpose"] == "merge"]
    assert len(bad) >= 1 and (bad["outcome"] == "rejected").all() and (bad["stage"] == "conflict").all()
    reason = bad.iloc[0]["reason"]
    assert reason.startswith("FILE: config.yaml: 1 conflict marker line(s) left, the first at line ")
    assert "\n" not in reason and bad["variant_id"].isna().all()
    assert s.llm.rejections["conflict"] == len(bad)


@pytest.fixture(scope="module")
def merge_search(tmp_path_factory):
    """A real search whose children the scripted agent writes, with merges on: siblings conflict on lr."""
    import ray

    run_dir = tmp_path_factory.mktemp("mergerun") / "tiny"
    with ScriptedOpenAI(counting_responder()) as server:
        spec = load_spec(Path(__file__).parents[1] / "experiments" / "tiny_lm", TINY + [
            "budget.trials=8", "budget.concurrent=2", "operator.kind=llm", f"operator.base_url={server.url}",
            "operator.model=scripted", "operator.parallel=1", "operator.ahead=1", "operator.smoke_steps=0",
            "operator.notebook_every=0", "operator.merge_rate=1.0"])
        init_ray(spec, num_cpus=2)
        try:
            lines = []
            searcher = run_search(spec, run_dir, log=lines.append)
        finally:
            ray.shutdown()
    return run_dir, lines, searcher


@pytest.mark.search
def test_a_merge_child_is_trained_recorded_with_two_parents_and_exported_as_a_merge(merge_search, tmp_path, capsys):
    run_dir, lines, searcher = merge_search
    pop = load_population(run_dir)
    assert len(pop) == 8 and (pop["status"] == "completed").all(), pop[["status", "failure_reason"]]
    merged = pop[pop["operator"] == "merge"]
    assert len(merged) >= 1, lines
    row = merged.iloc[0]
    a, b = row["parent_ids"]
    assert row["record"]["resolved_by"] == "llm" and row["record"]["conflicts_resolved"] == 1
    assert row["fitness"] > 0 and row["tokens_trained"] > 0
    # the lineage, status and report read a variant of two parents
    assert {a, b} <= pop.ancestors(row["variant_id"])
    assert pop.lineage(row["variant_id"])[-2:] == [a, row["variant_id"]]
    assert "merge" in set(pop.operator_stats()["operator"])
    assert cli.main(["status", str(run_dir)]) == 0 and "lineage depth:" in capsys.readouterr().out
    assert cli.main(["report", str(run_dir), "-o", str(tmp_path / "report.html")]) == 0
    # the git export makes it a commit with both parents' commits as its parents
    repo = tmp_path / "repo"
    assert cli.main(["export-git", str(run_dir), str(repo)]) == 0
    git = ["git", "-C", str(repo)]
    merges = subprocess.run(git + ["log", "--all", "--merges", "--format=%H %P %s"], capture_output=True,
                            text=True, check=True).stdout.splitlines()
    commit = subprocess.run(git + ["rev-parse", row["variant_id"]], capture_output=True, text=True,
                            check=True).stdout.strip()
    parents = [subprocess.run(git + ["rev-parse", p], capture_output=True, text=True, check=True).stdout.strip()
               for p in (a, b)]
    assert any(ln.split()[:3] == [commit, *parents] for ln in merges), merges
    shown = subprocess.run(git + ["show", "-s", "--format=%B", commit], capture_output=True, text=True,
                           check=True).stdout
    assert shown.startswith("merge: take the mean") and json.loads(shown.split("record: ", 1)[1])["base"]
