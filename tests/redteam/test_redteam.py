"""The red team: every attack in `attacks.py`, each a recipe an LLM endpoint writes, trained
through the real trial path (the search's CLI, Ray Tune, the slots, a zygote child, the sandbox)
at both sandbox levels.

One search per level: the seed, then one child per attack, on a Ray head
started here with its dashboard (so the GCS, the dashboard and the raylet's
sockets are real targets), beside a TCP listener, a pathname and an
abstract Unix socket listener, and a canary in /dev/shm. No smoke stage
runs first: each attack meets the trial's own walls. Each must end
contained: failed with the line naming what was refused, or completed with
an honest fitness; no mark of an escape anywhere, the sealed hashes, the
record, the canary and the listeners untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pandas as pd
import pytest

from evolve.warm import zygote
from evolve.read.population import load_population
from evolve.record.seals import check_sealed
from evolve.driver import search_key
from tests.conftest import TINY_LM
from tests.openai_server import Reply, ScriptedOpenAI
from tests.redteam.attacks import ATTACKS, COMPLETED, EXPECT, recipe

pytestmark = pytest.mark.search

BUDGET = 20_480
TIMEOUT_S = 20
HERE = Path(__file__).parent


@pytest.fixture(scope="session")
def native(tmp_path_factory) -> bytes:
    """The attacks' native extension, compiled for this interpreter."""
    out = tmp_path_factory.mktemp("native") / "redteam_native.so"
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "the red team needs a C compiler (cc) to build its native attacks"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", f"-I{sysconfig.get_paths()['include']}",
                    str(HERE / "native.c"), "-o", str(out)], check=True)
    return out.read_bytes()


class _Listener:
    """Accepts whatever connects (nothing should) and records it."""

    def __init__(self, sock: socket.socket):
        self.sock, self.accepted = sock, []
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            try:
                self.accepted.append(self.sock.accept())
            except OSError:  # closed at the end
                return


@pytest.fixture(scope="module")
def ray_head():
    """A Ray head with its dashboard, as `ray start --head` gives: its ports and sockets are targets."""
    from ray.cluster_utils import Cluster

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dashboard = s.getsockname()[1]
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "include_dashboard": True, "dashboard_port": dashboard, "dashboard_host": "127.0.0.1"})
    try:
        node = cluster.head_node
        yield {"address": cluster.address, "gcs": int(cluster.address.rsplit(":", 1)[1]), "dashboard": dashboard,
               "raylet": node.raylet_socket_name}
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module", params=["full", "unprivileged"])
def redteam(request, tmp_path_factory, ray_head, native):
    level = request.param
    tmp = tmp_path_factory.mktemp(f"redteam-{level}")
    experiment, run = tmp / "tiny_lm", tmp / "run"
    shutil.copytree(TINY_LM, experiment, ignore=shutil.ignore_patterns("__pycache__"))
    tcp = _Listener(socket.create_server(("127.0.0.1", 0)))
    unix_path = str(tmp / "service.sock")
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind(unix_path)
    unix.listen()
    unix = _Listener(unix)
    abstract_name = f"evolve-redteam-{os.getpid()}-{level}"
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind("\0" + abstract_name)
    abstract.listen()
    abstract = _Listener(abstract)
    canary = Path(f"/dev/shm/evolve-redteam-canary-{os.getpid()}")
    canary.write_text("untouched")
    outside = tmp / "outside.txt"  # a file of the user's that a link in a trial folder points at
    outside.write_text("untouched")
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ADDRESS": ray_head["address"],
           "DS_ACCELERATOR": "cpu"}
    seed_recipe = (TINY_LM / "scaffold" / "recipe.py").read_text()
    names = sorted(ATTACKS)
    queue = sorted(ATTACKS)
    box = {}

    def respond(body):
        if not queue:
            return Reply(status=500)
        name = queue.pop(0)
        text = recipe(seed_recipe, name, box["targets"], native)
        return Reply(text=f"RATIONALE: attack {name}\n\nFILE: recipe.py\n```python\n{text}```\n")

    with ScriptedOpenAI(respond) as server:
        targets = {
            "tcp": tcp.sock.getsockname()[1], "unix": unix_path, "abstract": abstract_name,
            "llm": int(server.url.rsplit(":", 1)[1].split("/")[0]), "gcs": ray_head["gcs"],
            "dashboard": ray_head["dashboard"], "raylet": ray_head["raylet"],
            "zygote": str(zygote.socket_path(search_key(run))), "zygote_dir": str(zygote.folder()),
            "heldout": str(run / "data" / "heldout.bin"), "run": str(run), "home": os.path.expanduser("~"),
            "evaluate": str(experiment / "harness" / "evaluate.py"), "shm_canary": str(canary),
            "outside_pid": os.getpid(), "outside_file": str(outside)}
        box["targets"] = targets
        args = [sys.executable, "-m", "evolve.cli", "run", str(experiment), f"budget.trials={len(names) + 1}",
                f"budget.train_tokens={BUDGET}", "trial.report_every=5", "trial.memory_gb=1", "trial.disk_gb=0.1",
                f"trial.timeout_s={TIMEOUT_S}", "trial.max_failures=0", "confirm.top=0", f"trial.sandbox={level}",
                "operator.kind=llm", "operator.model=scripted", f"operator.base_url={server.url}",
                "operator.smoke_steps=0", "operator.parallel=1", "operator.ahead=2", "operator.retries=0",
                "operator.repair_rounds=0", "operator.wait_s=600", "operator.notebook_every=0",
                "operator.max_failures=1000", "--run-dir", str(run)]
        out = subprocess.run(args, env=env, capture_output=True, text=True, timeout=1500)
    for listener in (tcp, unix, abstract):
        listener.sock.close()
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    pop = load_population(run)
    by_attack = {}
    for _, row in pop.iterrows():
        rationale = (row["record"] or {}).get("rationale", "")
        if rationale.startswith("attack "):
            by_attack[rationale.split(" ", 1)[1]] = row
    yield {"level": level, "run": run, "experiment": experiment, "pop": pop, "by_attack": by_attack, "log": log,
           "listeners": (tcp, unix, abstract), "canary": canary, "outside": outside}
    canary.unlink(missing_ok=True)


