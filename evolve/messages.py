"""What crosses a process boundary on the data path, typed: a trial's config and its outcome.

The searcher makes a `TrialConfig`; Ray Tune carries it to the trial process
as a dict, the slot board to the relay, the zygote to each rank. Each side
reads it back with `TrialConfig.from_dict`, which checks every field, so a
misspelt key or a value of the wrong kind is one line at the boundary, not a
KeyError deep in a loop. The trial's result travels back as a
`TrialOutcome` (JSON inside Tune's final result, and in kept/), checked the
same way where the searcher reads it. Both are pure data: no Ray, no torch.

One name for each quantity: `train_tokens` is the tokens a trial trains (the
spec's `budget.train_tokens`, or `operator.inherit_tokens` for a child that
continues from its parent's weights, which hold `inherited_tokens`); the size of the training
split, which the sealed `prepare` writes into the data's meta.json under that
same key, is read only through `split_tokens`.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field

STATUSES = ("completed", "failed", "stopped")


class RecordError(ValueError):
    """A record that does not match its type: one line naming the field."""


@dataclass(frozen=True)
class Resources:
    """What one trial holds: its workers (ranks) and each worker's share of a node."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    placement: str = "pack"


@dataclass(frozen=True)
class TrialConfig:
    """Everything a trial, its relay and its ranks are told; the first six fields are all a solo run needs."""

    variant_dir: str  # the variant's files, materialised
    out_dir: str  # the trial's folder: the only place its ranks may write
    data_dir: str  # the split data (train.bin, dev.bin, meta.json; heldout.bin only for the evaluation)
    task: dict  # the spec's task section (the harness's limits: `evolve.spec.task_limit`)
    seed: int
    train_tokens: int  # the token budget of this trial
    report_every: int = 10  # optimizer steps between curve points
    checkpoint_tokens: int = 0  # 0: no checkpoints
    trainer: str = "lm"  # "lm" or "rl": the harness's loop
    variant_id: str = ""
    trial_id: str = ""
    trial_key: str = ""  # a confirmation re-run's own name (its variant and seed); "" for a search trial
    confirm: bool = False  # a confirmation re-run: no curve reported, no scheduler may stop it
    run_dir: str = ""
    experiment_root: str = ""
    sealed: dict = field(default_factory=dict)  # sealed file -> sha256, checked by the evaluation
    metric: str = "heldout_loss"
    sandbox: dict | None = None  # the search's walls (`evolve.rank.sandbox`); None: none
    timeout_s: float = 0.0  # 0: no limit
    peak_tflops: float = 0.0  # 0: from evolve.rank.mfu's table
    train_storage: str = ""
    slots: str = ""  # the search's slot board (a named actor)
    search: str = ""  # the search's key: its zygote
    resources: Resources = field(default_factory=Resources)
    resume_from: str | None = None  # a checkpoint folder to continue from
    smoke: bool = False  # a smoke run: `max_steps` steps, nothing kept
    max_steps: int = 0
    keep_weights: bool = False  # save the final weights and optimizer state for children to inherit
    inherited_from: str = ""  # the parent whose final state this trial continues from ("" : from scratch)
    inherited_tokens: int = 0  # tokens already in those weights: this trial trains `train_tokens` more

    @classmethod
    def from_dict(cls, data) -> TrialConfig:
        return _read(cls, data, "trial config")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> TrialConfig:
        return dataclasses.replace(self, **changes)

    @property
    def key(self) -> str:
        """The name of this trial's files in kept/: the re-run's key, else the variant."""
        return self.trial_key or self.variant_id


@dataclass(frozen=True)
class TrialOutcome:
    """What a trial ends with: its status and fitness, or why it has none, and what it cost."""

    status: str  # one of STATUSES
    fitness: float | None = None
    failure_reason: str | None = None
    metrics: dict = field(default_factory=dict)  # the sealed evaluation's
    summary: dict = field(default_factory=dict)  # rank 0's: the curve, tokens, speed
    variant_id: str = ""
    inherited_from: str = ""  # set by the trial process from its config, never by the rank
    tokens_inherited: int = 0
    trial_seconds: float | None = None
    eval_seconds: float | None = None
    gpu_hours: float | None = None
    trial_started_at: float | None = None

    def __post_init__(self):
        if self.status not in STATUSES:
            raise RecordError(f"trial outcome: status must be one of {', '.join(STATUSES)}, got {self.status!r}")

    @classmethod
    def failed(cls, reason: str, **fields) -> TrialOutcome:
        return cls(status="failed", failure_reason=reason, **fields)

    @classmethod
    def stopped(cls, curve: list) -> TrialOutcome:
        """A trial the scheduler stopped early: a result, not a failure."""
        return cls(status="stopped", failure_reason=f"stopped early by the scheduler at {curve[-1][0]:,} tokens "
                                                    f"(dev loss {curve[-1][2]:.4f})",
                   summary={"curve": curve, "tokens_trained": curve[-1][0]})

    @classmethod
    def from_dict(cls, data) -> TrialOutcome:
        return _read(cls, data, "trial outcome")

    @classmethod
    def from_json(cls, text: str) -> TrialOutcome:
        try:
            data = json.loads(text)
        except ValueError as e:
            raise RecordError(f"trial outcome: not JSON ({e})") from None
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def replace(self, **changes) -> TrialOutcome:
        return dataclasses.replace(self, **changes)


# A recorded learning-curve point: [tokens, train_loss, dev_loss, step, lr]. Readers index the first three,
# so rows recorded before step and lr were kept (three columns) still read; step and lr may be None.
CURVE_COLUMNS = ("tokens", "train_loss", "dev_loss", "step", "lr")


def curve_row(point: dict) -> list:
    """Returns the recorded row of one harness curve point (see CURVE_COLUMNS)."""
    return [point["tokens"], point["train_loss"], point["dev_loss"], point.get("step"), point.get("lr")]


def split_tokens(meta: dict) -> int:
    """The size of the training split, in tokens (bytes for a byte-level corpus), from the data's meta."""
    return int(meta["train_tokens"])  # the sealed prepare's key, kept for the runs it already wrote


# -- checked reading ---------------------------------------------------------------
def _read(cls, data, what: str):
    if not isinstance(data, dict):
        raise RecordError(f"{what}: expected a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise RecordError(f"{what}: unknown field {unknown[0]!r}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in names.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise RecordError(f"{what}: missing field {name!r}")
            continue
        values[name] = _check(data[name], hints[name], f"{what}: {name}")
    return cls(**values)


def _check(value, hint, where: str):
    """Returns `value` as `hint` (a nested record built from its dict); RecordError if it is not one."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in options:
            return None
        raise RecordError(f"{where}: must not be empty")
    for option in options:
        if option is type(None):
            continue
        if dataclasses.is_dataclass(option):
            if isinstance(value, option):
                return value
            if isinstance(value, dict):
                return _read(option, value, where)
            continue
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool, dict) and type(value) is option:
            return value
    names = " or ".join(getattr(o, "__name__", str(o)) for o in options if o is not type(None))
    raise RecordError(f"{where}: expected {names}, got {type(value).__name__} {str(value)[:60]!r}")
