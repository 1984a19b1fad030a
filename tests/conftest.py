import functools
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # Ray stays on 127.0.0.1
# the test functions that zygotes started in tests may run, besides evolve's own entry points
os.environ.setdefault("EVOLVE_ZYGOTE_ENTRY_POINTS", ",".join(
    f"tests.zygote_targets:{f}" for f in ("identify", "poison", "is_poisoned", "fail", "die", "sleep",
                                           "spawn_and_sleep", "walls")))

ROOT = Path(__file__).resolve().parents[1]
TINY_LM = ROOT / "experiments" / "tiny_lm"


# -- cost tiers ----------------------------------------------------------------------------------
# Every test carries exactly one cost marker (registered in pyproject.toml; see docs/TESTING.md):
#   unit    starts no process and opens no socket
#   warm    starts Ray, the zygote, a server or any subprocess, but runs no whole search
#   search  runs a whole search
# An audit hook records what each test (its set-up, its fixtures and its body) started, and a test
# whose marker understates that fails with one line naming what it did.

TIERS = ("unit", "warm", "search")
PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec",
                            "os.system", "os.spawn"})
SOCKET_EVENTS = frozenset({"socket.connect", "socket.bind"})
_WATCHED = PROCESS_EVENTS | SOCKET_EVENTS
SEARCH_ENTRY_POINTS = (("evolve.driver", "run_search"), ("evolve.driver", "resume_search"),
                       ("evolve.search.baselines", "run_baseline"))
REFUSED_EXIT = 2  # `evolve run/resume` refused its arguments (a SpecError, one line): no search ran


class Cost:
    """What a test or a fixture did: the first process, socket and whole search seen, described."""

    __slots__ = ("process", "socket", "search", "cli_runs")

    def __init__(self):
        self.process = self.socket = self.search = None
        self.cli_runs = []  # (Popen object or None, description) of `evolve run/resume` subprocesses

    def settle(self) -> None:
        """A `run`/`resume` subprocess ran a search unless the CLI refused it (exit status 2)."""
        for proc, what in self.cli_runs:
            if self.search is None and getattr(proc, "returncode", None) != REFUSED_EXIT:
                self.search = what
        self.cli_runs = []

    def add(self, other: "Cost", fixture: str | None = None) -> None:
        for name in ("process", "socket", "search"):
            if getattr(self, name) is None and getattr(other, name) is not None:
                setattr(self, name, getattr(other, name) + (f", in fixture {fixture!r}" if fixture else ""))


_recording: list = []  # the Costs recording now: the running test's and any fixture being set up
_threads_before: frozenset = frozenset()  # threads (but the main one) already running when the test began


def _short(value, limit: int = 160) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _argv(args) -> list:
    if isinstance(args, (str, bytes, os.PathLike)):
        return os.fsdecode(args).split()
    return [os.fsdecode(a) if isinstance(a, (str, bytes, os.PathLike)) else str(a) for a in args]


def runs_a_search(argv: list) -> bool:
    """Whether a command line runs evolve's CLI with `run` or `resume` (or experiments/launch.py, which does)."""
    for i, arg in enumerate(argv):
        if arg.endswith("launch.py"):
            return True
        if "evolve.cli" in arg or os.path.basename(arg) == "evolve":
            return any(a in ("run", "resume") for a in argv[i + 1:])
    return False


def _importing() -> bool:
    """Whether an import statement is running: what a module does as it is first imported (ctypes asking
    ldconfig where libc is, urllib3 binding ::1 to see if IPv6 works) is not what the test started, and
    would otherwise count against whichever test happened to import it first."""
    frame = sys._getframe(2)
    while frame is not None:
        code = frame.f_code
        if code.co_name == "_find_and_load" and code.co_filename == "<frozen importlib._bootstrap>":
            return True
        frame = frame.f_back
    return False


def _audit(event, args):
    """sys.addaudithook's hook: cheap for every other event, and never raises."""
    if event not in _WATCHED or not _recording:
        return
    try:
        if threading.get_ident() in _threads_before or _importing():
            return  # a thread an earlier test left running is not this test's doing
        thread = threading.current_thread()
        where = "" if thread is threading.main_thread() else f" (thread {thread.name})"
        if event in SOCKET_EVENTS:
            what = f"{event} {_short(args[1])}{where}"
            for cost in list(_recording):
                if cost.socket is None:
                    cost.socket = what
            return
        proc = None
        if event == "subprocess.Popen":
            argv = _argv(args[1])
            what = f"{event} {_short(argv)}{where}"
            if runs_a_search(argv):
                try:  # the Popen being built, to read its exit status later
                    proc = sys._getframe(1).f_locals.get("self")
                except Exception:
                    proc = None
                for cost in list(_recording):
                    cost.cli_runs.append((proc, what))
        else:
            what = f"{event} {_short(args[:2] if isinstance(args, tuple) else args)}{where}"
        for cost in list(_recording):
            if cost.process is None:
                cost.process = what
    except Exception:
        pass


