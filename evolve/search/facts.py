"""The task's facts a child prompt carries: from the spec, the prepared data and the harness's records (pure).

Nothing here runs or trusts a variant's code: the steps come from the
harness's own arithmetic (`evolve.rank.lm.plan_steps`) on the numbers in the
parent's config.yaml, read as data, or from the count the harness recorded
in the parent's trial; the parameter count only from that record.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from evolve.agent.prompts import TaskFacts
from evolve.messages import split_tokens
from evolve.rank.lm import RecipeError, plan_steps
from evolve.spec import task_limit

MAX_SETTINGS_CHARS = 200_000  # a longer config.yaml is not parsed for the steps


def read_meta(data_dir: str | Path) -> dict | None:
    """Returns the prepared data's meta.json (written by the sealed prepare), or None before it exists."""
    try:
        meta = json.loads((Path(data_dir) / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def corpus_name(task: dict, experiment: str) -> str:
    """Returns the corpus's name: task.corpus's file name, else task.corpus_name (the name of a built-in corpus),
    else the experiment's."""
    if task.get("corpus"):
        return Path(str(task["corpus"])).name
    if task.get("corpus_name"):
        return str(task["corpus_name"])[:200]
    return f"the one the harness of experiment {experiment} prepares"


def _split(meta: dict | None) -> int | None:
    try:
        return split_tokens(meta) if meta else None
    except (KeyError, TypeError, ValueError):
        return None


def _count(x) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else None


def steps_from_settings(settings_text: str | None, train_tokens: int, workers: int) -> tuple[int | None, str]:
    """Returns (optimizer steps, how they were counted) for the LM loop, from config.yaml's numbers as data.

    The harness's arithmetic: whole steps of batch_size x seq_len x workers x
    gradient accumulation tokens (the accumulation as config.yaml's
    deepspeed section sets it; the recipe's deepspeed_config hook decides in
    the end). None when the file does not give the numbers.
    """
    if not settings_text or len(settings_text) > MAX_SETTINGS_CHARS:
        return None, ""
    try:
        settings = yaml.safe_load(settings_text)
    except yaml.YAMLError:
        return None, "its config.yaml does not parse"
    if not isinstance(settings, dict):
        return None, ""
    seq, bs = _count(settings.get("seq_len")), _count(settings.get("batch_size"))
    ds = settings.get("deepspeed") if isinstance(settings.get("deepspeed"), dict) else {}
    gas = _count(ds.get("gradient_accumulation_steps", 1))
    if not seq or not bs or not gas:
        return None, "its config.yaml gives no positive seq_len, batch_size and gradient_accumulation_steps"
    per_step = bs * seq * workers * gas
    how = (f"{bs} sequences x {seq} tokens x {workers} worker{'s' if workers > 1 else ''} x {gas} "
           f"micro-batch{'es' if gas > 1 else ''} = {per_step:,} tokens per step, from its config.yaml; "
           f"whole steps only")
    try:
        _, _, total = plan_steps(train_tokens, 0, 0, bs * seq * workers, gas)
    except RecipeError as e:
        return 0, str(e).removeprefix("config.yaml: ")
    return total, how


def task_facts(spec, meta: dict | None, settings_text: str | None, result: dict | None) -> TaskFacts:
    """Returns the facts for a child of a parent whose settings file is `settings_text`.

    `result`: the parent's recorded result in the searcher (None before its
    trial ends); its `optimizer_steps` and `n_params` are the harness's counts.
    """
    result = result or {}
    budget = spec.budget.train_tokens
    steps, how = _count(result.get("optimizer_steps")), ""
    if steps is not None:
        how = "as the harness planned them in its trial"
    elif spec.trainer == "lm":
        steps, how = steps_from_settings(settings_text, budget, spec.trial.workers)
    return TaskFacts(train_tokens=budget, param_cap=task_limit(spec.task, "param_cap"),
                     eval_seq_len=task_limit(spec.task, "eval_seq_len"),
                     corpus=corpus_name(spec.task, spec.name), split_tokens=_split(meta), steps=steps,
                     steps_how=how, parent_params=_count(result.get("n_params")))
