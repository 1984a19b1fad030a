"""`evolve check EXPERIMENT`: finds what would stop a search before any search starts.

In order, each step only when the ones it needs have passed:

1. the spec (`evolve.spec.load_spec`, with the overrides a run would get);
2. the sealed harness: `harness/data.py` imports and has `prepare(data_dir, task)` (and, if it has
   one, `sources(task)`); `harness/evaluate.py` imports and has `evaluate(model, heldout_path, task)`,
   as `evolve.driver` and `evolve.trial.evaluation` call them;
3. the data: `prepare` into a temporary run folder, which must then hold the splits and meta.json;
   then the search's own set-up (sealed hashes, the sandbox probe) on it;
4. a smoke run of the seed: a few optimizer steps in a child of the zygote, inside the search's walls,
   as the LLM operator's check cascade runs one (`evolve.agent.cascade.smoke_run`); the parameter
   cap is lifted there so that the seed's size is measured, and judged here;
5. the plausibility of the limits: the seed's parameters under `task.param_cap`, and (trainer lm)
   `budget.train_tokens` buying at least MIN_STEPS optimizer steps of the seed's settings
   (`evolve.rank.lm.plan_steps`, with the tokens a step the smoke run measured);
6. the sealed evaluation, by the real path (`evolve.trial.train.evaluate`), on the weights of a
   second short run of the seed, which saves them; its result must hold `objective.metric`.

Every problem is one line; `check_experiment` returns them (none: all is well).
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path

from evolve.errors import one_line
from evolve.spec import SpecError, load_spec, task_limit

MIN_STEPS = 4  # the fewest optimizer steps a budget must buy: a schedule, a curve of more than a point
UNCAPPED = 1 << 50  # the smoke run's parameter cap and (trainer lm) token budget: measured, judged after
SPLITS = ("train.bin", "dev.bin", "heldout.bin", "meta.json")


def signature_problem(module, name: str, args: tuple, path: str, optional: bool = False) -> str | None:
    """Returns why `module.name` cannot be called as the harness calls it, or None (pure)."""
    fn = getattr(module, name, None)
    if fn is None:
        return None if optional else f"{path}: no function {name}({', '.join(args)})"
    if not callable(fn):
        return f"{path}: {name} is not a function"
    try:
        inspect.signature(fn).bind(*args)
    except TypeError as e:
        return f"{path}: {name} cannot be called as {name}({', '.join(args)}) ({e})"
    except ValueError:  # no signature to read (a builtin): it is called and fails there if wrong
        return None
    return None


def harness_problems(root: Path) -> list[str]:
    """Returns what is wrong with the sealed harness's files and functions (it imports them)."""
    from evolve.trial.evaluation import load_module

    problems = []
    for rel, functions in (("harness/data.py", (("prepare", ("data_dir", "task"), False),
                                                ("sources", ("task",), True))),
                           ("harness/evaluate.py", (("evaluate", ("model", "heldout_path", "task"), False),))):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            continue
        try:
            module = load_module(path, f"evolve_check_{path.stem}")
        except BaseException as e:  # anything at all the file does when imported
            problems.append(f"{rel}: does not import ({one_line(e)})")
            continue
        problems += [p for name, args, optional in functions
                     if (p := signature_problem(module, name, args, rel, optional))]
    return problems


def data_problems(data_dir: Path) -> list[str]:
    """Returns what prepare() left out of the data folder (pure but for reading it)."""
    missing = [f for f in SPLITS if not (data_dir / f).is_file()]
    if missing:
        return [f"harness/data.py prepare: wrote no {', '.join(missing)} (it must write {', '.join(SPLITS)})"]
    try:
        vocab = json.loads((data_dir / "meta.json").read_text()).get("vocab_size")
    except (ValueError, AttributeError):
        return ["harness/data.py prepare: meta.json is not a JSON object"]
    if isinstance(vocab, bool) or not isinstance(vocab, int) or vocab < 2:
        return [f"harness/data.py prepare: meta.json's vocab_size must be an integer of at least 2, got {vocab!r}"]
    return []


