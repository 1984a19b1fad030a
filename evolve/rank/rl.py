"""The RL training loop of one rank: a supervised warm-up, then policy gradient on verified problems.

The experiment's sealed `harness/data.py` writes problems ({"prompt",
"answer"} JSON lines, prompts of one width) and `meta.json` with the widths
and the end mark; its sealed evaluation scores the held-out problems. This
loop owns what the variant must not: the token budget both phases share,
the model class and its cap, which problems exist (a batch may only name
training problems, by index), the sampler, the reference model, the
learning-curve measurements and the saved weights. The recipe owns the
choices: how the budget is split, batch order and filtering, sampling
temperature and top-p, group size and rollouts per step, the shaped reward,
advantages, the losses (KL and entropy terms), the schedule and optimizer.
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

from evolve.messages import TrialConfig, curve_row
from evolve.rank import sandbox
from evolve.rank.lm import (
    RecipeError,
    build_model,
    check_untouched,
    deepspeed_settings,
    load_recipe,
    load_settings,
    save_result,
    snapshot_protected,
)
from evolve.spec import task_limit

# torch and DeepSpeed are imported inside the functions that use them: the driver imports this
# module's constants without them.

HOOKS = ("model_config", "optimizer", "lr_multiplier", "deepspeed_config", "plan", "batches", "sft_loss",
         "reward", "advantages", "rl_loss")
PLAN_INTS = ("sft_batch_size", "prompts_per_step", "group_size")
MAX_ROLLOUTS = 4096  # rollouts in one RL micro-step, all ranks' alike


def read_problems(path: str | Path) -> list[tuple[str, str]]:
    """Returns the (prompt, answer) pairs of a split written by the experiment's data.py."""
    return [(p["prompt"], p["answer"]) for p in map(json.loads, Path(path).read_text().splitlines())]


