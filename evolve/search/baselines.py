"""Classical baselines over the same space the heuristic operator searches: random, TPE and PBT.

The space is read from the spec: every key of the settings file the
heuristic operator may change that has `choices`, `bounds` or a boolean
value, sampled log-uniformly where the key is in `log_scale`. Each sample
becomes a variant (the seed's files with those settings written into the
YAML in place) and is trained by the same trainable on the same warm slots,
with the same token budget, so a comparison is at equal compute. Results
go into the run's population table like any search's, with the method as
the operator.

Population Based Training (Ray Tune's scheduler, asynchronous) runs
`budget.trials` trials from random samples, `budget.concurrent` at a time;
every quarter of the token budget a trial in the bottom quarter by dev
loss, among all trials so far, continues from a top trial's DeepSpeed
checkpoint with that trial's settings perturbed. The keys that change the
model's shapes (`operator.shape_keys`) are sampled once and never perturbed, so a
checkpoint always loads.
"""

from __future__ import annotations

import functools
import json
import os
import random
from pathlib import Path

import yaml

from evolve.driver import fit_on_slots, init_ray, prepare_run, scaffold_files
from evolve.messages import TrialConfig
from evolve.record.store import Store, atomic_write
from evolve.search.heuristic import mutable_keys
from evolve.search.hybrid import settings_text  # the seed's settings YAML with sampled values written in place
from evolve.search.searcher import read_outcome, result_row
from evolve.search.yamledit import flatten
from evolve.spec import Spec
from evolve.trial.train import TRIAL_RESOURCES, report_point, train_variant
from evolve.variant import Variant, content_hash, variant_id
from evolve.warm import zygote

# Ray Tune, its schedulers and Optuna are imported inside the function that builds each baseline:
# Optuna is an optional extra.

FAILED_SCORE = 1e3  # what a failed trial reports to a model-based searcher (worse than any loss)
METHODS = ("random", "tpe", "pbt")


def search_space(spec: Spec, settings_text: str) -> dict:
    """Returns {key: tune domain} for the keys random search and TPE sample."""
    from ray import tune

    h = spec.operator.heuristic
    flat = flatten(yaml.safe_load(settings_text))
    space = {}
    for key in mutable_keys(yaml.safe_load(settings_text), h):
        value = flat[key]
        log = key in h.log_scale
        if key in h.choices:
            space[key] = tune.choice(list(h.choices[key]))
        elif isinstance(value, bool):
            space[key] = tune.choice([True, False])
        elif key in h.bounds:
            lo, hi = h.bounds[key]
            if isinstance(value, int):
                lo, hi = int(lo), int(hi)
                space[key] = tune.lograndint(max(1, lo), hi + 1) if log else tune.randint(lo, hi + 1)
            else:
                space[key] = tune.loguniform(lo, hi) if log and lo > 0 else tune.uniform(lo, hi)
    return space


def baseline_trainable(config: dict, ctx: dict) -> None:
    """A Tune trainable: writes the sampled settings into the seed, trains it, reports the fitness."""
    from ray import tune

    values = dict(config)
    seed_dir = Path(ctx["seed_dir"])
    files = {p.relative_to(seed_dir).as_posix(): p.read_bytes() for p in sorted(seed_dir.rglob("*")) if p.is_file()}
    files[ctx["settings_file"]] = settings_text(files[ctx["settings_file"]].decode(), values).encode()
    vid = variant_id({p: content_hash(b) for p, b in files.items()})
    work = Path(ctx["run_dir"]) / "work" / vid
    for rel, data in files.items():
        atomic_write(work / rel, data)
    trial_id = tune.get_context().get_trial_id()
    trial_config = TrialConfig.from_dict({
        **ctx["context"], "variant_id": vid, "trial_id": trial_id,
        "variant_dir": str(work), "out_dir": str(Path(ctx["run_dir"]) / "trials" / f"{vid}-{trial_id}")})
    if not ctx.get("pbt"):
        result = train_variant(trial_config)
        last = {}
    else:  # PBT reads the curve and moves trials between checkpoints
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            trial_config = trial_config.replace(resume_from=checkpoint.path)  # the run's storage is this file system
        result = train_variant(trial_config, on_report=lambda point: report_point(point, end_time=False))
        curve = result.summary.get("curve") or []
        # no tokens: PBT leaves a finished trial be; one that failed early scores worst
        last = {"dev_loss": curve[-1][2] if curve else FAILED_SCORE}
    score = result.fitness if result.fitness is not None else FAILED_SCORE
    tune.report({**last, "fitness": score, "result_json": result.to_json(), "values_json": json.dumps(values)})


PBT_INTERVALS = 4  # perturbation points per trial budget
PBT_REPORT_EVERY = 5  # optimizer steps between curve points under PBT, at most


