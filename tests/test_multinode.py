"""A trial whose Ray Train workers run on two Ray nodes (two raylets on this machine, one CPU each)."""

import re
from pathlib import Path

import pytest

from evolve.read.population import load_population
from evolve.spec import load_spec
from evolve.driver import run_search

pytestmark = pytest.mark.search


def test_a_trial_spans_two_nodes(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    monkeypatch.setenv("RAY_ADDRESS", cluster.address)  # evolve joins it, as on any running cluster
    try:
        spec = load_spec(Path(__file__).parents[1] / "experiments" / "tiny_lm", [
            "trial.workers=2", "trial.cpus_per_worker=1", "trial.placement=spread", "budget.trials=1",
            "budget.concurrent=1", "budget.train_tokens=8192", "trial.report_every=2", "confirm.top=0"])
        run_search(spec, tmp_path / "run", log=lambda line: None, verbose=0)
    finally:
        ray.shutdown()
        cluster.shutdown()
    pop = load_population(tmp_path / "run")
    assert len(pop) == 1 and (pop["status"] == "completed").all(), list(pop["failure_reason"])
    for vid in pop["variant_id"]:
        nodes = []
        for rank in (0, 1):
            log = (tmp_path / "run" / "trials" / vid / f"rank{rank}.log").read_text()
            nodes.append(re.search(rf"evolve: rank {rank} of 2 on node (\w+)", log).group(1))
        assert nodes[0] != nodes[1]  # one worker on each node, in one process group