def check_plan(plan) -> dict:
    """Returns the recipe's plan checked; RecipeError, one line, naming the bad key."""
    if not isinstance(plan, dict):
        raise RecipeError(f"plan: expected a dict, got {type(plan).__name__}")
    missing = [k for k in ("sft_frac", *PLAN_INTS, "temperature", "top_p") if k not in plan]
    if missing:
        raise RecipeError(f"plan: missing {', '.join(missing)}")
    out = {}
    for key in PLAN_INTS:
        v = plan[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise RecipeError(f"plan: {key} must be an integer >= 1, got {v!r}")
        out[key] = v
    for key, low, high, low_open in (("sft_frac", 0.0, 1.0, False), ("temperature", 0.0, 10.0, True),
                                     ("top_p", 0.0, 1.0, True)):
        v = plan[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (low < v <= high if low_open
                                                                          else low <= v <= high):
            raise RecipeError(f"plan: {key} must be a number in {'(' if low_open else '['}{low}, {high}], got {v!r}")
        out[key] = float(v)
    if out["prompts_per_step"] * out["group_size"] > MAX_ROLLOUTS:
        raise RecipeError(f"plan: prompts_per_step x group_size = {out['prompts_per_step'] * out['group_size']} "
                          f"rollouts per step, more than {MAX_ROLLOUTS}")
    return out


def sample(model, prompts, max_new: int, temperature: float, top_p: float, generator):
    """Returns (rows, max_new) sampled byte ids continuing `prompts` (rows, width), with nucleus sampling."""
    import torch

    x = prompts
    with torch.no_grad():
        for _ in range(max_new):
            probs = torch.softmax(model(input_ids=x).logits[:, -1].float() / temperature, dim=-1)
            if top_p < 1.0:  # the smallest set of bytes holding top_p of the probability, renormalised
                sorted_p, order = probs.sort(dim=-1, descending=True)
                keep = (sorted_p.cumsum(-1) - sorted_p) < top_p
                choice = torch.multinomial(sorted_p * keep, 1, generator=generator)
                nxt = order.gather(-1, choice)
            else:
                nxt = torch.multinomial(probs, 1, generator=generator)
            x = torch.cat([x, nxt], dim=1)
    return x[:, prompts.size(1):]


def completion_mask(completions, end: int):
    """Returns a float mask over sampled bytes: 1 up to and with the first end mark (all of a row without one)."""
    import torch

    is_end = completions == end
    before = torch.cumsum(is_end.long(), dim=1) - is_end.long()  # end marks strictly before each byte
    return (before == 0).float()


def token_stats(logits, completions):
    """Returns (log-probability, entropy) of each sampled byte, both (rows, max_new)."""
    import torch

    logp_all = torch.log_softmax(logits.float(), dim=-1)
    logp = logp_all.gather(-1, completions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


def decode(ids) -> str:
    return bytes(ids).decode("latin-1")


def answer_tensors(problems, answer_bytes: int, end: int, device="cpu"):
    """Returns (inputs, targets, mask) for teacher-forced answers: the answer and end mark are masked in."""
    import torch

    rows, masks = [], []
    for prompt, answer in problems:
        tail = (answer.encode() + bytes([end]) * answer_bytes)[:answer_bytes]
        rows.append(list(prompt.encode()) + list(tail))
        n = len(prompt.encode())
        masks.append([0] * (n - 1) + [1] * min(len(answer) + 1, answer_bytes) +
                     [0] * (answer_bytes - min(len(answer) + 1, answer_bytes)))
    seq = torch.tensor(rows, dtype=torch.long, device=device)
    return seq[:, :-1], seq[:, 1:], torch.tensor(masks, dtype=torch.float, device=device)


def greedy_accuracy(model, problems, answer_bytes: int, end: int) -> float:
    """Returns the fraction of problems the model answers exactly, end mark included, decoding greedily."""
    import torch

    right, device = 0, next(model.parameters()).device
    with torch.no_grad():
        for i in range(0, len(problems), 256):
            chunk = problems[i:i + 256]
            x = torch.tensor([list(p.encode()) for p, _ in chunk], dtype=torch.long, device=device)
            for _ in range(answer_bytes):
                x = torch.cat([x, model(input_ids=x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
            width = len(chunk[0][0].encode())
            for row, (_, answer) in zip(x[:, width:].tolist(), chunk):
                text, mark, _ = decode(row).partition(chr(end))
                right += bool(mark) and text == answer
    return right / len(problems)


def _dev_metrics(model, dev, answer_bytes: int, end: int) -> tuple[float, float]:
    """Returns (loss per answer byte, greedy accuracy) on the dev problems."""
    import torch

    was_training = model.training
    model.eval()
    x, y, mask = answer_tensors(dev, answer_bytes, end, next(model.parameters()).device)
    with torch.no_grad():
        logits = model(input_ids=x).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                                reduction="none").view_as(mask)
        loss = ((nll * mask).sum() / mask.sum()).item()
    accuracy = greedy_accuracy(model, dev, answer_bytes, end)
    model.train(was_training)
    return loss, accuracy


def _indices(batches, size: int, n: int, phase: str) -> list[int]:
    """Returns the next batch of training-problem indices, checked."""
    try:
        idx = next(batches)
    except StopIteration:
        raise RecipeError(f"batches: the {phase} phase's iterator ended; it must yield batches forever") from None
    if not isinstance(idx, (list, tuple)) or len(idx) != size:
        raise RecipeError(f"batches: the {phase} phase needs lists of {size} indices, got "
                          f"{type(idx).__name__}{f' of {len(idx)}' if isinstance(idx, (list, tuple)) else ''}")
    if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in idx):
        raise RecipeError(f"batches: indices must be integers in [0, {n}) (training problems only)")
    return list(idx)


def _scalar(value, hook: str):
    """Returns a hook's loss if it is a scalar tensor (`optimize` checks it is finite); RecipeError if not."""
    import torch

    if not isinstance(value, torch.Tensor) or value.dim() != 0:
        raise RecipeError(f"{hook}: expected a scalar tensor, got {type(value).__name__}")
    return value


def train(config: TrialConfig, rank: int, world: int, out_dir: Path, report) -> dict:
    """Trains one rank: the warm-up, then RL, within the token budget; returns the rank's summary."""
    import deepspeed
    import torch

    t_setup = time.time()
    torch.manual_seed(config.seed * 1000 + rank)
    task, data_dir = config.task, Path(config.data_dir)
    budget, report_every = config.train_tokens, config.report_every
    param_cap = task_limit(task, "param_cap")
    meta = json.loads((data_dir / "meta.json").read_text())
    vocab, end = int(meta["vocab_size"]), ord(meta.get("end", ";"))
    prompt_bytes, answer_bytes = int(meta["prompt_bytes"]), int(meta["answer_bytes"])
    if config.resume_from:
        raise RecipeError("the rl trainer saves no checkpoints to resume from")
    problems = read_problems(data_dir / "train.bin")
    shard = problems[rank::world]  # RL prompts: every training problem
    # worked answers for the warm-up: the first meta["demo_problems"] of them (all, if it is not set)
    demos = problems[: int(meta.get("demo_problems") or len(problems))][rank::world]
    dev = read_problems(data_dir / "dev.bin")
    untouched = snapshot_protected()
    sandbox.confine()  # the last walls, before any of the variant's code (a no-op outside a sandbox)
    recipe = load_recipe(config.variant_dir, HOOKS)
    check_untouched(untouched, "importing recipe.py")
    settings = load_settings(config.variant_dir)
    smoke = config.smoke
    if smoke:
        report({"imported": True})
    plan = check_plan(recipe.plan(settings))

    model, n_params = build_model(recipe, settings, vocab, prompt_bytes + answer_bytes, param_cap)
    sft_bs, prompts, group = plan["sft_batch_size"], plan["prompts_per_step"], plan["group_size"]
    ds_config = deepspeed_settings(recipe, settings, sft_bs)
    gas = ds_config["gradient_accumulation_steps"]
    sft_micro_tokens = sft_bs * (prompt_bytes + answer_bytes) * world
    rl_micro_tokens = prompts * group * (prompt_bytes + answer_bytes) * world
    sft_steps = int(plan["sft_frac"] * budget) // sft_micro_tokens // gas
    rl_steps = (budget - sft_steps * gas * sft_micro_tokens) // rl_micro_tokens // gas
    if sft_steps + rl_steps < 1:
        raise RecipeError(f"plan: one optimizer step needs {min(sft_micro_tokens, rl_micro_tokens) * gas:,} "
                          f"tokens, more than the budget of {budget:,}")
    if smoke:  # a check before the trial: a few steps of each phase, nothing saved
        sft_steps, rl_steps = min(sft_steps, config.max_steps), min(rl_steps, config.max_steps)
    total_steps = sft_steps + rl_steps

    optimizer = recipe.optimizer(model, settings)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise RecipeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, recipe.lr_multiplier(settings, sft_steps, rl_steps))
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    device = engine.device  # the inputs go where DeepSpeed put the model (a GPU's, with gpus_per_worker)
    sampler = torch.Generator(device=device).manual_seed(config.seed * 1000 + rank + 7919)

    curve, step, tokens, train_seconds = [], 0, 0, 0.0
    loss_sum, loss_n, reward_sum, reward_n = 0.0, 0, 0.0, 0
    t_first = time.time()
    engine.train()

    def point(phase: str) -> None:
        nonlocal loss_sum, loss_n, reward_sum, reward_n
        dev_loss, dev_acc = _dev_metrics(engine.module, dev, answer_bytes, end)
        p = {"step": step, "tokens": tokens, "train_loss": loss_sum / max(1, loss_n), "dev_loss": dev_loss,
             "dev_accuracy": dev_acc, "phase": phase, "last": step == total_steps,
             "lr": scheduler.get_last_lr()[0]}
        if reward_n:
            p["reward"] = reward_sum / reward_n
        curve.append(curve_row(p))
        loss_sum, loss_n, reward_sum, reward_n = 0.0, 0, 0.0, 0
        if not smoke:
            report(p)

    def optimize(loss, phase: str) -> None:
        nonlocal step, tokens, loss_sum, loss_n
        engine.backward(loss)
        engine.step()
        value = loss.item()
        if not math.isfinite(value):
            raise RecipeError(f"{phase} loss became {value} at optimizer step {step}")
        loss_sum, loss_n = loss_sum + value, loss_n + 1
        if engine.is_gradient_accumulation_boundary():
            step += 1
            if step % report_every == 0 or step in (sft_steps, total_steps):
                point(phase)

    batches = recipe.batches(list(demos), "sft", sft_bs, settings, generator)
    for _ in range(sft_steps * gas):
        t0 = time.perf_counter()
        x, y, mask = answer_tensors([demos[i] for i in _indices(batches, sft_bs, len(demos), "sft")],
                                    answer_bytes, end, device)
        tokens += sft_micro_tokens
        optimize(_scalar(recipe.sft_loss(engine(input_ids=x).logits, y, mask, settings), "sft_loss"), "sft")
        train_seconds += time.perf_counter() - t0

    # the warmed-up model, frozen (no copy when the plan leaves no RL steps)
    reference = copy.deepcopy(engine.module).eval().requires_grad_(False) if rl_steps else None
    batches = recipe.batches(list(shard), "rl", prompts, settings, generator)
    for _ in range(rl_steps * gas):
        t0 = time.perf_counter()
        chosen = [shard[i] for i in _indices(batches, prompts, len(shard), "rl")]
        x = torch.tensor([list(p.encode()) for p, _ in chosen], dtype=torch.long, device=device)
        x = x.repeat_interleave(group, dim=0)
        engine.module.eval()
        completions = sample(engine.module, x, answer_bytes, plan["temperature"], plan["top_p"], sampler)
        engine.module.train()
        rewards = []
        for k, row in enumerate(completions.tolist()):
            prompt, answer = chosen[k // group]
            r = recipe.reward(prompt, decode(row), answer, settings)
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r):
                raise RecipeError(f"reward: expected a finite number, got {r!r}")
            rewards.append(float(r))
        rewards = torch.tensor(rewards, device=device).view(prompts, group)
        adv = recipe.advantages(rewards, settings)
        if not isinstance(adv, torch.Tensor) or tuple(adv.shape) != (prompts, group) or not torch.isfinite(adv).all():
            raise RecipeError(f"advantages: expected a finite tensor of shape ({prompts}, {group})")
        seqs = torch.cat([x, completions], dim=1)[:, :-1]
        logp, entropy = token_stats(engine(input_ids=seqs).logits[:, prompt_bytes - 1:], completions)
        with torch.no_grad():
            ref_logp, _ = token_stats(reference(input_ids=seqs).logits[:, prompt_bytes - 1:], completions)
        loss = recipe.rl_loss(logp, ref_logp, entropy, adv.reshape(-1).float(), completion_mask(completions, end),
                              settings)
        reward_sum, reward_n = reward_sum + rewards.sum().item(), reward_n + rewards.numel()
        tokens += rl_micro_tokens
        optimize(_scalar(loss, "rl_loss"), "rl")
        train_seconds += time.perf_counter() - t0

    t_last = time.time()
    check_untouched(untouched, "training")
    summary = {"curve": curve, "train_seconds": train_seconds, "tokens_trained": tokens, "n_params": n_params,
               "optimizer_steps": total_steps, "sft_steps": sft_steps, "rl_steps": rl_steps,
               "setup_seconds": t_first - t_setup, "first_step_at": t_first, "last_step_at": t_last,
               "world_size": world, "checkpoint_seconds": 0.0, "resumed_at_tokens": None,
               # sampling included: a rollout's tokens are trained tokens here (MFU is the LM loop's)
               "tokens_per_s": tokens / world / train_seconds if train_seconds > 0 else None}
    if rank == 0 and not smoke:
        save_result(engine, out_dir, summary)
    return summary
