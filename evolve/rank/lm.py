"""The next-token training loop of one rank, and the rules every loop holds a recipe to.

It runs in a fresh zygote child (`evolve.rank.entry` is the child's entry point),
inside the sandbox, and calls the recipe's hooks.

The harness owns everything the variant must not: the token budget, the
model class (a transformers GPT-2 built from the recipe's config), the
parameter cap, the data shard, the learning-curve measurements and the
saved weights. The recipe owns the choices: optimizer, schedule, batch
construction and order, loss, width and depth, DeepSpeed knobs.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

import yaml

from evolve.errors import one_line
from evolve.messages import TrialConfig, curve_row
from evolve.rank import mfu, performance, sandbox
from evolve.spec import task_limit

# torch, DeepSpeed and transformers are imported inside the functions that use them: the driver and
# the cascade import this module's helpers without them.

HOOKS = ("model_config", "optimizer", "lr_multiplier", "deepspeed_config", "batches", "loss")
# GPT2Config fields a recipe may not set: the harness fixes vocabulary and context.
RESERVED_MODEL_KEYS = ("vocab_size", "n_positions", "n_ctx", "bos_token_id", "eos_token_id")
ALLOWED_DS_KEYS = ("zero_stage", "gradient_accumulation_steps", "gradient_clipping")
DEV_WINDOWS = 8  # dev-loss windows per forward pass (a GPT-2 small's logits are 200 MB a window)
CHECKPOINT_TAG = "engine"  # DeepSpeed's tag inside a checkpoint folder
CHECKPOINT_STATE = "evolve_state.json"  # written last: a checkpoint without it is unfinished


class RecipeError(RuntimeError):
    """The variant's recipe broke a rule of the harness; the message is one line."""

    one_line = True  # its message is the whole reason: no type name in front


def load_recipe(variant_dir: str | os.PathLike, hooks: tuple[str, ...] = HOOKS):
    """Imports the variant's recipe.py under a name unique to the variant; it must define `hooks`."""
    path = Path(variant_dir) / "recipe.py"
    if not path.is_file():
        raise RecipeError(f"recipe.py: not found in {variant_dir}")
    name = f"evolve_recipe_{Path(variant_dir).name}_{time.time_ns()}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    missing = [h for h in hooks if not callable(getattr(module, h, None))]
    if missing:
        raise RecipeError(f"recipe.py: missing hook(s) {', '.join(missing)}")
    return module


def load_settings(variant_dir: str | os.PathLike) -> dict:
    path = Path(variant_dir) / "config.yaml"
    try:
        settings = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RecipeError(f"config.yaml: cannot be read: {str(e).splitlines()[0]}") from e
    if not isinstance(settings, dict):
        raise RecipeError(f"config.yaml: expected a mapping, got {type(settings).__name__}")
    return settings


def build_model(recipe, settings: dict, vocab_size: int, context: int, param_cap: int,
                attention: str | None = None):
    """Returns the GPT-2 the recipe asks for, after checking it against the cap."""
    from transformers import GPT2Config, GPT2LMHeadModel

    kwargs = recipe.model_config(settings)
    if not isinstance(kwargs, dict):
        raise RecipeError(f"model_config: expected a dict, got {type(kwargs).__name__}")
    bad = [k for k in kwargs if k in RESERVED_MODEL_KEYS]
    if bad:
        raise RecipeError(f"model_config: {', '.join(bad)} is fixed by the harness")
    config = GPT2Config(vocab_size=vocab_size, n_positions=context, bos_token_id=None,
                        eos_token_id=None, **kwargs)
    if attention:  # the recipe's performance choice; else transformers' default (sdpa where torch has it)
        config._attn_implementation = attention
    model = GPT2LMHeadModel(config)
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > param_cap:
        raise RecipeError(f"model_config: {n_params:,} parameters exceed the cap of {param_cap:,}")
    return model, n_params


