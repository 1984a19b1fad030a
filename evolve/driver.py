"""The search driver: spec -> data, sealed hashes, searcher, Ray Tune run.

Owns the one-time steps of a search (split the corpus, hash the sealed
files, build DeepSpeed's CPU op once) and the Ray session. Everything that
runs per trial lives in `evolve.trial.train` and `evolve.rank.lm`.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

# Before anything imports ray: a local Ray then binds 127.0.0.1 only.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import yaml

from evolve.messages import split_tokens
from evolve.record import mirror
from evolve.record.seals import hash_files, sealed_paths
from evolve.record.store import Store, atomic_write
from evolve.search.searcher import EvolveSearcher
from evolve.search.tunestate import restored_configs, restored_searcher
from evolve.spec import Spec, SpecError, load_run_spec, model_entries
from evolve.trial.evaluation import load_module
from evolve.trial.slots import SlotPool
from evolve.trial.train import TRIAL_RESOURCES, trainable
from evolve.warm import zygote

# Ray is imported inside the functions that start or restore a search: the CLI's reading commands
# import this module's helpers without paying for it.

# Ray Train's controller polls its workers this often (seconds); its default
# of 2.0 makes every ray.train.report wait up to 2 s.
HEALTH_CHECK_INTERVAL_S = "0.1"


def scaffold_files(spec: Spec) -> dict[str, bytes]:
    """Returns the seed variant: every file under the scaffold folder."""
    root = spec.path(spec.scaffold)
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def prepare_data(spec: Spec, run_dir: Path) -> dict:
    """Splits the corpus with the experiment's sealed harness/data.py, once per run."""
    data_dir = run_dir / "data"
    meta = data_dir / "meta.json"
    if meta.is_file():
        return json.loads(meta.read_text())
    module = load_module(spec.path("harness/data.py"), "evolve_sealed_data")
    return module.prepare(data_dir, spec.task)


def seal(spec: Spec, run_dir: Path) -> dict[str, str]:
    """Hashes the sealed files and the held-out split; kept in sealed.json."""
    path = run_dir / "sealed.json"
    if path.is_file():
        return json.loads(path.read_text())
    files = sealed_paths(spec.root, spec.sealed) + [(run_dir / "data" / "heldout.bin").resolve()]
    hashes = hash_files(files)
    atomic_write(path, json.dumps(hashes, indent=1).encode())
    return hashes


def max_trials(spec: Spec) -> int:
    """Returns the most trials a search runs: its budget, plus the confirmation re-runs at most
    (the seed and `confirm.top` candidates with a parent each, `confirm.seeds` times); the
    searcher ends the search sooner when it has fewer to re-run."""
    c = spec.confirm
    return spec.budget.trials + ((1 + 2 * c.top) * c.seeds if c.top else 0)


def sandbox_policy(spec: Spec, run_dir: Path, log=print) -> dict | None:
    """Returns what every rank's sandbox hides and caps (see `evolve.rank.sandbox`), or None without one.

    Hidden: the held-out split and whatever the sealed `harness/data.py`
    names in `sources(task)` (the corpus it was cut from); the run folder,
    the zygotes' folder and Ray's temporary folder as whole trees. Prints
    the level in one line. Raises SpecError, one line, if this machine can
    set up no level that `trial.sandbox` allows.
    """
    out = subprocess.run([sys.executable, "-m", "evolve.rank.sandbox", spec.trial.sandbox],
                         capture_output=True, text=True)
    try:
        answer = json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        why = (out.stderr.strip().splitlines() or ["no answer"])[-1]
        raise SpecError(f"trial.sandbox: the sandbox check failed ({why})") from None
    if spec.trial.sandbox == "off":
        log(answer["line"])
        return None
    if answer["level"] is None:
        raise SpecError(f"trial.sandbox: this machine cannot set up the variants' sandbox "
                        f"({answer['line']}); trial.sandbox=off trains variants without it (see docs/THREATS.md)")
    log(answer["line"])
    module = load_module(spec.path("harness/data.py"), "evolve_sealed_data")
    sources = [str(p) for p in module.sources(spec.task)] if hasattr(module, "sources") else []
    trees = [str(zygote.folder()), os.environ.get("RAY_TMPDIR") or "/tmp/ray"]
    return {"level": answer["level"], "hidden": [str((run_dir / "data" / "heldout.bin").resolve()), *sources],
            "hidden_trees": trees, "memory_bytes": int(spec.trial.memory_gb * 2**30),
            "disk_bytes": int(spec.trial.disk_gb * 2**30)}


