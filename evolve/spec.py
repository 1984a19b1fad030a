"""The experiment spec: schema, defaults, loading, validation and overrides.

A spec is `experiments/<name>/experiment.yaml`. Every field is checked when it
is loaded; a bad value raises `SpecError` whose message is one line naming
the field and the value (the CLI prints it and exits with status 2).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_origin, get_type_hints

import yaml

HARNESS_FILES = ("harness/data.py", "harness/evaluate.py")  # every experiment provides these
# The harness's limits an experiment's `task` may set, with their defaults: read through `task_limit`
# in the training loops and the evaluation, never with a default typed out again.
TASK_LIMITS = {
    "param_cap": 1_000_000,  # the most parameters a variant's model may have
    "eval_seq_len": 128,  # context of the sealed evaluation (and the least a model's n_positions may be)
    "dev_tokens": 8192,  # dev tokens behind each learning-curve point
}


def task_limit(task: dict, name: str) -> int:
    """Returns the harness's limit `name` from an experiment's task, or its default (TASK_LIMITS)."""
    return int(task.get(name) or TASK_LIMITS[name])
TRAINERS = ("lm", "rl")


class SpecError(ValueError):
    """A spec field has a bad value; the message is one line."""


def doc(default, text: str):
    """A schema field: its default and what it means (the README's spec table is made from these)."""
    return field(default=default, metadata={"doc": text})


def doc_factory(factory, text: str):
    """A schema field whose default is made by `factory` (a dict, a list, a section)."""
    return field(default_factory=factory, metadata={"doc": text})


@dataclass(frozen=True)
class Objective:
    metric: str = doc("heldout_loss", "reported by the sealed evaluation")
    mode: str = doc("min", "\"min\" or \"max\"")


@dataclass(frozen=True)
class Budget:
    trials: int = doc(16, "variants trained in the whole search, the seed included")
    concurrent: int = doc(2, "trials at once")
    train_tokens: int = doc(200_000, "tokens each trial trains on, fixed by the harness: the variant cannot raise it")
    llm_tokens: int = doc(0, "prompt + completion tokens the LLM operator may spend; 0 = no limit")


@dataclass(frozen=True)
class Heuristic:
    """What the heuristic operator may change in the scaffold's settings file."""

    file: str = doc("scaffold/config.yaml", "the YAML file it perturbs (must be mutable)")
    choices: dict = doc_factory(dict, "key -> list of allowed values")
    bounds: dict = doc_factory(dict, "key -> [low, high] for numbers")
    log_scale: list = doc_factory(list, "keys perturbed multiplicatively")
    frozen: list = doc_factory(list, "keys never touched")
    mutations: int = doc(2, "keys changed per child (at most)")
    crossover_rate: float = doc(0.25, "chance a child mixes two parents")


OPERATOR_KINDS = ("heuristic", "llm", "hybrid")
HYBRID_SAMPLERS = ("tpe", "cmaes")
MODEL_FIELDS = ("model", "weight", "backend", "base_url", "api_key_env", "temperature",
                "max_tokens", "price_prompt", "price_completion")


@dataclass(frozen=True)
class Operator:
    """How children are written: the heuristic operator, or an LLM agent.

    The endpoint fields describe one model; `models` lists several, each a
    mapping of MODEL_FIELDS that inherits what it leaves out from here, and
    one is drawn per proposal by `weight`.
    """

    kind: str = doc("heuristic", "\"heuristic\", \"llm\" or \"hybrid\" (the LLM, or with no endpoint the heuristic operator, writes each code variant; a classical optimiser then tunes its numbers)")
    backend: str = doc("openai", "\"openai\": any OpenAI-compatible endpoint; \"transformers\": a local folder")
    base_url: str = doc("", "e.g. http://127.0.0.1:8000/v1; empty: no endpoint (the heuristic operator runs)")
    model: str = doc("", "the model's name at the endpoint, or the folder of a local transformers model")
    api_key_env: str = doc("", "the NAME of the environment variable holding the key (never the key)")
    temperature: float = doc(0.7, "sampling temperature of the agent's model")
    max_tokens: int = doc(4096, "completion tokens per reply")
    timeout_s: float = doc(120.0, "per request")
    retries: int = doc(3, "on 429, 5xx, time-outs and lost connections, with exponential back-off")
    models: list = doc_factory(list, "several models, each a mapping of the endpoint fields, drawn per proposal by `weight`")
    price_prompt: float = doc(0.0, "price per million prompt tokens, for the audit")
    price_completion: float = doc(0.0, "price per million completion tokens")
    repair_rounds: int = doc(1, "times a rejected reply is sent back with its error")
    parallel: int = doc(2, "proposals being written at once")
    ahead: int = doc(2, "checked proposals kept ready for free trial slots")
    wait_s: float = doc(60.0, "a free slot waits this long for the agent, then gets a heuristic child")
    smoke_steps: int = doc(2, "optimizer steps of the smoke run before a trial; 0 skips it")
    smoke_timeout_s: float = doc(120.0, "the smoke run is killed after this")
    notebook_every: int = doc(4, "results between research-notebook updates; 0: no notebook")
    inspirations: int = doc(2, "other strong variants shown in a prompt")
    prompt_chars: int = doc(60_000, "a child prompt's size budget in characters: over it, the inspirations' diffs go first, then learning-curve points (never the task's facts or the parent's files); 0: no budget")
    max_failures: int = doc(3, "failures in a row before the heuristic operator takes over")
    probe_every_s: float = doc(60.0, "while fallen back, how often the agent is tried again")
    inherit: bool = doc(False, "a child that changes only settings outside `shape_keys` continues from its parent's final weights (as PBT's exploit does) instead of training from scratch")
    inherit_tokens: int = doc(0, "tokens an inheriting child trains on top of its parent's weights (0: a quarter of budget.train_tokens)")
    shape_keys: list = doc_factory(lambda: ["n_layer", "n_embd", "n_head", "seq_len"], "settings keys that shape the weights: a child that changes one (or any code) trains from scratch; PBT never perturbs them")
    hybrid_trials: int = doc(4, "hybrid: trials per code variant, the code variant as written included; the rest sample its numbers")
    hybrid_sampler: str = doc("tpe", "hybrid: Optuna's sampler over the numbers, \"tpe\" or \"cmaes\" (needs the cmaes package)")
    bandit: str = doc("off", "\"off\", \"ucb\" or \"thompson\": a bandit draws each child's operator (perturb, crossover, one arm per LLM model) by the gain per trained token each has bought (evolve.search.bandit); off: the heuristic draws crossover by crossover_rate and the LLM its model by weight")
    merge_rate: float = doc(0.0, "chance a suggestion is a three-way merge of two strong variants from different lineages (conflicts resolved by the LLM agent); 0: off")
    heuristic: Heuristic = doc_factory(Heuristic, "what the heuristic operator may change (below)")


@dataclass(frozen=True)
class Selection:
    islands: int = doc(2, "sub-populations that evolve apart and exchange their best")
    tournament: int = doc(3, "contestants per parent pick")
    migrate_every: int = doc(6, "completed trials between migrations")


@dataclass(frozen=True)
class Scheduler:
    """Whether Ray Tune stops weak trials early on their learning curves."""

    kind: str = doc("fifo", "\"fifo\": every trial trains its whole budget; \"asha\": Ray Tune's ASHA")
    grace_tokens: int = doc(0, "tokens before a trial may be stopped; 0: an eighth of budget.train_tokens")
    reduction_factor: int = doc(3, "keep the best 1/reduction_factor at each rung")


@dataclass(frozen=True)
class Trial:
    workers: int = doc(1, "Ray Train workers (data-parallel ranks) per trial")
    cpus_per_worker: float = doc(1.0, "CPUs each Ray Train worker holds")
    gpus_per_worker: float = doc(0.0, "GPUs each worker holds; a fraction shares one GPU between trials")
    placement: str = doc("pack", "how Ray places a trial's workers: \"pack\" (as few nodes as fit) or \"spread\" (one per node where it can)")
    report_every: int = doc(10, "optimizer steps between learning-curve points")
    checkpoint_tokens: int = doc(0, "a DeepSpeed checkpoint at the first curve point this many tokens after the last (0: none)")
    max_failures: int = doc(2, "times a trial is retried (from its checkpoint) when a rank's process or worker is lost")
    sandbox: str = doc("auto", "the walls around each rank (evolve.rank.sandbox): \"auto\" (full where user namespaces work, else unprivileged), \"full\", \"unprivileged\" or \"off\"; true and false (older specs) mean auto and off")
    memory_gb: float = doc(8.0, "the most memory a rank's process may allocate (0: no cap)")
    disk_gb: float = doc(20.0, "the most a trial's folder may hold, checkpoints and weights included (0: no cap)")
    peak_tflops: float = doc(0.0, "the device's dense bf16 peak in TFLOPs for MFU (0: from evolve.rank.mfu's table by the GPU's name)")
    timeout_s: float = doc(3600.0, "a rank still running after this long is killed (0: never)")


@dataclass(frozen=True)
class Confirm:
    """Re-runs that confirm a champion beyond seed noise (see evolve.search.confirm)."""

    top: int = doc(2, "candidates re-trained (with their parents and the seed); 0: no confirmation")
    seeds: int = doc(3, "fresh seeds per re-trained variant")
    alpha: float = doc(0.05, "Welch's one-sided test: candidate beats parent at this level")
    flag_sigmas: float = doc(25.0, "a single-run jump over the parent beyond this many seed-noise sds needs review: genuine hyperparameter gains measured 5 to 12 sds on tiny_lm, a variant that read the held-out data would be 100s")
    approval: bool = doc(False, "no champion without `evolve approve`")


@dataclass(frozen=True)
class Spec:
    scaffold: str = field(metadata={"doc": "the seed variant's folder"})
    mutable: list = field(metadata={"doc": "files a mutation may change, inside the scaffold"})
    name: str = doc("", "defaults to the experiment folder's name")
    root: Path = doc(Path("."), "the experiment folder, set by the loader; paths are relative to it")
    sealed: list = doc_factory(list, "glob patterns of the evaluation and data code (the held-out split is always sealed)")
    objective: Objective = doc_factory(Objective, "the metric the sealed evaluation reports, and its direction")
    budget: Budget = doc_factory(Budget, "the search's budget")
    operator: Operator = doc_factory(Operator, "how children are written")
    selection: Selection = doc_factory(Selection, "islands and tournaments")
    scheduler: Scheduler = doc_factory(Scheduler, "early stopping")
    trial: Trial = doc_factory(Trial, "how a trial runs")
    confirm: Confirm = doc_factory(Confirm, "confirmation re-runs")
    task: dict = doc_factory(dict, "passed to the experiment's harness")
    trainer: str = doc("lm", "the training loop: \"lm\" (next-token training on the experiment's corpus, evolve.rank.lm) or \"rl\" (a supervised warm-up, then policy gradient on verified problems, evolve.rank.rl)")
    seed: int = doc(0, "seeds the searcher's RNG")
    storage: str = doc("", "where runs are kept when --run-dir is not given: a folder or a cloud URI (s3://bucket/runs); the run is <storage>/<name>. Empty: runs/<name> under the current folder.")

    def path(self, rel: str) -> Path:
        return self.root / rel

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["root"] = str(self.root)
        return d


SECTIONS = {
    "objective": Objective,
    "budget": Budget,
    "operator": Operator,
    "selection": Selection,
    "scheduler": Scheduler,
    "trial": Trial,
    "confirm": Confirm,
}


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t))