def deepspeed_settings(recipe, settings: dict, micro_batch: int) -> dict:
    """Returns the DeepSpeed config built from the recipe's allowed knobs."""
    knobs = recipe.deepspeed_config(settings)
    if not isinstance(knobs, dict):
        raise RecipeError(f"deepspeed_config: expected a dict, got {type(knobs).__name__}")
    unknown = sorted(set(knobs) - set(ALLOWED_DS_KEYS))
    if unknown:
        raise RecipeError(f"deepspeed_config: {', '.join(unknown)} not allowed "
                          f"(allowed: {', '.join(ALLOWED_DS_KEYS)})")
    stage = knobs.get("zero_stage", 0)
    if stage not in (0, 1, 2):
        raise RecipeError(f"deepspeed_config: zero_stage must be 0, 1 or 2, got {stage!r}")
    gas = knobs.get("gradient_accumulation_steps", 1)
    if not isinstance(gas, int) or gas < 1:
        raise RecipeError(f"deepspeed_config: gradient_accumulation_steps must be >= 1, got {gas!r}")
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": gas,
        "gradient_clipping": float(knobs.get("gradient_clipping", 0.0)),
        "zero_optimization": {"stage": stage},
        # the recipe picks the optimizer; ZeRO 1-2 shard any torch optimizer's state
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,  # the harness reports; DeepSpeed stays quiet
    }


def _dev_loss(model, dev, seq: int, autocast: str | None = None) -> float:
    """Returns the mean next-token loss on `dev` in windows of `seq`, 8 windows at a time."""
    import torch

    n = (len(dev) - 1) // seq
    device = next(model.parameters()).device  # a GPU's, where DeepSpeed put the model
    x = dev[: n * seq].view(n, seq).long()
    y = dev[1: n * seq + 1].view(n, seq).long()
    was_training = model.training
    model.eval()
    total = 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
        for i in range(0, n, DEV_WINDOWS):
            logits = model(input_ids=x[i:i + DEV_WINDOWS].to(device)).logits.float()
            total += torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                                       y[i:i + DEV_WINDOWS].to(device).reshape(-1),
                                                       reduction="sum").item()
    model.train(was_training)
    return total / (n * seq)


def load_tokens(path: Path, dtype: str):
    """Returns a token file as a 1-D tensor (memory-mapped, copy-on-write: nothing reaches the file)."""
    import numpy as np
    import torch

    return torch.from_numpy(np.memmap(path, dtype=np.dtype(dtype), mode="c"))


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Returns the harness's state saved in a checkpoint folder; one-line RuntimeError if unusable."""
    state_file = Path(path) / CHECKPOINT_STATE
    try:
        state = json.loads(state_file.read_text())
    except FileNotFoundError:
        raise RuntimeError(f"checkpoint {path}: no {CHECKPOINT_STATE} (an unfinished checkpoint)") from None
    except (OSError, ValueError) as e:
        raise RuntimeError(f"checkpoint {path}: {CHECKPOINT_STATE} is unreadable: {one_line(e)}") from None
    missing = [k for k in ("tokens", "step", "micro", "optimizer", "zero_stage", "world", "settings")
               if k not in state]
    if missing:
        raise RuntimeError(f"checkpoint {path}: {CHECKPOINT_STATE} lacks {', '.join(missing)}")
    return state


def _save_checkpoint(engine, path: Path, state: dict, rank: int) -> None:
    """Saves the engine (every rank its shards), then rank 0 writes the state file that commits it."""
    import torch.distributed as dist

    engine.save_checkpoint(str(path), tag=CHECKPOINT_TAG)
    dist.barrier()  # every rank's shards are on disk before the checkpoint counts
    if rank == 0:
        tmp = path / (CHECKPOINT_STATE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path / CHECKPOINT_STATE)


def save_result(engine, out_dir: Path, summary: dict) -> None:
    """Rank 0's last act: the weights, then summary.json, whose appearance starts the sealed evaluation."""
    engine.module.save_pretrained(out_dir / "model", safe_serialization=True)
    tmp = out_dir / "summary.json.tmp"
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, out_dir / "summary.json")


def plan_steps(budget: int, start_tokens: int, start_step: int, tokens_per_micro: int, gas: int,
               max_steps: int | None = None, resumed: bool = False) -> tuple[int, int, int]:
    """Returns (optimizer steps left, micro-steps left, the run's total optimizer steps) (pure).

    Whole optimizer steps only: the budget's remainder, less than a step, is
    not trained. `max_steps` caps a smoke run. A fresh run whose budget buys
    no step is the recipe's error; a resumed one at its budget trains nothing.
    """
    steps_left = (budget - start_tokens) // tokens_per_micro // gas
    if steps_left < 1 and not resumed:
        raise RecipeError(f"config.yaml: one optimizer step needs {tokens_per_micro * gas:,} "
                          f"tokens, more than the budget of {budget:,}")
    if max_steps is not None:  # a check before the trial: a few steps, nothing saved
        steps_left = min(steps_left, max_steps)
    steps_left = max(0, steps_left)
    return steps_left, steps_left * gas, start_step + steps_left