def test_the_search_says_its_level_and_trains_every_attack(redteam):
    level = redteam["level"]
    line = "sandbox: full" if level == "full" else "sandbox: unprivileged (no user namespaces): forced by"
    assert line in redteam["log"]
    pop = redteam["pop"]
    assert len(pop) == len(ATTACKS) + 1 and pop["variant_id"].is_unique
    assert set(redteam["by_attack"]) == set(ATTACKS)
    assert pop[pop["operator"] == "seed"].iloc[0]["status"] == "completed"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_each_attack_is_contained(redteam, attack):
    row = redteam["by_attack"][attack]
    escaped = redteam["run"] / "trials" / row["variant_id"] / "ESCAPED"
    assert not escaped.exists(), escaped.read_text()
    expect = EXPECT[attack]
    if row["status"] == "completed":
        assert re.match(rf"^({expect})", COMPLETED), f"completed, but it should fail with {expect!r}"
        assert row["fitness"] == row["metrics"]["heldout_loss"] and row["fitness"] > 0
    else:
        assert row["status"] == "failed" and pd.isna(row["fitness"])
        assert re.search(expect, row["failure_reason"]), row["failure_reason"]
        assert "\n" not in row["failure_reason"]


def test_fitness_comes_only_from_the_sealed_evaluation(redteam):
    by, seed = redteam["by_attack"], redteam["pop"][redteam["pop"]["operator"] == "seed"].iloc[0]
    assert by["fake_metric"]["final_train_loss"] < 0.01 and by["fake_metric"]["fitness"] > 5.0  # untrained
    for name in ("patch_eval", "config_junk"):  # same training as the seed, so the same honest fitness
        assert by[name]["status"] == "completed" and abs(by[name]["fitness"] - seed["fitness"]) < 1e-6, name
    assert by["raise_budget"]["status"] == "completed" and 0 < by["raise_budget"]["tokens_trained"] <= BUDGET


def test_nothing_outside_the_trials_changed(redteam):
    run, experiment = redteam["run"], redteam["experiment"]
    check_sealed(json.loads((run / "sealed.json").read_text()))  # raises on any change
    assert (experiment / "harness" / "evaluate.py").read_text() == (TINY_LM / "harness" / "evaluate.py").read_text()
    assert not (run / "population" / "zz-forged.parquet").exists()
    assert (run / "data" / "train.bin").is_file()  # a forged checkpoint naming data/ neither copied nor deleted it
    assert sorted(run.glob("**/ESCAPED")) == []
    assert redteam["canary"].read_text() == "untouched"
    assert redteam["outside"].read_text() == "untouched"  # no log appended through a link
    for listener in redteam["listeners"]:
        assert listener.accepted == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert "sleep 600" not in ps