def pbt_scheduler(spec: Spec, space: dict):
    """Returns Ray Tune's PBT on the dev loss by tokens, perturbing every key but `operator.shape_keys`."""
    from ray.tune.schedulers import PopulationBasedTraining

    mutations, limits = pbt_mutations(space, spec.operator.shape_keys)
    random.seed(spec.seed)  # PBT draws its perturbations from the random module
    return PopulationBasedTraining(
        time_attr="tokens", metric="dev_loss", mode="min", require_attrs=False,
        perturbation_interval=spec.budget.train_tokens // PBT_INTERVALS,
        hyperparam_mutations=mutations, quantile_fraction=0.25, resample_probability=0.25,
        custom_explore_fn=functools.partial(within_limits, limits=limits))


def pbt_mutations(space: dict, fixed: list) -> tuple[dict, dict]:
    """Returns (PBT's mutations, the numbers' limits) over `space`, leaving out the keys in `fixed` (shapes)."""
    from ray.tune.search.sample import Categorical, Integer

    mutations, limits = {}, {}
    for key, domain in space.items():
        if key in fixed:
            continue
        if isinstance(domain, Categorical):  # PBT shifts a list's index; it would multiply a domain's value
            mutations[key] = list(domain.categories)
        else:
            mutations[key] = domain
            integer = isinstance(domain, Integer)
            limits[key] = (domain.lower, domain.upper - 1 if integer else domain.upper, integer)
    return mutations, limits


def within_limits(config: dict, limits: dict) -> dict:
    """PBT multiplies numbers by 0.8 or 1.2: keeps each inside its bounds, integers whole."""
    for key, (lo, hi, integer) in limits.items():
        if key in config:
            value = min(max(config[key], lo), hi)
            config[key] = int(round(value)) if integer else value
    return config


def run_baseline(spec: Spec, run_dir: str | os.PathLike, method: str, log=print) -> list[dict]:
    """Runs random search, TPE or PBT for `spec.budget.trials` trials; records and returns their rows."""
    from ray import tune

    if method not in METHODS:
        raise ValueError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    if method == "pbt" and spec.trainer == "rl":
        raise ValueError("method: pbt moves trials between checkpoints, and the rl trainer saves none")
    run_dir = Path(run_dir).resolve()
    _, context = prepare_run(spec, run_dir)
    store = Store(run_dir)
    seed_files = scaffold_files(spec)
    seed = Variant(files=store.put_files(seed_files), operator="seed")
    store.put_variant(seed)
    seed_dir = store.materialize(seed, run_dir / "work" / "seed")
    prefix = spec.scaffold.rstrip("/") + "/"
    settings_file = spec.operator.heuristic.file[len(prefix):]
    space = search_space(spec, seed_files[settings_file].decode())
    scheduler, checkpoints = None, tune.CheckpointConfig()
    if method in ("random", "pbt"):  # a generator passed in must limit its own concurrency
        search_alg = tune.search.BasicVariantGenerator(random_state=spec.seed, max_concurrent=spec.budget.concurrent)
    else:
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(metric="fitness", mode=spec.objective.mode,
                                  sampler=optuna.samplers.TPESampler(seed=spec.seed))
    if method == "pbt":
        scheduler = pbt_scheduler(spec, space)
        interval = spec.budget.train_tokens // PBT_INTERVALS
        # PBT compares trials at its intervals: every trial needs curve points well within one
        context = {**context, "checkpoint_tokens": interval,
                   "report_every": min(context["report_every"], PBT_REPORT_EVERY)}
        checkpoints = tune.CheckpointConfig(num_to_keep=PBT_INTERVALS)  # a donor's may be any of them
    with zygote.warming(context["search"]):  # it imports torch and DeepSpeed while Ray starts
        init_ray(spec, num_cpus=os.cpu_count())
        grid = fit_on_slots(spec, context, lambda: tune.Tuner(
            # the constants go beside the space, which searchers flatten and parse
            tune.with_resources(tune.with_parameters(baseline_trainable, ctx={
                "seed_dir": str(seed_dir), "settings_file": settings_file, "run_dir": str(run_dir),
                "context": context, "pbt": method == "pbt"}), TRIAL_RESOURCES),
            param_space=space,
            tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=spec.budget.trials,
                                        max_concurrent_trials=spec.budget.concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name=f"tune-{method}", storage_path=str(run_dir), verbose=0,
                                      checkpoint_config=checkpoints)), log, verbose=0)
    rows = []
    for r in grid:
        if r.metrics is None or "result_json" not in r.metrics:
            continue
        outcome = read_outcome(r.metrics)
        values = json.loads(r.metrics["values_json"])
        files = {**seed_files, settings_file: settings_text(seed_files[settings_file].decode(), values).encode()}
        record = {"kind": method, "values": values, "rationale": f"{method} sample"}
        restored = outcome.summary.get("resumed_at_tokens")
        if restored is not None:  # PBT: the trial continued from a checkpoint with these values
            record.update(rationale="pbt: continued from a checkpoint, perturbed", restored_at_tokens=restored)
        v = Variant(files=store.put_files(files), parents=(seed.id,), operator=method, record=record)
        store.put_variant(v)
        row = result_row(v, r.metrics.get("trial_id", ""), outcome)
        store.append_result(row)
        rows.append(row)
    return rows