def plan_performance(recipe, settings: dict, gpu: bool) -> tuple[dict, list[str]]:
    """Returns the recipe's precision and kernels resolved for this device (see `evolve.rank.performance`)."""

    import torch

    hook = getattr(recipe, "performance", None)
    choices = hook(settings) if callable(hook) else {}
    try:
        return performance.plan(choices, gpu=gpu, sandboxed=sandbox.entered(),
                                flash_installed=importlib.util.find_spec("flash_attn") is not None,
                                cpu_bf16=torch.backends.mkldnn.is_available())
    except performance.PerformanceError as e:
        raise RecipeError(str(e)) from None


class Speedometer:
    """Tokens per second, model FLOPs per token and MFU of the training loop (see `evolve.rank.mfu`).

    The first optimizer step (warm-up, compilation) is left out of the rates;
    the trial's wall time still holds it.
    """

    def __init__(self, model, n_params: int, context: int, config: TrialConfig, gpu: bool):
        import torch

        cfg = model.config
        wpe = model.transformer.wpe.weight.numel()
        self.flops_per_token = mfu.flops_per_token(n_params, wpe, cfg.n_layer, cfg.n_embd, context)
        self.device = torch.cuda.get_device_name() if gpu else "cpu"
        self.peak = mfu.peak_tflops(self.device if gpu else None, config.peak_tflops or None)
        self.tokens = self.seconds = 0.0
        self.since_tokens = self.since_seconds = 0.0
        self.first = True

    def step(self, tokens: int, seconds: float) -> None:
        if self.first:
            self.first = False
            return
        self.tokens += tokens
        self.seconds += seconds
        self.since_tokens += tokens
        self.since_seconds += seconds

    def _rates(self, tokens: float, seconds: float) -> dict:
        rate = tokens / seconds if seconds > 0 else 0.0
        util = mfu.mfu(rate, self.flops_per_token, self.peak)
        return {"tokens_per_s": rate, "mfu": util}

    def interval(self) -> dict:
        """Returns the rates since the last call (a curve point's)."""
        out = self._rates(self.since_tokens, self.since_seconds)
        self.since_tokens = self.since_seconds = 0.0
        return out

    def summary(self) -> dict:
        return {**self._rates(self.tokens, self.seconds), "flops_per_token": self.flops_per_token,
                "peak_tflops": self.peak, "device": self.device}


PROTECTED_MODULES = ("evolve.rank.lm", "evolve.rank.rl", "evolve.rank.entry", "evolve.rank.sandbox", "evolve.warm.zygote",
                     "evolve.errors", "evolve.rank.channel", "evolve.rank.performance", "evolve.rank.mfu")


def snapshot_protected() -> dict:
    """Returns what the harness's own modules hold, name by name, before the variant runs."""

    return {(m, k): id(v) for m in PROTECTED_MODULES if m in sys.modules
            for k, v in vars(sys.modules[m]).items()
            if not k.startswith("__")}  # Python's own bookkeeping (__warningregistry__, ...)


def check_untouched(before: dict, during: str) -> None:
    """Raises RecipeError if the variant's code replaced anything in the harness's modules."""
    after = snapshot_protected()
    changed = sorted(f"{m}.{k}" for (m, k), ident in after.items() if before.get((m, k)) != ident)
    changed += sorted(f"{m}.{k}" for (m, k) in before if (m, k) not in after)
    if changed:
        raise RecipeError(f"the variant changed the harness while {during} ({', '.join(changed[:3])}); "
                          f"the harness is not the variant's to change")


