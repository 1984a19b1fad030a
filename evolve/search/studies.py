"""Optuna behind the hybrid search: one in-memory study per code variant, asked and told by the searcher.

A thin adapter over Optuna's ask/tell interface: Ray Tune still runs every
trial (the searcher turns each asked trial into a variant); a study only
chooses numbers. Studies live in the searcher's pickled state, so
`save`/`restore` and `evolve resume` continue the tuning. Optuna (and for
CMA-ES the cmaes package) is imported here only, lazily: a search that
does not tune never needs it, and one that does and lacks it stops with
one line.
"""

from __future__ import annotations

from evolve.search.hybrid import Tuning, startup_trials, within
from evolve.spec import SpecError


def optuna_module():
    """Returns the optuna module; SpecError, one line, when it is not installed."""
    try:
        import optuna
    except ImportError:
        raise SpecError("operator.kind: hybrid tunes with Optuna, which is not installed "
                        "(pip install 'evolve[hybrid]')") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial otherwise
    return optuna


def check_sampler(name: str) -> None:
    """Raises SpecError, one line, when the sampler `name` cannot run here."""
    optuna_module()
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401  Optuna's CmaEsSampler imports it on first use
        except ImportError:
            raise SpecError("operator.hybrid_sampler: cmaes needs the cmaes package, which is not installed "
                            "(pip install 'evolve[hybrid]')") from None


def distributions(space: dict) -> dict:
    """Returns {key: Optuna distribution} of a plain space (see `evolve.search.hybrid`)."""
    optuna = optuna_module()
    d = optuna.distributions
    out = {}
    for key, dim in space.items():
        if dim[0] == "choice":
            out[key] = d.CategoricalDistribution(list(dim[1]))
        elif dim[0] == "int":
            out[key] = d.IntDistribution(dim[1], dim[2], log=dim[3])
        else:
            out[key] = d.FloatDistribution(dim[1], dim[2], log=dim[3])
    return out


def new_study(sampler: str, seed: int, mode: str, target: int):
    """Returns an in-memory study whose sampler (TPE or CMA-ES) draws `target - 1` samples."""
    optuna = optuna_module()
    n = startup_trials(target)
    if sampler == "cmaes":
        check_sampler(sampler)
        s = optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=n, warn_independent_sampling=False)
    else:  # constant liar: trials asked while others are still training draw apart
        s = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n, constant_liar=True)
    return optuna.create_study(direction="minimize" if mode == "min" else "maximize", sampler=s)


def ask(t: Tuning) -> tuple[int, dict]:
    """Asks the study for the next trial: (its number, the values it samples)."""
    trial = t.study.ask(distributions(t.space))
    return trial.number, dict(trial.params)


def _state(fitness: float | None, status: str):
    """Optuna's state and value of a trial recorded with `status` and `fitness`."""
    states = optuna_module().trial.TrialState
    if status == "completed" and fitness is not None:
        return states.COMPLETE, fitness
    return (states.PRUNED if status == "stopped" else states.FAIL), None


def tell_number(t: Tuning, number: int, fitness: float | None, status: str) -> None:
    """Tells the study how its trial `number` did: completed with its fitness, stopped as pruned, else failed."""
    state, value = _state(fitness, status)
    t.study.tell(number, value, state=state)


def tell(t: Tuning, vid: str, values: dict, fitness: float | None, status: str) -> None:
    """Tells the study one recorded trial: by number when it asked for it, else added (the code variant as written).

    A failed trial is told as failed, a stopped one as pruned; a trial it
    never asked for is added only when its values lie inside the space.
    """
    optuna = optuna_module()
    number = t.numbers.pop(vid, None)
    if number is not None:
        tell_number(t, number, fitness, status)
    elif t.study is not None and within(t.space, values):
        state, value = _state(fitness, status)
        t.study.add_trial(optuna.trial.create_trial(
            params={k: values[k] for k in t.space}, distributions=distributions(t.space),
            value=value, state=state))