# older specs' values, read as today's; and YAML's reading of a bare `off` as false
LEGACY = {"trial.sandbox": {True: "auto", False: "off"}, "operator.bandit": {False: "off"}}
SANDBOX_LEVELS = ("auto", "full", "unprivileged", "off")
BANDITS = ("off", "ucb", "thompson")


def _coerce(name: str, value: Any, typ: Any) -> Any:
    """Returns `value` checked (and widened int->float) against `typ`."""
    if name in LEGACY and isinstance(value, bool) and value in LEGACY[name]:
        value = LEGACY[name][value]
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise SpecError(f"{name}: expected a mapping, got {value!r}")
        return _build(typ, value, name)
    origin = get_origin(typ) or typ
    if origin is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if origin is bool and not isinstance(value, bool):
        raise SpecError(f"{name}: expected true or false, got {value!r}")
    if origin is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise SpecError(f"{name}: expected an integer, got {value!r}")
    if origin is float and not isinstance(value, float):
        raise SpecError(f"{name}: expected a number, got {value!r}")
    if origin in (str, list, dict) and not isinstance(value, origin):
        raise SpecError(f"{name}: expected {_type_name(origin)}, got {value!r}")
    return value


def _build(cls, raw: dict, prefix: str = ""):
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in names or key == "root":
            raise SpecError(f"{full}: unknown field (allowed: {', '.join(sorted(names - {'root'}))})")
        kwargs[key] = _coerce(full, value, hints[key])
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
                   and f.name != "root"]
        raise SpecError(f"{prefix or 'spec'}: missing required field {', '.join(missing)}") from e