sys.addaudithook(_audit)


def _watch_search(name: str, original):
    @functools.wraps(original)
    def watched(*args, **kwargs):
        from evolve.spec import SpecError

        noted = [cost for cost in _recording if cost.search is None]
        for cost in noted:  # at the start: a search in a thread may outlive the test that started it
            cost.search = name
        try:
            return original(*args, **kwargs)
        except SpecError:  # refused before anything ran (a one-line spec or run folder error)
            for cost in noted:
                cost.search = None
            raise
    return watched


@pytest.fixture(scope="session", autouse=True)
def _search_watch():
    """Wraps evolve's whole-search entry points (wherever they were imported) to record their calls."""
    import importlib

    with pytest.MonkeyPatch.context() as mp:
        for module, name in SEARCH_ENTRY_POINTS:
            original = getattr(importlib.import_module(module), name)
            watched = _watch_search(f"{module}.{name}", original)
            for mod in list(sys.modules.values()):
                if getattr(mod, "__name__", "").startswith(("evolve", "tests")):
                    for attr, value in list(vars(mod).items()):
                        if value is original:
                            mp.setattr(mod, attr, watched)
        yield


_ZYGOTES_STARTED: set = set()  # sockets of the zygotes this process asked for (evolve.warm.zygote.ensure)


@pytest.fixture(scope="session", autouse=True)
def _zygote_watch():
    """Wraps `zygote.ensure` to note the sockets this process started or found (see `_each_module_ends_clean`)."""
    from evolve.warm import zygote

    original = zygote.ensure

    @functools.wraps(original)
    def noted(*args, **kwargs):
        path = original(*args, **kwargs)
        _ZYGOTES_STARTED.add(path)
        return path

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(zygote, "ensure", noted)
        yield


@pytest.fixture(scope="module", autouse=True)
def _each_module_ends_clean():
    """What a module left running in this process is stopped when it ends (after its own fixtures): a Ray it
    initialised and never shut down (`run_baseline` leaves it up, as a CLI process would at exit), and the
    zygotes it asked for. The next module starts from nothing, and no idle cluster or zygote of an earlier
    module takes CPU from the tests after it."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
    from evolve.warm import zygote

    for path in list(_ZYGOTES_STARTED):
        _ZYGOTES_STARTED.discard(path)
        if path.exists() and zygote.ping(path):
            zygote.shutdown(path)


_FIXTURE_COSTS: dict = {}  # FixtureDef -> Cost of its latest set-up
_TEST_COST = pytest.StashKey()


def cost_marker(item) -> str | None:
    """The test's one cost marker; fails it, in one line, without exactly one."""
    names = [m.name for m in item.iter_markers() if m.name in TIERS]
    if len(names) == 1:
        return names[0]
    if not names:
        pytest.fail(f"{item.nodeid}: no cost marker; mark it unit, warm or search (see docs/TESTING.md)",
                    pytrace=False)
    pytest.fail(f"{item.nodeid}: more than one cost marker ({', '.join(sorted(set(names)))}); keep one",
                pytrace=False)


def understated(tier: str, cost: Cost) -> str | None:
    """The line that fails a test whose marker understates what it did, or None."""
    if tier == "unit":
        for what, did in (("ran a whole search", cost.search), ("started a process", cost.process),
                          ("opened a socket", cost.socket)):
            if did:
                return f"marked unit but {what} ({did}); mark it {'search' if cost.search else 'warm'}"
    if tier == "warm" and cost.search:
        return f"marked warm but ran a whole search ({cost.search}); mark it search"
    return None


def _stop_recording(item) -> Cost | None:
    cost = item.stash.get(_TEST_COST, None)
    if cost is not None and cost in _recording:
        _recording.remove(cost)
        cost.settle()
    return cost


def cost_of(item, own: Cost) -> Cost:
    """What the test did itself, plus what the fixtures it uses did when they were set up (maybe for another test)."""
    total = Cost()
    names = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {})
    for name in item.fixturenames:
        for fixturedef in names.get(name, ())[-1:]:
            if fixturedef in _FIXTURE_COSTS:
                total.add(_FIXTURE_COSTS[fixturedef], name)
    total.add(own)
    return total


