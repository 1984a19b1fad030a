"""Two searches on one machine, and a search submitted with `ray job submit` as README says.

The searches tests share one head that `ray start --head --block` starts on
127.0.0.1 (ports chosen free, its own temporary folder, 2 CPUs) with a home
folder of its own holding a token made by `ray get-auth-token --generate`,
so the head runs with Ray's token authentication on. At the end the head's
`ray start` process is stopped by its pid, then any process of that head
still left (found by the head's own temporary folder in its command line),
by pid: no other Ray on the machine is touched.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from evolve.raycluster import JOIN_ENV, JOIN_LOCAL, START, choose, cluster_line
from tests.conftest import TINY_LM, wait_for_port

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
TINY = ["budget.trials=3", "budget.concurrent=1", "budget.train_tokens=8192", "trial.report_every=2",
        "confirm.top=0"]


# -- which cluster (pure) ------------------------------------------------------------------------
@pytest.mark.unit
def test_choose_prefers_ray_address_then_a_live_ray_start_head_then_a_local_one():
    assert choose("10.0.0.1:6379", "127.0.0.1:6380", {"127.0.0.1:6380"}) == (JOIN_ENV, "10.0.0.1:6379")
    assert choose(None, "127.0.0.1:6380", {"127.0.0.1:6380", "127.0.0.1:7000"}) == (JOIN_LOCAL, "127.0.0.1:6380")
    assert choose("", "127.0.0.1:6380", set()) == (START, None)  # recorded but dead: a stale file
    assert choose(None, None, {"127.0.0.1:7000"}) == (START, None)  # another driver's private Ray: not joined


@pytest.mark.unit
def test_cluster_line_names_the_address_and_size_and_warns_of_other_instances():
    line = cluster_line(JOIN_LOCAL, "127.0.0.1:6380", {"CPU": 2.0, "memory": 1e9}, 1)
    assert line.startswith("ray: joined the cluster `ray start` left running at 127.0.0.1:6380: 2 CPUs, 0 GPUs, 1 node")
    assert cluster_line(JOIN_ENV, "10.0.0.1:6379", {"CPU": 96.0, "GPU": 8.0}, 3) == \
        "ray: joined the cluster at 10.0.0.1:6379 (RAY_ADDRESS): 96 CPUs, 8 GPUs, 3 nodes"
    alone = cluster_line(START, "127.0.0.1:1234", {"CPU": 4.0}, 1)
    assert alone == "ray: started a local cluster at 127.0.0.1:1234 for this search alone: 4 CPUs, 0 GPUs, 1 node"
    shared = cluster_line(START, "127.0.0.1:1234", {"CPU": 4.0}, 1, others=2)
    assert "2 other Ray instances on this machine use the same CPUs" in shared and "ray start --head" in shared


# -- where launch.py keeps a run (files only) -----------------------------------------------------
def _launch():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import launch
    finally:
        sys.path.remove(str(ROOT / "experiments"))
    return launch


@pytest.mark.unit
def test_launch_keeps_a_run_under_home_or_storage_never_in_the_jobs_folder(experiment, tmp_path, monkeypatch):
    launch = _launch()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    home = tmp_path / "home"
    argv, target = launch.with_run_dir([str(experiment), "budget.trials=2"])
    assert target == str(home / "evolve-runs" / "tiny_lm") and argv[-2:] == ["--run-dir", target]
    _, target = launch.with_run_dir([str(experiment), "storage=s3://bucket/runs"])
    assert target == "s3://bucket/runs/tiny_lm"
    monkeypatch.chdir(tmp_path)
    _, target = launch.with_run_dir([str(experiment), "storage=keep"])  # relative, run by hand: from here
    assert target == str(tmp_path / "keep" / "tiny_lm")
    job = tmp_path / "ray" / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_1"
    job.mkdir(parents=True)
    monkeypatch.chdir(job)
    _, target = launch.with_run_dir([str(experiment), "storage=keep"])  # in a job's folder: under the home
    assert target == str(home / "keep" / "tiny_lm")
    argv, target = launch.with_run_dir([str(experiment), "budget.trials=2", "--run-dir", "runs/x",
                                        "--peak-tflops", "9"])
    assert target == str(home / "runs" / "x")
    assert argv == [str(experiment), "budget.trials=2", "--peak-tflops", "9", "--run-dir", target]
    argv, target = launch.with_run_dir([str(experiment), "--run-dir=/abs/x"])
    assert target == "/abs/x" and argv == [str(experiment), "--run-dir", "/abs/x"]
    assert launch.with_run_dir([str(experiment), "budget.trials=many"]) == ([str(experiment), "budget.trials=many"],
                                                                            None)  # evolve run says why


# -- a head started with `ray start` -------------------------------------------------------------
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _head_processes(tmp: str) -> list[int]:
    """Pids of the processes whose command line names the head's own temporary folder."""
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(tmp in a for a in (p.info["cmdline"] or [])) and p.info["pid"] != os.getpid():
                pids.append(p.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return pids


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    d = tmp_path_factory.mktemp("head")
    home = d / "home"
    home.mkdir()
    tmp = tempfile.mkdtemp(prefix="evr", dir="/tmp")  # short: Ray's Unix sockets live under it
    ops = os.environ.get("TORCH_EXTENSIONS_DIR") or str(Path.home() / ".cache" / "torch_extensions")
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}", "HOME": str(home), "RAY_TMPDIR": tmp,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TORCH_EXTENSIONS_DIR": ops, "DS_ACCELERATOR": "cpu"}
    for k in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(k, None)
    subprocess.run([str(VENV_BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                   capture_output=True, timeout=60)
    assert (home / ".ray" / "auth_token").is_file()
    gcs, dash = _free_port(), _free_port()
    log = open(d / "head.log", "wb")
    proc = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--num-cpus=2", "--num-gpus=0", f"--temp-dir={tmp}/ray", "--include-dashboard=true",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
         f"--dashboard-agent-listen-port={_free_port()}", f"--dashboard-agent-grpc-port={_free_port()}",
         f"--ray-client-server-port={_free_port()}", f"--metrics-export-port={_free_port()}",
         f"--runtime-env-agent-port={_free_port()}", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=d)
    try:
        wait_for_port(dash, proc, d / "head.log", wait_s=180)
        # `ray start` records the head's address (where a search without RAY_ADDRESS finds it) after its
        # dashboard listens: a search started in between would start a local Ray of its own
        recorded, deadline = Path(tmp) / "ray" / "ray_current_cluster", time.time() + 60
        while not (recorded.is_file() and recorded.read_text().strip() == f"127.0.0.1:{gcs}"):
            assert time.time() < deadline and proc.poll() is None, (d / "head.log").read_text()[-2000:]
            time.sleep(0.1)
        yield {"env": env, "gcs": f"127.0.0.1:{gcs}", "dashboard": f"http://127.0.0.1:{dash}", "home": home,
               "tmp": tmp, "dir": d}
    finally:
        import psutil

        try:  # the head's processes as they are now: some (Ray's agents) rename themselves out of reach of the folder's name
            started = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            started = []
        proc.send_signal(signal.SIGTERM)
        try:  # `ray start --block` takes half a minute to stop its head gracefully; what is left is killed below
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for child in started:  # psutil checks each is still the process it was (not a reused pid)
            try:
                child.kill()
            except psutil.NoSuchProcess:
                pass
        for pid in _head_processes(tmp):  # anything of this head's still left
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


def _population(run: Path):
    from evolve.read.population import load_population

    return load_population(run)


@pytest.mark.search
def test_two_searches_side_by_side_join_one_head_and_finish_apart(head, tmp_path, monkeypatch):
    from evolve.driver import search_key
    from evolve.warm import zygote

    runs = [tmp_path / "a", tmp_path / "b"]
    procs, outs = [], []
    for i, run in enumerate(runs):
        out = open(tmp_path / f"out{i}.txt", "wb")
        outs.append(tmp_path / f"out{i}.txt")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "evolve.cli", "run", str(TINY_LM), *TINY, f"seed={i}", "--run-dir", str(run)],
            env={**head["env"], "PYTHONPATH": str(ROOT)}, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path))
    joined = f"ray: joined the cluster `ray start` left running at {head['gcs']}: 2 CPUs, 0 GPUs, 1 node"
    overlapped = False
    deadline = time.time() + 900
    while any(p.poll() is None for p in procs):
        texts = [o.read_text(errors="replace") for o in outs]
        if all(joined in t for t in texts) and all(p.poll() is None for p in procs):
            overlapped = True  # both on the head at once
        assert time.time() < deadline, texts
        time.sleep(0.5)
    texts = [o.read_text(errors="replace") for o in outs]
    for p, t in zip(procs, texts):
        assert p.returncode == 0, t[-4000:]
        assert joined in t, t[-4000:]
        assert "variants: 3 finished (3 completed" in t, t[-4000:]
    assert overlapped
    for run in runs:
        pop = _population(run)
        assert len(pop) == 3 and (pop["status"] == "completed").all()
        assert sorted(p.name for p in (run / "trials").iterdir()) == sorted(pop["variant_id"])  # its trials only
    # each search's own zygote, started and stopped by it alone
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    keys = [search_key(run) for run in runs]
    assert keys[0] != keys[1]
    for key in keys:
        path = zygote.socket_path(key)
        assert path.with_suffix(".log").is_file()  # it was started
        assert zygote.ping(path) is None  # and is gone