def cap_problem(n_params: int, cap: int) -> str | None:
    """Returns why the seed's size does not fit the parameter cap, or None (pure)."""
    if n_params > cap:
        return (f"task.param_cap: the seed's model has {n_params:,} parameters, over the cap of {cap:,}; "
                f"raise the cap or shrink the seed (scaffold/config.yaml)")
    return None


def budget_problem(budget: int, tokens_per_step: int, min_steps: int = MIN_STEPS) -> tuple[int, str | None]:
    """Returns (optimizer steps the budget buys, why that is too few or None) (pure; trainer lm)."""
    from evolve.rank.lm import RecipeError, plan_steps

    try:
        steps = plan_steps(budget, 0, 0, tokens_per_step, 1)[0]
    except RecipeError:
        return 0, (f"budget.train_tokens: {budget:,} tokens buy no optimizer step of the seed's settings "
                   f"({tokens_per_step:,} tokens a step)")
    if steps < min_steps:
        return steps, (f"budget.train_tokens: {budget:,} tokens buy only {steps} optimizer step(s) of the seed's "
                       f"settings ({tokens_per_step:,} tokens a step); at least {min_steps} are needed")
    return steps, None


def check_experiment(experiment: str, overrides: list[str] = (), log=print) -> list[str]:
    """Checks an experiment folder as a search would use it; returns its problems, one line each.

    `log` gets one line per step that passed.
    """
    try:
        spec = load_spec(experiment, list(overrides))
    except SpecError as e:
        return [str(e)]
    log(f"ok   spec: {spec.name} (trainer {spec.trainer}, objective {spec.objective.mode} {spec.objective.metric})")
    problems = harness_problems(spec.root)
    if problems:
        return problems
    log("ok   harness: data.py prepare(data_dir, task), evaluate.py evaluate(model, heldout_path, task)")
    with tempfile.TemporaryDirectory(prefix="evolve-check-") as tmp:
        return _check_runs(spec, Path(tmp) / "run", log)


def _check_runs(spec, run_dir: Path, log) -> list[str]:
    from evolve.driver import prepare_data, prepare_run

    try:
        meta = prepare_data(spec, run_dir)
    except BaseException as e:
        if isinstance(e, KeyboardInterrupt):
            raise
        return [f"harness/data.py prepare: {one_line(e)}"]
    problems = data_problems(run_dir / "data")
    if problems:
        return problems
    sizes = {f: (run_dir / "data" / f).stat().st_size for f in SPLITS[:3]}
    log(f"ok   data: vocab {meta.get('vocab_size') if isinstance(meta, dict) else '?'}, "
        + ", ".join(f"{f} {n:,} bytes" for f, n in sizes.items()))
    try:
        _, context = prepare_run(spec, run_dir, log=lambda line: log(f"ok   {line}"))
    except SpecError as e:
        return [str(e)]
    before = os.environ.get("DS_ACCELERATOR")
    os.environ["DS_ACCELERATOR"] = "cpu"  # the smoke runs' zygote, as the check cascade's (keyed by it)
    try:
        return _seed_checks(spec, run_dir, context, log)
    finally:
        from evolve.warm import zygote

        zygote.shutdown(search=context["search"])
        if before is None:
            os.environ.pop("DS_ACCELERATOR", None)
        else:
            os.environ["DS_ACCELERATOR"] = before