def worker_env(spec: Spec) -> dict[str, str]:
    """Returns the environment every Ray worker of the search gets."""
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": HEALTH_CHECK_INTERVAL_S,
           # Ray Train's preemption watcher: two more processes per slot (about 1.7 s of CPU each to
           # start, 8% of a small search here). A slot on a node that goes away fails its trial,
           # and Tune retries it on another slot; the watcher would end in the same place.
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
           "TOKENIZERS_PARALLELISM": "false",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")}
    if spec.trial.gpus_per_worker == 0:
        env["DS_ACCELERATOR"] = "cpu"
    return env


def init_ray(spec: Spec, num_cpus: int | None = None, verbose: int = 0, log=print) -> None:
    """Joins the cluster named by RAY_ADDRESS or left running by `ray start`, else starts a local one on
    loopback (`evolve.raycluster`); prints which in one line.

    With `verbose` 0 Ray's start-up notices (INFO lines, the token-authentication
    notice) are not printed; its warnings and errors still are."""
    import logging

    import ray

    from evolve.raycluster import join_or_start

    if ray.is_initialized():
        return
    address = os.environ.get("RAY_ADDRESS")
    # Ray warns on every start that it turned on token authentication, its default: a notice, not a warning
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    if not verbose:
        notice.setLevel(logging.ERROR)
    try:
        join_or_start(worker_env(spec), num_cpus, log, logging_level=logging.INFO if verbose else logging.WARNING)
    except ConnectionError as e:
        raise SpecError(f"ray: cannot join the cluster at RAY_ADDRESS={address!r} "
                        f"({' '.join(str(e).split())[:160]}); start one (ray start --head, ray up) "
                        f"or unset RAY_ADDRESS for a local one") from None
    finally:
        notice.setLevel(level)


def search_key(run_dir: Path) -> str:
    """Returns the name of a search's own slot board and zygotes: unique to its run folder."""
    return f"evolve-slots-{hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12]}"


def prepare_run(spec: Spec, run_dir: Path, log=print) -> tuple[dict, dict]:
    """Does a search's one-time steps; returns (data meta, fields every trial config carries)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(run_dir / "spec.yaml", yaml.safe_dump(spec.to_dict(), sort_keys=False).encode())
    meta = prepare_data(spec, run_dir)
    sealed = seal(spec, run_dir)
    mirror.sync(run_dir)  # a run folder in cloud storage has its data there before any trial
    walls = sandbox_policy(spec, run_dir, log)
    if spec.trial.gpus_per_worker == 0:
        # as the workers' environment says (`worker_env`): a zygote's name carries it, so the driver's
        # zygote is the one the relays ask for; the zygote loads DeepSpeed's CPU op, under a lock
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    return meta, trial_context(spec, run_dir, sealed, walls)


def trial_context(spec: Spec, run_dir: Path, sealed: dict, walls: dict | None) -> dict:
    """The fields every trial's config carries (`evolve.messages.TrialConfig`), from the spec (pure)."""
    run_dir = Path(run_dir)
    return {
        "experiment_root": str(spec.root), "run_dir": str(run_dir), "data_dir": str(run_dir / "data"),
        "task": spec.task, "trainer": spec.trainer,
        "sealed": sealed, "metric": spec.objective.metric, "seed": spec.seed,
        "train_tokens": spec.budget.train_tokens, "report_every": spec.trial.report_every,
        "checkpoint_tokens": spec.trial.checkpoint_tokens,
        "sandbox": walls, "timeout_s": spec.trial.timeout_s, "peak_tflops": spec.trial.peak_tflops,
        "train_storage": str(run_dir / "train"),
        # the search's slot board (a named actor) and its zygotes: unique to the run directory
        "slots": search_key(run_dir), "search": search_key(run_dir),
        "resources": {"workers": spec.trial.workers, "cpus_per_worker": spec.trial.cpus_per_worker,
                      "gpus_per_worker": spec.trial.gpus_per_worker,
                      "placement": spec.trial.placement},
    }