def _readme_submit_line() -> list[str]:
    """README's `ray job submit` line, as words, with the environment it sets in front."""
    import shlex

    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if " ray job submit " in f" {ln} "]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("#")[0])


@pytest.mark.search
def test_ray_job_submit_as_readme_says_keeps_the_run_where_launch_says(head, tmp_path):
    work = tmp_path / "project"  # a small copy of the repository: the job's working folder
    shutil.copytree(ROOT / "evolve", work / "evolve", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "experiments" / "tiny_lm", work / "experiments" / "tiny_lm",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "experiments" / "launch.py", work / "experiments" / "launch.py")
    words = _readme_submit_line()
    env_words = [w for w in words[:words.index("ray")] if "=" in w]
    assert env_words == ["RAY_AUTH_MODE=token"]
    cmd = [w.replace("http://HEAD:8265", head["dashboard"]) for w in words[len(env_words):]]
    cmd = [str(VENV_BIN / "ray"), *cmd[1:], "budget.trials=1", *TINY[1:]]
    env = {k: v for k, v in head["env"].items() if k != "RAY_TMPDIR"}  # a client: the token is all it needs
    # without the token the head refuses: token authentication is on
    refused = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "Missing authentication token" in refused.stdout + refused.stderr
    out = subprocess.run(cmd, cwd=work, env={**env, **dict(w.split("=", 1) for w in env_words)},
                         capture_output=True, text=True, timeout=900)
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "succeeded" in text, text[-4000:]
    where = head["home"] / "evolve-runs" / "tiny_lm"
    assert f"launch: the run is kept in {where}\n" in text, text[-4000:]
    assert f"ray: joined the cluster at {head['gcs']} (RAY_ADDRESS): 2 CPUs" in text, text[-4000:]
    pop = _population(where)
    assert len(pop) == 1 and (pop["status"] == "completed").all()
    assert not list(Path(head["tmp"]).rglob("runs"))  # nothing kept in the job's working folder