def _same(a: dict, b: dict) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def inherited_budget(config: TrialConfig, resume: dict | None) -> tuple[int, int]:
    """Returns (the token position to train to, the position to count from) of a trial inheriting weights (pure).

    The trial trains `train_tokens` on top of the `inherited_tokens` its
    parent's weights hold, both set by the searcher. The checkpoint's own
    count was written inside the parent's process, so it only counts when it
    is further on (this trial's own checkpoint, after a retry): a parent that
    wrote a smaller one cannot buy its children more tokens.
    """
    if resume is None:
        raise RuntimeError(f"the trial inherits {config.inherited_from}'s weights, but has no checkpoint to load")
    return config.inherited_tokens + config.train_tokens, max(int(resume["tokens"]), config.inherited_tokens)


def train(config: TrialConfig, rank: int, world: int, out_dir: Path, report) -> dict:
    """The next-token training loop of one rank (the spec's `trainer: lm`); returns the rank's summary."""

    import deepspeed
    import torch

    t_setup = time.time()
    torch.manual_seed(config.seed * 1000 + rank)
    # The limits are read into numbers before any of the variant's code runs: nothing it does to
    # the dicts they came from changes them.
    task = config.task
    budget = config.train_tokens
    param_cap, eval_seq = task_limit(task, "param_cap"), task_limit(task, "eval_seq_len")
    dev_tokens, report_every = task_limit(task, "dev_tokens"), config.report_every
    meta = json.loads((Path(config.data_dir) / "meta.json").read_text())
    vocab, dtype = int(meta["vocab_size"]), str(meta.get("dtype", "uint8"))
    untouched = snapshot_protected()
    sandbox.confine()  # the last walls, before any of the variant's code (a no-op outside a sandbox)
    recipe = load_recipe(config.variant_dir)
    check_untouched(untouched, "importing recipe.py")
    settings = load_settings(config.variant_dir)
    smoke = config.smoke
    if smoke:
        report({"imported": True})
    resume_dir = None if smoke else config.resume_from
    resume = read_checkpoint(resume_dir) if resume_dir else None

    seq, bs = int(settings.get("seq_len", 0)), int(settings.get("batch_size", 0))
    if seq < 1 or bs < 1:
        raise RecipeError(f"config.yaml: seq_len and batch_size must be >= 1, got {seq}, {bs}")
    gpu = torch.cuda.is_available() and config.resources.gpus_per_worker > 0
    perf, notes = plan_performance(recipe, settings, gpu)
    context = max(seq, eval_seq)
    model, n_params = build_model(recipe, settings, vocab, context, param_cap, perf["attention"])
    ds_config = {**deepspeed_settings(recipe, settings, bs), **performance.deepspeed_precision(perf)}
    gas = ds_config["gradient_accumulation_steps"]
    tokens_per_micro = bs * seq * world
    start_tokens, start_step, start_micro = ((resume["tokens"], resume["step"], resume["micro"])
                                             if resume else (0, 0, 0))
    if config.inherited_from:
        budget, start_tokens = inherited_budget(config, resume)
    steps_left, micro_steps, total_steps = plan_steps(budget, start_tokens, start_step, tokens_per_micro, gas,
                                                      config.max_steps if smoke else None,
                                                      resumed=bool(resume))

    optimizer = recipe.optimizer(model, settings)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise RecipeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_multiplier(settings, total_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=scheduler, config=ds_config)
    if perf["compile"]:  # compile time counts in the trial's wall time, never in its tokens
        engine.compile()
    stage = ds_config["zero_optimization"]["stage"]
    same_run = False
    if resume:  # the weights always; the optimizer's state when it is the same optimizer, sharded alike
        same_opt = (resume["optimizer"] == type(optimizer).__name__ and resume["zero_stage"] == stage
                    and resume["world"] == world)
        same_run = same_opt and _same(resume["settings"], settings)
        hyper = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        loaded, _ = engine.load_checkpoint(resume_dir, tag=CHECKPOINT_TAG, load_optimizer_states=same_opt,
                                           load_lr_scheduler_states=False, load_module_only=not same_opt)
        if loaded is None:
            raise RuntimeError(f"checkpoint {resume_dir}: DeepSpeed found no engine state to load")
        for group, h in zip(optimizer.param_groups, hyper):  # this recipe's hyperparameters, the saved moments
            group.update(h)
        with warnings.catch_warnings():  # the schedule resumes at the saved step
            warnings.simplefilter("ignore")
            scheduler.last_epoch = start_step - 1
            scheduler.step()

    train = load_tokens(Path(config.data_dir) / "train.bin", dtype)
    shard = train[rank * len(train) // world: (rank + 1) * len(train) // world]
    dev = load_tokens(Path(config.data_dir) / "dev.bin", dtype)[: dev_tokens + 1].clone()
    data_seed = config.seed * 1000 + rank
    if resume and not same_run:  # other settings: a fresh stream, not the one the saved run was reading
        data_seed += 1_000_003 * start_step
    generator = torch.Generator().manual_seed(data_seed)
    batches = recipe.batches(shard, settings, generator)
    if same_run:  # the same stream, from where the saved run stopped
        for _ in range(start_micro):
            next(batches)

    ckpt_tokens = 0 if smoke else config.checkpoint_tokens
    next_ckpt = start_tokens + ckpt_tokens if ckpt_tokens else None
    speed = Speedometer(model, n_params, context, config, gpu)
    for note in notes:
        print(f"evolve: {note}", flush=True)
    curve, step, train_seconds, ckpt_seconds, loss_sum, loss_n = [], start_step, 0.0, 0.0, 0.0, 0
    t_first = time.time()
    setup_seconds = t_first - t_setup
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=perf["autocast"] == "bf16")
    engine.train()
    for micro in range(micro_steps):
        t0 = time.perf_counter()
        x, y = next(batches)
        if tuple(x.shape) != (bs, seq) or tuple(y.shape) != (bs, seq):
            raise RecipeError(f"batches: yielded shapes {tuple(x.shape)}, {tuple(y.shape)}; "
                              f"expected ({bs}, {seq}) each")
        if perf["pin_memory"]:
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(engine.device, non_blocking=True), y.to(engine.device, non_blocking=True)
        with autocast:
            logits = engine(input_ids=x).logits
            loss = recipe.loss(logits, y, settings)
        engine.backward(loss)
        engine.step()
        value = loss.item()
        elapsed = time.perf_counter() - t0
        train_seconds += elapsed
        speed.step(tokens_per_micro, elapsed)
        if not math.isfinite(value):
            raise RecipeError(f"training loss became {value} at micro-step {start_micro + micro}")
        loss_sum, loss_n = loss_sum + value, loss_n + 1
        if engine.is_gradient_accumulation_boundary():
            step += 1
            if step % report_every == 0 or step == total_steps:
                dev_loss = _dev_loss(engine.module, dev, eval_seq, perf["autocast"])
                tokens = start_tokens + (micro + 1) * tokens_per_micro
                point = {"step": step, "tokens": tokens, "train_loss": loss_sum / loss_n,
                         "dev_loss": dev_loss, "last": step == total_steps,
                         "lr": scheduler.get_last_lr()[0], **speed.interval()}
                curve.append(curve_row(point))
                loss_sum, loss_n = 0.0, 0
                final = config.keep_weights and not smoke and step == total_steps  # for children to inherit
                if final or (next_ckpt is not None and tokens >= next_ckpt and step < total_steps):
                    t_ckpt = time.perf_counter()
                    path = out_dir / "checkpoints" / f"tokens-{tokens}"
                    _save_checkpoint(engine, path, {
                        "tokens": tokens, "step": step, "micro": start_micro + micro + 1,
                        "optimizer": type(optimizer).__name__, "zero_stage": stage, "world": world,
                        "settings": settings, "variant_id": config.variant_id or None}, rank)
                    point["checkpoint"] = str(path)
                    next_ckpt = tokens + ckpt_tokens
                    ckpt_seconds += time.perf_counter() - t_ckpt
                if not smoke:
                    report(point)
    t_last = time.time()
    check_untouched(untouched, "training")
    summary = {"curve": curve, "train_seconds": train_seconds, "tokens_trained": micro_steps * tokens_per_micro,
               "n_params": n_params, "optimizer_steps": total_steps, "setup_seconds": setup_seconds,
               "first_step_at": t_first, "last_step_at": t_last, "world_size": world,
               "checkpoint_seconds": ckpt_seconds, "resumed_at_tokens": start_tokens if resume else None,
               **speed.summary(), "performance": perf, "notes": notes}
    if rank == 0 and not smoke:
        save_result(engine, out_dir, summary)
    return summary