def _run_seed(spec, run_dir: Path, context: dict, name: str, **fields) -> dict:
    """Trains the seed in a zygote child inside the search's walls; returns the rank's summary.

    Raises ChildFailed with the child's one-line reason."""
    from evolve.driver import scaffold_files
    from evolve.messages import TrialConfig
    from evolve.rank.sandbox import policy_for
    from evolve.warm import zygote

    work = run_dir / "check" / name
    variant_dir, out_dir = work / "variant", work / "out"
    for rel, data in scaffold_files(spec).items():
        (variant_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (variant_dir / rel).write_bytes(data)
    out_dir.mkdir(parents=True)
    config = TrialConfig.from_dict({**context, "variant_dir": str(variant_dir), "out_dir": str(out_dir),
                                    "variant_id": "seed", **fields})
    summary = zygote.call("evolve.rank.entry:solo_rank", {"config": config.to_dict()},
                          env={"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}, log=str(work / "rank.log"),
                          recipe=str(variant_dir / "recipe.py"), timeout_s=spec.operator.smoke_timeout_s,
                          sandbox=policy_for(config, str(out_dir)), search=config.search)
    summary["config"] = config
    return summary


def _seed_checks(spec, run_dir: Path, context: dict, log) -> list[str]:
    from evolve.warm import zygote

    steps = spec.operator.smoke_steps or 2
    budget = spec.budget.train_tokens
    try:  # the cap lifted (and, for lm, the budget): the seed's size and step are measured, judged below
        smoke = _run_seed(spec, run_dir, context, "smoke", smoke=True, max_steps=steps,
                          task={**spec.task, "param_cap": UNCAPPED},
                          train_tokens=budget if spec.trainer == "rl" else max(budget, UNCAPPED))
    except zygote.ChildFailed as e:
        return [f"smoke run of the seed: {e}"]
    n_params = int(smoke["n_params"])
    log(f"ok   smoke run of the seed: {smoke['optimizer_steps']} optimizer steps, {n_params:,} parameters")
    problems = []
    cap = task_limit(spec.task, "param_cap")
    over_cap = cap_problem(n_params, cap)
    if over_cap is not None:
        problems.append(over_cap)
    else:
        log(f"ok   task.param_cap: {n_params:,} parameters of {cap:,}")
    if spec.trainer == "lm":
        per_step = smoke["tokens_trained"] // max(1, smoke["optimizer_steps"]) * spec.trial.workers
        n_steps, p = budget_problem(budget, per_step)
        if p is not None:
            problems.append(p)
        else:
            log(f"ok   budget.train_tokens: {budget:,} tokens buy {n_steps:,} optimizer steps "
                f"({per_step:,} tokens a step over {spec.trial.workers} worker(s))")
    else:
        log(f"--   budget.train_tokens: steps not counted for trainer {spec.trainer} (the smoke run trained "
            f"within it)")
    if over_cap is not None:  # the evaluation refuses weights over the cap: nothing more to learn
        return problems
    return problems + _evaluation_problems(spec, run_dir, context, int(smoke["tokens_trained"]), log)


def _evaluation_problems(spec, run_dir: Path, context: dict, tokens: int, log) -> list[str]:
    """Trains the seed for `tokens` (its weights saved) and runs the sealed evaluation on them, as a trial does."""
    from evolve.trial.train import evaluate
    from evolve.warm import zygote

    try:
        short = _run_seed(spec, run_dir, context, "trained", train_tokens=tokens)
    except zygote.ChildFailed as e:
        return [f"short run of the seed ({tokens:,} tokens, weights saved): {e}"]
    config = short["config"]
    metrics, error = evaluate(Path(config.out_dir), config)
    if error is not None:
        return [f"sealed evaluation of the seed's weights: {error}"]
    metric = spec.objective.metric
    if metric not in metrics:
        return [f"objective.metric: the sealed evaluation returned no {metric!r} (it returned "
                f"{', '.join(sorted(metrics)) or 'nothing'})"]
    log(f"ok   sealed evaluation: {metric} {metrics[metric]:.4f} after {short['optimizer_steps']} optimizer steps "
        f"of the seed")
    shutil.rmtree(run_dir / "check", ignore_errors=True)
    return []