def make_scheduler(spec: Spec):
    """Returns Ray Tune's trial scheduler for the spec: FIFO, or ASHA on the dev loss by tokens."""
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    sc = spec.scheduler
    if sc.kind == "fifo":
        return FIFOScheduler()
    # max_t above the budget: a trial that reaches its budget must live to report its result
    return ASHAScheduler(time_attr="tokens", metric="dev_loss", mode="min",
                         max_t=spec.budget.train_tokens + 1, stop_last_trials=False,
                         grace_period=sc.grace_tokens or max(1, spec.budget.train_tokens // 8),
                         reduction_factor=sc.reduction_factor)


def hold_api_keys(spec: Spec) -> None:
    """Moves the models' API keys out of the environment before any process starts.

    Raises SpecError, one line, if a model names a variable that is not set.
    """
    from evolve.agent.client import has_key, hold_keys  # the LLM clients (openai) only when an agent writes

    if spec.operator.kind not in ("llm", "hybrid"):
        return
    for m in model_entries(spec.operator):
        name = m["api_key_env"]
        if name and not has_key(name):
            raise SpecError(f"operator.api_key_env: environment variable {name} is not set "
                            f"(it should hold the key for {m['base_url'] or m['model']})")
    hold_keys(m["api_key_env"] for m in model_entries(spec.operator))


def run_search(spec: Spec, run_dir: str | os.PathLike, log=print, verbose: int = 0):
    """Runs the search; returns the searcher with its population.

    `log` takes evolve's own lines. `verbose` 0 shows one progress line
    (`evolve.search.display`) and Tune prints nothing of its own; 1 and 2 are
    Ray Tune's verbosity (status tables, each trial's config and results).
    """
    run_dir = Path(run_dir).resolve()
    hold_api_keys(spec)  # before Ray and the zygote start: they never inherit a key
    if any((run_dir / "population").glob("*.parquet")) or (run_dir / "tune" / "tuner.pkl").exists():
        raise SpecError(f"--run-dir: {str(run_dir)!r} already holds a search; "
                        f"choose another folder, or continue it with: evolve resume {run_dir}")
    meta, context = prepare_run(spec, run_dir, log)
    with zygote.warming(context["search"]):  # it imports torch and DeepSpeed while Ray starts
        return _run(spec, run_dir, meta, context, log, verbose)


def _run(spec: Spec, run_dir: Path, meta: dict, context: dict, log, verbose: int):
    """`run_search` once its run folder is prepared and its zygote starting: Ray, the searcher, Tune."""
    from ray import tune

    from evolve.search.display import Display, ProgressCallback

    store = Store(run_dir)
    log(f"evolve: {spec.name}: {spec.budget.trials} trials, {spec.budget.concurrent} at once, "
        f"{spec.budget.train_tokens:,} tokens each ({split_tokens(meta):,} in the training split); "
        f"run kept in {run_dir}")
    init_ray(spec, num_cpus=os.cpu_count(), verbose=verbose, log=log)
    display = None if verbose else Display()
    log = display.wrap(log) if display else log
    # The searcher comes after Ray (its smoke runs are Ray tasks) and before
    # the slots: an LLM operator starts writing while they and the zygote warm up.
    searcher = EvolveSearcher(spec, store, context, scaffold_files(spec), log=log)
    callbacks = [ProgressCallback(searcher, spec.budget.concurrent, display)] if display else None

    def make_tuner():
        return tune.Tuner(
            tune.with_resources(trainable, TRIAL_RESOURCES),
            # no max_concurrent_trials: the searcher counts its trials in flight itself (see its `suggest`)
            tune_config=tune.TuneConfig(search_alg=searcher, num_samples=max_trials(spec), reuse_actors=True,
                                        scheduler=make_scheduler(spec)),
            run_config=tune.RunConfig(name="tune", storage_path=str(run_dir), verbose=verbose,
                                      callbacks=callbacks, failure_config=tune.FailureConfig(max_failures=spec.trial.max_failures)),
        )

    try:
        fit_on_slots(spec, context, make_tuner, log, verbose)
    finally:
        searcher.close()
    if searcher.llm is not None:
        log("evolve: " + searcher.llm.summary())
    return searcher


def resume_search(run_dir: str | os.PathLike, log=print, verbose: int = 0) -> None:
    """Continues an interrupted search from its run folder.

    Ray Tune restores its experiment state and the searcher's (population,
    islands, random state) as of its last snapshot; the searcher then takes
    in every result the store recorded after that snapshot. Trials that
    were running continue from their latest checkpoint, or start again
    without one; a trial whose variant the store already holds reports that
    and ends without training. `verbose` as in `run_search`.
    """
    run_dir = Path(run_dir).resolve()
    spec = load_run_spec(run_dir)
    tune_dir = run_dir / "tune"
    if not (tune_dir / "tuner.pkl").is_file():
        raise SpecError(f"run: {str(tune_dir / 'tuner.pkl')!r} not found: Ray Tune never saved this "
                        f"search's state; start it again with evolve run")
    tuner = _restore_tuner(tune_dir)  # before anything starts: a corrupt state is one line
    _check_place(tuner, run_dir)
    hold_api_keys(spec)
    meta, context = prepare_run(spec, run_dir, log)
    with zygote.warming(context["search"]):  # it imports torch and DeepSpeed while Ray starts
        for name in Store(run_dir).sweep_temporaries():
            log(f"evolve: resume: removed {name}, a write the interrupted driver never finished")
        n = sum(1 for _ in (run_dir / "population").glob("*.parquet"))
        log(f"evolve: resuming {spec.name} in {run_dir}: {n} of {spec.budget.trials} variants recorded")
        init_ray(spec, num_cpus=os.cpu_count(), verbose=verbose, log=log)
        _drop_tunes_limiter(tuner)
        _show_restored(tuner, spec, log, verbose)
        fit_on_slots(spec, context, lambda: tuner, log, verbose)


def _check_place(tuner, run_dir: Path) -> None:
    """SpecError, one line, if the search was started in another folder: its trials' configs in
    Tune's state name files there, and a restored trial would read and write that folder."""
    searcher = restored_searcher(tuner)
    was = searcher.context.get("run_dir") if isinstance(searcher, EvolveSearcher) else None
    if was and Path(was) != run_dir:
        raise SpecError(f"run: this search was started in {was!r} and Ray Tune's state names paths there; "
                        f"resume it from that path (a bucket's local copy: set EVOLVE_CACHE so it lands "
                        f"there), or read it here with status, show and report")


def _drop_tunes_limiter(tuner) -> None:
    """A search saved with Tune's ConcurrencyLimiter resumes without it.

    The limiter's saved set of live trials may name a trial Tune does not
    restore (the two are saved apart), and it then refuses every suggestion
    for good; evolve's searcher counts its own trials in flight, matched to
    those Tune restores.
    """
    tune_config, _ = restored_configs(tuner)
    if isinstance(getattr(tune_config, "search_alg", None), EvolveSearcher):
        tune_config.max_concurrent_trials = None


def _show_restored(tuner, spec: Spec, log, verbose: int) -> None:
    """Gives a restored search this driver's output: the verbosity asked for now (not the one its
    state was saved with), and with 0 a fresh progress line that evolve's lines go through."""
    from evolve.search.display import Display, ProgressCallback

    searcher, (_, run_config) = restored_searcher(tuner), restored_configs(tuner)
    if run_config is None:
        return
    run_config.verbose = verbose
    kept = [c for c in (run_config.callbacks or []) if not isinstance(c, ProgressCallback)]
    if verbose or not isinstance(searcher, EvolveSearcher):
        run_config.callbacks = kept
        if isinstance(searcher, EvolveSearcher):
            searcher.log = log
        return
    display = Display()
    searcher.log = display.wrap(log)
    run_config.callbacks = kept + [ProgressCallback(searcher, spec.budget.concurrent, display)]


def _restore_tuner(tune_dir: Path):
    """Returns Ray Tune's Tuner restored from `tune_dir`; SpecError, one line, if its state is unusable."""
    from ray import tune

    for state in sorted(tune_dir.glob("experiment_state-*.json")):
        try:
            json.loads(state.read_text())
        except (OSError, ValueError) as e:
            raise SpecError(f"run: Ray Tune's state file {str(state)!r} is corrupt "
                            f"({' '.join(str(e).split())[:200]}); the search cannot be resumed from it") from None
    try:
        return tune.Tuner.restore(str(tune_dir), trainable=tune.with_resources(trainable, TRIAL_RESOURCES),
                                  resume_unfinished=True, resume_errored=True)
    except Exception as e:  # a truncated or corrupt tuner.pkl
        raise SpecError(f"run: Ray Tune's state in {str(tune_dir)!r} cannot be restored: "
                        f"{type(e).__name__}: {' '.join(str(e).split())[:200]}") from None


def fit_on_slots(spec: Spec, context: dict, make_tuner, log, verbose: int = 1):
    """Starts the slots, waits for the zygote (`zygote.warming`), runs Tune to the end, stops the slots, and
    returns what Tune's `fit` returned. The searches and the baselines (`evolve.search.baselines`) run so."""
    from evolve.search.display import tune_output

    slots = None
    try:
        # The slots' worker groups start once and then train trial after trial.
        slots = SlotPool(spec.budget.concurrent, context["resources"], context["train_storage"],
                         context["slots"], log=log)
        # warm before the first trial, not inside it; this search's own, which only it stops
        zygote.ensure(search=context["search"])
        with tune_output(verbose):
            return make_tuner().fit()
    finally:
        if slots is not None:
            slots.close()
