"""Real searches: Ray Tune, Ray Train and DeepSpeed on the CPU, 2 cores."""

import json
import os
import uuid
from pathlib import Path

import pandas as pd
import pytest

from evolve import cli
from evolve.read.population import load_population
from evolve.spec import load_spec
from evolve.driver import init_ray, prepare_run, run_search
from evolve.record.store import Store

TINY = ["budget.train_tokens=8192", "trial.report_every=2", "confirm.top=0"]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    import ray

    spec = load_spec(Path(__file__).parents[1] / "experiments" / "tiny_lm")
    init_ray(spec, num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def search(ray_cluster, tmp_path_factory):
    """A real search of 4 variants, 2 at once, then re-runs of the best, its parent and the seed with 2 seeds."""
    run_dir = tmp_path_factory.mktemp("run") / "tiny"
    spec = load_spec(Path(__file__).parents[1] / "experiments" / "tiny_lm",
                     TINY + ["budget.trials=4", "budget.concurrent=2", "confirm.top=1", "confirm.seeds=2"])
    lines = []
    run_search(spec, run_dir, log=lines.append)
    return run_dir, lines


@pytest.mark.search
def test_population_is_complete_and_consistent(search):
    run_dir, lines = search
    pop = load_population(run_dir)
    assert len(pop) == 4 and pop["variant_id"].is_unique
    assert (pop["status"] == "completed").all(), pop[["status", "failure_reason"]]
    assert pop["fitness"].notna().all() and (pop["fitness"] > 0).all()
    seeds = pop[pop["operator"] == "seed"]
    assert len(seeds) == 1 and list(seeds.iloc[0]["parent_ids"]) == []
    known = set(Store(run_dir).variant_ids())
    for _, row in pop.iterrows():
        assert set(row["parent_ids"]) <= known
        if row["operator"] != "seed":
            assert row["record"]["changes"], row["record"]
        assert pop.curve(row["variant_id"])[-1][0] == 8192 and row["tokens_trained"] == 8192
        assert row["first_step_at"] >= row["started_at"] and row["finished_at"] >= row["last_step_at"]
        # speed is measured in every trial; on a CPU there is no peak to take MFU against, and no GPU-hour
        assert row["tokens_per_s"] > 0 and pd.isna(row["mfu"]) and row["gpu_hours"] == 0.0
    # one line per finished variant, each naming its id and the best so far
    finished = [ln for ln in lines if ln.startswith("[") and not ln.startswith("[confirm]")]
    assert len(finished) == 4 and all("| best " in ln for ln in finished)


@pytest.mark.search
def test_the_best_is_retrained_with_fresh_seeds(search):
    from evolve.search import confirm

    run_dir, lines = search
    pop = load_population(run_dir)
    seed = pop.seed_id()
    best = pop[pop["variant_id"] != seed].sort_values("fitness").iloc[0]["variant_id"]  # the top candidate
    pop = pop.set_index("variant_id")
    chosen = {seed, best, *(list(pop.loc[best, "parent_ids"])[:1])}
    reruns = [ln for ln in lines if ln.startswith("[confirm]")]
    assert len(reruns) == 2 * len(chosen) and all("heldout_loss" in ln for ln in reruns), reruns
    got = confirm.read(run_dir)
    assert set(got) == chosen and all(len(v) == 2 for v in got.values())
    # another seed is another sample: the seed variant's re-runs differ from its first run and each other
    seed_runs = got[seed]
    assert seed_runs[0] != seed_runs[1] and pop.loc[seed, "fitness"] not in seed_runs
    v = confirm.load_verdict(run_dir)
    assert v["noise"]["n"] == 2 and v["noise"]["sd"] > 0


@pytest.mark.search
def test_cli_status_show_checkout(search, tmp_path, capsys):
    run_dir, _ = search
    assert cli.main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "completed 4" in out and "single-run leader:" in out and "seed-to-seed noise:" in out
    assert "confirmed champion:" in out
    pop = load_population(run_dir)
    child = pop[pop["operator"] != "seed"].iloc[0]["variant_id"]
    assert cli.main(["show", str(run_dir), child[:6]]) == 0
    out = capsys.readouterr().out
    assert f"variant {child}" in out and "--- a/config.yaml" in out and "curve tokens" in out
    assert cli.main(["checkout", str(run_dir), child, str(tmp_path / "co")]) == 0
    files = Store(run_dir).read_files(Store(run_dir).get_variant(child))
    assert {p: (tmp_path / "co" / p).read_bytes() for p in files} == files
    assert cli.main(["show", str(run_dir), "zzzz"]) == 2


@pytest.mark.search
def test_a_moved_run_reads_but_resumes_only_where_it_was_started(search, tmp_path, capsys):
    """Tune's state names the run's paths: a restored trial in a moved copy would read and write the original."""
    import shutil

    run_dir, _ = search
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved)
    assert cli.main(["status", str(moved)]) == 0 and "completed 4" in capsys.readouterr().out
    assert cli.main(["resume", str(moved)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"evolve: error: run: this search was started in {str(run_dir)!r} and Ray Tune's state ")
    assert len(err.strip().splitlines()) == 1


@pytest.mark.search
def test_the_notebook_runs_from_a_clean_kernel_over_the_run(search, tmp_path, monkeypatch):
    import nbformat
    from jupyter_client import KernelManager
    from nbclient import NotebookClient

    run_dir, _ = search
    nb = nbformat.read(Path(__file__).parents[1] / "notebooks" / "population.ipynb", as_version=4)
    monkeypatch.setenv("EVOLVE_RUN", str(run_dir))
    km = KernelManager(kernel_name="python3", transport="ipc", ip=str(tmp_path / "kernel"))  # no TCP port
    try:
        NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if km.has_kernel:  # a kernel manager passed in is ours to shut down
            km.shutdown_kernel(now=True)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 4  # best so far, lineage tree, learning curves, operator rates
    text = "".join(o.get("text", "") for o in outputs)
    assert "4 variants in" in text and "--- a/config.yaml" in text and "confirmed champion:" in text


@pytest.mark.search
def test_cli_report_of_a_real_run(search, tmp_path, capsys):
    run_dir, _ = search
    assert cli.main(["report", str(run_dir), "-o", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4 and "confirmed champion:" in page
    assert Store(run_dir).resolve(load_population(run_dir).best_id()) in page


def _trainable_of(config):  # shipped to workers by value: tests/ is not a package there
    from evolve.trial.train import trainable

    trainable(config["cfg"])


def run_variants(run_dir: Path, variants: dict[str, Path], workers: int = 1) -> dict[str, dict]:
    """Trains the given variant folders through the real trainable on warm slots; returns results by name."""
    import sys

    from ray import cloudpickle, tune

    from evolve.trial.slots import SlotPool
    from evolve.trial.train import TRIAL_RESOURCES

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec = load_spec(Path(__file__).parents[1] / "experiments" / "tiny_lm", TINY + [f"trial.workers={workers}"])
    _, context = prepare_run(spec, run_dir)
    slots = 2 // workers  # one CPU per worker on this 2-core machine
    configs = [{**context, "variant_id": name, "trial_id": uuid.uuid4().hex[:8],
                "variant_dir": str(d), "out_dir": str(run_dir / "trials" / name)}
               for name, d in sorted(variants.items())]
    pool = SlotPool(slots, context["resources"], context["train_storage"], context["slots"])
    try:
        tuner = tune.Tuner(tune.with_resources(_trainable_of, TRIAL_RESOURCES),
                           param_space={"cfg": tune.grid_search(configs)},
                           tune_config=tune.TuneConfig(max_concurrent_trials=slots, reuse_actors=True),
                           run_config=tune.RunConfig(storage_path=str(run_dir), name="t", verbose=0))
        results = tuner.fit()
    finally:
        pool.close()
    out = {}
    for r in results:
        assert r.error is None, r.error
        result = json.loads(r.metrics["result_json"])
        out[result["variant_id"]] = result
    return out


def make_variant(root: Path, name: str, edit=None, zero_stage=None) -> Path:
    """A copy of tiny_lm's scaffold in root/name, its recipe edited (old, new) or its ZeRO stage set."""
    seed = Path(__file__).parents[1] / "experiments" / "tiny_lm" / "scaffold"
    d = root / name
    d.mkdir()
    for p in seed.iterdir():
        if p.is_file():
            (d / p.name).write_bytes(p.read_bytes())
    if edit:
        src = (d / "recipe.py").read_text()
        old, new = edit
        assert old in src
        (d / "recipe.py").write_text(src.replace(old, new))
    if zero_stage is not None:
        cfg = (d / "config.yaml").read_text()
        (d / "config.yaml").write_text(cfg.replace("zero_stage: 0 ", f"zero_stage: {zero_stage} "))
        assert f"zero_stage: {zero_stage} " in (d / "config.yaml").read_text()
    return d


# Rank 1 raises before the first collective; rank 0 must not hang in it.
RANK_1_GIVES_UP = ('seq, bs = cfg["seq_len"], cfg["batch_size"]',
                   'seq, bs = cfg["seq_len"], cfg["batch_size"]\n'
                   '    import os\n'
                   '    if os.environ["RANK"] == "1":\n'
                   '        raise RuntimeError("rank 1 gives up")')


@pytest.fixture(scope="module")
def two_worker_trials(ray_cluster, tmp_path_factory):
    """Two variants, one after the other, on one slot of two workers: one with ZeRO-2, one whose rank 1 fails."""
    root = tmp_path_factory.mktemp("two_workers")
    return run_variants(root / "run", {"zero2": make_variant(root, "zero2", zero_stage=2),
                                       "half": make_variant(root, "half", RANK_1_GIVES_UP)}, workers=2)


@pytest.mark.warm
def test_failures_are_recorded_and_two_zero2_workers_train(ray_cluster, tmp_path, two_worker_trials):
    results = run_variants(tmp_path / "run", {
        "raises": make_variant(tmp_path, "raises", ('seq, bs = cfg["seq_len"], cfg["batch_size"]',
                                                    'raise RuntimeError("no batches today")')),
        "nan": make_variant(tmp_path, "nan", ("label_smoothing=cfg[\"label_smoothing\"])",
                                              "label_smoothing=cfg[\"label_smoothing\"]) * float(\"nan\")")),
    })
    raises, nan = results["raises"], results["nan"]
    assert raises["status"] == "failed" and raises["fitness"] is None
    assert raises["failure_reason"].startswith("RuntimeError: no batches today (recipe.py line ")
    assert nan["status"] == "failed"
    assert nan["failure_reason"] == "training loss became nan at micro-step 0"
    two = two_worker_trials["zero2"]
    assert two["status"] == "completed" and two["summary"]["world_size"] == 2
    # two ranks share the budget: half the micro-steps each, same tokens in all
    assert two["summary"]["tokens_trained"] == 8192 and two["fitness"] > 0


@pytest.mark.warm
def test_one_rank_failing_stops_the_other(two_worker_trials):
    """Rank 1 raises before the first collective; rank 0 must not hang in it."""
    out = two_worker_trials["half"]
    assert out["status"] == "failed" and out["failure_reason"].startswith("RuntimeError: rank 1 gives up")
    assert out["trial_seconds"] < 120  # rank 0 was stopped, not left in the collective until a time-out


def _recipe_reply(body, old, new, why):
    return ("RATIONALE: " + why + "\n\nFILE: recipe.py\n<<<<<<< SEARCH\n" + old + "\n=======\n" + new
            + "\n>>>>>>> REPLACE\n")


E2E_KEY = "sk-e2e-" + "7c1d" * 8


def scripted_agent():
    """A responder that answers child requests with a fixed run of bad replies, then valid ones."""
    from tests.agent_replies import EMPTY, MALFORMED, NOTEBOOK_TEXT, OUTSIDE_EDIT, SEALED_EDIT, lr_edit
    from tests.openai_server import Reply

    n = {"child": 0}
    never = Reply(never=True)
    script = {
        1: SEALED_EDIT, 2: OUTSIDE_EDIT,  # a proposal and its repair: policy, twice
        3: MALFORMED, 4: EMPTY,  # parse, twice
        5: Reply(text="x" * 10_000_000),  # 10 MB: refused by the client, no repair
        6: Reply(status=429, headers={"Retry-After": "0"}),  # retried, then 7 is valid
        8: Reply(status=500), 9: Reply(status=500),  # both tries fail
        10: never, 11: never,  # both tries time out
        12: "import", 13: "smoke",  # fails to import, then its repair fails in training
    }

    def respond(body):
        if "research notebook" in body["messages"][0]["content"]:
            return Reply(text=NOTEBOOK_TEXT)
        n["child"] += 1
        got = script.get(n["child"])
        if got == "import":
            return Reply(text=_recipe_reply(body, "import torch", "import torch\nimport no_such_module_anywhere",
                                            "use a faster kernel module"))
        if got == "smoke":
            return Reply(text=_recipe_reply({"messages": body["messages"][:2]},
                                            '    """Returns the training loss: cross-entropy with optional label smoothing."""',
                                            "    raise RuntimeError('refuses to train; key: ' + "
                                            "__import__('os').environ.get('EVOLVE_E2E_KEY', 'none here'))",
                                            "fail loudly"))
        return got or Reply(text=lr_edit(body, 1.0 + 0.15 * n["child"]))

    return respond


@pytest.fixture(scope="module")
def llm_search(ray_cluster, tmp_path_factory):
    """A real search whose children the scripted agent writes over HTTP."""
    from tests.openai_server import ScriptedOpenAI

    run_dir = tmp_path_factory.mktemp("llmrun") / "tiny"
    os.environ["EVOLVE_E2E_KEY"] = E2E_KEY  # taken out of the environment by run_search
    with ScriptedOpenAI(scripted_agent()) as server:
        spec = load_spec(Path(__file__).parents[1] / "experiments" / "tiny_lm", TINY + [
            "budget.trials=5", "budget.concurrent=2", "operator.kind=llm", f"operator.base_url={server.url}",
            "operator.model=scripted-coder", "operator.parallel=1", "operator.ahead=1", "operator.retries=1",
            "operator.timeout_s=2", "operator.max_failures=8", "operator.notebook_every=2",
            "operator.price_prompt=1.0", "operator.price_completion=2.0", "operator.api_key_env=EVOLVE_E2E_KEY"])
        lines = []
        searcher = run_search(spec, run_dir, log=lines.append)
        assert {r["headers"].get("authorization") for r in server.requests} == {f"Bearer {E2E_KEY}"}
    return run_dir, lines, searcher


@pytest.mark.search
def test_llm_children_are_trained_and_bad_replies_rejected(llm_search, capsys):
    from evolve.read.population import load_audit

    run_dir, lines, searcher = llm_search
    pop = load_population(run_dir)
    assert len(pop) == 5 and (pop["status"] == "completed").all(), pop[["status", "failure_reason"]]
    llm = pop[pop["operator"] == "llm"]
    assert len(llm) == 4
    for _, row in llm.iterrows():
        assert row["record"]["rationale"].startswith("scale the peak learning rate")
        assert row["record"]["prompt_tokens"] > 0 and row["record"]["price"] > 0
        assert row["record"]["smoke_seconds"] > 0
    audit = load_audit(run_dir)
    bad = audit[audit["stage"].notna()]
    reasons = set(zip(bad["stage"], bad["reason"]))
    expect = [("policy", "FILE: harness/evaluate.py: sealed"), ("policy", "FILE: helpers/fast.py: outside"),
              ("parse", "reply has no RATIONALE"), ("parse", "reply is empty"),
              ("endpoint", f"{searcher.llm.entries[0]['base_url']}: reply of 10,000,0"),
              ("endpoint", f"{searcher.llm.entries[0]['base_url']}: HTTP 500 (2 tries)"),
              ("endpoint", f"{searcher.llm.entries[0]['base_url']}: no reply within 2 s (2 tries)"),
              ("import", "ModuleNotFoundError: No module named 'no_such_module_anywhere'"),
              ("smoke", "RuntimeError: refuses to train; key: none here")]  # variants never see the key
    for stage, start in expect:
        assert any(s == stage and r.startswith(start) for s, r in reasons), (stage, start, reasons)
    assert searcher.llm.rejections == {"policy": 1, "parse": 1, "endpoint": 3, "smoke": 1}
    assert any(ln.startswith("evolve: agent: 4 proposals accepted") for ln in lines)
    child = llm.iloc[0]["variant_id"]
    assert cli.main(["show", str(run_dir), child, "--prompt"]) == 0
    out = capsys.readouterr().out
    assert "scale the peak learning rate" in out and "--- user ---" in out and "--- a/config.yaml" in out
    assert cli.main(["show", str(run_dir), "notebook"]) == 0
    assert "raising lr helped once" in capsys.readouterr().out
    assert cli.main(["status", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "agent:" in out and "rejected by stage:" in out and "smoke 1" in out
    for path in Path(run_dir).rglob("*"):
        if path.is_file():
            assert E2E_KEY.encode() not in path.read_bytes(), path


@pytest.mark.search
@pytest.mark.parametrize("method", ["random", "tpe"])
def test_baselines_train_their_samples_on_the_slots(ray_cluster, tmp_path, method):
    from evolve.search.baselines import run_baseline

    # enough tokens for the largest batch the space allows (64 x 256 x 4), so a sample fails only
    # for a reason of its own (say, the parameter cap)
    spec = load_spec(Path(__file__).parents[1] / "experiments" / "tiny_lm",
                     TINY + ["budget.trials=2", "budget.concurrent=2", "budget.train_tokens=65536"])
    rows = run_baseline(spec, tmp_path / method, method, log=lambda line: None)
    pop = load_population(tmp_path / method)
    assert len(rows) == 2 == len(pop) and (pop["operator"] == method).all()
    assert pop["variant_id"].is_unique and pop["status"].isin(["completed", "failed"]).all()
    assert (pop["status"] == "completed").sum() >= 1, list(pop["failure_reason"])
    assert pop["fitness"].dropna().gt(0).all()
    for _, row in pop.iterrows():
        assert set(row["record"]["values"]) <= set(
            __import__("evolve.search.baselines", fromlist=["x"]).search_space(
                spec, (Path(spec.root) / "scaffold" / "config.yaml").read_text()))


@pytest.mark.search
def test_asha_stops_weak_trials_and_frees_their_slots(ray_cluster, tmp_path):
    """A strict ASHA on one slot: later children worse than the best at the first rung stop there."""
    run_dir = tmp_path / "asha"
    spec = load_spec(Path(__file__).parents[1] / "experiments" / "tiny_lm", [
        "budget.train_tokens=16384", "trial.report_every=2", "budget.trials=5", "budget.concurrent=1",
        "scheduler.kind=asha", "scheduler.grace_tokens=4096", "scheduler.reduction_factor=50"])
    lines = []
    run_search(spec, run_dir, log=lines.append, verbose=0)
    pop = load_population(run_dir)
    assert len(pop) == 5 and set(pop["status"]) <= {"completed", "stopped"}, list(pop["failure_reason"])
    stopped = pop[pop["status"] == "stopped"]
    assert len(stopped) >= 1
    for _, row in stopped.iterrows():
        assert row["failure_reason"].startswith("stopped early by the scheduler at ")
        assert pop.curve(row["variant_id"]) and row["tokens_trained"] < 16384 and row["fitness"] != row["fitness"]
    assert any("STOPPED" in ln for ln in lines)
    assert (pop[pop["status"] == "completed"]["tokens_trained"] == 16384).all()