class CostCheck:
    """The hooks, registered as a plugin of the whole session: a session-scoped fixture's set-up
    runs under the session's hooks, which a conftest's own hooks are not."""

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        cost = Cost()
        _recording.append(cost)
        try:
            return (yield)
        finally:
            _recording.remove(cost)
            cost.settle()
            _FIXTURE_COSTS[fixturedef] = cost

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        global _threads_before
        cost_marker(item)  # before any fixture is set up: an unmarked test starts nothing
        main = threading.main_thread()
        _threads_before = frozenset(t.ident for t in threading.enumerate() if t is not main)
        cost = item.stash[_TEST_COST] = Cost()
        _recording.append(cost)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item):
        try:
            result = yield
        finally:
            own = _stop_recording(item)
        # a test that failed on its own keeps its own failure; one that passed fails here if it understated
        line = understated(cost_marker(item), cost_of(item, own)) if own is not None else None
        if line:
            pytest.fail(line, pytrace=False)
        return result

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item):
        _stop_recording(item)  # a test whose set-up failed never reached its call


def pytest_configure(config):
    if not config.pluginmanager.has_plugin("evolve-cost-check"):
        config.pluginmanager.register(CostCheck(), "evolve-cost-check")


@pytest.fixture
def experiment(tmp_path):
    """A private copy of experiments/tiny_lm that a test may edit."""
    dest = tmp_path / "tiny_lm"
    shutil.copytree(TINY_LM, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


N_POSITIONS = 128


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A randomly initialised GPT-2 with a word-level tokenizer, saved as save_pretrained writes it."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("models") / "tiny-gpt2"
    lines = ["system: You edit training code.", "user: Propose one change to the learning rate schedule.",
             "assistant: Use a cosine schedule with warm-up and a lower peak learning rate.",
             "the model trains on tokens and the loss goes down"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(lines, trainers.WordLevelTrainer(special_tokens=["<|endoftext|>", "<unk>"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>")
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=N_POSITIONS, vocab_size=len(fast),
                        bos_token_id=fast.eos_token_id, eos_token_id=fast.eos_token_id,
                        pad_token_id=fast.pad_token_id)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return folder


@pytest.fixture
def small_run(tmp_path):
    """A run folder of six variants with results, no search behind it:

    seed 3.0 -> a 2.8 (perturb) -> c 2.6 (llm, 900 tokens) and d failed (llm);
    seed -> b 3.1 (perturb); a + b -> e 2.7 (crossover)."""
    from evolve.record.store import Store
    from evolve.variant import Variant

    root = tmp_path / "run"
    store = Store(root)
    (root / "spec.yaml").write_text("objective: {metric: heldout_loss, mode: min}\ntrial: {workers: 2}\n")
    made = {}

    def add(name, parents, op, fitness, seconds, tokens=0):
        v = Variant(files=store.put_files({"config.yaml": f"name: {name}\n".encode()}),
                    parents=tuple(made[p].id for p in parents), operator=op,
                    record={"kind": op, "rationale": f"make {name} <fast> & safe", "prompt_tokens": tokens, "completion_tokens": 0})
        store.put_variant(v)
        store.append_result({"variant_id": v.id, "parent_ids": list(v.parents), "operator": op, "record": v.record,
                             "status": "completed" if fitness else "failed", "fitness": fitness,
                             "metrics": {}, "curve": [[1000, 4.0, 3.9], [2000, 3.5, fitness or 9.0]],
                             "trial_seconds": seconds})
        made[name] = v

    add("seed", [], "seed", 3.0, 10.0)
    add("a", ["seed"], "perturb", 2.8, 12.0)
    add("b", ["seed"], "perturb", 3.1, 8.0)
    add("c", ["a"], "llm", 2.6, 30.0, 900)
    add("d", ["a"], "llm", None, 1.0, 500)
    add("e", ["a", "b"], "crossover", 2.7, 11.0)
    return root, {k: v.id for k, v in made.items()}


def wait_for_port(port: int, proc, log, wait_s: float = 60.0) -> None:
    """Waits until a server we started listens on 127.0.0.1:`port`; fails with its log if it exits or never does."""
    import socket
    import time

    deadline = time.time() + wait_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                raise RuntimeError(f"server did not start on port {port}: {Path(log).read_text()[-2000:]}")
            time.sleep(0.2)


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    """An S3-compatible server (moto's server mode) on 127.0.0.1 with one bucket, "runs".

    Sets the environment pyarrow reads (endpoint, fake keys, region) for
    the whole session's processes; yields the endpoint URL.
    """
    import socket
    import subprocess
    import sys

    import pyarrow.fs as pafs

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log_path = tmp_path_factory.mktemp("s3") / "moto.log"
    log = open(log_path, "wb")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        wait_for_port(port, server, log_path)
        pafs.S3FileSystem(endpoint_override=endpoint, allow_bucket_creation=True).create_dir("runs")
        yield endpoint
    finally:
        server.kill()
        server.wait()
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