_UNDERSCORE_NUM = re.compile(r"^[+-]?\d[\d_]*$")


def parse_override(text: str) -> tuple[list[str], Any]:
    """Returns (dotted key path, YAML-parsed value) of a `key=value` override."""
    if "=" not in text:
        raise SpecError(f"override {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise SpecError(f"override {text!r}: bad key {key!r}")
    value = int(raw.replace("_", "")) if _UNDERSCORE_NUM.match(raw) else yaml.safe_load(raw)
    return key.split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Returns a copy of the raw spec mapping with `key=value` overrides set."""
    out = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise SpecError(f"{'.'.join(path)}: {part} is not a mapping")
            node = nxt
        node[path[-1]] = value
    return out


def _check(spec: Spec) -> None:
    """Cross-field checks: files exist, sealed and mutable are apart, numbers sane."""
    root = spec.root
    if not spec.path(spec.scaffold).is_dir():
        raise SpecError(f"scaffold: folder not found: {spec.scaffold!r}")
    for rel in HARNESS_FILES:
        if not spec.path(rel).is_file():
            raise SpecError(f"experiment: {rel} not found in {str(root)!r}")
    if not spec.mutable:
        raise SpecError("mutable: must name at least one file")
    for rel in spec.mutable:
        if not rel.startswith(spec.scaffold.rstrip("/") + "/"):
            raise SpecError(f"mutable: {rel!r} is not inside the scaffold {spec.scaffold!r}")
        if not spec.path(rel).is_file():
            raise SpecError(f"mutable: file not found: {rel!r}")
    for pattern in spec.sealed:
        hits = [Path(p) for p in glob.glob(str(root / pattern))]
        if not hits:
            raise SpecError(f"sealed: no file matches {pattern!r}")
        for hit in hits:
            rel = hit.relative_to(root).as_posix()
            if rel in spec.mutable:
                raise SpecError(f"sealed: {rel!r} is also mutable")
    if spec.trainer not in TRAINERS:
        raise SpecError(f"trainer: expected one of {', '.join(TRAINERS)}, got {spec.trainer!r}")
    if spec.trainer == "rl" and spec.trial.checkpoint_tokens:
        raise SpecError("trial.checkpoint_tokens: the rl trainer saves no checkpoints; set it to 0")
    if spec.trainer == "rl" and spec.operator.inherit:
        raise SpecError("operator.inherit: the rl trainer saves no checkpoints to inherit; set it to false")
    if spec.objective.mode not in ("min", "max"):
        raise SpecError(f"objective.mode: expected 'min' or 'max', got {spec.objective.mode!r}")
    b = spec.budget
    for name in ("trials", "concurrent", "train_tokens"):
        if getattr(b, name) < 1:
            raise SpecError(f"budget.{name}: must be at least 1, got {getattr(b, name)!r}")
    if b.llm_tokens < 0:
        raise SpecError(f"budget.llm_tokens: must be 0 (no limit) or more, got {b.llm_tokens!r}")
    _check_operator(spec.operator)
    h = spec.operator.heuristic
    if h.file not in spec.mutable:
        raise SpecError(f"operator.heuristic.file: {h.file!r} is not in the mutable surface")
    for key, choices in h.choices.items():
        if not isinstance(choices, list) or len(choices) < 2:
            raise SpecError(f"operator.heuristic.choices.{key}: expected a list of 2 or more, got {choices!r}")
    for key, pair in h.bounds.items():
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in pair)
                or pair[0] > pair[1]):
            raise SpecError(f"operator.heuristic.bounds.{key}: expected [low, high], got {pair!r}")
    if not 0.0 <= h.crossover_rate <= 1.0:
        raise SpecError(f"operator.heuristic.crossover_rate: expected 0..1, got {h.crossover_rate!r}")
    if h.mutations < 1:
        raise SpecError(f"operator.heuristic.mutations: must be at least 1, got {h.mutations!r}")
    s = spec.selection
    for name in ("islands", "tournament", "migrate_every"):
        if getattr(s, name) < 1:
            raise SpecError(f"selection.{name}: must be at least 1, got {getattr(s, name)!r}")
    sc = spec.scheduler
    if sc.kind not in ("fifo", "asha"):
        raise SpecError(f"scheduler.kind: expected 'fifo' or 'asha', got {sc.kind!r}")
    if sc.grace_tokens < 0 or sc.grace_tokens > spec.budget.train_tokens:
        raise SpecError(f"scheduler.grace_tokens: expected 0..budget.train_tokens, got {sc.grace_tokens!r}")
    if sc.reduction_factor < 2:
        raise SpecError(f"scheduler.reduction_factor: must be at least 2, got {sc.reduction_factor!r}")
    t = spec.trial
    if t.workers < 1:
        raise SpecError(f"trial.workers: must be at least 1, got {t.workers!r}")
    if t.placement not in ("pack", "spread"):
        raise SpecError(f"trial.placement: must be 'pack' or 'spread', got {t.placement!r}")
    if t.cpus_per_worker <= 0:
        raise SpecError(f"trial.cpus_per_worker: must be above 0, got {t.cpus_per_worker!r}")
    if t.gpus_per_worker < 0:
        raise SpecError(f"trial.gpus_per_worker: must be 0 or more, got {t.gpus_per_worker!r}")
    if t.report_every < 1:
        raise SpecError(f"trial.report_every: must be at least 1, got {t.report_every!r}")
    if t.max_failures < 0:
        raise SpecError(f"trial.max_failures: must be 0 or more, got {t.max_failures!r}")
    if t.checkpoint_tokens < 0:
        raise SpecError(f"trial.checkpoint_tokens: must be 0 (none) or more, got {t.checkpoint_tokens!r}")
    c = spec.confirm
    if c.top < 0:
        raise SpecError(f"confirm.top: must be 0 (no confirmation) or more, got {c.top!r}")
    if c.top and c.seeds < 2:
        raise SpecError(f"confirm.seeds: a test needs at least 2 re-runs per variant, got {c.seeds!r}")
    if not 0.0 < c.alpha < 0.5:
        raise SpecError(f"confirm.alpha: expected a level between 0 and 0.5, got {c.alpha!r}")
    if c.flag_sigmas <= 0:
        raise SpecError(f"confirm.flag_sigmas: must be above 0, got {c.flag_sigmas!r}")
    if t.memory_gb < 0:
        raise SpecError(f"trial.memory_gb: must be 0 (no cap) or more, got {t.memory_gb!r}")
    if t.peak_tflops < 0:
        raise SpecError(f"trial.peak_tflops: must be 0 (the device's table entry) or more, got {t.peak_tflops!r}")
    if t.disk_gb < 0:
        raise SpecError(f"trial.disk_gb: must be 0 (no cap) or more, got {t.disk_gb!r}")
    if t.sandbox not in SANDBOX_LEVELS:
        raise SpecError(f"trial.sandbox: expected one of {', '.join(SANDBOX_LEVELS)}, got {t.sandbox!r}")
    if t.timeout_s < 0:
        raise SpecError(f"trial.timeout_s: must be 0 (never) or more, got {t.timeout_s!r}")


def _check_numbers(name: str, m: dict) -> None:
    if not 0.0 <= m["temperature"] <= 2.0:
        raise SpecError(f"{name}.temperature: expected 0..2, got {m['temperature']!r}")
    if m["max_tokens"] < 1:
        raise SpecError(f"{name}.max_tokens: must be at least 1, got {m['max_tokens']!r}")
    for key in ("weight", "price_prompt", "price_completion"):
        if m[key] < 0:
            raise SpecError(f"{name}.{key}: must be 0 or more, got {m[key]!r}")


def _check_model(name: str, m: dict) -> None:
    if m["backend"] not in ("openai", "transformers"):
        raise SpecError(f"{name}.backend: expected 'openai' or 'transformers', got {m['backend']!r}")
    if m["backend"] == "openai" and not m["base_url"]:
        raise SpecError(f"{name}.base_url: empty; give the endpoint, e.g. http://127.0.0.1:8000/v1")
    if m["backend"] == "openai" and not m["model"]:
        raise SpecError(f"{name}.model: empty; name the model the endpoint at {m['base_url']} serves")
    if m["backend"] == "transformers" and (not m["model"] or not Path(str(m["model"])).is_dir()):
        raise SpecError(f"{name}.model: local model folder not found: {m['model']!r}")
    _check_numbers(name, m)


def model_entries(op: Operator) -> list[dict]:
    """Returns the operator's models, each a full mapping of MODEL_FIELDS, checked."""
    base = {k: getattr(op, k) for k in MODEL_FIELDS if k != "weight"} | {"weight": 1.0}
    raw = op.models or ([{}] if op.base_url or op.backend == "transformers" else [])
    out = []
    for i, entry in enumerate(raw):
        name = f"operator.models[{i}]" if op.models else "operator"
        if not isinstance(entry, dict):
            raise SpecError(f"{name}: expected a mapping, got {entry!r}")
        unknown = sorted(set(entry) - set(MODEL_FIELDS))
        if unknown:
            raise SpecError(f"{name}.{unknown[0]}: unknown field (allowed: {', '.join(MODEL_FIELDS)})")
        m = {**base, **entry}
        for key in ("temperature", "weight", "price_prompt", "price_completion"):
            if isinstance(m[key], bool) or not isinstance(m[key], (int, float)):
                raise SpecError(f"{name}.{key}: expected a number, got {m[key]!r}")
        if isinstance(m["max_tokens"], bool) or not isinstance(m["max_tokens"], int):
            raise SpecError(f"{name}.max_tokens: expected an integer, got {m['max_tokens']!r}")
        for key in ("model", "backend", "base_url", "api_key_env"):
            if not isinstance(m[key], str):
                raise SpecError(f"{name}.{key}: expected str, got {m[key]!r}")
        _check_model(name, m)
        out.append(m)
    if out and not any(m["weight"] > 0 for m in out):
        raise SpecError("operator.models: every weight is 0")
    return out


def _check_operator(op: Operator) -> None:
    if op.kind not in OPERATOR_KINDS:
        raise SpecError(f"operator.kind: unknown operator {op.kind!r} (available: {', '.join(OPERATOR_KINDS)})")
    if op.hybrid_trials < 1:
        raise SpecError(f"operator.hybrid_trials: must be at least 1, got {op.hybrid_trials!r}")
    if op.hybrid_sampler not in HYBRID_SAMPLERS:
        raise SpecError(f"operator.hybrid_sampler: expected one of {', '.join(HYBRID_SAMPLERS)}, "
                        f"got {op.hybrid_sampler!r}")
    _check_numbers("operator", {k: getattr(op, k) for k in MODEL_FIELDS if k != "weight"} | {"weight": 1.0})
    model_entries(op)
    for name in ("repair_rounds", "ahead", "smoke_steps", "notebook_every", "retries", "prompt_chars"):
        if getattr(op, name) < 0:
            raise SpecError(f"operator.{name}: must be 0 or more, got {getattr(op, name)!r}")
    for name in ("parallel", "max_failures"):
        if getattr(op, name) < 1:
            raise SpecError(f"operator.{name}: must be at least 1, got {getattr(op, name)!r}")
    for name in ("timeout_s", "smoke_timeout_s", "probe_every_s"):
        if getattr(op, name) <= 0:
            raise SpecError(f"operator.{name}: must be above 0, got {getattr(op, name)!r}")
    if op.wait_s < 0:
        raise SpecError(f"operator.wait_s: must be 0 or more, got {op.wait_s!r}")
    if op.inspirations < 0:
        raise SpecError(f"operator.inspirations: must be 0 or more, got {op.inspirations!r}")
    if op.inherit_tokens < 0:
        raise SpecError(f"operator.inherit_tokens: must be 0 (a quarter of the budget) or more, got {op.inherit_tokens!r}")
    if not isinstance(op.shape_keys, list) or not all(isinstance(k, str) and k for k in op.shape_keys):
        raise SpecError(f"operator.shape_keys: expected a list of settings keys, got {op.shape_keys!r}")
    if op.bandit not in BANDITS:
        raise SpecError(f"operator.bandit: expected one of {', '.join(BANDITS)}, got {op.bandit!r}")
    if not 0.0 <= op.merge_rate <= 1.0:
        raise SpecError(f"operator.merge_rate: expected 0..1, got {op.merge_rate!r}")


def build_spec(raw: dict, root: Path, name: str) -> Spec:
    """Returns a validated Spec from a raw mapping (already overridden)."""
    if not isinstance(raw, dict):
        raise SpecError(f"spec: expected a mapping at the top level, got {raw!r}")
    raw = {"name": name, **raw}
    spec = dataclasses.replace(_build(Spec, raw), root=Path(root).resolve())
    _check(spec)
    return spec


def load_spec(experiment: str | os.PathLike, overrides: list[str] = ()) -> Spec:
    """Loads `experiment` (a folder holding experiment.yaml, or the YAML file)."""
    path = Path(experiment)
    if path.is_dir():
        path = path / "experiment.yaml"
    if not path.is_file():
        raise SpecError(f"experiment: spec file not found: {str(path)!r}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpecError(f"experiment: {str(path)!r} is not valid YAML: {first}") from e
    raw = apply_overrides(raw, list(overrides))
    return build_spec(raw, path.parent, path.parent.name)


@dataclass(frozen=True)
class RunSettings:
    """The sections of a run's saved spec that readers need, defaults from the schema above.

    Unlike `load_run_spec` it needs no experiment folder: status, the report,
    the git export and the notebook read a run folder on its own.
    """

    objective: Objective
    budget: Budget
    trial: Trial
    confirm: Confirm


def run_settings(run_dir: str | os.PathLike) -> RunSettings:
    """Returns the run's saved objective, budget, trial and confirm sections (all defaults if it saved none)."""
    path = Path(run_dir) / "spec.yaml"
    raw = {}
    if path.is_file():
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise SpecError(f"run: {str(path)!r} is corrupt: {first}") from e
        if not isinstance(raw, dict):
            raise SpecError(f"run: {str(path)!r} is corrupt: expected a mapping")
    return RunSettings(**{name: _build(SECTIONS[name], raw.get(name) or {}, name)
                          for name in ("objective", "budget", "trial", "confirm")})


def load_run_spec(run_dir: str | os.PathLike) -> Spec:
    """Loads the spec a search saved in its run folder (`spec.yaml`), for resuming it."""
    path = Path(run_dir) / "spec.yaml"
    if not path.is_file():
        raise SpecError(f"run: {str(path)!r} not found (not a run folder, or one whose search never started)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SpecError(f"run: {str(path)!r} is corrupt: {first}") from e
    if not isinstance(raw, dict) or not isinstance(raw.get("root"), str) or not isinstance(raw.get("name"), str):
        raise SpecError(f"run: {str(path)!r} is corrupt: expected a mapping with root and name")
    root, name = Path(raw.pop("root")), raw.pop("name")
    if not root.is_dir():
        raise SpecError(f"run: the experiment folder {str(root)!r} that {str(path)!r} names is gone")
    return build_spec(raw, root, name)
